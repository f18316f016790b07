//! `plan()`: the changes that take one target from what was observed to what is desired.
//!
//! Only owned rules are created, restamped or deleted. The one exception is the AWS
//! baseline, which revokes foreign rules that open a governed port; those are recorded
//! (by the caller, before the revocation) and restored when the port is no longer
//! governed, and what such a rule opens besides the governed ports is kept open by owned
//! carve-outs while it is revoked. A converged target plans nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use super::carve::carve_outs;
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
    /// Remove an owned rule: expired, revoked, superseded, orphaned, a duplicate, or a
    /// carve-out whose foreign rule is back.
    DeleteOwned(OwnedRule),
    /// AWS: keep open what a foreign rule about to be revoked opens besides the governed
    /// ports, with an owned rule of the same source in the location's owned group.
    CreateCarveOut {
        /// The ENI whose owned group carries it.
        location: String,
        /// Protocol, ports and source.
        shape: RuleShape,
    },
    /// Revoke a foreign rule that opens a governed port (AWS). Record it first.
    RevokeForeign(ForeignRule),
    /// Rewrite an owned grant rule in place: a newer request took it over, or (Azure) the
    /// VM's addresses changed.
    Restamp {
        /// The rule.
        rule: OwnedRule,
        /// The grant it now carries.
        grant: Grant,
        /// Its destinations (Azure; empty on AWS).
        destinations: Vec<IpAddr>,
    },
    /// Forget a recorded rule that exists again.
    Unrecord(ForeignRuleSpec),
    /// Forget a recorded rule whose group is gone: there is nothing to restore it into.
    Forget(ForeignRuleSpec),
    /// Re-add a recorded foreign rule whose port is no longer governed (AWS).
    RestoreForeign(ForeignRuleSpec),
    /// Put an owned deny rule for a governed port in place (Azure), at `priority`,
    /// replacing the owned deny for that port and family that is there (in place).
    PutDeny {
        /// The NSG.
        location: String,
        /// The governed port.
        port: PortSpec,
        /// The family of its destinations.
        family: Family,
        /// The VM's addresses of that family.
        destinations: Vec<IpAddr>,
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
        /// Its destinations (Azure: the VM's addresses of the source's family).
        destinations: Vec<IpAddr>,
    },
}

/// Why something cannot be placed: reported, nothing is planned for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Foreign rules, another owner or a limit stand in the way (the Conflict condition).
    Conflict,
    /// What is asked cannot be expressed for this VM (e.g. no address of that family).
    Unsupported,
}

/// A governed port or grant that cannot be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The NSG, ENI or security group.
    pub location: String,
    /// The port.
    pub port: PortSpec,
    /// What kind of obstacle.
    pub kind: BlockKind,
    /// Why, for people.
    pub reason: String,
}

impl Change {
    /// The order changes are made in: grants close first; carve-outs are in place before
    /// the revocation they compensate and go only after the rule is restored.
    fn order(&self) -> u8 {
        match self {
            Change::DeleteOwned(r) if matches!(r.kind, OwnedKind::CarveOut(_)) => 6,
            Change::DeleteOwned(_) => 0,
            Change::CreateCarveOut { .. } => 1,
            Change::RevokeForeign(_) => 2,
            Change::Restamp { .. } => 3,
            Change::Unrecord(_) | Change::Forget(_) => 4,
            Change::RestoreForeign(_) => 5,
            Change::PutDeny { .. } => 7,
            Change::CreateGrant { .. } => 8,
        }
    }

    /// Whether the change writes to the cloud.
    pub fn writes(&self) -> bool {
        !matches!(self, Change::Unrecord(_) | Change::Forget(_))
    }

    /// The location (ENI, NSG or security group) the change writes to.
    pub fn location(&self) -> &str {
        match self {
            Change::DeleteOwned(r) | Change::Restamp { rule: r, .. } => &r.location,
            Change::CreateCarveOut { location, .. }
            | Change::PutDeny { location, .. }
            | Change::CreateGrant { location, .. } => location,
            Change::RevokeForeign(r) => &r.spec.container,
            Change::Unrecord(s) | Change::Forget(s) | Change::RestoreForeign(s) => &s.container,
        }
    }
}

/// The changes for one target, in the order to make them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The changes, in the order to make them.
    pub changes: Vec<Change>,
    /// What cannot be placed: nothing is planned for these.
    pub blocked: Vec<Blocked>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Plans the changes for one target. `recorded` are the foreign rules the baseline
/// revoked earlier (AWS), as the operator's signed record keeps them.
pub fn plan(desired: &TargetDesired, observed: &Observed, recorded: &[ForeignRuleSpec]) -> Plan {
    let mut p = Planner::new(desired, observed);
    p.grants();
    match (desired.hold, BaselineMode::of(&desired.locator)) {
        (true, _) => p.keep_baseline_rules(),
        (false, BaselineMode::DenyRule) => p.azure_baseline(),
        (false, BaselineMode::RevokeCovering) => p.aws_baseline(recorded),
    }
    p.delete_what_is_not_kept();
    p.place()
}

/// A deny or grant waiting for a priority (Azure) or placed as is (AWS).
enum Put<'a> {
    Deny {
        location: &'a str,
        port: PortSpec,
        family: Family,
        destinations: Vec<IpAddr>,
        floor: u16,
        replaces: Option<&'a OwnedRule>,
    },
    Grant {
        location: &'a str,
        grant: &'a Grant,
        destinations: Vec<IpAddr>,
    },
}

struct Planner<'a> {
    d: &'a TargetDesired,
    o: &'a Observed,
    azure: bool,
    changes: Vec<Change>,
    blocked: Vec<Blocked>,
    kept: BTreeSet<&'a str>,
    puts: Vec<Put<'a>>,
}

impl<'a> Planner<'a> {
    fn new(d: &'a TargetDesired, o: &'a Observed) -> Self {
        Planner {
            d,
            o,
            azure: BaselineMode::of(&d.locator) == BaselineMode::DenyRule,
            changes: Vec::new(),
            blocked: Vec::new(),
            kept: BTreeSet::new(),
            puts: Vec::new(),
        }
    }

    fn block(&mut self, location: &str, port: PortSpec, kind: BlockKind, reason: String) {
        self.blocked.push(Blocked {
            location: location.to_string(),
            port,
            kind,
            reason,
        });
    }

    /// The VM's addresses of one family (Azure destinations).
    fn addresses(&self, family: Family) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .o
            .addresses
            .iter()
            .filter(|a| Family::of(a) == family)
            .copied()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn in_band(priority: Option<u16>, band: Band) -> bool {
        priority.is_some_and(|p| band.first <= p && p <= band.last)
    }

    /// Grants: one owned allow rule per (location, rule key).
    fn grants(&mut self) {
        let allow = self.d.bands.allow;
        let mut index: HashMap<(&str, RuleKey), &'a OwnedRule> = HashMap::new();
        for r in &self.o.owned {
            let Some(key) = r.grant() else { continue };
            // An Azure allow rule outside the allow band is put back in it.
            if self.azure && !Self::in_band(r.priority, allow) {
                continue;
            }
            index.entry((r.location.as_str(), key)).or_insert(r);
        }
        for location in &self.o.locations {
            for grant in &self.d.grants {
                let destinations = if self.azure {
                    let family = Family::of_net(&grant.source);
                    let d = self.addresses(family);
                    if d.is_empty() {
                        self.block(
                            location,
                            grant.port,
                            BlockKind::Unsupported,
                            format!(
                                "the VM has no {family} address for source {}: nothing is opened",
                                grant.source
                            ),
                        );
                        continue;
                    }
                    d
                } else {
                    Vec::new()
                };
                match index.get(&(location.as_str(), grant.rule_key())) {
                    None if self.d.hold => {}
                    None => self.puts.push(Put::Grant {
                        location,
                        grant,
                        destinations,
                    }),
                    Some(rule) => {
                        self.kept.insert(&rule.cloud_id);
                        if rule.stamp != grant.stamp() || !same(&rule.destinations, &destinations)
                        {
                            self.changes.push(Change::Restamp {
                                rule: (*rule).clone(),
                                grant: grant.clone(),
                                destinations,
                            });
                        }
                    }
                }
            }
        }
    }

    /// The policy is on hold: its baseline rules stay exactly as they are.
    fn keep_baseline_rules(&mut self) {
        for r in &self.o.owned {
            if matches!(r.kind, OwnedKind::Deny { .. } | OwnedKind::CarveOut(_)) {
                self.kept.insert(&r.cloud_id);
            }
        }
    }

    /// Azure: one owned deny per governed port, NSG and address family, below every
    /// foreign rule that covers the port, inside the deny band.
    fn azure_baseline(&mut self) {
        let deny = self.d.bands.deny;
        let want_stamp = Stamp::baseline(&self.d.key.policy);
        let baseline: BTreeSet<PortSpec> = self.d.baseline.iter().copied().collect();
        let families: Vec<(Family, Vec<IpAddr>)> = [Family::V4, Family::V6]
            .into_iter()
            .map(|f| (f, self.addresses(f)))
            .filter(|(_, a)| !a.is_empty())
            .collect();
        let o = self.o;
        for location in &o.locations {
            for port in &baseline {
                if families.is_empty() {
                    // Without an address a deny would cover the whole subnet: write none,
                    // and keep what is there.
                    for r in o.owned.iter().filter(|r| {
                        r.location == *location
                            && matches!(r.kind, OwnedKind::Deny { port: p, .. } if p == *port)
                    }) {
                        self.kept.insert(&r.cloud_id);
                    }
                    self.block(
                        location,
                        *port,
                        BlockKind::Unsupported,
                        "no private address was resolved for the VM: no deny rule is written (it would apply to the whole subnet)".into(),
                    );
                    continue;
                }
                let floor = deny_floor(*port, location, &o.foreign).max(deny.first);
                for (family, destinations) in &families {
                    let existing = o.owned.iter().find(|r| {
                        r.location == *location
                            && r.kind
                                == OwnedKind::Deny {
                                    port: *port,
                                    family: *family,
                                }
                    });
                    let good = existing.is_some_and(|r| {
                        r.priority.is_some_and(|p| floor <= p && p <= deny.last)
                            && r.stamp == want_stamp
                            && same(&r.destinations, destinations)
                    });
                    if let Some(r) = existing {
                        // Kept, or replaced in place (same name), never deleted first.
                        self.kept.insert(&r.cloud_id);
                    }
                    if !good {
                        self.puts.push(Put::Deny {
                            location,
                            port: *port,
                            family: *family,
                            destinations: destinations.clone(),
                            floor,
                            replaces: existing,
                        });
                    }
                }
            }
        }
    }

    /// AWS: revoke the foreign rules that open a governed port (carving out the rest of
    /// what they open first), and restore recorded rules nobody governs any more.
    fn aws_baseline(&mut self, recorded: &[ForeignRuleSpec]) {
        let d = self.d;
        let o = self.o;
        let covered_by = |ports: &[PortSpec], spec: &ForeignRuleSpec| -> Vec<PortSpec> {
            ports.iter().copied().filter(|p| spec.covers(*p)).collect()
        };
        let used_by_peers = |container: &str| {
            o.group_users
                .get(container)
                .is_some_and(|u| u.iter().any(|x| d.peers.contains(x)))
        };
        // Revoked rules stay revoked while these ports close them: carve out the rest.
        let mut stays_revoked: Vec<(&ForeignRuleSpec, Vec<PortSpec>)> = Vec::new();

        // Only groups on the target's interfaces are the baseline's business (a recorded
        // group may have been detached since).
        let on_target = |container: &str| o.attached.values().any(|g| g.contains(container));
        for rule in o
            .foreign
            .iter()
            .filter(|r| r.access == Access::Allow && on_target(&r.spec.container))
        {
            let governed = covered_by(&d.baseline, &rule.spec);
            let Some(first) = governed.first().copied() else {
                continue;
            };
            let outside: Vec<&String> = o
                .group_users
                .get(&rule.spec.container)
                .into_iter()
                .flatten()
                .filter(|u| !d.peers.contains(*u))
                .collect();
            if !outside.is_empty() && d.shared_groups == SharedGroups::Conflict {
                let names: Vec<&str> = outside.iter().take(5).map(|s| s.as_str()).collect();
                let more = outside.len().saturating_sub(names.len());
                self.block(
                    &rule.spec.container,
                    first,
                    BlockKind::Conflict,
                    format!(
                        "security group {} (rule {}) also serves {}{} outside the policy: revoking it would close port {first} there too; set spec.aws.sharedGroups: Revoke to revoke anyway",
                        rule.spec.container,
                        rule.cloud_id,
                        names.join(", "),
                        if more > 0 { format!(" and {more} more") } else { String::new() }
                    ),
                );
                continue;
            }
            self.changes.push(Change::RevokeForeign(rule.clone()));
            stays_revoked.push((&rule.spec, governed));
        }

        let present: BTreeSet<&ForeignRuleSpec> = o.foreign.iter().map(|r| &r.spec).collect();
        let recorded: BTreeSet<&ForeignRuleSpec> = recorded.iter().collect();
        for spec in recorded {
            if o.gone_containers.contains(&spec.container) {
                self.changes.push(Change::Forget(spec.clone()));
                continue;
            }
            let governed = covered_by(&d.baseline, spec);
            if !governed.is_empty() {
                if !present.contains(spec) {
                    stays_revoked.push((spec, governed));
                }
                continue;
            }
            let held = covered_by(&d.peer_ports, spec);
            if !held.is_empty() && used_by_peers(&spec.container) {
                // The policy's other targets still keep this port closed through the same
                // group: the rule stays revoked (and recorded) until they let go.
                if !present.contains(spec) {
                    stays_revoked.push((spec, held));
                }
                continue;
            }
            self.changes.push(if present.contains(spec) {
                Change::Unrecord(spec.clone())
            } else {
                Change::RestoreForeign(spec.clone())
            });
        }

        // Carve-outs, in the owned group of every ENI the revoked rule's group is on.
        let mut want: BTreeSet<(&str, RuleShape)> = BTreeSet::new();
        for (spec, closing) in stays_revoked {
            for location in &o.locations {
                let attached = o
                    .attached
                    .get(location)
                    .is_some_and(|g| g.contains(&spec.container));
                if attached {
                    for shape in carve_outs(spec, &closing) {
                        want.insert((location.as_str(), shape));
                    }
                }
            }
        }
        for r in &o.owned {
            if let OwnedKind::CarveOut(shape) = &r.kind
                && want.remove(&(r.location.as_str(), shape.clone()))
            {
                self.kept.insert(&r.cloud_id);
            }
        }
        for (location, shape) in want {
            self.changes.push(Change::CreateCarveOut {
                location: location.to_string(),
                shape,
            });
        }
    }

    /// Owned rules neither kept nor replaced go, and so do those in locations that no
    /// longer serve the target.
    fn delete_what_is_not_kept(&mut self) {
        let locations: BTreeSet<&str> = self.o.locations.iter().map(String::as_str).collect();
        for rule in &self.o.owned {
            let keep = self.kept.contains(rule.cloud_id.as_str())
                && locations.contains(rule.location.as_str());
            if !keep {
                self.changes.push(Change::DeleteOwned(rule.clone()));
            }
        }
    }

    /// Gives the waiting puts their priorities (Azure) and orders the plan.
    fn place(mut self) -> Plan {
        let bands = self.d.bands;
        let mut slots: BTreeMap<&str, Slots> = BTreeMap::new();
        if self.azure {
            for f in &self.o.foreign {
                if let Some(p) = f.priority {
                    slots.entry(f.spec.container.as_str()).or_default().take(p);
                }
            }
            for (location, p) in &self.o.reserved {
                slots.entry(location.as_str()).or_default().take(*p);
            }
            for r in self.o.owned.iter().filter(|r| self.kept.contains(r.cloud_id.as_str())) {
                if let Some(p) = r.priority {
                    slots.entry(r.location.as_str()).or_default().take(p);
                }
            }
        }
        let puts = std::mem::take(&mut self.puts);
        // Denies first: they are the baseline, grants take what is left.
        let (denies, grants): (Vec<_>, Vec<_>) =
            puts.into_iter().partition(|p| matches!(p, Put::Deny { .. }));
        for put in denies.into_iter().chain(grants) {
            match put {
                Put::Deny {
                    location,
                    port,
                    family,
                    destinations,
                    floor,
                    replaces,
                } => {
                    let s = slots.entry(location).or_default();
                    if let Some(old) = replaces.and_then(|r| r.priority) {
                        s.free(old);
                    }
                    match s.first_free(floor, bands.deny.last) {
                        Some(priority) => self.changes.push(Change::PutDeny {
                            location: location.to_string(),
                            port,
                            family,
                            destinations,
                            priority,
                            replaces: replaces.cloned(),
                        }),
                        None => {
                            // A deny that cannot sit where it must not override foreign
                            // rules goes rather than stay misplaced: the conflict is
                            // reported.
                            if let Some(r) = replaces {
                                self.changes.push(Change::DeleteOwned(r.clone()));
                            }
                            self.block(
                                location,
                                port,
                                BlockKind::Conflict,
                                format!(
                                    "no free priority for the deny rule of port {port} in {}-{}: foreign rules that cover the port sit at {} or below",
                                    bands.deny.first,
                                    bands.deny.last,
                                    floor.saturating_sub(1)
                                ),
                            );
                        }
                    }
                }
                Put::Grant {
                    location,
                    grant,
                    destinations,
                } => {
                    let priority = if self.azure {
                        match slots
                            .entry(location)
                            .or_default()
                            .next_free(bands.allow.first, bands.allow.last)
                        {
                            Some(p) => Some(p),
                            None => {
                                self.block(
                                    location,
                                    grant.port,
                                    BlockKind::Conflict,
                                    format!(
                                        "the allow band {}-{} is full",
                                        bands.allow.first, bands.allow.last
                                    ),
                                );
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    self.changes.push(Change::CreateGrant {
                        location: location.to_string(),
                        grant: grant.clone(),
                        priority,
                        destinations,
                    });
                }
            }
        }
        self.changes.sort_by_key(Change::order);
        Plan {
            changes: self.changes,
            blocked: self.blocked,
        }
    }
}

/// Whether two address lists name the same addresses.
fn same(a: &[IpAddr], b: &[IpAddr]) -> bool {
    let a: BTreeSet<&IpAddr> = a.iter().collect();
    let b: BTreeSet<&IpAddr> = b.iter().collect();
    a == b
}

/// The priorities taken in one NSG, with a cursor so that placing many grants is not
/// quadratic.
#[derive(Default)]
struct Slots {
    used: BTreeSet<u16>,
    cursor: Option<u16>,
}

impl Slots {
    fn take(&mut self, p: u16) {
        self.used.insert(p);
    }

    fn free(&mut self, p: u16) {
        self.used.remove(&p);
        if self.cursor.is_some_and(|c| p < c) {
            self.cursor = Some(p);
        }
    }

    /// The first free priority in `from..=to`, taken.
    fn first_free(&mut self, from: u16, to: u16) -> Option<u16> {
        let p = free_slot(from, to, &self.used)?;
        self.used.insert(p);
        Some(p)
    }

    /// Like [`Slots::first_free`], searching on from where the last search in this band
    /// ended (every slot before it is taken).
    fn next_free(&mut self, from: u16, to: u16) -> Option<u16> {
        let start = self.cursor.filter(|c| *c >= from).unwrap_or(from);
        let p = free_slot(start, to, &self.used)?;
        self.used.insert(p);
        self.cursor = Some(p);
        Some(p)
    }
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
    if from > to {
        return None;
    }
    let mut candidate = from;
    for &u in used.range(from..=to) {
        if u != candidate {
            return Some(candidate);
        }
        candidate = candidate.checked_add(1)?;
        if candidate > to {
            return None;
        }
    }
    Some(candidate)
}

/// Applies a plan to an observed state and a record, as a perfect cloud would. Tests use
/// it to check plans against the promises (see the property tests below); the promises
/// are checked on the resulting state, not on the plan.
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
            Change::CreateCarveOut { location, shape } => obs.owned.push(OwnedRule {
                location: location.clone(),
                cloud_id: next_id(),
                kind: OwnedKind::CarveOut(shape.clone()),
                stamp: Stamp::baseline(policy),
                priority: None,
                destinations: Vec::new(),
            }),
            Change::RevokeForeign(rule) => {
                rec.insert(rule.spec.clone());
                obs.foreign.retain(|r| r.cloud_id != rule.cloud_id);
            }
            Change::Restamp {
                rule,
                grant,
                destinations,
            } => {
                for r in obs.owned.iter_mut().filter(|r| r.cloud_id == rule.cloud_id) {
                    r.stamp = grant.stamp();
                    r.destinations = destinations.clone();
                }
            }
            Change::Unrecord(spec) | Change::Forget(spec) => {
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
                family,
                destinations,
                priority,
                replaces,
            } => {
                if let Some(r) = replaces {
                    obs.owned.retain(|o| o.cloud_id != r.cloud_id);
                }
                obs.owned.push(OwnedRule {
                    location: location.clone(),
                    cloud_id: next_id(),
                    kind: OwnedKind::Deny {
                        port: *port,
                        family: *family,
                    },
                    stamp: Stamp::baseline(policy),
                    priority: Some(*priority),
                    destinations: destinations.clone(),
                });
            }
            Change::CreateGrant {
                location,
                grant,
                priority,
                destinations,
            } => obs.owned.push(OwnedRule {
                location: location.clone(),
                cloud_id: next_id(),
                kind: OwnedKind::Grant {
                    port: grant.port,
                    source: grant.source,
                },
                stamp: grant.stamp(),
                priority: *priority,
                destinations: destinations.clone(),
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

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn ssh() -> PortSpec {
        PortSpec {
            port: NonZeroU16::new(22).unwrap(),
            protocol: Proto::Tcp,
        }
    }

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

    fn policy_key() -> ObjectKey {
        ObjectKey::new("ns", "p")
    }

    const AWS_LOCATIONS: [&str; 2] = ["eni-a", "eni-b"];
    const NSGS: [&str; 2] = ["nsg-a", "nsg-b"];

    fn shape() -> impl Strategy<Value = RuleShape> {
        (
            prop::sample::select(vec!["tcp", "udp"]),
            (0u16..100, 0u16..100),
        )
            .prop_map(|(p, (a, l))| RuleShape {
                protocol: p.into(),
                ports: Some((a, a + l)),
                source: ForeignSource::Cidr("10.0.0.0/8".into()),
            })
    }

    /// An owned rule of any kind, in a location that may or may not serve the target.
    fn owned(locations: Vec<&'static str>) -> impl Strategy<Value = OwnedRule> {
        (
            prop::sample::select(locations),
            0u8..4,
            grant(),
            shape(),
            any::<bool>(),
            0u32..100_000,
        )
            .prop_map(|(loc, kind, g, shape, v6, id)| {
                let (kind, stamp) = match kind {
                    0 | 1 => (
                        OwnedKind::Grant {
                            port: g.port,
                            source: g.source,
                        },
                        g.stamp(),
                    ),
                    2 => (
                        OwnedKind::Deny {
                            port: g.port,
                            family: if v6 { Family::V6 } else { Family::V4 },
                        },
                        Stamp::baseline(&policy_key()),
                    ),
                    _ => (OwnedKind::CarveOut(shape), Stamp::baseline(&policy_key())),
                };
                OwnedRule {
                    location: loc.to_string(),
                    cloud_id: format!("owned-{id}"),
                    kind,
                    stamp,
                    priority: None,
                    destinations: Vec::new(),
                }
            })
    }

    fn foreign_spec(containers: Vec<&'static str>) -> impl Strategy<Value = ForeignRuleSpec> {
        (
            prop::sample::select(containers),
            prop::sample::select(vec!["tcp", "udp", "-1"]),
            prop::option::of(
                (1u16..4000, 0u16..3000).prop_map(|(from, len)| (from, from.saturating_add(len))),
            ),
            prop::sample::select(vec!["0.0.0.0/0", "10.0.0.0/8", "::/0"]),
        )
            .prop_map(|(c, proto, ports, src)| ForeignRuleSpec {
                container: c.into(),
                protocol: proto.into(),
                ports: if proto == "-1" { None } else { ports },
                source: ForeignSource::Cidr(src.into()),
                description: None,
            })
    }

    fn target(aws: bool) -> impl Strategy<Value = TargetDesired> {
        (
            prop::collection::vec(port_spec(), 0..3),
            prop::collection::vec(grant(), 0..6),
            any::<bool>(),
            prop::sample::subsequence(vec!["i-peer"], 0..=1),
            prop::collection::vec(port_spec(), 0..2),
        )
            .prop_map(move |(baseline, grants, revoke_shared, peers, peer_ports)| {
                // desired() gives one grant per rule key; keep that invariant here.
                let mut seen = BTreeSet::new();
                let grants = grants.into_iter().filter(|g| seen.insert(g.rule_key())).collect();
                TargetDesired {
                    key: TargetKey {
                        policy: policy_key(),
                        target: "web".into(),
                    },
                    locator: if aws {
                        Locator::Aws {
                            region: "eu-west-1".into(),
                            instance_id: "i-self".into(),
                        }
                    } else {
                        Locator::Azure {
                            vm_id: "vm".into(),
                            firewall: None,
                        }
                    },
                    bands: Bands::default(),
                    baseline,
                    hold: false,
                    grants,
                    peers: peers.into_iter().map(String::from).collect(),
                    peer_ports,
                    shared_groups: if revoke_shared {
                        SharedGroups::Revoke
                    } else {
                        SharedGroups::Conflict
                    },
                }
            })
    }

    /// An AWS world: two ENIs with groups sg-1 (on both) and sg-2 (on eni-b), rules in
    /// them, owned rules anywhere (also in ENIs that left), who else uses the groups, and
    /// records (also of a group that is gone).
    fn aws_world() -> impl Strategy<Value = (Observed, Vec<ForeignRuleSpec>)> {
        (
            prop::sample::subsequence(AWS_LOCATIONS.to_vec(), 0..=2),
            prop::collection::vec(owned(vec!["eni-a", "eni-b", "eni-gone"]), 0..8),
            prop::collection::vec(foreign_spec(vec!["sg-1", "sg-2"]), 0..6),
            prop::sample::subsequence(vec!["i-peer", "i-other"], 0..=2),
            prop::collection::vec(foreign_spec(vec!["sg-1", "sg-2", "sg-gone"]), 0..4),
        )
            .prop_map(|(locs, mut owned, foreign, users, recorded)| {
                let mut ids = BTreeSet::new();
                owned.retain(|r| ids.insert(r.cloud_id.clone()));
                // Owned AWS rules carry no Azure denies.
                owned.retain(|r| !matches!(r.kind, OwnedKind::Deny { .. }));
                let foreign = foreign
                    .into_iter()
                    .enumerate()
                    .map(|(i, spec)| ForeignRule {
                        cloud_id: format!("sgr-{i}"),
                        spec,
                        access: Access::Allow,
                        priority: None,
                    })
                    .collect();
                let users: BTreeSet<String> = users.into_iter().map(String::from).collect();
                let observed = Observed {
                    locations: locs.iter().map(|s| s.to_string()).collect(),
                    owned,
                    foreign,
                    attached: BTreeMap::from([
                        ("eni-a".into(), BTreeSet::from(["sg-1".to_string()])),
                        (
                            "eni-b".into(),
                            BTreeSet::from(["sg-1".to_string(), "sg-2".to_string()]),
                        ),
                    ]),
                    group_users: BTreeMap::from([
                        ("sg-1".into(), users.clone()),
                        ("sg-2".into(), BTreeSet::new()),
                    ]),
                    gone_containers: BTreeSet::from(["sg-gone".to_string()]),
                    ..Observed::default()
                };
                (observed, recorded)
            })
    }

    /// An Azure world: NSGs with foreign allow and deny rules at ARM-valid priorities
    /// (unique per NSG and direction), owned rules with priorities, other targets'
    /// priorities, and the VM's addresses.
    fn azure_world() -> impl Strategy<Value = Observed> {
        (
            prop::sample::subsequence(NSGS.to_vec(), 0..=2),
            prop::collection::vec(owned(vec!["nsg-a", "nsg-b", "nsg-gone"]), 0..8),
            prop::collection::vec(
                (foreign_spec(vec!["nsg-a", "nsg-b"]), any::<bool>(), 100u16..=4096),
                0..8,
            ),
            prop::collection::vec(3000u16..=4096, 8),
            prop::collection::vec((prop::sample::select(NSGS.to_vec()), 3000u16..=4096), 0..3),
            prop::sample::subsequence(vec!["10.0.0.4", "10.0.0.5", "fd00::4"], 0..=3),
        )
            .prop_map(|(locs, mut owned, foreign, owned_prios, reserved, addrs)| {
                let mut taken: BTreeSet<(String, u16)> = BTreeSet::new();
                let foreign: Vec<ForeignRule> = foreign
                    .into_iter()
                    .enumerate()
                    .filter(|(_, (spec, _, prio))| taken.insert((spec.container.clone(), *prio)))
                    .map(|(i, (mut spec, allow, priority))| {
                        spec.protocol = match spec.protocol.as_str() {
                            "tcp" => "Tcp".into(),
                            "udp" => "Udp".into(),
                            _ => "*".into(),
                        };
                        ForeignRule {
                            cloud_id: format!("foreign-{i}"),
                            spec,
                            access: if allow { Access::Allow } else { Access::Deny },
                            priority: Some(priority),
                        }
                    })
                    .collect();
                let reserved: Vec<(String, u16)> = reserved
                    .into_iter()
                    .filter(|(l, p)| taken.insert((l.to_string(), *p)))
                    .map(|(l, p)| (l.to_string(), p))
                    .collect();
                let mut ids = BTreeSet::new();
                owned.retain(|r| ids.insert(r.cloud_id.clone()));
                owned.retain(|r| !matches!(r.kind, OwnedKind::CarveOut(_)));
                let addresses: Vec<IpAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
                let mut kept = Vec::new();
                for (i, mut r) in owned.into_iter().enumerate() {
                    let p = owned_prios[i % owned_prios.len()];
                    if taken.insert((r.location.clone(), p)) {
                        r.priority = Some(p);
                        r.destinations = addresses.clone();
                        kept.push(r);
                    }
                }
                Observed {
                    locations: locs.iter().map(|s| s.to_string()).collect(),
                    owned: kept,
                    foreign,
                    reserved,
                    addresses,
                    ..Observed::default()
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

    fn blocked_at(p: &Plan, location: &str, port: PortSpec) -> bool {
        p.blocked
            .iter()
            .any(|b| b.location == location && b.port == port)
    }

    /// The promises, checked on the state after the plan, independently of how the plan
    /// was made.
    fn check_aws(
        t: &TargetDesired,
        before: &Observed,
        recorded: &[ForeignRuleSpec],
        p: &Plan,
        after: &Observed,
        rec: &[ForeignRuleSpec],
    ) -> Result<(), TestCaseError> {
        // Every desired grant exactly once per serving ENI, stamped; nothing else open.
        for location in &after.locations {
            for g in &t.grants {
                let n = after
                    .owned
                    .iter()
                    .filter(|r| {
                        &r.location == location
                            && r.grant() == Some(g.rule_key())
                            && r.stamp == g.stamp()
                    })
                    .count();
                prop_assert_eq!(n, 1, "grant {:?} in {}", g, location);
            }
        }
        for r in after.owned.iter().filter(|r| r.grant().is_some()) {
            prop_assert!(after.locations.contains(&r.location), "grant left in {}", r.location);
            prop_assert!(
                t.grants.iter().any(|g| r.grant() == Some(g.rule_key()) && r.stamp == g.stamp()),
                "undesired grant {:?}",
                r
            );
        }
        // No governed port stays open through a foreign rule, unless the group is shared
        // outside the policy (and that is reported).
        for f in after.foreign.iter().filter(|f| f.access == Access::Allow) {
            if t.baseline.iter().any(|port| f.spec.covers(*port)) {
                prop_assert!(
                    p.blocked.iter().any(|b| b.location == f.spec.container && b.kind == BlockKind::Conflict),
                    "a governed port stays open through {:?}", f
                );
            }
        }
        // Foreign rules: only revoked when they cover a governed port; every revoked rule
        // is recorded; only recorded rules come back.
        for f in &before.foreign {
            if !after.foreign.iter().any(|a| a.cloud_id == f.cloud_id) {
                prop_assert!(t.baseline.iter().any(|port| f.spec.covers(*port)));
                prop_assert!(rec.contains(&f.spec), "revoked but not recorded: {:?}", f);
            }
        }
        for a in &after.foreign {
            if !before.foreign.iter().any(|b| b.cloud_id == a.cloud_id) {
                prop_assert!(recorded.contains(&a.spec), "restored but never recorded");
                prop_assert!(!t.baseline.iter().any(|port| a.spec.covers(*port)));
            }
        }
        // No record of a group that is gone survives.
        prop_assert!(!rec.iter().any(|s| after.gone_containers.contains(&s.container)));
        // Carve-outs never open a governed port.
        for r in &after.owned {
            if let OwnedKind::CarveOut(shape) = &r.kind {
                let spec = ForeignRuleSpec {
                    container: String::new(),
                    protocol: shape.protocol.clone(),
                    ports: shape.ports,
                    source: shape.source.clone(),
                    description: None,
                };
                prop_assert!(!t.baseline.iter().any(|port| spec.covers(*port)), "carve-out {:?} opens a governed port", shape);
            }
        }
        Ok(())
    }

    fn check_azure(t: &TargetDesired, before: &Observed, p: &Plan, after: &Observed) -> Result<(), TestCaseError> {
        let bands = t.bands;
        prop_assert_eq!(&after.foreign, &before.foreign, "foreign rules changed");
        for location in &after.locations {
            let mut seen = BTreeSet::new();
            for f in after.foreign.iter().filter(|f| &f.spec.container == location) {
                seen.insert(f.priority.unwrap());
            }
            for (l, pr) in &after.reserved {
                if l == location {
                    seen.insert(*pr);
                }
            }
            for r in after.owned.iter().filter(|r| &r.location == location) {
                let pr = r.priority.expect("owned Azure rules have priorities");
                prop_assert!(seen.insert(pr), "priority {} used twice in {}", pr, location);
                match &r.kind {
                    // Without a resolved address, existing denies stay as they are (and
                    // the port is reported).
                    OwnedKind::Deny { port, .. } if after.addresses.is_empty() => {
                        prop_assert!(blocked_at(p, location, *port));
                    }
                    OwnedKind::Deny { port, family } => {
                        prop_assert!(bands.deny.first <= pr && pr <= bands.deny.last);
                        prop_assert!(pr >= deny_floor(*port, location, &after.foreign));
                        prop_assert!(r.destinations.iter().all(|d| Family::of(d) == *family));
                    }
                    OwnedKind::Grant { source, .. } => {
                        prop_assert!(bands.allow.first <= pr && pr <= bands.allow.last);
                        prop_assert!(!r.destinations.is_empty());
                        prop_assert!(r.destinations.iter().all(|d| Family::of(d) == Family::of_net(source)));
                    }
                    other => prop_assert!(false, "unexpected owned rule {:?}", other),
                }
            }
            let families: BTreeSet<Family> = after.addresses.iter().map(Family::of).collect();
            for port in &t.baseline {
                for family in &families {
                    let n = after
                        .owned
                        .iter()
                        .filter(|r| &r.location == location && r.kind == OwnedKind::Deny { port: *port, family: *family })
                        .count();
                    prop_assert!(n == 1 || (n == 0 && blocked_at(p, location, *port)), "port {} {} in {}: {} denies", port, family, location, n);
                }
            }
            for g in &t.grants {
                let n = after.owned.iter().filter(|r| &r.location == location && r.grant() == Some(g.rule_key()) && r.stamp == g.stamp()).count();
                let has_family = families.contains(&Family::of_net(&g.source));
                prop_assert!(n == usize::from(has_family) || (n == 0 && blocked_at(p, location, g.port)), "grant {:?}: {} rules", g, n);
            }
        }
        for r in &after.owned {
            prop_assert!(after.locations.contains(&r.location), "owned rule left in {}", r.location);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// AWS: after one plan the promises hold, and planning again changes nothing.
        #[test]
        fn aws_plans_keep_the_promises(t in target(true), (obs, recorded) in aws_world()) {
            let p = plan(&t, &obs, &recorded);
            let (after, rec) = simulate(&t.key.policy, &obs, &recorded, &p, ids());
            check_aws(&t, &obs, &recorded, &p, &after, &rec)?;
            let again = plan(&t, &after, &rec);
            prop_assert!(again.is_empty(), "second plan: {:?}", again);
        }

        /// Azure: after one plan the promises hold, and planning again changes nothing.
        #[test]
        fn azure_plans_keep_the_promises(t in target(false), obs in azure_world()) {
            let p = plan(&t, &obs, &[]);
            let (after, _) = simulate(&t.key.policy, &obs, &[], &p, ids());
            check_azure(&t, &obs, &p, &after)?;
            let again = plan(&t, &after, &[]);
            prop_assert!(again.is_empty(), "second plan: {:?}", again);
        }

        /// On hold, the baseline stays exactly as it is and nothing new opens.
        #[test]
        fn a_held_policy_touches_only_grants(aws in any::<bool>(), t in target(true), (aws_obs, recorded) in aws_world(), az_obs in azure_world()) {
            let mut t = t;
            t.hold = true;
            let obs = if aws { aws_obs } else {
                t.locator = Locator::Azure { vm_id: "vm".into(), firewall: None };
                az_obs
            };
            for c in plan(&t, &obs, &recorded).changes {
                match c {
                    Change::DeleteOwned(r) => prop_assert!(r.grant().is_some() || matches!(r.kind, OwnedKind::Stray) || !obs.locations.contains(&r.location)),
                    Change::Restamp { .. } => {}
                    other => prop_assert!(false, "{:?} while on hold", other),
                }
            }
        }

        /// An expired grant is never desired, on either cloud; the next wake-up is in the
        /// future.
        #[test]
        fn expired_grants_are_never_desired(
            reqs in prop::collection::vec((0i64..1000, 10u64..500, source(), any::<bool>()), 0..8),
            now in 0i64..1500,
            azure in any::<bool>(),
        ) {
            let policy = Policy {
                key: policy_key(),
                targets: vec![PolicyTarget {
                    name: "web".into(),
                    locator: if azure {
                        Locator::Azure { vm_id: "vm".into(), firewall: None }
                    } else {
                        Locator::Aws { region: "r".into(), instance_id: "i".into() }
                    },
                }],
                ports: vec![PolicyPort {
                    spec: ssh(),
                    allowed: vec![AllowedSource::Any],
                    max_duration: Duration::from_secs(3600),
                }],
                bands: Bands::default(),
                shared_groups: SharedGroups::default(),
                deleting: false,
                hold: false,
            };
            let requests: Vec<Request> = reqs.iter().enumerate().map(|(i, (created, secs, src, revoked))| Request {
                key: ObjectKey::new("ns", format!("r{i}")),
                policy: "p".into(),
                target: "web".into(),
                ports: vec![RequestedPort { spec: ssh(), source: *src, duration: Duration::from_secs(*secs) }],
                created: at(*created),
                revoked: *revoked,
                recorded: vec![None],
            }).collect();
            let d = desired(&policy, &requests, at(now));
            let lead = crate::domain::desired::close_lead(&policy.targets[0].locator);
            for t in d.targets.values() {
                for g in &t.grants {
                    prop_assert!(g.expires_at - lead > at(now), "expired grant desired: {:?}", g);
                    let r = requests.iter().find(|r| r.key == g.request).unwrap();
                    prop_assert!(!r.revoked);
                    prop_assert_eq!(g.expires_at, r.expiry(0), "expiry moved");
                }
            }
            for next in d.next_expiry.values() {
                prop_assert!(*next > at(now));
            }
        }
    }

    fn aws_target(baseline: Vec<PortSpec>) -> TargetDesired {
        TargetDesired {
            key: TargetKey {
                policy: policy_key(),
                target: "web".into(),
            },
            locator: Locator::Aws {
                region: "r".into(),
                instance_id: "i-self".into(),
            },
            bands: Bands::default(),
            baseline,
            hold: false,
            grants: vec![],
            peers: BTreeSet::new(),
            peer_ports: vec![],
            shared_groups: SharedGroups::Conflict,
        }
    }

    fn aws_rule(id: &str, protocol: &str, ports: Option<(u16, u16)>) -> ForeignRule {
        ForeignRule {
            cloud_id: id.into(),
            spec: ForeignRuleSpec {
                container: "sg-1".into(),
                protocol: protocol.into(),
                ports,
                source: ForeignSource::Cidr("10.0.0.0/8".into()),
                description: None,
            },
            access: Access::Allow,
            priority: None,
        }
    }

    fn aws_observed(foreign: Vec<ForeignRule>, users: &[&str]) -> Observed {
        Observed {
            locations: vec!["eni-a".into()],
            foreign,
            attached: BTreeMap::from([("eni-a".into(), BTreeSet::from(["sg-1".to_string()]))]),
            group_users: BTreeMap::from([(
                "sg-1".into(),
                users.iter().map(|s| s.to_string()).collect(),
            )]),
            ..Observed::default()
        }
    }

    #[test]
    fn aws_baseline_revokes_records_and_restores() {
        let mut t = aws_target(vec![ssh()]);
        let obs = aws_observed(
            vec![aws_rule("sgr-22", "tcp", Some((22, 22))), aws_rule("sgr-443", "tcp", Some((443, 443)))],
            &[],
        );
        let p = plan(&t, &obs, &[]);
        assert_eq!(p.changes, vec![Change::RevokeForeign(aws_rule("sgr-22", "tcp", Some((22, 22))))]);
        let (after, rec) = simulate(&t.key.policy, &obs, &[], &p, ids());
        assert_eq!(rec, vec![aws_rule("x", "tcp", Some((22, 22))).spec]);
        // The policy lets go of the port: the recorded rule comes back exactly.
        t.baseline.clear();
        let p = plan(&t, &after, &rec);
        assert_eq!(p.changes, vec![Change::RestoreForeign(aws_rule("x", "tcp", Some((22, 22))).spec)]);
    }

    #[test]
    fn aws_range_rules_are_carved_out_before_they_are_revoked() {
        let t = aws_target(vec![ssh()]);
        let wide = aws_rule("sgr-all", "tcp", Some((0, 65535)));
        let obs = aws_observed(vec![wide.clone()], &[]);
        let p = plan(&t, &obs, &[]);
        let kinds: Vec<u8> = p.changes.iter().map(Change::order).collect();
        assert_eq!(kinds, vec![1, 1, 2], "carve-outs first, then the revocation: {:?}", p.changes);
        let (after, rec) = simulate(&t.key.policy, &obs, &[], &p, ids());
        assert!(plan(&t, &after, &rec).is_empty());
        // Restored: the rule is back before the carve-outs go.
        let lifted = aws_target(vec![]);
        let p = plan(&lifted, &after, &rec);
        assert_eq!(p.changes.first(), Some(&Change::RestoreForeign(wide.spec.clone())));
        assert_eq!(p.changes.iter().filter(|c| matches!(c, Change::DeleteOwned(_))).count(), 2);
    }

    #[test]
    fn aws_groups_shared_outside_the_policy_are_not_revoked_unless_asked() {
        let mut t = aws_target(vec![ssh()]);
        t.peers = BTreeSet::from(["i-peer".to_string()]);
        let obs = aws_observed(vec![aws_rule("sgr-22", "tcp", Some((22, 22)))], &["i-peer", "i-other"]);
        let p = plan(&t, &obs, &[]);
        assert!(p.changes.is_empty());
        assert_eq!(p.blocked.len(), 1);
        assert_eq!(p.blocked[0].kind, BlockKind::Conflict);
        assert!(p.blocked[0].reason.contains("i-other"), "{}", p.blocked[0].reason);
        assert!(!p.blocked[0].reason.contains("i-peer"));
        // Shared with peers only: revoked.
        let obs = aws_observed(vec![aws_rule("sgr-22", "tcp", Some((22, 22)))], &["i-peer"]);
        assert_eq!(plan(&t, &obs, &[]).changes.len(), 1);
        // Opted in: revoked.
        t.shared_groups = SharedGroups::Revoke;
        let obs = aws_observed(vec![aws_rule("sgr-22", "tcp", Some((22, 22)))], &["i-other"]);
        assert_eq!(plan(&t, &obs, &[]).changes.len(), 1);
    }

    #[test]
    fn a_removed_target_does_not_restore_what_its_peers_still_close() {
        let rule = aws_rule("sgr-22", "tcp", Some((22, 22)));
        let mut t = aws_target(vec![]);
        t.peers = BTreeSet::from(["i-peer".to_string()]);
        t.peer_ports = vec![ssh()];
        let obs = aws_observed(vec![], &["i-peer"]);
        assert!(plan(&t, &obs, std::slice::from_ref(&rule.spec)).is_empty());
        // The peer let go of the group: restore.
        let obs = aws_observed(vec![], &[]);
        assert_eq!(
            plan(&t, &obs, std::slice::from_ref(&rule.spec)).changes,
            vec![Change::RestoreForeign(rule.spec.clone())]
        );
        // The group is gone: forget the record.
        let mut obs = aws_observed(vec![], &[]);
        obs.gone_containers.insert("sg-1".into());
        assert_eq!(
            plan(&t, &obs, std::slice::from_ref(&rule.spec)).changes,
            vec![Change::Forget(rule.spec)]
        );
    }

    fn azure_target(baseline: Vec<PortSpec>, grants: Vec<Grant>) -> TargetDesired {
        TargetDesired {
            locator: Locator::Azure {
                vm_id: "vm".into(),
                firewall: None,
            },
            grants,
            ..aws_target(baseline)
        }
    }

    fn nsg_rule(prio: u16, ports: Option<(u16, u16)>) -> ForeignRule {
        ForeignRule {
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
        }
    }

    #[test]
    fn azure_deny_goes_below_foreign_rules_that_cover_the_port() {
        let t = azure_target(vec![ssh()], vec![]);
        let deny_at = |foreign: Vec<ForeignRule>| {
            let obs = Observed {
                locations: vec!["nsg".into()],
                foreign,
                // Another target's deny in the same NSG holds 3900.
                reserved: vec![("nsg".into(), 3900)],
                addresses: vec!["10.0.0.4".parse().unwrap()],
                ..Observed::default()
            };
            let p = plan(&t, &obs, &[]);
            match p.changes.as_slice() {
                [Change::PutDeny { priority, destinations, .. }] => {
                    assert_eq!(destinations, &vec!["10.0.0.4".parse::<IpAddr>().unwrap()]);
                    Ok(*priority)
                }
                _ => Err(p.blocked),
            }
        };
        assert_eq!(deny_at(vec![nsg_rule(300, Some((443, 443)))]), Ok(3901));
        assert_eq!(deny_at(vec![nsg_rule(300, Some((22, 22)))]), Ok(3901));
        assert_eq!(
            deny_at(vec![nsg_rule(4000, Some((20, 30))), nsg_rule(4001, Some((443, 443)))]),
            Ok(4002)
        );
        let blocked = deny_at(vec![nsg_rule(4096, None)]).unwrap_err();
        assert_eq!(blocked.len(), 1);
        assert!(blocked[0].reason.contains("no free priority"));
    }

    #[test]
    fn azure_rules_name_only_the_vms_addresses_one_family_each() {
        let g = Grant {
            request: ObjectKey::new("ns", "r"),
            port: ssh(),
            source: "2001:db8::/64".parse().unwrap(),
            expires_at: at(100),
        };
        let t = azure_target(vec![ssh()], vec![g.clone()]);
        // No address resolved: nothing is written (a rule without destination would cover
        // the subnet), and both the port and the grant are reported.
        let none = Observed {
            locations: vec!["nsg".into()],
            ..Observed::default()
        };
        let p = plan(&t, &none, &[]);
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        assert_eq!(p.blocked.len(), 2);
        // IPv4 only: the deny is IPv4, the IPv6 grant cannot open.
        let v4 = Observed {
            addresses: vec!["10.0.0.4".parse().unwrap()],
            ..none.clone()
        };
        let p = plan(&t, &v4, &[]);
        assert!(matches!(p.changes.as_slice(), [Change::PutDeny { family: Family::V4, .. }]));
        assert!(p.blocked[0].reason.contains("no IPv6 address"));
        // Both families: two denies, the grant names the IPv6 address only.
        let both = Observed {
            addresses: vec!["10.0.0.4".parse().unwrap(), "fd00::4".parse().unwrap()],
            ..none
        };
        let p = plan(&t, &both, &[]);
        let (after, _) = simulate(&t.key.policy, &both, &[], &p, ids());
        assert_eq!(after.owned.len(), 3);
        let grant = after.owned.iter().find(|r| r.grant().is_some()).unwrap();
        assert_eq!(grant.destinations, vec!["fd00::4".parse::<IpAddr>().unwrap()]);
        // The VM's address changes: the rules are rewritten in place.
        let moved = Observed {
            addresses: vec!["10.0.0.9".parse().unwrap(), "fd00::4".parse().unwrap()],
            ..after
        };
        let p = plan(&t, &moved, &[]);
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert!(matches!(&p.changes[0], Change::PutDeny { replaces: Some(_), family: Family::V4, .. }));
    }

    #[test]
    fn free_slots_are_found_past_taken_ones() {
        let used: BTreeSet<u16> = [3000, 3001, 3003].into_iter().collect();
        assert_eq!(free_slot(3000, 3010, &used), Some(3002));
        assert_eq!(free_slot(3000, 3001, &used), None);
        assert_eq!(free_slot(3004, 3004, &used), Some(3004));
        let mut s = Slots::default();
        for p in [3000, 3001, 3003] {
            s.take(p);
        }
        assert_eq!(s.next_free(3000, 3010), Some(3002));
        assert_eq!(s.next_free(3000, 3010), Some(3004));
        s.free(3001);
        assert_eq!(s.next_free(3000, 3010), Some(3001));
    }
}
