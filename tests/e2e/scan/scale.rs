//! Item 3 of issue 14: a scan of 2,000 instances finishes, with a number of EC2 calls
//! bounded by pages, not instances, even while EC2 throttles. Time and calls are printed.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Scanner, allow, ec2, group, launch, vpc};
use crate::support::ec2_proxy::{Ec2Proxy, Faults};
use crate::support::moto::Moto;
use crate::support::testbed::Testbed;

const REGION: &str = "us-east-2";
const INSTANCES: usize = 2000;
/// moto launches in reservations; 100 instances each keeps the set-up short.
const PER_RESERVATION: usize = 100;

#[tokio::test]
async fn scan_of_2000_instances_is_bounded_by_pages() {
    let tb = Testbed::shared();
    // A moto of its own: 2,000 instances would slow every other test's moto calls.
    let moto = Moto::start(tb, "scan-scale");
    let ec2 = ec2(&moto.url, REGION);
    let net = vpc(&ec2, "10.70.0.0/16", "10.70.0.0/17").await;
    let mut groups = Vec::new();
    for i in 0..10 {
        // Even groups leave SSH open to the world; odd ones to the VPC only.
        let source = if i % 2 == 0 {
            "0.0.0.0/0"
        } else {
            "10.70.0.0/16"
        };
        let (g, _) = group(
            &ec2,
            &net,
            &format!("g{i}"),
            vec![allow("tcp", 22, 22, source)],
        )
        .await;
        groups.push(g);
    }
    let started = Instant::now();
    for r in 0..INSTANCES / PER_RESERVATION {
        let g = &groups[r % groups.len()];
        launch(
            &ec2,
            &net,
            &format!("node-{r}"),
            &[g.as_str()],
            PER_RESERVATION as i32,
        )
        .await;
    }
    eprintln!(
        "set-up: {INSTANCES} instances in {} reservations on moto in {:.1}s",
        INSTANCES / PER_RESERVATION,
        started.elapsed().as_secs_f64()
    );

    // Every third EC2 call is throttled (503 RequestLimitExceeded), as a busy account's are.
    let proxy = Ec2Proxy::start(&moto.url).await;
    proxy.set_faults(Faults::ThrottleEvery(3));
    let started = Instant::now();
    let out = Scanner::new(&proxy.url)
        .run(&["--aws-region", REGION, "--no-cluster", "-o", "json"])
        .await;
    let took = started.elapsed();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();

    let vms = report["vms"].as_array().unwrap();
    assert_eq!(vms.len(), INSTANCES);
    assert_eq!(report["summary"]["Unhealthy"], INSTANCES / 2);
    assert_eq!(report["summary"]["Healthy"], INSTANCES / 2);
    let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
    for a in proxy.calls() {
        *by_action.entry(a).or_default() += 1;
    }
    let injected = proxy.injected() as usize;
    let total: usize = by_action.values().sum();
    eprintln!(
        "scan of {INSTANCES} instances: {:.1}s, {total} EC2 calls ({injected} of them throttled and retried): {by_action:?}",
        took.as_secs_f64()
    );
    assert!(injected >= 1, "the proxy throttled nothing: {by_action:?}");
    // One page of each list (moto pages instances by reservation: 20 fit in one page of
    // 1000), plus a retry for each throttled call. Nothing per instance.
    assert_eq!(total, 3 + injected, "{by_action:?}");
    for action in [
        "DescribeInstances",
        "DescribeNetworkInterfaces",
        "DescribeSecurityGroupRules",
    ] {
        assert!(
            by_action.get(action).is_some_and(|n| *n >= 1),
            "{action}: {by_action:?}"
        );
    }
    drop(moto);
}
