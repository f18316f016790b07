//! Never left open, never lost: the ways a review found for a port to stay open, a record
//! to be lost or one installation to undo another, each as a scenario on the real parts
//! (kube-apiserver, the operator process, moto behind the test proxy).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{IpPermission, IpRange, UserIdGroupPair};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use portcullis::api::{AccessRequest, JitPolicy, Phase, PortReason};
use serde_json::json;

use crate::aws::{MINUTE, World, port_reason};
use crate::support::aws::{self, Instance};
use crate::support::ec2_proxy::{Faults, Refuse};
use crate::support::kube_helpers::{delete_and_wait_gone, eventually};
use crate::support::operator::Operator;
use crate::support::testbed::{ADMIN, Testbed};

/// A policy `name` over `targets` ((name, region, instance id)), governing tcp/22.
fn policy(name: &str, targets: &[(&str, &str, &str)], extra: &str) -> JitPolicy {
    let targets: String = targets
        .iter()
        .map(|(n, region, id)| {
            format!("    - name: {n}\n      aws: {{region: {region}, instanceId: {id}}}\n")
        })
        .collect();
    serde_saphyr::from_str(&format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: {name}}}\nspec:\n  targets:\n{targets}  ports:\n    - {{port: 22, protocol: TCP, allowedSourcePrefixes: [\"203.0.113.0/24\"], maxDuration: 1h}}\n{extra}"
    ))
    .unwrap()
}

async fn request_for(w: &World, name: &str, target: &str, source: &str, duration: &str) {
    let r: AccessRequest = serde_saphyr::from_str(&format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {{name: {name}}}\nspec:\n  policyRef: {{name: jit}}\n  target: {target}\n  ports:\n    - {{port: 22, sourcePrefix: {source}, duration: {duration}}}\n  justification: never left open\n"
    ))
    .unwrap();
    w.requests.create(&PostParams::default(), &r).await.unwrap();
}

/// Whether tcp/22 is open in `group`.
async fn ssh_open(ec2: &Client, group: &str) -> bool {
    aws::ingress_summary(ec2, group)
        .await
        .iter()
        .any(|r| r.0 == "tcp" && r.1 <= 22 && 22 <= r.2)
}

fn events(ns: &str) -> String {
    crate::support::testbed::run(
        Testbed::shared()
            .kubectl(ADMIN)
            .args(["get", "events", "-n", ns, "-o", "wide"]),
    )
    .unwrap_or_default()
}

async fn wait_event(ns: &str, reason: &str) -> String {
    eventually(&format!("event {reason}"), MINUTE, || async {
        let e = events(ns);
        e.contains(reason).then_some(e)
    })
    .await
}

/// The moment the request's rule is gone from every owned group, polled every 100 ms.
async fn rule_gone_at(w: &World, owner: &str) -> Instant {
    eventually(
        &format!("the rule of {owner} to go"),
        MINUTE * 2,
        || async {
            let rules = w.owned_rules().await;
            (!rules
                .iter()
                .any(|r| r.4.contains(&format!("owner={}/{owner}", w.ns))))
            .then(Instant::now)
        },
    )
    .await
}

/// When a request expires, as an `Instant` (its status says so in wall-clock time).
fn instant_of(t: &jiff::Timestamp) -> Instant {
    let left = t.duration_since(jiff::Timestamp::now());
    let now = Instant::now();
    match Duration::try_from(left) {
        Ok(d) => now + d,
        Err(_) => now - Duration::try_from(-left).unwrap_or_default(),
    }
}

async fn expires_at(w: &World, name: &str) -> Instant {
    let r = w.requests.get(name).await.unwrap();
    instant_of(&r.status.unwrap().expires_at.unwrap().0)
}

/// Issue 8, item 1: a target removed from the policy is closed and its revocations are
/// restored before it is forgotten.
#[tokio::test]
async fn a_target_removed_from_the_policy_is_closed_and_restored() {
    let w = World::new("gone-target", Faults::None).await;
    let db = aws::instance(&w.ec2).await;
    let db_original = aws::ingress_summary(&w.ec2, &db.group_id).await;
    let both = [
        ("web", aws::REGION, w.vm.instance_id.as_str()),
        ("db", aws::REGION, db.instance_id.as_str()),
    ];
    w.policies
        .create(&PostParams::default(), &policy("jit", &both, ""))
        .await
        .unwrap();
    w.ready_policy("jit").await;
    assert!(!ssh_open(&w.ec2, &db.group_id).await);
    request_for(&w, "dbssh", "db", "203.0.113.7/32", "10m").await;
    w.phase("dbssh", Phase::Active, MINUTE).await;

    // db leaves the policy.
    let web_only = policy("jit", &both[..1], "");
    w.policies
        .patch(
            "jit",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"targets": web_only.spec.targets}})),
        )
        .await
        .unwrap();
    eventually("db's revocation restored", MINUTE, || async {
        (aws::ingress_summary(&w.ec2, &db.group_id).await == db_original).then_some(())
    })
    .await;
    let r = w.phase("dbssh", Phase::Revoked, MINUTE).await;
    assert_eq!(port_reason(&r), Some(PortReason::PolicyChanged));
    eventually("db's owned group gone", MINUTE, || async {
        aws::owned_groups(&w.ec2, &w.ns)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(
        aws::eni_groups(&w.ec2, &db.eni_id).await,
        vec![db.group_id.clone()]
    );
    // Forgotten only now: no status entry, no record.
    let p = eventually("db forgotten", MINUTE, || async {
        let p = w.policies.get("jit").await.ok()?;
        let names: Vec<String> = p
            .status
            .as_ref()?
            .targets
            .iter()
            .map(|t| t.name.clone())
            .collect();
        (names == vec!["web".to_string()]).then_some(p)
    })
    .await;
    assert!(p.status.unwrap().targets[0].record.is_some());
    assert!(
        !ssh_open(&w.ec2, &w.vm.group_id).await,
        "web keeps its baseline"
    );
}

/// Issue 8, item 2: nothing in a status (which people can write) reopens an expired
/// grant, stretches one, or restores a rule the operator never revoked.
#[tokio::test]
async fn status_written_by_people_reopens_stretches_and_restores_nothing() {
    let mut w = World::new("status-trust", Faults::None).await;
    let original = aws::ingress_summary(&w.ec2, &w.vm.group_id).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;

    // A 20 s grant whose status is rewritten to say it was granted later and lasts hours.
    w.create_request("short", 22, "203.0.113.7/32", "20s").await;
    w.phase("short", Phase::Active, MINUTE).await;
    let deadline = expires_at(&w, "short").await + Duration::from_secs(2);
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2);
    w.requests
        .patch_status(
            "short",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "grantedAt": later.to_string(), "expiresAt": later.to_string(),
                "ports": [{"port": 22, "state": "Active", "expiresAt": later.to_string()}]
            }})),
        )
        .await
        .unwrap();
    let gone = rule_gone_at(&w, "short").await;
    assert!(
        gone <= deadline,
        "the rule outlived its grant by {:?}",
        gone - deadline
    );
    w.phase("short", Phase::Expired, MINUTE).await;

    // Marked open again by hand: nothing opens (three resyncs).
    w.requests
        .patch_status(
            "short",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Active", "ports": [{"port": 22, "state": "Active"}]}}),
            ),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        w.owned_rules().await.is_empty(),
        "an expired grant reopened"
    );

    // A record entry slipped into the status: tcp/3306 from anywhere "to restore".
    let mut p = w.policies.get("jit").await.unwrap();
    let record = p.status.as_mut().unwrap().targets[0]
        .record
        .as_mut()
        .unwrap();
    let mut forged = record.revoked_rules[0].clone();
    forged.from_port = 3306;
    forged.to_port = 3306;
    forged.description = Some("restore me".into());
    record.revoked_rules.push(forged);
    let targets = p.status.as_ref().unwrap().targets.clone();
    w.policies
        .patch_status(
            "jit",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"targets": targets}})),
        )
        .await
        .unwrap();
    // A restarted operator reads the record from the status again.
    w.operator.kill();
    w.operator.restart();
    wait_event(&w.ns, "RecordRejected").await;

    delete_and_wait_gone(&w.policies, "jit").await;
    assert_eq!(
        aws::ingress_summary(&w.ec2, &w.vm.group_id).await,
        original,
        "exactly what was revoked comes back, and nothing else"
    );
}

/// Issue 8, item 3: records are never overwritten from a stale copy: a burst of
/// reconciles right after the baseline revoked must not lose the record.
#[tokio::test]
async fn the_record_survives_a_burst_of_reconciles() {
    let w = World::new("record-burst", Faults::None).await;
    let original = aws::ingress_summary(&w.ec2, &w.vm.group_id).await;
    w.create_policy("jit").await;
    let names: Vec<(String, String)> = (0..20)
        .map(|i| (format!("r{i}"), format!("203.0.113.{}/32", i + 10)))
        .collect();
    let creates = names
        .iter()
        .map(|(n, src)| w.create_request(n, 22, src, "10m"));
    futures::future::join_all(creates).await;
    w.ready_policy("jit").await;
    delete_and_wait_gone(&w.policies, "jit").await;
    assert_eq!(aws::ingress_summary(&w.ec2, &w.vm.group_id).await, original);
}

/// Issue 8, item 4: a policy whose VM is gone (and its group too) is deleted all the
/// same, with events saying so.
#[tokio::test]
async fn a_vanished_vm_does_not_hold_the_policys_deletion() {
    let w = World::new("vanished", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    w.create_request("ssh", 22, "203.0.113.7/32", "10m").await;
    w.phase("ssh", Phase::Active, MINUTE).await;
    let owned = w.owned_group().await.unwrap();

    w.ec2
        .terminate_instances()
        .instance_ids(&w.vm.instance_id)
        .send()
        .await
        .unwrap();
    // Then someone deletes the group too. (EC2 lets it go once the terminated instance's
    // interface is gone; moto keeps the interface, and deleting a group an interface
    // still names breaks moto's group filters for every test, so it is moved off first.)
    let spare = w
        .ec2
        .create_security_group()
        .group_name(format!("spare-{}", w.ns))
        .description("spare")
        .vpc_id(&w.vm.vpc_id)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    w.ec2
        .modify_network_interface_attribute()
        .network_interface_id(&w.vm.eni_id)
        .groups(&spare)
        .send()
        .await
        .unwrap();
    w.ec2
        .delete_security_group()
        .group_id(&w.vm.group_id)
        .send()
        .await
        .unwrap();

    delete_and_wait_gone(&w.policies, "jit").await;
    let e = wait_event(&w.ns, "TargetGone").await;
    assert!(e.contains("RecordDropped"), "{e}");
    assert!(
        aws::owned_groups(&w.ec2, &w.ns).await.is_empty(),
        "the owned group {owned} is gone too"
    );
    let r = w.phase("ssh", Phase::Revoked, MINUTE).await;
    assert_eq!(port_reason(&r), Some(PortReason::PolicyChanged));
}

/// Issue 8, item 5: a request whose writes keep failing holds nobody else's expiry.
#[tokio::test]
async fn a_request_that_cannot_be_written_holds_up_nobody() {
    let w = World::new("churn", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    // Someone keeps changing "churn" so that every guarded write of it conflicts.
    w.create_request("churn", 22, "203.0.113.9/32", "10m").await;
    let stop = Arc::new(AtomicBool::new(false));
    let churner = {
        let (api, stop) = (w.requests.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                api.patch(
                    "churn",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"n": i.to_string()}}})),
                )
                .await
                .ok();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    w.create_request("short", 22, "203.0.113.7/32", "20s").await;
    w.phase("short", Phase::Active, MINUTE).await;
    let deadline = expires_at(&w, "short").await + Duration::from_secs(2);
    let gone = rule_gone_at(&w, "short").await;
    stop.store(true, Ordering::SeqCst);
    churner.await.unwrap();
    assert!(
        gone <= deadline,
        "closed {:?} late",
        gone.saturating_duration_since(deadline)
    );
    w.phase("short", Phase::Expired, MINUTE).await;
}

/// Issue 8, item 5: a policy whose spec does not validate still closes what is revoked
/// or deleted, and keeps its baseline.
#[tokio::test]
async fn an_invalid_policy_still_closes_what_must_close() {
    let mut w = World::new("invalid-closes", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    w.create_request("revoked", 22, "203.0.113.7/32", "10m")
        .await;
    w.create_request("deleted", 22, "203.0.113.8/32", "10m")
        .await;
    w.phase("revoked", Phase::Active, MINUTE).await;
    w.phase("deleted", Phase::Active, MINUTE).await;

    // Without the webhook (as when it is not installed), the policy is broken by hand.
    w.operator.kill();
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        crate::support::testbed::run(Testbed::shared().kubectl(ADMIN).args([
            "delete",
            kind,
            &format!("portcullis-{}", w.ns),
            "--ignore-not-found",
        ]))
        .unwrap();
    }
    w.policies
        .patch(
            "jit",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [{"port": 22, "protocol": "TCP", "allowedSourcePrefixes": ["203.0.113.0/24"], "maxDuration": "1s"}]}})),
        )
        .await
        .unwrap();
    w.revoke("revoked").await;
    w.requests
        .delete("deleted", &Default::default())
        .await
        .unwrap();
    let tb = Testbed::shared();
    let _op = Operator::start_without_webhook(tb, &w.ns, &w.proxy.url, "2s");

    w.phase("revoked", Phase::Revoked, MINUTE).await;
    eventually("the deleted request gone", MINUTE, || async {
        w.requests
            .get_opt("deleted")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    eventually("both rules closed", MINUTE, || async {
        w.owned_rules().await.is_empty().then_some(())
    })
    .await;
    assert!(
        !ssh_open(&w.ec2, &w.vm.group_id).await,
        "the baseline stays while the spec is broken"
    );
    let p = eventually("policy Stalled", MINUTE, || async {
        let p = w.policies.get("jit").await.ok()?;
        portcullis::api::conditions::is_true(&p.status.as_ref()?.conditions, "Stalled").then_some(p)
    })
    .await;
    let stalled = p
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap();
    assert_eq!(stalled.reason, "InvalidSpec");
    assert!(
        stalled.message.contains("spec.ports[0].maxDuration"),
        "{}",
        stalled.message
    );
}

/// An EC2 client for another region of the same moto.
fn client_in(url: &str, region: &'static str) -> Client {
    let conf = aws_sdk_ec2::config::Builder::new()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new(region))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    Client::from_conf(conf)
}

/// Issue 8, item 5: one slow target (its region answers after seconds) delays no other
/// target's expiry.
#[tokio::test]
async fn a_slow_target_delays_no_other_targets_expiry() {
    let w = World::new("slow-target", Faults::None).await;
    let tb = Testbed::shared();
    let far = client_in(&tb.moto_url, "us-east-1");
    let slow: Instance = aws::instance(&far).await;
    w.proxy.delay_region("us-east-1", Duration::from_secs(8));
    w.policies
        .create(
            &PostParams::default(),
            &policy(
                "jit",
                &[
                    ("a-slow", "us-east-1", slow.instance_id.as_str()),
                    ("web", aws::REGION, w.vm.instance_id.as_str()),
                ],
                "",
            ),
        )
        .await
        .unwrap();
    request_for(&w, "short", "web", "203.0.113.7/32", "20s").await;
    w.phase("short", Phase::Active, MINUTE).await;
    let deadline = expires_at(&w, "short").await + Duration::from_secs(2);
    let gone = rule_gone_at(&w, "short").await;
    assert!(
        gone <= deadline,
        "web closed {:?} late behind the slow target",
        gone.saturating_duration_since(deadline)
    );
}

/// Issue 8, item 5: the sweeper goes on past a region it may not read.
#[tokio::test]
async fn the_sweeper_goes_on_past_a_forbidden_region() {
    let mut w = World::new_with_args(
        "sweep-on",
        Faults::None,
        true,
        "2s",
        &["--aws-region", "ap-south-1,eu-west-1"],
    )
    .await;
    w.proxy.refuse(Refuse {
        action: None,
        region: Some("ap-south-1"),
        status: 403,
        code: "UnauthorizedOperation",
    });
    // A grant left behind by a request that no longer exists, long expired.
    let cluster = portcullis::domain::stamp::cluster_id(&w.ns);
    let group = w
        .ec2
        .create_security_group()
        .group_name(format!("leftover-{}", w.ns))
        .description("left over")
        .vpc_id(&w.vm.vpc_id)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::SecurityGroup)
                .tags(tag("portcullis.dev/managed", "true"))
                .tags(tag("portcullis.dev/cluster", &cluster))
                .tags(tag("portcullis.dev/target", &format!("{}/gone/web", w.ns)))
                .tags(tag("portcullis.dev/eni", &w.vm.eni_id))
                .build(),
        )
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    let stamp = portcullis::domain::stamp::format(
        &cluster,
        &portcullis::domain::Stamp {
            owner: format!("{}/ghost", w.ns),
            expires_at: Some(jiff::Timestamp::from_second(1_700_000_000).unwrap()),
        },
    );
    w.ec2
        .authorize_security_group_ingress()
        .group_id(&group)
        .ip_permissions(
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ip_ranges(
                    IpRange::builder()
                        .cidr_ip("198.51.100.1/32")
                        .description(stamp)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    // A restart sweeps first thing, with the region refused from the start.
    w.operator.kill();
    w.operator.restart();
    eventually("the leftover swept", MINUTE, || async {
        let out = w
            .ec2
            .describe_security_groups()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("group-id")
                    .values(&group)
                    .build(),
            )
            .send()
            .await
            .ok()?;
        out.security_groups().is_empty().then_some(())
    })
    .await;
    assert!(w.proxy.injected() > 0, "the forbidden region was tried");
    assert!(w.dump().contains("cannot sweep the region"), "{}", w.dump());
}

fn tag(key: &str, value: &str) -> aws_sdk_ec2::types::Tag {
    aws_sdk_ec2::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
}

/// A second instance in `w`'s subnet that uses `w`'s group.
async fn neighbour(w: &World) -> String {
    let subnets = w
        .ec2
        .describe_subnets()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("vpc-id")
                .values(&w.vm.vpc_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let subnet = subnets.subnets()[0].subnet_id().unwrap().to_string();
    let images = w.ec2.describe_images().send().await.unwrap();
    let image = images.images()[0].image_id().unwrap().to_string();
    let run = w
        .ec2
        .run_instances()
        .image_id(image)
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet)
        .security_group_ids(&w.vm.group_id)
        .send()
        .await
        .unwrap();
    run.instances()[0].instance_id().unwrap().to_string()
}

/// Issue 8, item 7: a group that serves instances outside the policy is left alone and
/// reported, unless the policy says to revoke anyway; then "all traffic from this group"
/// is revoked with carve-outs that keep TCP, UDP and ICMP open.
#[tokio::test]
async fn a_group_shared_outside_the_policy_is_not_revoked_unless_asked() {
    let w = World::new("shared-group", Faults::None).await;
    let original = aws::ingress_summary(&w.ec2, &w.vm.group_id).await;
    let other = neighbour(&w).await;
    w.create_policy("jit").await;
    let p = eventually("Conflict naming the other instance", MINUTE, || async {
        let p = w.policies.get("jit").await.ok()?;
        let c = p
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Conflict")?
            .clone();
        (c.status == "True").then_some(c)
    })
    .await;
    assert!(p.message.contains(&other), "{}", p.message);
    assert!(p.message.contains("sharedGroups"), "{}", p.message);
    assert!(
        ssh_open(&w.ec2, &w.vm.group_id).await,
        "nothing is revoked for the neighbour"
    );
    assert_eq!(aws::ingress_summary(&w.ec2, &w.vm.group_id).await, original);

    // "All traffic from this group", as default groups have it.
    w.ec2
        .authorize_security_group_ingress()
        .group_id(&w.vm.group_id)
        .ip_permissions(
            IpPermission::builder()
                .ip_protocol("-1")
                .user_id_group_pairs(UserIdGroupPair::builder().group_id(&w.vm.group_id).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let original = aws::ingress_summary(&w.ec2, &w.vm.group_id).await;
    w.policies
        .patch(
            "jit",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"aws": {"sharedGroups": "Revoke"}}})),
        )
        .await
        .unwrap();
    w.ready_policy("jit").await;
    assert!(!ssh_open(&w.ec2, &w.vm.group_id).await);
    let carved = eventually("carve-outs", MINUTE, || async {
        let g = w.owned_group().await?;
        let rules = aws::ingress(&w.ec2, &g).await;
        (rules.len() == 4).then_some(rules)
    })
    .await;
    let mut shapes: Vec<(String, i32, i32)> = carved
        .iter()
        .map(|r| {
            assert_eq!(
                r.referenced_group_info().and_then(|g| g.group_id()),
                Some(w.vm.group_id.as_str()),
                "same source as the revoked rule"
            );
            (
                r.ip_protocol().unwrap().to_string(),
                r.from_port().unwrap(),
                r.to_port().unwrap(),
            )
        })
        .collect();
    shapes.sort();
    assert_eq!(
        shapes,
        vec![
            ("icmp".into(), -1, -1),
            ("tcp".into(), 0, 21),
            ("tcp".into(), 23, 65535),
            ("udp".into(), 0, 65535),
        ]
    );
    wait_event(&w.ns, "RevokedBroadRule").await;

    delete_and_wait_gone(&w.policies, "jit").await;
    assert_eq!(aws::ingress_summary(&w.ec2, &w.vm.group_id).await, original);
    assert!(aws::owned_groups(&w.ec2, &w.ns).await.is_empty());
}

/// Issue 8, item 8: a group named like the operator's but without its tags is not
/// adopted; another installation's group is not exempt from the baseline; a group
/// attached to the ENI while the operator works is kept.
#[tokio::test]
async fn groups_are_adopted_exempted_and_replaced_only_when_they_are_ours() {
    let w = World::new("adopt", Faults::None).await;
    // Someone else's group, made with the name the operator would give its own.
    let target = portcullis::cloud::target_id(&portcullis::domain::TargetKey {
        policy: portcullis::domain::ObjectKey::new(&w.ns, "jit"),
        target: "web".into(),
    });
    let cluster = portcullis::domain::stamp::cluster_id(&w.ns);
    let name = portcullis::cloud::aws::owned_group_name(&cluster, &w.vm.eni_id, &target);
    let lookalike = w
        .ec2
        .create_security_group()
        .group_name(&name)
        .description("not Portcullis's")
        .vpc_id(&w.vm.vpc_id)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    w.create_request("ssh", 22, "203.0.113.7/32", "10m").await;
    let c = eventually("Conflict about the look-alike", MINUTE, || async {
        let p = w.policies.get("jit").await.ok()?;
        let c = p
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Conflict")?
            .clone();
        (c.status == "True" && c.message.contains("will not adopt")).then_some(c)
    })
    .await;
    assert!(c.message.contains(&lookalike), "{}", c.message);
    let r = w.requests.get("ssh").await.unwrap();
    assert_eq!(r.status.unwrap().phase, Some(Phase::Pending));
    assert!(
        !aws::eni_groups(&w.ec2, &w.vm.eni_id)
            .await
            .contains(&lookalike)
    );
    // A group attached by someone while the operator creates its own: kept. (The hook
    // is in place before the look-alike goes: the operator's next try may come at once.)
    let extra = w
        .ec2
        .create_security_group()
        .group_name(format!("monitoring-{}", w.ns))
        .description("monitoring")
        .vpc_id(&w.vm.vpc_id)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    let (ec2, eni, g, base) = (
        w.ec2.clone(),
        w.vm.eni_id.clone(),
        extra.clone(),
        w.vm.group_id.clone(),
    );
    w.proxy.before_next(
        "CreateSecurityGroup",
        Arc::new(move || {
            let (ec2, eni, g, base) = (ec2.clone(), eni.clone(), g.clone(), base.clone());
            Box::pin(async move {
                ec2.modify_network_interface_attribute()
                    .network_interface_id(eni)
                    .groups(base)
                    .groups(g)
                    .send()
                    .await
                    .unwrap();
            })
        }),
    );
    w.ec2
        .delete_security_group()
        .group_id(&lookalike)
        .send()
        .await
        .unwrap();
    w.phase("ssh", Phase::Active, MINUTE).await;
    let groups = aws::eni_groups(&w.ec2, &w.vm.eni_id).await;
    assert!(
        groups.contains(&extra),
        "the group attached meanwhile was dropped: {groups:?}"
    );
    assert_eq!(groups.len(), 3, "{groups:?}");
}

/// Issue 8, item 8: a group tagged as another installation's is not exempt from the
/// baseline: it is reported, not silently left open.
#[tokio::test]
async fn another_installations_group_is_reported_not_exempt() {
    let w = World::new("other-install", Faults::None).await;
    let theirs = w
        .ec2
        .create_security_group()
        .group_name(format!("theirs-{}", w.ns))
        .description("tagged as another installation's")
        .vpc_id(&w.vm.vpc_id)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::SecurityGroup)
                .tags(tag("portcullis.dev/managed", "true"))
                .tags(tag("portcullis.dev/cluster", "somebody-else"))
                .build(),
        )
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    aws::reopen_ssh(&w.ec2, &theirs).await;
    w.ec2
        .modify_network_interface_attribute()
        .network_interface_id(&w.vm.eni_id)
        .groups(&w.vm.group_id)
        .groups(&theirs)
        .send()
        .await
        .unwrap();
    w.create_policy("jit").await;
    let c = eventually("Conflict naming the group", MINUTE, || async {
        let p = w.policies.get("jit").await.ok()?;
        let c = p
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Conflict")?
            .clone();
        (c.status == "True").then_some(c)
    })
    .await;
    assert!(c.message.contains(&theirs), "{}", c.message);
    assert!(c.message.contains("somebody-else"), "{}", c.message);
}

/// Issue 8, item 13: a finished request lives its time to live after it finished, not
/// after it opened.
#[tokio::test]
async fn finished_requests_live_their_ttl_from_when_they_finished() {
    let w = World::new_with_args("ttl", Faults::None, true, "2s", &["--finished-ttl", "8s"]).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    w.create_request("short", 22, "203.0.113.7/32", "12s").await;
    w.phase("short", Phase::Active, MINUTE).await;
    w.phase("short", Phase::Expired, MINUTE).await;
    let finished = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        w.requests.get_opt("short").await.unwrap().is_some(),
        "deleted 4 s after it finished, with a time to live of 8 s"
    );
    eventually("the finished request deleted", MINUTE, || async {
        w.requests
            .get_opt("short")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let lived = finished.elapsed();
    assert!(lived >= Duration::from_secs(7), "deleted after {lived:?}");
}

/// Issue 8, item 14: the owned group of an ENI that left the instance is deleted.
#[tokio::test]
async fn the_owned_group_of_an_eni_that_left_is_deleted() {
    let w = World::new("eni-left", Faults::None).await;
    let subnets = w
        .ec2
        .describe_subnets()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("vpc-id")
                .values(&w.vm.vpc_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let subnet = subnets.subnets()[0].subnet_id().unwrap().to_string();
    let eni2 = w
        .ec2
        .create_network_interface()
        .subnet_id(subnet)
        .groups(&w.vm.group_id)
        .send()
        .await
        .unwrap()
        .network_interface()
        .unwrap()
        .network_interface_id()
        .unwrap()
        .to_string();
    let attachment = w
        .ec2
        .attach_network_interface()
        .network_interface_id(&eni2)
        .instance_id(&w.vm.instance_id)
        .device_index(1)
        .send()
        .await
        .unwrap()
        .attachment_id()
        .unwrap()
        .to_string();
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    w.create_request("ssh", 22, "203.0.113.7/32", "10m").await;
    w.phase("ssh", Phase::Active, MINUTE).await;
    assert_eq!(
        aws::owned_groups(&w.ec2, &w.ns).await.len(),
        2,
        "one per ENI"
    );

    w.ec2
        .detach_network_interface()
        .attachment_id(attachment)
        .send()
        .await
        .unwrap();
    eventually("the group of the ENI that left deleted", MINUTE, || async {
        (aws::owned_groups(&w.ec2, &w.ns).await.len() == 1).then_some(())
    })
    .await;
    let groups = aws::eni_groups(&w.ec2, &eni2).await;
    assert_eq!(
        groups,
        vec![w.vm.group_id.clone()],
        "nothing of ours on the ENI that left"
    );
    let r = w.requests.get("ssh").await.unwrap();
    assert_eq!(
        r.status.unwrap().phase,
        Some(Phase::Active),
        "the grant stays on the instance"
    );
}

/// Issue 8, item 14: a group EC2 will not delete (DependencyViolation) is a condition
/// with a reason, retried slowly, not hammered.
#[tokio::test]
async fn a_group_in_use_is_a_condition_not_an_endless_retry() {
    let w = World::new("in-use", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    w.proxy.refuse(Refuse {
        action: Some("DeleteSecurityGroup"),
        region: None,
        status: 400,
        code: "DependencyViolation",
    });
    w.create_request("short", 22, "203.0.113.7/32", "10s").await;
    w.phase("short", Phase::Active, MINUTE).await;
    w.phase("short", Phase::Expired, MINUTE).await;
    let c = eventually("a condition about the group in use", MINUTE, || async {
        let p = w.policies.get("jit").await.ok()?;
        let c = p
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Conflict")?
            .clone();
        (c.status == "True" && c.message.contains("DependencyViolation")).then_some(c)
    })
    .await;
    assert!(c.message.contains("in use"), "{}", c.message);
    w.proxy.clear();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let tries = w
        .proxy
        .calls()
        .iter()
        .filter(|a| *a == "DeleteSecurityGroup")
        .count();
    // A conflict waits for the resync (2 s here, less 10 % jitter at most): six tries at
    // most in 10 s. A retry with backoff (from 1 s) or a loop would make more.
    assert!(
        tries <= 6,
        "{tries} deletes in 10 s with a 2 s resync: hammering"
    );
    w.proxy.stop_refusing();
    w.ready_policy("jit").await;
    eventually("the empty group deleted", MINUTE, || async {
        aws::owned_groups(&w.ec2, &w.ns)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

/// Issue 8, item 14: credentials the cloud refuses make the policy Stalled with a
/// message that says what to fix.
#[tokio::test]
async fn refused_credentials_stall_the_policy_with_a_clear_message() {
    let w = World::new("no-creds", Faults::None).await;
    w.proxy.refuse(Refuse {
        action: None,
        region: None,
        status: 401,
        code: "AuthFailure",
    });
    w.create_policy("jit").await;
    let c = eventually("Stalled for the credentials", MINUTE, || async {
        let p = w.policies.get("jit").await.ok()?;
        let c = p
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")?
            .clone();
        (c.status == "True").then_some(c)
    })
    .await;
    assert_eq!(c.reason, "CloudUnauthorized");
    assert!(c.message.contains("not authorized"), "{}", c.message);
    assert!(c.message.contains("AWS identity"), "{}", c.message);
}

/// Issue 8, item 15: a converged policy writes nothing and is not reconciled again by
/// its own status writes: only the resync looks at the cloud.
#[tokio::test]
async fn a_converged_policy_writes_nothing_and_reads_only_on_resync() {
    let w = World::new("quiet", Faults::None).await;
    w.create_policy("jit").await;
    let before = w.ready_policy("jit").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_rv = w.policies.get("jit").await.unwrap().resource_version();
    let runs = |m: &str| -> f64 {
        m.lines()
            .filter(|l| {
                l.starts_with("portcullis_reconciles_total") && l.contains("resource=\"target\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let m0 = crate::support::operator::http_get(&format!("{}/metrics", w.operator.metrics_url))
        .await
        .unwrap()
        .1;
    w.proxy.clear();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let m1 = crate::support::operator::http_get(&format!("{}/metrics", w.operator.metrics_url))
        .await
        .unwrap()
        .1;
    let (calls, writes) = (w.proxy.calls(), w.proxy.writes());
    let target_runs = runs(&m1) - runs(&m0);
    assert!(writes.is_empty(), "{writes:?}");
    // Resync every 2 s (with up to 10 % jitter): five or six runs in 10 s, not a loop.
    assert!(
        (3.0..=7.0).contains(&target_runs),
        "{target_runs} target runs in 10 s with a 2 s resync"
    );
    // Per run: the instance and its ENIs (2 reads), its groups, owned groups, rules and
    // who else uses the groups (4); per resync one sweep read. Nothing else.
    // A run may be under way at either end of the window: its calls count, its run
    // does not (runs are counted when they finish).
    assert!(
        calls.len() as f64 <= (target_runs + 1.0) * 7.0,
        "{} cloud calls for {target_runs} runs: {calls:?}",
        calls.len()
    );
    let after = w.policies.get("jit").await.unwrap();
    assert_eq!(
        after.resource_version(),
        before_rv,
        "the converged policy's status was written again"
    );
    let _ = before;
}
