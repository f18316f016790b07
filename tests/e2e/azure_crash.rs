//! Issue 12, item 3, on Azure: a grant's whole life on a VM whose NIC and subnet each
//! have an NSG (the deny baseline in both, the grant in both, its expiry, the policy's
//! deletion), lived once to learn its ARM writes, then once per write with the operator
//! SIGKILLed right after the ARM emulator accepted that write and before the answer went
//! back. After a restart every life must end the same: the grant opened once per NSG,
//! closed on time (not before `expiresAt` less the close lead, gone by `expiresAt + 2 s`),
//! the request Expired, the foreign rules byte for byte as they were, nothing of ours left.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{DeleteParams, PostParams};
use portcullis::api::{AccessRequest, Phase};
use portcullis::domain::desired::AZURE_CLOSE_LEAD;
use serde_json::Value;

use crate::azure::AzWorld;
use crate::crash::{AtKill, Crash, Evidence, step};
use crate::support::arm::ArmOptions;

/// How a life went.
#[derive(Debug)]
struct Life {
    writes: Vec<String>,
    killed_after: Option<(String, AtKill)>,
    /// Seconds from `expiresAt` until the last allow rule was gone (negative: before).
    closed_after_expiry: f64,
}

fn foreign(w: &AzWorld) -> Vec<Vec<Value>> {
    w.nsgs()
        .iter()
        .map(|n| {
            w.arm
                .rules(n)
                .into_iter()
                .filter(|r| !r["name"].as_str().unwrap_or("").starts_with("portcullis-"))
                .collect()
        })
        .collect()
}

fn ours(w: &AzWorld, access: &str) -> Vec<usize> {
    w.nsgs().iter().map(|n| w.owned(n, access).len()).collect()
}

async fn live(kill_after: Option<u64>) -> Life {
    let name = kill_after.map_or("az-crash-none".to_string(), |n| format!("az-crash-{n}"));
    // ARM finishes an operation in its own time whether or not anybody polls it: here
    // about a second when polled (one `InProgress`, `Retry-After: 1`) and two when its
    // client died. (Operations slower than the 3 s close lead make any close late by
    // the difference, crash or not.)
    let options = ArmOptions {
        complete_after: Some(Duration::from_secs(2)),
        ..ArmOptions::default()
    };
    let mut w = AzWorld::new(&name, options, true).await;
    let before = foreign(&w);
    let evidence: Evidence = Arc::default();
    let mut crash = Crash {
        pending: kill_after.is_some(),
    };
    w.arm.clear_calls();
    if let Some(n) = kill_after {
        let pid = w.operator.pid().expect("the operator runs") as i32;
        let (requests, seen) = (w.requests.clone(), evidence.clone());
        w.arm.after_write(n, move || {
            // SAFETY: kill(2) on the operator's pid, as a crash would end it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            tokio::spawn(async move {
                let at = match requests.get_opt("ssh").await {
                    Ok(Some(r)) => AtKill::Request(r.status.and_then(|s| s.phase)),
                    Ok(None) => AtKill::NoRequest,
                    Err(e) => panic!("cannot read the request: {e}"),
                };
                *seen.lock().unwrap() = Some(at);
            });
        });
    }
    let arm = w.arm.clone();
    let struck = move || arm.tripped().is_some();
    let policies = w.policies.clone();
    let requests = w.requests.clone();

    // The baseline: a deny in each NSG.
    w.create_policy().await;
    let nsgs = w.nsgs();
    let arm = w.arm.clone();
    let owned = move |access: &str| -> Vec<usize> {
        nsgs.iter()
            .map(|n| {
                arm.rules(n)
                    .iter()
                    .filter(|r| {
                        r["name"]
                            .as_str()
                            .is_some_and(|x| x.starts_with("portcullis-"))
                            && r["properties"]["access"] == access
                    })
                    .count()
            })
            .collect()
    };
    step(
        &mut w.operator,
        &mut crash,
        &struck,
        "the baseline",
        || async {
            let p = policies.get("jit").await.ok()?;
            let ready = portcullis::api::conditions::is_true(&p.status?.conditions, "Ready");
            (ready && owned("Deny") == [1, 1]).then_some(())
        },
    )
    .await;

    // The grant: created once the webhook answers again; one allow per NSG.
    let request: AccessRequest = serde_saphyr::from_str(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {name: ssh}\nspec:\n  policyRef: {name: jit}\n  target: vm1\n  ports:\n    - {port: 22, sourcePrefix: 203.0.113.7/32, duration: 15s}\n  justification: crash test\n",
    )
    .unwrap();
    step(
        &mut w.operator,
        &mut crash,
        &struck,
        "the request created",
        || async {
            match requests.create(&PostParams::default(), &request).await {
                Ok(_) => Some(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Some(()),
                Err(_) => None,
            }
        },
    )
    .await;
    let r = step(
        &mut w.operator,
        &mut crash,
        &struck,
        "the request Active",
        || async {
            let r = requests.get("ssh").await.ok()?;
            (r.status.as_ref()?.phase == Some(Phase::Active)).then_some(r)
        },
    )
    .await;
    let expires = r.status.unwrap().expires_at.unwrap().0;
    assert_eq!(
        ours(&w, "Allow"),
        [1, 1],
        "{}: the grant once per NSG",
        w.ns
    );
    assert_eq!(
        ours(&w, "Deny"),
        [1, 1],
        "{}: the baseline once per NSG",
        w.ns
    );

    // The expiry.
    step(
        &mut w.operator,
        &mut crash,
        &struck,
        "the grant closed",
        || async { (owned("Allow") == [0, 0]).then_some(()) },
    )
    .await;
    let closed_after_expiry = (jiff::Timestamp::now() - expires)
        .total(jiff::Unit::Second)
        .unwrap();
    step(
        &mut w.operator,
        &mut crash,
        &struck,
        "the request Expired",
        || async {
            let r = requests.get("ssh").await.ok()?;
            (r.status.as_ref()?.phase == Some(Phase::Expired)).then_some(())
        },
    )
    .await;

    // The policy's deletion: our rules go, the foreign ones stay as they were.
    w.policies
        .delete("jit", &DeleteParams::default())
        .await
        .unwrap();
    step(
        &mut w.operator,
        &mut crash,
        &struck,
        "the policy gone",
        || async {
            policies
                .get_opt("jit")
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        },
    )
    .await;
    let leftovers: Vec<usize> = ours(&w, "Allow")
        .into_iter()
        .zip(ours(&w, "Deny"))
        .map(|(a, d)| a + d)
        .collect();
    assert_eq!(leftovers, [0, 0], "{}: rules of ours left over", w.ns);
    assert_eq!(
        foreign(&w),
        before,
        "{}: the foreign rules as they were",
        w.ns
    );
    // Lives differ by a write or two (a retried write, a sweep): a kill that never
    // struck is right only when this life made fewer writes.
    if let Some(n) = kill_after {
        let done = w.arm.writes_done();
        assert!(
            !crash.pending || done < n,
            "{}: the kill after write {n} never struck, with {done} writes",
            w.ns
        );
    }
    let writes = w
        .arm
        .writes()
        .iter()
        .filter(|c| (200..300).contains(&c.status))
        .map(|c| format!("{} {}", c.method, c.path.rsplit('/').next().unwrap_or("")))
        .collect();
    let killed_after = w.arm.tripped().map(|a| {
        let at = evidence.lock().unwrap().clone();
        // `METHOD …/networkSecurityGroups/<nsg>/securityRules/<rule>` → `METHOD <nsg>/<rule>`
        let parts: Vec<&str> = a.rsplit('/').collect();
        let method = a.split(' ').next().unwrap_or_default();
        let short = format!("{method} {}/{}", parts.get(2).unwrap_or(&""), parts[0]);
        (short, at.expect("the look at the request after the kill"))
    });
    Life {
        writes,
        killed_after,
        closed_after_expiry,
    }
}

#[tokio::test]
async fn azure_a_crash_after_any_write_converges() {
    let clean = live(None).await;
    let n = clean.writes.len() as u64;
    assert!(
        n >= 6,
        "a life has a baseline, a grant and its close in two NSGs: {clean:?}"
    );
    eprintln!(
        "METRIC azure crash: {n} writes in a life: {:?}",
        clean.writes
    );
    let lives: Vec<(u64, Life)> = futures::stream::iter(1..=n)
        .map(|k| async move { (k, live(Some(k)).await) })
        .buffer_unordered(2)
        .collect()
        .await;
    let lead = Duration::try_from(AZURE_CLOSE_LEAD).unwrap().as_secs_f64();
    let (mut latest, mut earliest) = (clean.closed_after_expiry, clean.closed_after_expiry);
    let mut grant_kills = 0;
    for (k, life) in &lives {
        latest = latest.max(life.closed_after_expiry);
        earliest = earliest.min(life.closed_after_expiry);
        let Some((write, at)) = life.killed_after.clone() else {
            eprintln!("METRIC azure crash: life {k} made fewer than {k} writes");
            continue;
        };
        eprintln!(
            "METRIC azure crash: killed after write {k} ({write}; request then {at:?}), closed {:+.2}s from expiresAt",
            life.closed_after_expiry
        );
        if write.starts_with("PUT") && write.contains("portcullis-allow") {
            assert_ne!(
                at,
                AtKill::Request(Some(Phase::Active)),
                "write {k}: Active before its write"
            );
            grant_kills += 1;
        }
    }
    assert!(
        grant_kills >= 1,
        "no kill landed between a grant's write and its record"
    );
    assert!(
        latest <= 2.0,
        "a grant stayed open {latest:.2}s past its expiry"
    );
    assert!(
        earliest >= -(lead + 0.3),
        "a grant closed {earliest:.2}s from its expiry, before the {lead}s lead"
    );
}
