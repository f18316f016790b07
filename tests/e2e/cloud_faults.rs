//! Issue 12, item 6: EC2 as it really answers, injected at the proxy in front of moto
//! (which is always consistent and has no quotas): a group just created is not found yet
//! by the next calls, and a quota refuses a rule.

use std::time::Duration;

use portcullis::api::Phase;

use crate::aws::{MINUTE, World};
use crate::support::aws;
use crate::support::ec2_proxy::{Faults, Refuse};
use crate::support::kube_helpers::eventually;

/// EC2 is eventually consistent: right after `CreateSecurityGroup` the new group may be
/// `InvalidGroup.NotFound` to the calls that use it. The grant still opens, once, in one
/// group (no second group made by a retry that did not find the first).
#[tokio::test]
async fn a_group_not_yet_visible_after_its_creation_is_retried_into_one_group() {
    let w = World::new("eventual", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    for action in [
        "ModifyNetworkInterfaceAttribute",
        "AuthorizeSecurityGroupIngress",
    ] {
        w.proxy.refuse_next(
            2,
            Refuse {
                action: Some(action),
                region: None,
                status: 400,
                code: "InvalidGroup.NotFound",
            },
        );
    }
    w.create_request("ssh", 22, "203.0.113.7/32", "10m").await;
    w.phase("ssh", Phase::Active, MINUTE).await;
    assert_eq!(w.proxy.injected(), 4, "every injected answer was met");
    let groups = aws::owned_groups(&w.ec2, &w.ns).await;
    assert_eq!(groups.len(), 1, "one owned group: {groups:?}");
    let rules = aws::ingress_summary(&w.ec2, &groups[0]).await;
    assert_eq!(rules.len(), 1, "the grant once: {rules:?}");
    assert_eq!((rules[0].1, rules[0].3.as_str()), (22, "203.0.113.7/32"));
    assert!(
        aws::eni_groups(&w.ec2, &w.vm.eni_id)
            .await
            .contains(&groups[0])
    );
}

/// A quota that refuses the rule is a condition that names the quota to raise, retried
/// at the resync (not hammered), and the grant opens once the quota allows it.
#[tokio::test]
async fn a_quota_refusing_the_rule_names_the_quota_and_is_not_hammered() {
    let w = World::new("quota", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    w.proxy.refuse(Refuse {
        action: Some("AuthorizeSecurityGroupIngress"),
        region: None,
        status: 400,
        code: "RulesPerSecurityGroupLimitExceeded",
    });
    w.create_request("ssh", 22, "203.0.113.7/32", "10m").await;
    let c = eventually("a condition naming the quota", MINUTE, || async {
        let p = w.policies.get("jit").await.ok()?;
        let c = p
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Conflict")?
            .clone();
        (c.status == "True" && c.message.contains("RulesPerSecurityGroupLimitExceeded"))
            .then_some(c)
    })
    .await;
    assert!(c.message.contains("raise the quota"), "{}", c.message);
    let r = w.requests.get("ssh").await.unwrap();
    assert_ne!(r.status.and_then(|s| s.phase), Some(Phase::Active));
    w.proxy.clear();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let tries = w
        .proxy
        .calls()
        .iter()
        .filter(|a| *a == "AuthorizeSecurityGroupIngress")
        .count();
    // A conflict waits for the resync (2 s here, less 10 % jitter at most).
    assert!(
        tries <= 6,
        "{tries} refused rules in 10 s with a 2 s resync: hammering"
    );
    w.proxy.stop_refusing();
    w.phase("ssh", Phase::Active, MINUTE).await;
    let rules = w.owned_rules().await;
    assert_eq!(rules.len(), 1, "{rules:?}");
}
