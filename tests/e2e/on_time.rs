//! The product's promises, asserted with the production resync (60 s), so that a broken
//! expiry timer cannot hide behind a fast resync: a grant's rule is open from when the
//! request goes Active until `expiresAt` (Azure: until `expiresAt` minus the documented
//! close lead), is gone by `expiresAt + 2 s`, and says exactly what was asked.

use std::time::{Duration, Instant};

use portcullis::api::{AccessRequest, Phase};
use portcullis::domain::desired::AZURE_CLOSE_LEAD;
use serde_json::{Value, json};

use crate::aws::{MINUTE, World};
use crate::azure::AzWorld;
use crate::support::arm::ArmOptions;
use crate::support::aws;
use crate::support::ec2_proxy::Faults;

/// The correctness deadline after `expiresAt`: a generous fixed margin (speed is the
/// benchmark's business).
const DEADLINE: Duration = Duration::from_secs(2);
/// How early a rule may be seen gone, besides the close lead: the status carries whole
/// seconds and polls are 100 ms apart.
const EARLY_TOLERANCE: Duration = Duration::from_millis(300);

/// What an EC2 rule says: protocol, ports, source, description.
type RuleSummary = (String, Option<i32>, Option<i32>, Option<String>, String);

fn instant_of(t: &jiff::Timestamp) -> Instant {
    let left = t.duration_since(jiff::Timestamp::now());
    let now = Instant::now();
    match Duration::try_from(left) {
        Ok(d) => now + d,
        Err(_) => now - Duration::try_from(-left).unwrap_or_default(),
    }
}

fn expires(r: &AccessRequest) -> (jiff::Timestamp, Instant) {
    let t = r.status.as_ref().unwrap().expires_at.clone().unwrap().0;
    (t, instant_of(&t))
}

/// Polls `open` every 100 ms until it says closed; when that was.
async fn closed_at<F, Fut>(mut open: F) -> Instant
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if !open().await {
            return Instant::now();
        }
        assert!(start.elapsed() < Duration::from_secs(180), "never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check_window(what: &str, closed: Instant, expires: Instant, lead: Duration) {
    assert!(
        closed <= expires + DEADLINE,
        "{what}: open {:?} past expiresAt + {DEADLINE:?}",
        closed - (expires + DEADLINE)
    );
    assert!(
        closed + lead + EARLY_TOLERANCE >= expires,
        "{what}: closed {:?} before expiresAt - {lead:?}",
        (expires - lead).saturating_duration_since(closed)
    );
    eprintln!(
        "METRIC {what}: closed {:+.3}s from expiresAt",
        if closed >= expires {
            (closed - expires).as_secs_f64()
        } else {
            -(expires - closed).as_secs_f64()
        }
    );
}

#[tokio::test]
async fn aws_grants_close_on_time_with_the_production_resync() {
    let w = World::new_with_args("on-time-aws", Faults::None, true, "60s", &[]).await;
    let original = aws::ingress_summary(&w.ec2, &w.vm.group_id).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    w.create_request("short", 22, "203.0.113.7/32", "15s").await;
    w.create_request("longer", 22, "203.0.113.8/32", "25s")
        .await;
    let short = w.phase("short", Phase::Active, MINUTE).await;
    let longer = w.phase("longer", Phase::Active, MINUTE).await;

    // Exactly what was asked: tcp 22 from each source, stamped with its request and its
    // expiry, in this installation's group attached to the VM's ENI, and nothing else.
    let group = w.owned_group().await.unwrap();
    let mut rules: Vec<RuleSummary> = aws::ingress(&w.ec2, &group)
        .await
        .iter()
        .map(|r| {
            (
                r.ip_protocol().unwrap().to_string(),
                r.from_port(),
                r.to_port(),
                r.cidr_ipv4().map(str::to_string),
                r.description().unwrap().to_string(),
            )
        })
        .collect();
    rules.sort();
    let stamp = |name: &str, r: &AccessRequest| {
        portcullis::domain::stamp::format(
            &portcullis::domain::stamp::cluster_id(&w.ns),
            &portcullis::domain::Stamp {
                owner: format!("{}/{name}", w.ns),
                expires_at: Some(expires(r).0),
            },
        )
    };
    assert_eq!(
        rules,
        vec![
            (
                "tcp".into(),
                Some(22),
                Some(22),
                Some("203.0.113.7/32".into()),
                stamp("short", &short)
            ),
            (
                "tcp".into(),
                Some(22),
                Some(22),
                Some("203.0.113.8/32".into()),
                stamp("longer", &longer)
            ),
        ]
    );
    assert!(aws::eni_groups(&w.ec2, &w.vm.eni_id).await.contains(&group));

    for (name, r) in [("short", &short), ("longer", &longer)] {
        let source = r.spec.ports[0].source_prefix.clone();
        let closed = closed_at(|| {
            let (w, source) = (&w, source.clone());
            async move { w.owned_rules().await.iter().any(|x| x.3 == source) }
        })
        .await;
        check_window(&format!("aws {name}"), closed, expires(r).1, Duration::ZERO);
        w.phase(name, Phase::Expired, MINUTE).await;
    }
    // The baseline's revocation is untouched by the grants coming and going.
    assert!(!original.is_empty());
    assert!(
        !aws::ingress_summary(&w.ec2, &w.vm.group_id)
            .await
            .iter()
            .any(|r| r.1 == 22)
    );
}

/// The rule's properties that say what it does (not its etag or state).
fn what_it_says(rule: &Value) -> Value {
    let p = &rule["properties"];
    json!({
        "protocol": p["protocol"], "sourcePortRange": p["sourcePortRange"],
        "destinationPortRange": p["destinationPortRange"],
        "sourceAddressPrefix": p["sourceAddressPrefix"],
        "destinationAddressPrefixes": p["destinationAddressPrefixes"],
        "destinationAddressPrefix": p["destinationAddressPrefix"],
        "access": p["access"], "direction": p["direction"], "description": p["description"],
    })
}

#[tokio::test]
async fn azure_grants_close_on_time_and_not_early_with_the_production_resync() {
    // Long-running operations that take real polls (the close lead must cover them).
    let options = ArmOptions {
        in_progress_polls: 1,
        retry_after_secs: 1,
        ..ArmOptions::default()
    };
    let w = AzWorld::new_with_resync("on-time-az", options, true, "60s").await;
    let foreign_before: Vec<Vec<Value>> = w
        .nsgs()
        .iter()
        .map(|n| {
            w.arm
                .rules(n)
                .into_iter()
                .filter(|r| !r["name"].as_str().unwrap().starts_with("portcullis-"))
                .collect()
        })
        .collect();
    w.create_policy().await;
    w.ready().await;
    w.create_request("ssh", "203.0.113.7/32", "20s").await;
    let r = w.phase("ssh", Phase::Active).await;
    let (expires_at, expires_instant) = expires(&r);

    // Exactly what was asked, in both NSGs.
    let cluster = portcullis::domain::stamp::cluster_id(&w.ns);
    let want = json!({
        "protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "22",
        "sourceAddressPrefix": "203.0.113.7/32", "destinationAddressPrefixes": ["10.1.0.4"],
        "destinationAddressPrefix": null, "access": "Allow", "direction": "Inbound",
        "description": portcullis::domain::stamp::format(&cluster, &portcullis::domain::Stamp {
            owner: format!("{}/ssh", w.ns), expires_at: Some(expires_at) }),
    });
    let deny = json!({
        "protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "22",
        "sourceAddressPrefix": "*", "destinationAddressPrefixes": ["10.1.0.4"],
        "destinationAddressPrefix": null, "access": "Deny", "direction": "Inbound",
        "description": portcullis::domain::stamp::format(&cluster, &portcullis::domain::Stamp {
            owner: format!("{}/jit", w.ns), expires_at: None }),
    });
    for nsg in w.nsgs() {
        let allows = w.owned(&nsg, "Allow");
        assert_eq!(allows.len(), 1, "{nsg}");
        assert_eq!(what_it_says(&allows[0]), want, "{nsg}");
        let prio = allows[0]["properties"]["priority"].as_u64().unwrap();
        assert!((3000..=3899).contains(&prio), "allow at {prio}");
        let denies = w.owned(&nsg, "Deny");
        assert_eq!(denies.len(), 1, "{nsg}");
        assert_eq!(what_it_says(&denies[0]), deny, "{nsg}");
    }

    let lead = Duration::try_from(AZURE_CLOSE_LEAD).unwrap();
    let closed =
        closed_at(|| async { w.nsgs().iter().any(|n| !w.owned(n, "Allow").is_empty()) }).await;
    check_window("azure", closed, expires_instant, lead);
    w.phase("ssh", Phase::Expired).await;

    // Other people's rules: byte for byte as they were.
    let foreign_after: Vec<Vec<Value>> = w
        .nsgs()
        .iter()
        .map(|n| {
            w.arm
                .rules(n)
                .into_iter()
                .filter(|r| !r["name"].as_str().unwrap().starts_with("portcullis-"))
                .collect()
        })
        .collect();
    assert_eq!(foreign_after, foreign_before);
}
