use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU16;

use ipnet::IpNet;
use jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::domain::model::{Band, Grant, ObjectKey, PortSpec, Proto, Stamp, TargetKey};
use crate::domain::stamp;

const CLUSTER: &str = "prod";
const PUBLIC: &str = "198.51.100.4";

fn port(n: u16, protocol: Proto) -> PortSpec {
    PortSpec {
        port: NonZeroU16::new(n).unwrap(),
        protocol,
    }
}

fn ssh() -> PortSpec {
    port(22, Proto::Tcp)
}

fn now() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().unwrap()
}

fn key(policy: &str, target: &str) -> TargetKey {
    TargetKey {
        policy: ObjectKey::new("ns", policy),
        target: target.into(),
    }
}

fn grant(request: &str, port: PortSpec, source: &str, secs: i64) -> Grant {
    Grant {
        request: ObjectKey::new("ns", request),
        port,
        source: source.parse().unwrap(),
        expires_at: now() + jiff::SignedDuration::from_secs(secs),
    }
}

fn settings() -> FirewallSettings {
    FirewallSettings {
        id: "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/azureFirewalls/fw"
            .into(),
        public_ip: PUBLIC.parse().unwrap(),
        mapped_ports: DEFAULT_MAPPED_PORTS,
        band: DEFAULT_BAND,
    }
}

fn target(name: &str, ip: &str, baseline: Vec<PortSpec>, grants: Vec<Grant>) -> FirewallTarget {
    FirewallTarget {
        key: key("p", name),
        settings: settings(),
        private_ips: vec![ip.parse().unwrap()],
        baseline,
        hold: false,
        grants,
    }
}

fn desired(targets: Vec<FirewallTarget>) -> FirewallDesired {
    FirewallDesired {
        firewall: settings().id,
        cluster: CLUSTER.into(),
        now: now(),
        targets,
    }
}

fn rule(name: &str, destinations: &[&str], ports: &[&str]) -> FwRule {
    FwRule {
        name: name.into(),
        description: None,
        protocols: vec!["TCP".into()],
        sources: vec!["*".into()],
        destinations: destinations.iter().map(|s| s.to_string()).collect(),
        ports: ports.iter().map(|s| s.to_string()).collect(),
        translated_address: None,
        translated_port: None,
        opaque: false,
    }
}

fn nat_rule(name: &str, destination: &str, port: &str, to: &str, to_port: &str) -> FwRule {
    FwRule {
        translated_address: Some(to.into()),
        translated_port: Some(to_port.into()),
        ..rule(name, &[destination], &[port])
    }
}

fn collection(
    kind: CollectionKind,
    name: &str,
    priority: u16,
    action: &str,
    rules: Vec<FwRule>,
) -> Collection {
    Collection {
        kind,
        name: name.into(),
        priority,
        action: action.into(),
        rules,
        exact: true,
    }
}

fn network(name: &str, priority: u16, action: &str, rules: Vec<FwRule>) -> Collection {
    collection(CollectionKind::Network, name, priority, action, rules)
}

fn nat(name: &str, priority: u16, rules: Vec<FwRule>) -> Collection {
    collection(CollectionKind::Nat, name, priority, "Dnat", rules)
}

fn observed(collections: Vec<Collection>) -> FirewallObserved {
    FirewallObserved { collections }
}

fn owned<'a>(p: &'a FirewallPlan, name: &str) -> Option<&'a Collection> {
    p.owned.iter().find(|c| c.name == name)
}

fn names() -> Names {
    Names::new(CLUSTER)
}

fn deny_name(t: &FirewallTarget) -> String {
    names().deny(&target_tag(&t.key))
}

/// Plans, applies, and checks that planning again changes nothing.
fn converge(d: &FirewallDesired, o: &FirewallObserved) -> (FirewallPlan, FirewallObserved) {
    let p = plan(d, o);
    let after = apply(o, &d.cluster, &p.owned);
    let again = plan(d, &after);
    assert!(!again.changed, "planning again changes: {again:#?}");
    assert_eq!(again.owned, p.owned);
    (p, after)
}

#[test]
fn an_empty_firewall_gets_a_dnat_an_allow_and_a_deny_collection() {
    let t = target(
        "web",
        "10.0.0.4",
        vec![ssh()],
        vec![grant("r1", ssh(), "203.0.113.7/32", 600)],
    );
    let d = desired(vec![t.clone()]);
    let (p, _) = converge(&d, &FirewallObserved::default());

    assert!(p.changed);
    assert!(p.blocked.is_empty(), "{:?}", p.blocked);
    let dnat = owned(&p, "portcullis-prod-dnat").expect("a NAT collection");
    assert_eq!((dnat.priority, dnat.action.as_str()), (60000, "Dnat"));
    let name = grant_rule_name(&target_tag(&t.key), &t.grants[0]);
    assert_eq!(
        dnat.rules,
        vec![FwRule {
            name: name.clone(),
            description: Some(stamp::format(CLUSTER, &t.grants[0].stamp())),
            protocols: vec!["TCP".into()],
            sources: vec!["203.0.113.7/32".into()],
            destinations: vec![PUBLIC.into()],
            ports: vec!["50000".into()],
            translated_address: Some("10.0.0.4".into()),
            translated_port: Some("22".into()),
            opaque: false,
        }]
    );
    let allow = owned(&p, "portcullis-prod-allow").expect("an allow collection");
    assert_eq!((allow.priority, allow.action.as_str()), (60000, "Allow"));
    assert_eq!(allow.rules[0].destinations, ["10.0.0.4"]);
    assert_eq!(allow.rules[0].ports, ["22"]);
    let deny = owned(&p, &deny_name(&t)).expect("a deny collection");
    assert_eq!((deny.priority, deny.action.as_str()), (60001, "Deny"));
    assert_eq!(deny.rules[0].name, "22tcp");
    assert_eq!(deny.rules[0].sources, ["*"]);
    assert_eq!(
        deny.rules[0]
            .description
            .as_deref()
            .and_then(|d| stamp::parse_own(CLUSTER, d)),
        Some(Stamp::baseline(&t.key.policy))
    );
    assert_eq!(
        p.connections,
        vec![Connection {
            target: t.key.clone(),
            request: ObjectKey::new("ns", "r1"),
            port: ssh(),
            source: "203.0.113.7/32".parse().unwrap(),
            address: PUBLIC.parse().unwrap(),
            mapped_port: 50000,
        }]
    );
}

#[test]
fn the_deny_goes_below_foreign_allows_that_reach_the_vm() {
    let t = target("web", "10.0.0.4", vec![ssh()], vec![]);
    let deny_priority = |foreign: Vec<Collection>| {
        let p = plan(&desired(vec![t.clone()]), &observed(foreign));
        owned(&p, &deny_name(&t))
            .map(|c| c.priority)
            .ok_or(p.blocked)
    };
    // An allow for 22 to the VM's subnet inside the band: the deny goes below it.
    let reaching = network(
        "ops",
        61000,
        "Allow",
        vec![rule("ssh", &["10.0.0.0/24"], &["22"])],
    );
    assert_eq!(deny_priority(vec![reaching.clone()]), Ok(61001));
    // Another VM, another port, a deny collection, ICMP: none of them pushes it.
    let elsewhere = network(
        "other",
        62000,
        "Allow",
        vec![rule("ssh", &["10.9.0.4"], &["22"])],
    );
    let https = network("web", 62001, "Allow", vec![rule("h", &["*"], &["443"])]);
    let denying = network("no", 62002, "Deny", vec![rule("d", &["*"], &["*"])]);
    let mut icmp = rule("ping", &["*"], &["*"]);
    icmp.protocols = vec!["ICMP".into()];
    let pinging = network("ping", 62003, "Allow", vec![icmp]);
    assert_eq!(
        deny_priority(vec![elsewhere, https, denying, pinging]),
        Ok(60001)
    );
    // FQDN destinations and service tags may reach the VM: assumed to.
    let mut fqdn = rule("f", &[], &["20-30"]);
    fqdn.opaque = true;
    assert_eq!(
        deny_priority(vec![network("fq", 63000, "Allow", vec![fqdn])]),
        Ok(63001)
    );
    let tag = network(
        "tag",
        63500,
        "Allow",
        vec![rule("v", &["VirtualNetwork"], &["*"])],
    );
    assert_eq!(deny_priority(vec![tag]), Ok(63501));
    // At the band's end: no room below, blocked with the collection named.
    let last = network("last", 64999, "Allow", vec![rule("s", &["*"], &["22"])]);
    let blocked = deny_priority(vec![last]).unwrap_err();
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].item, BlockedItem::Baseline(ssh()));
    assert!(blocked[0].reason.contains("last"), "{}", blocked[0].reason);
    // A foreign collection on the deny's old slot moves it; the foreign one is untouched.
    let (_, after) = converge(&desired(vec![t.clone()]), &FirewallObserved::default());
    let mut crowded = after.clone();
    crowded
        .collections
        .insert(0, network("squatter", 60001, "Deny", vec![]));
    let p = plan(&desired(vec![t.clone()]), &crowded);
    assert!(p.changed);
    assert_eq!(owned(&p, &deny_name(&t)).unwrap().priority, 60002);
}

#[test]
fn a_foreign_dnat_to_a_governed_port_blocks_that_port_only() {
    let rdp = port(3389, Proto::Tcp);
    let t = target("web", "10.0.0.4", vec![ssh(), rdp], vec![]);
    let forward = nat(
        "published",
        200,
        vec![nat_rule("ssh-in", "198.51.100.9", "2222", "10.0.0.4", "22")],
    );
    let p = plan(&desired(vec![t.clone()]), &observed(vec![forward]));
    assert_eq!(p.blocked.len(), 1);
    assert_eq!(p.blocked[0].item, BlockedItem::Baseline(ssh()));
    assert!(p.blocked[0].reason.contains("published"));
    let deny = owned(&p, &deny_name(&t)).unwrap();
    assert_eq!(
        deny.rules
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["3389tcp"]
    );
}

#[test]
fn mapped_ports_skip_what_others_listen_on_and_stay_put() {
    let g1 = grant("r1", ssh(), "203.0.113.7/32", 600);
    let g2 = grant("r2", ssh(), "203.0.113.8/32", 600);
    let foreign = nat(
        "published",
        200,
        vec![
            nat_rule("a", PUBLIC, "50000-50001", "10.0.9.9", "80"),
            // Another address: its ports are free on ours.
            nat_rule("b", "198.51.100.99", "50002", "10.0.9.9", "80"),
        ],
    );
    let t = target("web", "10.0.0.4", vec![], vec![g2.clone()]);
    let (p, after) = converge(&desired(vec![t]), &observed(vec![foreign]));
    assert_eq!(p.connections[0].mapped_port, 50002);
    // A grant whose rule sorts first arrives: the existing one keeps 50002.
    let t = target("web", "10.0.0.4", vec![], vec![g1, g2]);
    let (p, _) = converge(&desired(vec![t]), &after);
    let ports: Vec<(String, u16)> = p
        .connections
        .iter()
        .map(|c| (c.request.name.clone(), c.mapped_port))
        .collect();
    assert_eq!(
        ports,
        [("r1".to_string(), 50003), ("r2".to_string(), 50002)]
    );
}

#[test]
fn what_cannot_be_granted_is_blocked_with_a_reason() {
    let mut t = target(
        "web",
        "10.0.0.4",
        vec![],
        vec![
            grant("r1", ssh(), "203.0.113.7/32", 600),
            grant("r2", ssh(), "203.0.113.8/32", 600),
            grant("r3", ssh(), "2001:db8::/64", 600),
        ],
    );
    t.settings.mapped_ports = PortRange {
        first: 50000,
        last: 50000,
    };
    let p = plan(&desired(vec![t]), &FirewallObserved::default());
    assert_eq!(p.connections.len(), 1);
    let reasons: Vec<&str> = p.blocked.iter().map(|b| b.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("IPv6")));
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("every mapped port in 50000-50000"))
    );
}

#[test]
fn expired_grants_and_deleted_policies_leave_nothing() {
    let t = target(
        "web",
        "10.0.0.4",
        vec![ssh()],
        vec![grant("r1", ssh(), "203.0.113.7/32", 600)],
    );
    let (_, after) = converge(&desired(vec![t.clone()]), &FirewallObserved::default());
    let mut expired = t.clone();
    expired.grants[0].expires_at = now();
    let (p, after) = converge(&desired(vec![expired]), &after);
    assert!(p.changed && p.connections.is_empty());
    assert_eq!(
        p.owned.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        [deny_name(&t)]
    );
    let mut deleting = t.clone();
    deleting.baseline.clear();
    deleting.grants.clear();
    let (p, after) = converge(&desired(vec![deleting]), &after);
    assert!(p.changed && p.owned.is_empty());
    assert!(after.collections.is_empty());
}

#[test]
fn a_policy_on_hold_keeps_its_baseline_and_closes_grants() {
    let t = target(
        "web",
        "10.0.0.4",
        vec![ssh()],
        vec![grant("r1", ssh(), "203.0.113.7/32", 600)],
    );
    let (p, after) = converge(&desired(vec![t.clone()]), &FirewallObserved::default());
    let held = FirewallTarget {
        baseline: vec![],
        grants: vec![],
        hold: true,
        ..t.clone()
    };
    let (q, _) = converge(&desired(vec![held]), &after);
    assert!(q.changed);
    assert_eq!(
        owned(&q, &deny_name(&t)),
        owned(&p, &deny_name(&t)),
        "the deny stays as it was"
    );
    assert!(
        owned(&q, "portcullis-prod-dnat").is_none(),
        "the grant closed"
    );
}

#[test]
fn targets_not_managed_by_the_plan_keep_their_rules() {
    let a = target(
        "a",
        "10.0.0.4",
        vec![ssh()],
        vec![grant("r1", ssh(), "203.0.113.7/32", 600)],
    );
    let b = target(
        "b",
        "10.0.0.5",
        vec![ssh()],
        vec![grant("r2", ssh(), "203.0.113.7/32", 600)],
    );
    let (both, after) = converge(
        &desired(vec![a.clone(), b.clone()]),
        &FirewallObserved::default(),
    );
    // Planning for `a` alone leaves `b`'s rules, ports and deny collection as they were.
    let (only_a, _) = converge(&desired(vec![a.clone()]), &after);
    assert!(!only_a.changed);
    assert_eq!(only_a.owned, both.owned);
    // `a`'s grant ends: only its rules go.
    let mut a_done = a.clone();
    a_done.grants.clear();
    let p = plan(&desired(vec![a_done]), &after);
    let dnat = owned(&p, "portcullis-prod-dnat").unwrap();
    assert_eq!(dnat.rules.len(), 1);
    assert_eq!(
        dnat.rules[0].translated_address.as_deref(),
        Some("10.0.0.5")
    );
    assert!(owned(&p, &deny_name(&b)).is_some());
}

#[test]
fn drift_in_owned_collections_is_rewritten() {
    let t = target(
        "web",
        "10.0.0.4",
        vec![ssh()],
        vec![grant("r1", ssh(), "203.0.113.7/32", 600)],
    );
    let d = desired(vec![t]);
    let (p, after) = converge(&d, &FirewallObserved::default());
    let mut widened = after.clone();
    for c in &mut widened.collections {
        if c.kind == CollectionKind::Nat {
            c.rules[0].sources = vec!["*".into()];
        }
    }
    let fix = plan(&d, &widened);
    assert!(fix.changed);
    assert_eq!(fix.owned, p.owned);
    let mut extra = after.clone();
    extra.collections[0].exact = false;
    assert!(plan(&d, &extra).changed);
}

#[test]
fn installations_own_only_their_own_names() {
    let a = Names::new("a");
    let other = |name: &str| network(name, 60000, "Deny", vec![]);
    assert!(a.owns(&other("portcullis-a-deny-0123abcd")));
    assert!(a.owns(&other("portcullis-a-allow")));
    assert!(!a.owns(&other("portcullis-a-deny-deny-0123abcd")));
    assert!(!a.owns(&other("portcullis-a-deny-allow")));
    assert!(!a.owns(&nat("portcullis-a-deny-dnat", 100, vec![])));
    assert!(
        !a.owns(&other("portcullis-a-dnat")),
        "a NAT name on a network collection"
    );
    assert_eq!(Names::new("prod-eu").nat(), "portcullis-prod-eu-dnat");
    let odd = Names::new("Prod EU");
    assert_eq!(
        odd.nat(),
        format!("portcullis-{}-dnat", stamp::cluster_id("Prod EU"))
    );
    assert!(odd.nat().len() <= 80);
}

#[test]
fn port_ranges_parse() {
    assert_eq!(
        parse_port_range("50000-50999"),
        Ok(PortRange {
            first: 50000,
            last: 50999
        })
    );
    assert!(parse_port_range("50999-50000").is_err());
    assert!(parse_port_range("0-10").is_err());
    assert!(parse_port_range("1-65536").is_err());
    assert!(parse_port_range("80").is_err());
}

#[test]
fn sweep_removes_expired_orphaned_and_unstamped_rules() {
    let live_t = target(
        "live",
        "10.0.0.4",
        vec![ssh()],
        vec![
            grant("r-live", ssh(), "203.0.113.7/32", 600),
            grant("r-gone", ssh(), "203.0.113.8/32", 600),
            grant("r-late", port(3389, Proto::Tcp), "203.0.113.9/32", 60),
        ],
    );
    let dead_t = FirewallTarget {
        key: key("q", "dead"),
        ..target("dead", "10.0.0.5", vec![ssh()], vec![])
    };
    let (_, mut after) = converge(
        &desired(vec![live_t.clone(), dead_t.clone()]),
        &FirewallObserved::default(),
    );
    after
        .collections
        .push(network("foreign", 100, "Allow", vec![]));
    for c in &mut after.collections {
        if c.kind == CollectionKind::Nat {
            c.rules.push(rule("hand-made", &[PUBLIC], &["50100"]));
        }
    }
    let requests: BTreeSet<String> = ["ns/r-live", "ns/r-late"].map(String::from).into();
    let policies: BTreeSet<String> = ["ns/p"].map(String::from).into();
    let targets: BTreeSet<String> = [target_tag(&live_t.key)].into();
    let later = now() + jiff::SignedDuration::from_secs(120);
    let swept = sweep(
        &after,
        CLUSTER,
        SweepScope {
            now: later,
            requests: &requests,
            policies: &policies,
            targets: &targets,
        },
    );
    // r-late expired (NAT + allow), r-gone's owner is gone (NAT + allow), the hand-made
    // rule carries no stamp, the dead target's deny collection goes (its policy is gone).
    assert_eq!((swept.expired, swept.orphaned), (2, 4));
    let left: Vec<(String, Vec<String>)> = swept
        .owned
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.rules.iter().map(|r| r.name.clone()).collect(),
            )
        })
        .collect();
    let live_rule = grant_rule_name(&target_tag(&live_t.key), &live_t.grants[0]);
    assert_eq!(
        left,
        [
            ("portcullis-prod-dnat".to_string(), vec![live_rule.clone()]),
            ("portcullis-prod-allow".to_string(), vec![live_rule]),
            (deny_name(&live_t), vec!["22tcp".to_string()]),
        ]
    );
    assert!(swept.changed());
}

// ----- properties -----

fn public_ip() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        Just(Ipv4Addr::new(198, 51, 100, 4)),
        Just(Ipv4Addr::new(198, 51, 100, 5))
    ]
}

fn any_port() -> impl Strategy<Value = PortSpec> {
    prop_oneof![
        Just(port(22, Proto::Tcp)),
        Just(port(3389, Proto::Tcp)),
        Just(port(5986, Proto::Any)),
    ]
}

fn source() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        Just("203.0.113.7/32"),
        Just("203.0.113.8/32"),
        Just("198.18.0.0/16"),
        Just("2001:db8::/64"),
    ]
    .prop_map(|s| s.parse().unwrap())
}

/// A target and a pool of grants (each with whether it was there before and is now).
fn world_target(i: usize) -> impl Strategy<Value = (FirewallTarget, Vec<(Grant, bool, bool)>)> {
    (
        public_ip(),
        1u16..12,
        prop_oneof![Just(60000u16), Just(60010u16)],
        5u16..40,
        prop::collection::btree_set(any_port(), 0..3),
        prop::collection::vec(
            (
                0..6usize,
                any_port(),
                source(),
                -100i64..3600,
                any::<bool>(),
                any::<bool>(),
            ),
            0..6,
        ),
    )
        .prop_map(move |(public_ip, span, first, len, baseline, pool)| {
            let key = key(&format!("p{}", i % 2), &format!("t{i}"));
            let mut seen = BTreeSet::new();
            let grants = pool
                .into_iter()
                .filter(|(_, port, source, ..)| seen.insert((*port, *source)))
                .map(|(r, port, source, secs, before, now_)| {
                    let g = Grant {
                        request: ObjectKey::new("ns", format!("r{r}")),
                        port,
                        source,
                        expires_at: now() + jiff::SignedDuration::from_secs(secs),
                    };
                    (g, before, now_)
                })
                .collect();
            let t = FirewallTarget {
                key,
                settings: FirewallSettings {
                    id: "fw".into(),
                    public_ip,
                    mapped_ports: PortRange {
                        first: 50000,
                        last: 50000 + span,
                    },
                    band: Band {
                        first,
                        last: first + len,
                    },
                },
                private_ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, i as u8, 4))],
                baseline: baseline.into_iter().collect(),
                hold: false,
                grants: Vec::new(),
            };
            (t, grants)
        })
}

fn foreign_rule() -> impl Strategy<Value = FwRule> {
    (
        prop::sample::select(vec![
            "*",
            "10.0.0.4",
            "10.0.1.0/24",
            "198.51.100.4",
            "198.51.100.5",
            "VirtualNetwork",
        ]),
        prop::sample::select(vec!["22", "3389", "50000-50003", "*", "50005", "5986"]),
        prop::option::of(prop::sample::select(vec!["10.0.0.4", "10.0.2.4"])),
        prop::sample::select(vec!["TCP", "UDP", "Any", "ICMP"]),
    )
        .prop_map(|(dest, ports, to, proto)| FwRule {
            protocols: vec![proto.into()],
            translated_address: to.map(String::from),
            translated_port: to.map(|_| "22".to_string()),
            ..rule("f", &[dest], &[ports])
        })
}

fn foreign() -> impl Strategy<Value = Vec<Collection>> {
    prop::collection::vec(
        (
            any::<bool>(),
            prop::sample::select(vec![
                200u16, 59999, 60000, 60001, 60005, 60020, 64999, 65000,
            ]),
            any::<bool>(),
            prop::collection::vec(foreign_rule(), 0..3),
        ),
        0..6,
    )
    .prop_map(|items| {
        let mut seen = BTreeSet::new();
        items
            .into_iter()
            .enumerate()
            .filter(|(_, (is_nat, priority, ..))| seen.insert((*is_nat, *priority)))
            .map(|(i, (is_nat, priority, allow, rules))| {
                if is_nat {
                    nat(&format!("f{i}"), priority, rules)
                } else {
                    let action = if allow { "Allow" } else { "Deny" };
                    network(&format!("f{i}"), priority, action, rules)
                }
            })
            .collect()
    })
}

type World = (FirewallDesired, FirewallDesired, FirewallObserved);

/// A previous and a current desired state over the same targets, and the foreign
/// collections of the firewall.
fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(0..3usize, 1..4).prop_flat_map(|ids| {
            let n = ids.len();
            (0..n).map(world_target).collect::<Vec<_>>()
        }),
        foreign(),
    )
        .prop_map(|(targets, foreign)| {
            let pick = |before: bool| {
                let targets = targets
                    .iter()
                    .map(|(t, pool)| FirewallTarget {
                        grants: pool
                            .iter()
                            .filter(|(_, b, n)| if before { *b } else { *n })
                            .map(|(g, ..)| g.clone())
                            .collect(),
                        ..t.clone()
                    })
                    .collect();
                desired(targets)
            };
            (pick(true), pick(false), observed(foreign))
        })
}

fn our_nat(o: &FirewallObserved) -> Vec<&FwRule> {
    o.collections
        .iter()
        .filter(|c| c.kind == CollectionKind::Nat && names().owns(c))
        .flat_map(|c| &c.rules)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// Applying a plan and planning again changes nothing; foreign collections never
    /// change; priorities stay unique per kind.
    #[test]
    fn plans_converge_and_leave_foreign_collections_alone((before, now_, fw) in world()) {
        let p0 = plan(&before, &fw);
        let o1 = apply(&fw, CLUSTER, &p0.owned);
        let p1 = plan(&now_, &o1);
        let o2 = apply(&o1, CLUSTER, &p1.owned);
        let p2 = plan(&now_, &o2);
        prop_assert!(!p2.changed, "{:#?}", p2);
        prop_assert_eq!(&p2.owned, &p1.owned);
        prop_assert_eq!(&p2.connections, &p1.connections);
        let foreign = |o: &FirewallObserved| -> Vec<Collection> {
            o.collections.iter().filter(|c| !names().owns(c)).cloned().collect()
        };
        prop_assert_eq!(foreign(&o2), fw.collections.clone());
        for kind in [CollectionKind::Nat, CollectionKind::Network] {
            let mut seen = BTreeSet::new();
            for c in o2.collections.iter().filter(|c| c.kind == kind) {
                prop_assert!(seen.insert(c.priority), "priority {} twice", c.priority);
            }
        }
    }

    /// Every live grant has exactly one DNAT rule (or is blocked); expired ones none; no
    /// mapped port is held twice or by a foreign rule; an existing rule keeps its port.
    #[test]
    fn grants_get_one_rule_and_their_own_port((before, now_, fw) in world()) {
        let p0 = plan(&before, &fw);
        let o1 = apply(&fw, CLUSTER, &p0.owned);
        let p1 = plan(&now_, &o1);
        let o2 = apply(&o1, CLUSTER, &p1.owned);
        let rules = our_nat(&o2);
        for t in &now_.targets {
            for g in &t.grants {
                let name = grant_rule_name(&target_tag(&t.key), g);
                let n = rules.iter().filter(|r| r.name == name).count();
                let blocked = p1.blocked.iter().any(|b| b.target == t.key
                    && b.item == BlockedItem::Grant { request: g.request.clone(), port: g.port });
                if g.expires_at <= now() {
                    prop_assert_eq!(n, 0, "expired grant {} has a rule", name);
                } else {
                    prop_assert!(n == 1 || (n == 0 && blocked), "grant {}: {} rules", name, n);
                }
            }
        }
        let mut listening = BTreeSet::new();
        for r in &rules {
            prop_assert!(listening.insert((r.destinations.clone(), r.ports.clone())), "{:?} twice", r.ports);
        }
        for c in fw.collections.iter().filter(|c| c.kind == CollectionKind::Nat) {
            for f in &c.rules {
                for r in &rules {
                    let address: IpAddr = r.destinations[0].parse().unwrap();
                    let mapped: u16 = r.ports[0].parse().unwrap();
                    let held = f.listens_on(address).iter().any(|(a, b)| *a <= mapped && mapped <= *b);
                    prop_assert!(!held, "{} also listened on by foreign {}", mapped, f.name);
                }
            }
        }
        for c0 in &p0.connections {
            if let Some(c1) = p1.connections.iter().find(|c| c.target == c0.target && c.port == c0.port && c.source == c0.source) {
                prop_assert_eq!(c0.mapped_port, c1.mapped_port);
            }
        }
    }

    /// Each deny collection lies in its band, below the allow collection and below every
    /// foreign allow collection that reaches the VM on one of its ports.
    #[test]
    fn denies_keep_foreign_precedence((_before, now_, fw) in world()) {
        let p = plan(&now_, &fw);
        let allow = owned(&p, &names().allow()).map(|c| c.priority);
        for t in &now_.targets {
            let Some(deny) = owned(&p, &deny_name(t)) else { continue };
            let band = t.settings.band;
            prop_assert!(band.first <= deny.priority && deny.priority <= band.last);
            prop_assert!(allow.is_none_or(|a| a < deny.priority));
            for rule in &deny.rules {
                let port = t.baseline.iter().find(|p| deny_rule_name(**p) == rule.name).copied().unwrap();
                for f in fw.collections.iter().filter(|c| c.kind == CollectionKind::Network && c.action == "Allow") {
                    if f.rules.iter().any(|r| t.private_ips.iter().any(|ip| r.reaches(*ip, port))) {
                        prop_assert!(f.priority < deny.priority, "{} at {} reaches {}", f.name, f.priority, port);
                    }
                }
            }
            for port in &t.baseline {
                let placed = deny.rules.iter().any(|r| r.name == deny_rule_name(*port));
                let blocked = p.blocked.iter().any(|b| b.target == t.key && b.item == BlockedItem::Baseline(*port));
                prop_assert!(placed != blocked);
            }
        }
    }
}
