//! Issue 12, item 3: a crash at any write converges. A grant's whole life (the baseline,
//! the grant, its expiry, the policy's deletion and the restore) is lived once without
//! a crash to learn its writes, then once per write with the operator SIGKILLed right
//! after EC2 (moto) has done that write and before the answer reaches the operator: the
//! cloud has changed and the operator never learned it. After a restart every life must
//! end the same: the grant opened once, closed by `expiresAt + 2 s`, the request Expired,
//! the foreign rule restored byte for byte, nothing of ours left.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{DeleteParams, PostParams};
use portcullis::api::{AccessRequest, Phase};

use crate::aws::{MINUTE, World};
use crate::support::aws;
use crate::support::ec2_proxy::Faults;
use crate::support::operator::Operator;

/// How a life went.
#[derive(Debug)]
struct Life {
    /// The writes moto did, in order (the uncrashed life only; the proxy counts them).
    writes: Vec<String>,
    /// The write the operator died after, and what the request's status said then.
    killed_after: Option<(String, AtKill)>,
    /// Seconds from `expiresAt` until the grant's rule was gone.
    closed_after_expiry: f64,
}

/// The request when the kill struck.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum AtKill {
    /// Not created yet (or the hook could not read it).
    NoRequest,
    /// Its phase then.
    Request(Option<Phase>),
}

/// What the kill hook saw when it struck.
pub(crate) type Evidence = Arc<Mutex<Option<AtKill>>>;

/// Restarts the operator once the cloud's kill hook has struck.
pub(crate) struct Crash {
    pub(crate) pending: bool,
}

/// Waits for `check`, restarting the operator once `struck` says the kill hook ran.
pub(crate) async fn step<T, F, Fut>(
    op: &mut Operator,
    crash: &mut Crash,
    struck: &dyn Fn() -> bool,
    what: &str,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if crash.pending && struck() {
            crash.pending = false;
            op.kill();
            op.restart();
        }
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < MINUTE,
            "timed out waiting for {what}\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn live(kill_after: Option<u64>) -> Life {
    let name = kill_after.map_or("crash-none".to_string(), |n| format!("crash-{n}"));
    let mut w = World::new(&name, Faults::None).await;
    let original = aws::ingress_summary(&w.ec2, &w.vm.group_id).await;
    let evidence: Evidence = Arc::default();
    let proxy = w.proxy.clone();
    let struck = move || proxy.tripped().is_some();
    let mut crash = Crash {
        pending: kill_after.is_some(),
    };
    w.proxy.clear();
    if let Some(n) = kill_after {
        let pid = w.operator.pid().expect("the operator runs") as i32;
        let (requests, seen) = (w.requests.clone(), evidence.clone());
        w.proxy.after_write(
            n,
            Arc::new(move || {
                let (requests, seen) = (requests.clone(), seen.clone());
                Box::pin(async move {
                    // SAFETY: kill(2) on the operator's pid, as a crash would end it.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    // The proxy drops this call's handler once the dead operator's
                    // connection closes: the look at the request runs on its own.
                    tokio::spawn(async move {
                        let at = match requests.get_opt("ssh").await {
                            Ok(Some(r)) => AtKill::Request(r.status.and_then(|s| s.phase)),
                            Ok(None) => AtKill::NoRequest,
                            Err(e) => panic!("cannot read the request: {e}"),
                        };
                        *seen.lock().unwrap() = Some(at);
                    });
                })
            }),
        );
    }

    // The baseline: the foreign tcp/22 rule is revoked and recorded.
    w.create_policy("jit").await;
    let (policies, ec2, group) = (w.policies.clone(), w.ec2.clone(), w.vm.group_id.clone());
    step(
        &mut w.operator,
        &mut crash,
        &struck,
        "the baseline",
        || async {
            let p = policies.get("jit").await.ok()?;
            let ready = portcullis::api::conditions::is_true(&p.status?.conditions, "Ready");
            let open = aws::ingress_summary(&ec2, &group)
                .await
                .iter()
                .any(|r| r.1 == 22);
            (ready && !open).then_some(())
        },
    )
    .await;

    // The grant: created once the webhook answers again.
    let requests = w.requests.clone();
    let request: AccessRequest = serde_saphyr::from_str(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {name: ssh}\nspec:\n  policyRef: {name: jit}\n  target: web\n  ports:\n    - {port: 22, sourcePrefix: 203.0.113.7/32, duration: 15s}\n  justification: crash test\n",
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
    let ns = w.ns.clone();
    let owned = |ec2: aws_sdk_ec2::Client, ns: String| async move {
        let mut rules = Vec::new();
        for g in aws::owned_groups(&ec2, &ns).await {
            rules.extend(aws::ingress_summary(&ec2, &g).await);
        }
        rules
    };
    let rules = owned(ec2.clone(), ns.clone()).await;
    assert_eq!(
        rules.iter().filter(|r| r.3 == "203.0.113.7/32").count(),
        1,
        "{ns}: the grant opened once: {rules:?}"
    );
    assert!(
        aws::owned_groups(&ec2, &ns).await.len() <= 1,
        "{ns}: one owned group"
    );

    // The expiry: the rule goes on time.
    step(
        &mut w.operator,
        &mut crash,
        &struck,
        "the grant closed",
        || async {
            let open = owned(ec2.clone(), ns.clone())
                .await
                .iter()
                .any(|r| r.3 == "203.0.113.7/32");
            (!open).then_some(())
        },
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

    // The policy's deletion: the foreign rule comes back, nothing of ours stays.
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
    assert_eq!(
        aws::ingress_summary(&ec2, &group).await,
        original,
        "{ns}: the foreign rules as they were"
    );
    assert!(
        aws::owned_groups(&ec2, &ns).await.is_empty(),
        "{ns}: an owned group left over"
    );
    // Lives differ by a write or two (a sweep may revoke what a run was about to):
    // a kill that never struck is right only when this life made fewer writes.
    if let Some(n) = kill_after {
        let done = w.proxy.writes_done();
        assert!(
            !crash.pending || done < n,
            "{ns}: the kill after write {n} never struck, with {done} writes"
        );
    }
    let writes = w.proxy.writes();
    let killed_after = w.proxy.tripped().map(|a| {
        let at = evidence.lock().unwrap().clone();
        (a, at.unwrap_or(AtKill::NoRequest))
    });
    Life {
        writes,
        killed_after,
        closed_after_expiry,
    }
}

#[tokio::test]
async fn a_crash_after_any_write_converges() {
    let clean = live(None).await;
    let n = clean.writes.len() as u64;
    assert!(
        n >= 4,
        "a life has a baseline, a grant, its close and a restore: {clean:?}"
    );
    eprintln!("METRIC crash: {n} writes in a life: {:?}", clean.writes);
    let lives: Vec<(u64, Life)> = futures::stream::iter(1..=n)
        .map(|k| async move { (k, live(Some(k)).await) })
        .buffer_unordered(2)
        .collect()
        .await;
    let mut worst: f64 = clean.closed_after_expiry;
    let mut grant_kills = 0;
    for (k, life) in &lives {
        worst = worst.max(life.closed_after_expiry);
        let Some((action, at)) = life.killed_after.clone() else {
            eprintln!("METRIC crash: life {k} made fewer than {k} writes");
            continue;
        };
        eprintln!(
            "METRIC crash: killed after write {k} ({action}; request then {at:?}), closed {:+.2}s from expiresAt",
            life.closed_after_expiry
        );
        // The grant's own write (the request live, not yet finished): moto has the rule
        // and the status had not said Active. The kill landed between the write and its
        // record.
        if action == "AuthorizeSecurityGroupIngress"
            && let AtKill::Request(phase) = at
            && phase != Some(Phase::Expired)
        {
            assert_ne!(
                phase,
                Some(Phase::Active),
                "write {k}: Active before its write"
            );
            grant_kills += 1;
        }
    }
    assert!(
        grant_kills >= 1,
        "no kill landed between the grant's write and its record"
    );
    assert!(
        worst <= 2.0,
        "a grant stayed open {worst:.2}s past its expiry"
    );
}
