//! `plan()`: the changes that take one target from what was observed to what is desired.
//!
//! Only owned rules are created, restamped or deleted. The one exception is the AWS
//! baseline, which revokes foreign rules that open a governed port; those are recorded
//! (by the caller, before the revocation) and restored when the port is no longer
//! governed. Deletes come before creates; a converged target plans nothing.

use std::collections::BTreeSet;

use super::desired::TargetDesired;
use super::model::*;

/// How a cloud keeps governed ports closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaselineMode {
    /// AWS security groups allow only: revoke the foreign rules that open the port.
    RevokeCovering,
    /// Azure NSGs: an owned deny rule per port.
    DenyRule,
}

impl BaselineMode {
    /// The mode for a target's cloud.
    pub fn of(locator: &Locator) -> Self {
        match locator {
            Locator::Aws { .. } => BaselineMode::RevokeCovering,
            Locator::Azure { .. } => BaselineMode::DenyRule,
        }
    }
}

/// One change to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Remove an owned rule: expired, revoked, superseded, orphaned or a duplicate.
    DeleteOwned(OwnedRule),
    /// Revoke a foreign rule that opens a governed port (AWS). Record it first.
    RevokeForeign(ForeignRule),
    /// Rewrite an owned rule's stamp in place (a newer request took the rule over).
    Restamp {
        /// The rule.
        rule: OwnedRule,
        /// The grant it now carries.
        grant: Grant,
    },
    /// Re-add a recorded foreign rule whose port is no longer governed (AWS).
    RestoreForeign(ForeignRuleSpec),
    /// Forget a recorded rule that exists again.
    Unrecord(ForeignRuleSpec),
    /// Put an owned deny rule for a governed port in place (Azure), at `priority`,
    /// replacing the owned deny for that port that is there (in place: same name).
    PutDeny {
        /// The NSG.
        location: String,
        /// The governed port.
        port: PortSpec,
        /// Where in the deny band: below every foreign rule that covers the port.
        priority: u16,
        /// The owned deny it replaces, if any.
        replaces: Option<OwnedRule>,
    },
    /// Put an owned allow rule in place for a grant.
    CreateGrant {
        /// Where (AWS: ENI id; Azure: NSG id).
        location: String,
        /// The grant.
        grant: Grant,
        /// The NSG priority (Azure): a free slot in the allow band.
        priority: Option<u16>,
    },
}

/// A governed port or grant that cannot be placed (Azure): reported as a conflict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The NSG.
    pub location: String,
    /// The port.
    pub port: PortSpec,
    /// Why, for people.
    pub reason: String,
}

impl Change {
    fn order(&self) -> u8 {
        match self {
            Change::DeleteOwned(_) => 0,
            Change::RevokeForeign(_) => 1,
            Change::Restamp { .. } => 2,
            Change::Unrecord(_) => 3,
            Change::RestoreForeign(_) => 4,
            Change::PutDeny { .. } => 5,
            Change::CreateGrant { .. } => 6,
        }
    }

    /// Whether the change writes to the cloud.
    pub fn writes(&self) -> bool {
        !matches!(self, Change::Unrecord(_))
    }
}

/// The changes for one target, deletes first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The changes, in the order to make them.
    pub changes: Vec<Change>,
    /// What cannot be placed (Azure priorities): nothing is planned for these.
    pub blocked: Vec<Blocked>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Plans the changes for one target. `recorded` are the foreign rules the baseline
/// revoked earlier (AWS), as recorded in the policy's status.
pub fn plan(desired: &TargetDesired, observed: &Observed, recorded: &[ForeignRuleSpec]) -> Plan {
    let mode = BaselineMode::of(&desired.locator);
    let bands = desired.bands;
    let mut changes = Vec::new();
    let mut blocked = Vec::new();
    let locations: BTreeSet<&str> = observed.locations.iter().map(String::as_str).collect();
    let in_band = |p: Option<u16>, b: Band| p.is_some_and(|p| b.first <= p && p <= b.last);

    // Grants: one owned allow rule per (location, rule key).
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    let mut to_create: Vec<(&String, &Grant)> = Vec::new();
    for location in &observed.locations {
        for grant in &desired.grants {
            let key = grant.rule_key();
            let want = grant.stamp();
            let existing = observed.owned.iter().find(|r| {
                r.location == *location
                    && r.access == Access::Allow
                    && r.port == key.port
                    && r.source == Some(key.source)
                    // An Azure allow rule outside the allow band is put back in it.
                    && (mode == BaselineMode::RevokeCovering || in_band(r.priority, bands.allow))
            });
            match existing {
                None => to_create.push((location, grant)),
                Some(rule) => {
                    kept.insert(&rule.cloud_id);
                    if rule.stamp != want {
                        changes.push(Change::Restamp {
                            rule: rule.clone(),
                            grant: grant.clone(),
                        });
                    }
                }
            }
        }
    }

    // Azure baseline: one owned deny per governed port and NSG, below every foreign rule
    // that covers the port, inside the deny band.
    let mut denies: Vec<(&String, PortSpec, u16, Option<&OwnedRule>)> = Vec::new();
    if mode == BaselineMode::DenyRule {
        let want_stamp = Stamp::baseline(&desired.key.policy);
        let baseline: BTreeSet<&PortSpec> = desired.baseline.iter().collect();
        for location in &observed.locations {
            for port in &baseline {
                let port = *port;
                let floor = deny_floor(*port, location, &observed.foreign).max(bands.deny.first);
                let existing = observed.owned.iter().find(|r| {
                    r.location == *location && r.access == Access::Deny && r.port == *port
                });
                let good = existing.is_some_and(|r| {
                    r.priority
                        .is_some_and(|p| floor <= p && p <= bands.deny.last)
                        && r.stamp == want_stamp
                });
                match existing {
                    Some(r) if good => {
                        kept.insert(&r.cloud_id);
                    }
                    Some(r) => {
                        kept.insert(&r.cloud_id); // replaced in place, not deleted
                        denies.push((location, *port, floor, Some(r)));
                    }
                    None => denies.push((location, *port, floor, None)),
                }
            }
        }
    }

    for rule in &observed.owned {
        let keep =
            kept.contains(rule.cloud_id.as_str()) && locations.contains(rule.location.as_str());
        if !keep {
            changes.push(Change::DeleteOwned(rule.clone()));
        }
    }

    // Priorities in use after the deletes, per NSG (Azure).
    let mut used: std::collections::BTreeMap<&str, BTreeSet<u16>> =
        std::collections::BTreeMap::new();
    for f in &observed.foreign {
        if let Some(p) = f.priority {
            used.entry(f.spec.container.as_str()).or_default().insert(p);
        }
    }
    for (location, p) in &observed.reserved {
        used.entry(location.as_str()).or_default().insert(*p);
    }
    for r in observed
        .owned
        .iter()
        .filter(|r| kept.contains(r.cloud_id.as_str()))
    {
        if let Some(p) = r.priority {
            used.entry(r.location.as_str()).or_default().insert(p);
        }
    }
    for (location, port, floor, replaces) in denies {
        let slots = used.entry(location.as_str()).or_default();
        if let Some(old) = replaces.and_then(|r| r.priority) {
            slots.remove(&old);
        }
        match free_slot(floor, bands.deny.last, slots) {
            Some(priority) => {
                slots.insert(priority);
                changes.push(Change::PutDeny {
                    location: location.clone(),
                    port,
                    priority,
                    replaces: replaces.cloned(),
                });
            }
            None => blocked.push(Blocked {
                location: location.clone(),
                port,
                reason: format!(
                    "no free priority for the deny rule of port {port} in {}-{}: foreign rules that cover the port sit at {} or below",
                    bands.deny.first,
                    bands.deny.last,
                    floor.saturating_sub(1)
                ),
            }),
        }
    }
    for (location, grant) in to_create {
        let priority = match mode {
            BaselineMode::RevokeCovering => None,
            BaselineMode::DenyRule => {
                let slots = used.entry(location.as_str()).or_default();
                match free_slot(bands.allow.first, bands.allow.last, slots) {
                    Some(p) => {
                        slots.insert(p);
                        Some(p)
                    }
                    None => {
                        blocked.push(Blocked {
                            location: location.clone(),
                            port: grant.port,
                            reason: format!(
                                "the allow band {}-{} is full",
                                bands.allow.first, bands.allow.last
                            ),
                        });
                        continue;
                    }
                }
            }
        };
        changes.push(Change::CreateGrant {
            location: location.clone(),
            grant: grant.clone(),
            priority,
        });
    }

    if mode == BaselineMode::RevokeCovering {
        let governed = |spec: &ForeignRuleSpec| desired.baseline.iter().any(|p| spec.covers(*p));
        for rule in &observed.foreign {
            if rule.access == Access::Allow && governed(&rule.spec) {
                changes.push(Change::RevokeForeign(rule.clone()));
            }
        }
        let present: BTreeSet<&ForeignRuleSpec> =
            observed.foreign.iter().map(|r| &r.spec).collect();
        let recorded: BTreeSet<&ForeignRuleSpec> = recorded.iter().collect();
        for spec in recorded {
            if governed(spec) {
                continue;
            }
            changes.push(if present.contains(spec) {
                Change::Unrecord(spec.clone())
            } else {
                Change::RestoreForeign(spec.clone())
            });
        }
    }

    changes.sort_by_key(Change::order);
    Plan { changes, blocked }
}

/// The highest-precedence priority an owned deny for `port` may take in NSG `location`:
/// one below the lowest-precedence foreign rule that covers the port, so foreign rules
/// keep deciding the traffic they decided before.
pub fn deny_floor(port: PortSpec, location: &str, foreign: &[ForeignRule]) -> u16 {
    foreign
        .iter()
        .filter(|f| f.spec.container == location && f.spec.covers(port))
        .filter_map(|f| f.priority)
        .max()
        .map_or(0, |p| p.saturating_add(1))
}

/// The first priority in `from..=to` that `used` does not hold.
pub fn free_slot(from: u16, to: u16, used: &BTreeSet<u16>) -> Option<u16> {
    (from..=to).find(|p| !used.contains(p))
}

/// Applies a plan to an observed state and a record, as a perfect cloud would: the model
/// that property tests and the fake backend check plans against.
pub fn simulate(
    policy: &ObjectKey,
    observed: &Observed,
    recorded: &[ForeignRuleSpec],
    plan: &Plan,
    mut next_id: impl FnMut() -> String,
) -> (Observed, Vec<ForeignRuleSpec>) {
    let mut obs = observed.clone();
    let mut rec: BTreeSet<ForeignRuleSpec> = recorded.iter().cloned().collect();
    for change in &plan.changes {
        match change {
            Change::DeleteOwned(rule) => obs.owned.retain(|r| r.cloud_id != rule.cloud_id),
            Change::RevokeForeign(rule) => {
                rec.insert(rule.spec.clone());
                obs.foreign.retain(|r| r.cloud_id != rule.cloud_id);
            }
            Change::Restamp { rule, grant } => {
                for r in obs.owned.iter_mut().filter(|r| r.cloud_id == rule.cloud_id) {
                    r.stamp = grant.stamp();
                }
            }
            Change::Unrecord(spec) => {
                rec.remove(spec);
            }
            Change::RestoreForeign(spec) => {
                rec.remove(spec);
                obs.foreign.push(ForeignRule {
                    cloud_id: next_id(),
                    spec: spec.clone(),
                    access: Access::Allow,
                    priority: None,
                });
            }
            Change::PutDeny {
                location,
                port,
                priority,
                replaces,
            } => {
                if let Some(r) = replaces {
                    obs.owned.retain(|o| o.cloud_id != r.cloud_id);
                }
                obs.owned.push(OwnedRule {
                    location: location.clone(),
                    cloud_id: next_id(),
                    access: Access::Deny,
                    port: *port,
                    source: None,
                    stamp: Stamp::baseline(policy),
                    priority: Some(*priority),
                });
            }
            Change::CreateGrant {
                location,
                grant,
                priority,
            } => obs.owned.push(OwnedRule {
                location: location.clone(),
                cloud_id: next_id(),
                access: Access::Allow,
                port: grant.port,
                source: Some(grant.source),
                stamp: grant.stamp(),
                priority: *priority,
            }),
        }
    }
    (obs, rec.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::desired::desired;
    use ipnet::IpNet;
    use jiff::Timestamp;
    use proptest::prelude::*;
    use std::num::NonZeroU16;
    use std::time::Duration;

    const LOCATIONS: [&str; 3] = ["eni-a", "eni-b", "eni-gone"];

    fn port_spec() -> impl Strategy<Value = PortSpec> {
        (
            prop::sample::select(vec![22u16, 3389, 5985]),
            prop::sample::select(vec![Proto::Tcp, Proto::Udp, Proto::Any]),
        )
            .prop_map(|(p, protocol)| PortSpec {
                port: NonZeroU16::new(p).unwrap(),
                protocol,
            })
    }

    fn source() -> impl Strategy<Value = IpNet> {
        prop::sample::select(vec![
            "203.0.113.7/32",
            "203.0.113.8/32",
            "198.51.100.0/24",
            "2001:db8::/64",
        ])
        .prop_map(|s| s.parse().unwrap())
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn grant() -> impl Strategy<Value = Grant> {
        (
            prop::sample::select(vec!["r1", "r2", "r3"]),
            port_spec(),
            source(),
            1i64..1000,
        )
            .prop_map(|(r, port, source, t)| Grant {
                request: ObjectKey::new("ns", r),
                port,
                source,
                expires_at: at(t),
            })
    }

    fn owned() -> impl Strategy<Value = OwnedRule> {
        (
            prop::sample::select(LOCATIONS.to_vec()),
            any::<bool>(),
            grant(),
            0u32..1000,
        )
            .prop_map(|(loc, allow, g, id)| OwnedRule {
                location: loc.to_string(),
                cloud_id: format!("owned-{id}"),
                access: if allow { Access::Allow } else { Access::Deny },
                port: g.port,
                source: allow.then_some(g.source),
                stamp: g.stamp(),
                priority: None,
            })
    }

    fn foreign_spec() -> impl Strategy<Value = ForeignRuleSpec> {
        (
            prop::sample::select(vec!["sg-1", "sg-2"]),
            prop::sample::select(vec!["tcp", "udp", "-1"]),
            prop::option::of(
                (1u16..4000, 0u16..3000).prop_map(|(from, len)| (from, from.saturating_add(len))),
            ),
            prop::sample::select(vec!["0.0.0.0/0", "10.0.0.0/8", "::/0"]),
        )
            .prop_map(|(c, proto, ports, src)| ForeignRuleSpec {
                container: c.into(),
                protocol: proto.into(),
                ports,
                source: ForeignSource::Cidr(src.into()),
                description: None,
            })
    }

    fn foreign() -> impl Strategy<Value = ForeignRule> {
        (foreign_spec(), 0u32..1000).prop_map(|(spec, id)| ForeignRule {
            cloud_id: format!("foreign-{id}"),
            spec,
            access: Access::Allow,
            priority: None,
        })
    }

    fn target(aws: bool) -> impl Strategy<Value = TargetDesired> {
        (prop::collection::vec(port_spec(), 0..3), prop::collection::vec(grant(), 0..6)).prop_map(move |(baseline, grants)| {
            // desired() gives one grant per rule key; keep that invariant here.
            let mut seen = BTreeSet::new();
            let grants = grants.into_iter().filter(|g| seen.insert(g.rule_key())).collect();
            TargetDesired {
                key: TargetKey { policy: ObjectKey::new("ns", "p"), target: "web".into() },
                locator: if aws {
                    Locator::Aws { region: "eu-west-1".into(), instance_id: "i-01234567".into() }
                } else {
                    Locator::Azure { vm_id: "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/v".into(), firewall: None }
                },
                bands: Bands::default(),
                baseline,
                grants,
            }
        })
    }

    fn observed() -> impl Strategy<Value = Observed> {
        (
            prop::sample::subsequence(vec!["eni-a", "eni-b"], 0..=2),
            prop::collection::vec(owned(), 0..8),
            prop::collection::vec(foreign(), 0..6),
        )
            .prop_map(|(locs, mut owned, mut foreign)| {
                // Cloud ids are unique.
                let mut ids = BTreeSet::new();
                owned.retain(|r| ids.insert(r.cloud_id.clone()));
                foreign.retain(|r| ids.insert(r.cloud_id.clone()));
                Observed {
                    locations: locs.into_iter().map(String::from).collect(),
                    owned,
                    foreign,
                    reserved: vec![],
                }
            })
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("new-{n}")
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Applying a plan and planning again gives an empty plan.
        #[test]
        fn a_plan_converges_in_one_step(
            aws in any::<bool>(), t in target(true), obs in observed(),
            recorded in prop::collection::vec(foreign_spec(), 0..4),
        ) {
            let mut t = t;
            if !aws {
                t.locator = Locator::Azure { vm_id: "vm".into(), firewall: None };
            }
            let p = plan(&t, &obs, &recorded);
            let (after, rec) = simulate(&t.key.policy, &obs, &recorded, &p, ids());
            let again = plan(&t, &after, &rec);
            prop_assert!(again.is_empty(), "second plan: {:?}", again);
        }

        /// Only owned rules are changed; a foreign rule is touched only by the AWS baseline,
        /// and only when it opens a governed port.
        #[test]
        fn foreign_rules_are_left_alone(aws in any::<bool>(), t in target(true), obs in observed(),
            recorded in prop::collection::vec(foreign_spec(), 0..4)) {
            let mut t = t;
            if !aws {
                t.locator = Locator::Azure { vm_id: "vm".into(), firewall: None };
            }
            for change in plan(&t, &obs, &recorded).changes {
                match change {
                    Change::DeleteOwned(r) | Change::Restamp { rule: r, .. } => {
                        prop_assert!(obs.owned.contains(&r));
                        prop_assert!(!obs.foreign.iter().any(|f| f.cloud_id == r.cloud_id));
                    }
                    Change::RevokeForeign(f) => {
                        prop_assert!(aws);
                        prop_assert!(obs.foreign.contains(&f));
                        prop_assert!(t.baseline.iter().any(|p| f.spec.covers(*p)));
                    }
                    Change::RestoreForeign(s) | Change::Unrecord(s) => {
                        prop_assert!(aws);
                        prop_assert!(recorded.contains(&s));
                        prop_assert!(!t.baseline.iter().any(|p| s.covers(*p)));
                    }
                    Change::CreateGrant { location, grant, priority } => {
                        prop_assert!(obs.locations.contains(&location));
                        prop_assert!(t.grants.contains(&grant));
                        prop_assert_eq!(priority.is_some(), !aws);
                    }
                    Change::PutDeny { location, port, replaces, .. } => {
                        prop_assert!(!aws);
                        prop_assert!(obs.locations.contains(&location));
                        prop_assert!(t.baseline.contains(&port));
                        if let Some(r) = replaces {
                            prop_assert!(obs.owned.contains(&r));
                        }
                    }
                }
            }
        }

        /// Deletes come before creates.
        #[test]
        fn deletes_come_first(t in target(true), obs in observed()) {
            let p = plan(&t, &obs, &[]);
            let first_create = p.changes.iter().position(|c| matches!(c, Change::CreateGrant { .. } | Change::RestoreForeign(_) | Change::PutDeny { .. }));
            let last_delete = p.changes.iter().rposition(|c| matches!(c, Change::DeleteOwned(_) | Change::RevokeForeign(_)));
            if let (Some(c), Some(d)) = (first_create, last_delete) {
                prop_assert!(d < c);
            }
        }

        /// An expired grant never appears in `desired`.
        #[test]
        fn expired_grants_are_never_desired(
            reqs in prop::collection::vec((0i64..1000, prop::option::of(0i64..1000), 10u64..500, source(), any::<bool>()), 0..8),
            now in 0i64..1500,
        ) {
            let policy = Policy {
                key: ObjectKey::new("ns", "p"),
                targets: vec![PolicyTarget { name: "web".into(), locator: Locator::Aws { region: "r".into(), instance_id: "i".into() } }],
                ports: vec![PolicyPort {
                    spec: PortSpec { port: NonZeroU16::new(22).unwrap(), protocol: Proto::Tcp },
                    allowed: vec![AllowedSource::Any],
                    max_duration: Duration::from_secs(3600),
                }],
                bands: Bands::default(),
                deleting: false,
            };
            let requests: Vec<Request> = reqs.iter().enumerate().map(|(i, (created, granted, secs, src, revoked))| Request {
                key: ObjectKey::new("ns", format!("r{i}")),
                policy: "p".into(),
                target: "web".into(),
                ports: vec![RequestedPort { spec: policy.ports[0].spec, source: *src, duration: Duration::from_secs(*secs) }],
                created: at(*created),
                revoked: *revoked,
                granted_at: granted.map(at),
                recorded: vec![None],
            }).collect();
            let d = desired(std::slice::from_ref(&policy), &requests, at(now));
            for t in d.targets.values() {
                for g in &t.grants {
                    prop_assert!(g.expires_at > at(now), "expired grant desired: {:?}", g);
                    let r = requests.iter().find(|r| r.key == g.request).unwrap();
                    prop_assert!(!r.revoked);
                }
            }
            if let Some(next) = d.next_expiry {
                prop_assert!(next > at(now));
            }
        }
    }

    fn azure_observed() -> impl Strategy<Value = Observed> {
        (
            observed(),
            prop::collection::vec(prop::option::of(100u16..=4096), 16),
            prop::collection::vec(prop::option::of(3000u16..=4096), 16),
        )
            .prop_map(|(mut o, fp, op)| {
                for (i, f) in o.foreign.iter_mut().enumerate() {
                    f.priority = fp[i % fp.len()];
                    f.spec.container = if i % 2 == 0 {
                        "eni-a".into()
                    } else {
                        "eni-b".into()
                    };
                }
                for (i, r) in o.owned.iter_mut().enumerate() {
                    r.priority = op[i % op.len()];
                }
                o
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Azure: after one plan, every governed port has exactly one deny per NSG, inside
        /// the deny band and below every foreign rule that covers the port (or is reported
        /// blocked); grants sit in the allow band; no two rules share a priority.
        #[test]
        fn azure_priorities_respect_foreign_precedence(t in target(false), obs in azure_observed()) {
            let mut t = t;
            t.locator = Locator::Azure { vm_id: "vm".into(), firewall: None };
            let p = plan(&t, &obs, &[]);
            let (after, _) = simulate(&t.key.policy, &obs, &[], &p, ids());
            let bands = t.bands;
            for location in &after.locations {
                let mut seen = BTreeSet::new();
                for f in after.foreign.iter().filter(|f| &f.spec.container == location) {
                    if let Some(pr) = f.priority { seen.insert(pr); }
                }
                for r in after.owned.iter().filter(|r| &r.location == location) {
                    let pr = r.priority.expect("owned Azure rules have priorities");
                    prop_assert!(seen.insert(pr), "priority {} used twice in {}", pr, location);
                    match r.access {
                        Access::Deny => {
                            prop_assert!(bands.deny.first <= pr && pr <= bands.deny.last);
                            prop_assert!(pr >= deny_floor(r.port, location, &after.foreign));
                        }
                        Access::Allow => prop_assert!(bands.allow.first <= pr && pr <= bands.allow.last),
                    }
                }
                for port in &t.baseline {
                    let n = after.owned.iter().filter(|r| &r.location == location && r.access == Access::Deny && r.port == *port).count();
                    let is_blocked = p.blocked.iter().any(|b| &b.location == location && b.port == *port);
                    prop_assert!(n == 1 || (n == 0 && is_blocked), "port {} in {}: {} denies", port, location, n);
                }
            }
        }
    }

    #[test]
    fn azure_deny_goes_below_foreign_rules_that_cover_the_port() {
        let ssh = PortSpec {
            port: NonZeroU16::new(22).unwrap(),
            protocol: Proto::Tcp,
        };
        let foreign = |prio: u16, ports: Option<(u16, u16)>| ForeignRule {
            cloud_id: format!("f{prio}"),
            spec: ForeignRuleSpec {
                container: "nsg".into(),
                protocol: "Tcp".into(),
                ports,
                source: ForeignSource::Tag("*".into()),
                description: None,
            },
            access: Access::Allow,
            priority: Some(prio),
        };
        let t = TargetDesired {
            key: TargetKey {
                policy: ObjectKey::new("ns", "p"),
                target: "web".into(),
            },
            locator: Locator::Azure {
                vm_id: "vm".into(),
                firewall: None,
            },
            bands: Bands::default(),
            baseline: vec![ssh],
            grants: vec![],
        };
        let deny_at = |foreign: Vec<ForeignRule>| {
            let obs = Observed {
                locations: vec!["nsg".into()],
                owned: vec![],
                foreign,
                // Another target's deny in the same NSG holds 3900.
                reserved: vec![("nsg".into(), 3900)],
            };
            let p = plan(&t, &obs, &[]);
            match p.changes.as_slice() {
                [Change::PutDeny { priority, .. }] => Ok(*priority),
                _ => Err(p.blocked),
            }
        };
        // None covers 22: the top of the band (3900 is another target's deny: next slot).
        assert_eq!(deny_at(vec![foreign(300, Some((443, 443)))]), Ok(3901));
        // A foreign allow for 22 at 300 keeps winning: the deny still goes to the band's top.
        assert_eq!(deny_at(vec![foreign(300, Some((22, 22)))]), Ok(3901));
        // A foreign rule covering 22 inside the band pushes the deny below it.
        assert_eq!(
            deny_at(vec![
                foreign(4000, Some((20, 30))),
                foreign(4001, Some((443, 443)))
            ]),
            Ok(4002)
        );
        // No room below it: blocked, with a reason.
        let blocked = deny_at(vec![foreign(4096, None)]).unwrap_err();
        assert_eq!(blocked.len(), 1);
        assert!(blocked[0].reason.contains("no free priority"));
    }

    #[test]
    fn aws_baseline_revokes_records_and_restores() {
        let ssh = PortSpec {
            port: NonZeroU16::new(22).unwrap(),
            protocol: Proto::Tcp,
        };
        let rule = |id: &str, from, to| ForeignRule {
            cloud_id: id.into(),
            spec: ForeignRuleSpec {
                container: "sg-1".into(),
                protocol: "tcp".into(),
                ports: Some((from, to)),
                source: ForeignSource::Cidr("0.0.0.0/0".into()),
                description: None,
            },
            access: Access::Allow,
            priority: None,
        };
        let mut t = TargetDesired {
            key: TargetKey {
                policy: ObjectKey::new("ns", "p"),
                target: "web".into(),
            },
            locator: Locator::Aws {
                region: "r".into(),
                instance_id: "i".into(),
            },
            bands: Bands::default(),
            baseline: vec![ssh],
            grants: vec![],
        };
        let obs = Observed {
            locations: vec!["eni-a".into()],
            owned: vec![],
            foreign: vec![rule("sgr-22", 22, 22), rule("sgr-443", 443, 443)],
            reserved: vec![],
        };
        let p = plan(&t, &obs, &[]);
        assert_eq!(
            p.changes,
            vec![Change::RevokeForeign(rule("sgr-22", 22, 22))]
        );
        let (after, rec) = simulate(&t.key.policy, &obs, &[], &p, ids());
        assert_eq!(rec, vec![rule("x", 22, 22).spec]);
        // The policy goes away: the recorded rule comes back exactly.
        t.baseline.clear();
        let p = plan(&t, &after, &rec);
        assert_eq!(
            p.changes,
            vec![Change::RestoreForeign(rule("x", 22, 22).spec)]
        );
        let _ = Duration::ZERO;
    }
}
