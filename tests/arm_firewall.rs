//! The Azure Firewall client (`portcullis::cloud::azure::firewall`) against the ARM
//! emulator: foreign collections untouched to the byte, many grants in one PUT, a lost
//! race (412) planned again without losing the other writer's change, Firewall Manager
//! firewalls refused before any write, busy firewalls waited for, and the sweep.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use portcullis::cloud::azure::arm::{ArmClient, StaticToken};
use portcullis::cloud::azure::firewall::{reconcile_firewall, sweep_firewall};
use portcullis::cloud::{CloudError, Live, target_id};
use portcullis::domain::firewall::{
    DEFAULT_BAND, FirewallDesired, FirewallSettings, FirewallTarget, PortRange, grant_rule_name,
    target_tag,
};
use portcullis::domain::{Grant, ObjectKey, PortSpec, Proto, TargetKey};
use serde_json::{Value, json};
use support::arm::{ArmEmulator, ArmOptions};

const RG: &str = "rg1";
const PUBLIC: &str = "198.51.100.4";
const VM_IP: &str = "10.0.0.4";

async fn within<T>(secs: u64, test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {secs}s"))
}

fn client(arm: &ArmEmulator) -> ArmClient {
    ArmClient::new(
        &arm.url,
        Arc::new(StaticToken::new(arm.token.clone())),
        Some(&arm.ca_pem),
    )
    .expect("client builds")
}

fn ssh() -> PortSpec {
    PortSpec {
        port: NonZeroU16::new(22).unwrap(),
        protocol: Proto::Tcp,
    }
}

fn key() -> TargetKey {
    TargetKey {
        policy: ObjectKey::new("team-a", "jump"),
        target: "web".into(),
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

fn grant(request: &str, source: &str, secs: i64) -> Grant {
    grant_from(now(), request, source, secs)
}

/// A grant of SSH from `source` that ends `secs` after `t0` (on a whole second).
fn grant_from(t0: Timestamp, request: &str, source: &str, secs: i64) -> Grant {
    Grant {
        request: ObjectKey::new("team-a", request),
        port: ssh(),
        source: source.parse().unwrap(),
        expires_at: Timestamp::from_second(t0.as_second() + secs).unwrap(),
    }
}

fn desired(firewall: &str, grants: Vec<Grant>) -> FirewallDesired {
    desired_at(now(), firewall, grants)
}

fn desired_at(now: Timestamp, firewall: &str, grants: Vec<Grant>) -> FirewallDesired {
    FirewallDesired {
        firewall: firewall.into(),
        cluster: "prod".into(),
        now,
        targets: vec![FirewallTarget {
            key: key(),
            settings: FirewallSettings {
                id: firewall.into(),
                public_ip: PUBLIC.parse().unwrap(),
                mapped_ports: PortRange {
                    first: 50000,
                    last: 50999,
                },
                band: DEFAULT_BAND,
            },
            private_ips: vec![VM_IP.parse().unwrap()],
            baseline: vec![ssh()],
            hold: false,
            grants,
        }],
    }
}

/// A firewall with two foreign NAT collections (one listening on 50000) and a foreign
/// network collection that allows SSH to the VM at 61000, inside the default band.
fn seed(arm: &ArmEmulator, properties_extra: Value) -> String {
    let mut props = json!({
        "natRuleCollections": [
            {
                "name": "web-publish",
                "properties": {
                    "priority": 100,
                    "action": { "type": "Dnat" },
                    "rules": [{
                        "name": "https",
                        "protocols": ["TCP"],
                        "sourceAddresses": ["*"],
                        "destinationAddresses": [PUBLIC],
                        "destinationPorts": ["50000"],
                        "translatedAddress": "10.0.9.9",
                        "translatedPort": "443",
                    }]
                }
            },
            {
                "name": "mail",
                "properties": {
                    "priority": 110,
                    "action": { "type": "Dnat" },
                    "rules": [{
                        "name": "smtp",
                        "description": "inbound mail",
                        "protocols": ["TCP"],
                        "sourceAddresses": ["*"],
                        "destinationAddresses": ["198.51.100.5"],
                        "destinationPorts": ["25"],
                        "translatedAddress": "10.0.9.10",
                        "translatedPort": "25",
                    }]
                }
            }
        ],
        "networkRuleCollections": [{
            "name": "ops-ssh",
            "properties": {
                "priority": 61000,
                "action": { "type": "Allow" },
                "rules": [{
                    "name": "bastion",
                    "protocols": ["TCP"],
                    "sourceAddresses": ["10.1.0.0/24"],
                    "destinationAddresses": ["10.0.0.0/24"],
                    "destinationPorts": ["22", "3389"],
                    "sourceIpGroups": [],
                }]
            }
        }],
    });
    if let (Some(p), Some(extra)) = (props.as_object_mut(), properties_extra.as_object()) {
        p.extend(extra.clone());
    }
    arm.seed_firewall(RG, "fw", props).id
}

/// Collections whose names do not start with `portcullis-`, as GET shows them.
fn foreign(arm: &ArmEmulator, id: &str) -> Vec<Value> {
    let fw = arm.firewall(id).expect("the firewall exists");
    [
        "applicationRuleCollections",
        "natRuleCollections",
        "networkRuleCollections",
    ]
    .iter()
    .flat_map(|k| fw["properties"][k].as_array().cloned().unwrap_or_default())
    .filter(|c| {
        !c["name"]
            .as_str()
            .unwrap_or_default()
            .starts_with("portcullis-")
    })
    .collect()
}

fn collection(arm: &ArmEmulator, id: &str, kind: &str, name: &str) -> Option<Value> {
    arm.firewall(id)?["properties"][kind]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

fn deny_name() -> String {
    format!("portcullis-prod-deny-{}", target_tag(&key()))
}

#[tokio::test]
async fn a_grant_gets_a_dnat_rule_and_foreign_collections_stay_byte_identical() {
    within(60, async {
        let arm = ArmEmulator::start().await;
        let fw = seed(&arm, json!({}));
        let before = foreign(&arm, &fw);
        let g = grant("alice-ssh", "203.0.113.7/32", 600);

        let outcome = reconcile_firewall(&client(&arm), &desired(&fw, vec![g.clone()]))
            .await
            .expect("reconcile succeeds");

        assert!(outcome.blocked.is_empty(), "{:?}", outcome.blocked);
        assert_eq!(outcome.writes, 1);
        assert_eq!(arm.firewall_writes(&fw), 1);
        let c = &outcome.connections[0];
        assert_eq!(
            (c.address.to_string().as_str(), c.mapped_port),
            (PUBLIC, 50001)
        );
        assert_eq!(foreign(&arm, &fw), before, "foreign collections changed");
        let dnat = collection(&arm, &fw, "natRuleCollections", "portcullis-prod-dnat").unwrap();
        let rule = &dnat["properties"]["rules"][0];
        assert_eq!(rule["name"], grant_rule_name(&target_tag(&key()), &g));
        assert_eq!(rule["sourceAddresses"], json!(["203.0.113.7/32"]));
        assert_eq!(rule["destinationAddresses"], json!([PUBLIC]));
        assert_eq!(rule["destinationPorts"], json!(["50001"]));
        assert_eq!(rule["translatedAddress"], VM_IP);
        assert_eq!(rule["translatedPort"], "22");
        let deny = collection(&arm, &fw, "networkRuleCollections", &deny_name()).unwrap();
        let priority = deny["properties"]["priority"].as_i64().unwrap();
        assert!(
            priority > 61000,
            "the deny ({priority}) goes below ops-ssh (61000)"
        );
        assert_eq!(deny["properties"]["action"]["type"], "Deny");
        let allow =
            collection(&arm, &fw, "networkRuleCollections", "portcullis-prod-allow").unwrap();
        assert!(allow["properties"]["priority"].as_i64().unwrap() < priority);
        assert_eq!(
            arm.firewall(&fw).unwrap()["properties"]["provisioningState"],
            "Succeeded"
        );

        // Converged: reading again writes nothing.
        let again = reconcile_firewall(&client(&arm), &desired(&fw, vec![g]))
            .await
            .unwrap();
        assert_eq!((again.writes, arm.firewall_writes(&fw)), (0, 1));
        assert_eq!(again.connections, outcome.connections);

        // The grant ends: its rules go, the baseline and every foreign collection stay.
        let closed = reconcile_firewall(&client(&arm), &desired(&fw, vec![]))
            .await
            .unwrap();
        assert_eq!(closed.writes, 1);
        assert!(collection(&arm, &fw, "natRuleCollections", "portcullis-prod-dnat").is_none());
        assert!(collection(&arm, &fw, "networkRuleCollections", "portcullis-prod-allow").is_none());
        assert!(collection(&arm, &fw, "networkRuleCollections", &deny_name()).is_some());
        assert_eq!(foreign(&arm, &fw), before);
    })
    .await;
}

#[tokio::test]
async fn ten_grants_on_one_firewall_are_one_put() {
    within(60, async {
        let arm = ArmEmulator::start().await;
        let fw = seed(&arm, json!({}));
        let grants: Vec<Grant> = (0..10)
            .map(|i| grant(&format!("r{i}"), &format!("203.0.113.{}/32", 10 + i), 600))
            .collect();

        let outcome = reconcile_firewall(&client(&arm), &desired(&fw, grants))
            .await
            .unwrap();

        assert_eq!(arm.firewall_writes(&fw), 1, "{:?}", arm.writes());
        assert_eq!(outcome.connections.len(), 10);
        let ports: BTreeSet<u16> = outcome.connections.iter().map(|c| c.mapped_port).collect();
        assert_eq!(ports.len(), 10, "every grant has its own port: {ports:?}");
        assert!(!ports.contains(&50000), "50000 is web-publish's");
        let dnat = collection(&arm, &fw, "natRuleCollections", "portcullis-prod-dnat").unwrap();
        assert_eq!(dnat["properties"]["rules"].as_array().unwrap().len(), 10);
    })
    .await;
}

#[tokio::test]
async fn a_lost_race_is_planned_again_without_losing_the_other_change() {
    within(60, async {
        let arm = ArmEmulator::start().await;
        let fw = seed(&arm, json!({}));
        // Right after the client's read, another team adds a collection (a new etag).
        arm.on_next_firewall_read(&fw, |props| {
            let extra = json!({
                "name": "late-arrival",
                "properties": {
                    "priority": 62000,
                    "action": { "type": "Allow" },
                    "rules": [{
                        "name": "rdp",
                        "protocols": ["TCP"],
                        "sourceAddresses": ["10.2.0.0/24"],
                        "destinationAddresses": [VM_IP],
                        "destinationPorts": ["22"],
                    }]
                }
            });
            props["networkRuleCollections"]
                .as_array_mut()
                .unwrap()
                .push(extra);
        });

        let outcome = reconcile_firewall(
            &client(&arm),
            &desired(&fw, vec![grant("r1", "203.0.113.7/32", 600)]),
        )
        .await
        .unwrap();

        assert_eq!(outcome.writes, 2, "one 412, then the write");
        let statuses: Vec<u16> = arm
            .writes()
            .iter()
            .filter(|c| c.path.eq_ignore_ascii_case(&fw))
            .map(|c| c.status)
            .collect();
        assert_eq!(statuses, [412, 200]);
        let late = collection(&arm, &fw, "networkRuleCollections", "late-arrival");
        assert!(late.is_some(), "the other writer's collection survived");
        let deny = collection(&arm, &fw, "networkRuleCollections", &deny_name()).unwrap();
        assert!(
            deny["properties"]["priority"].as_i64().unwrap() > 62000,
            "planned again: the deny went below the new collection, which allows SSH to the VM"
        );
        assert_eq!(outcome.connections.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_firewall_manager_firewall_is_refused_before_any_write() {
    within(60, async {
        let arm = ArmEmulator::start().await;
        let policy = format!(
            "/subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Network/firewallPolicies/central",
            arm.subscription
        );
        let fw = arm
            .seed_firewall(RG, "managed", json!({ "firewallPolicy": { "id": policy } }))
            .id;

        let err = reconcile_firewall(
            &client(&arm),
            &desired(&fw, vec![grant("r1", "203.0.113.7/32", 600)]),
        )
        .await
        .unwrap_err();

        let CloudError::Unsupported { message, .. } = &err else {
            panic!("expected Unsupported, got {err:?}");
        };
        assert_eq!(
            message,
            &format!(
                "Azure Firewall {fw} is managed by Azure Firewall Manager (firewall policy {policy}): only classic rules are supported"
            )
        );
        assert!(!err.is_transient());
        assert_eq!(err.category(), "unsupported");
        assert_eq!(arm.firewall_writes(&fw), 0);
        assert!(arm.writes().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_busy_firewall_is_waited_for() {
    within(90, async {
        let arm = ArmEmulator::start_with(ArmOptions {
            complete_after: Some(Duration::from_secs(2)),
            ..ArmOptions::default()
        })
        .await;
        let fw = seed(&arm, json!({}));
        // Someone else's write is in flight and nobody polls it.
        let raw = support::arm::ArmClient::new(&arm);
        let body = arm.firewall(&fw).unwrap();
        assert_eq!(raw.put(&fw, &body).await.status, 200);

        let outcome = reconcile_firewall(
            &client(&arm),
            &desired(&fw, vec![grant("r1", "203.0.113.7/32", 600)]),
        )
        .await
        .expect("the client waits until the firewall is free");

        let statuses: Vec<u16> = arm
            .writes()
            .iter()
            .filter(|c| c.path.eq_ignore_ascii_case(&fw))
            .map(|c| c.status)
            .collect();
        assert!(
            statuses.iter().any(|s| *s == 429 || *s == 409),
            "the firewall was busy: {statuses:?}"
        );
        assert_eq!(statuses.last(), Some(&200));
        assert!(
            arm.min_wait_after_429()
                .is_none_or(|w| w >= Duration::from_millis(900)),
            "Retry-After was honoured: {:?}",
            arm.throttle_waits()
        );
        assert_eq!(outcome.connections.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn the_sweep_removes_expired_and_orphaned_rules_only() {
    within(60, async {
        let arm = ArmEmulator::start().await;
        let fw = seed(&arm, json!({}));
        let before = foreign(&arm, &fw);
        // Time is an input: the sweep runs "later" without waiting for it.
        let t0 = now();
        let keep = grant_from(t0, "keep", "203.0.113.7/32", 600);
        let gone = grant_from(t0, "gone", "203.0.113.8/32", 600);
        let short = grant_from(t0, "short", "203.0.113.9/32", 1);
        let opened = reconcile_firewall(
            &client(&arm),
            &desired_at(t0, &fw, vec![keep.clone(), gone, short]),
        )
        .await
        .unwrap();
        assert_eq!(opened.connections.len(), 3);
        let live = Live {
            requests: ["team-a/keep", "team-a/short"].map(String::from).into(),
            policies: ["team-a/jump".to_string()].into(),
            targets: [target_id(&key())].into(),
            ..Live::default()
        };
        let later = t0 + SignedDuration::from_secs(2);

        let report = sweep_firewall(&client(&arm), &fw, "prod", later, &live)
            .await
            .unwrap();

        assert_eq!((report.expired, report.orphaned), (2, 2), "{report:?}");
        assert_eq!(arm.firewall_writes(&fw), 2);
        let dnat = collection(&arm, &fw, "natRuleCollections", "portcullis-prod-dnat").unwrap();
        let names: Vec<&str> = dnat["properties"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, [grant_rule_name(&target_tag(&key()), &keep)]);
        assert!(collection(&arm, &fw, "networkRuleCollections", &deny_name()).is_some());
        assert_eq!(foreign(&arm, &fw), before);

        // Nothing left to sweep: no write. The policy gone: its baseline goes too.
        let again = sweep_firewall(&client(&arm), &fw, "prod", later, &live)
            .await
            .unwrap();
        assert_eq!(
            (again.expired, again.orphaned, arm.firewall_writes(&fw)),
            (0, 0, 2)
        );
        let no_policy = Live {
            policies: BTreeSet::new(),
            ..live
        };
        sweep_firewall(&client(&arm), &fw, "prod", later, &no_policy)
            .await
            .unwrap();
        assert!(collection(&arm, &fw, "networkRuleCollections", &deny_name()).is_none());
        assert_eq!(foreign(&arm, &fw), before);
    })
    .await;
}
