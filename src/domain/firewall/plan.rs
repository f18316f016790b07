//! `plan()`: the owned collections a firewall must hold, and `apply()` for checking it.
//!
//! Steps: sort the collections into ours and foreign → choose collection priorities →
//! give each grant a mapped port → build the NAT and allow collections → build each
//! target's deny collection → compare with what is there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use super::super::model::{Grant, PortSpec, Stamp};
use super::super::plan::BlockKind;
use super::super::stamp;
use super::names::{protocols, rule_target};
use super::*;

/// The first priority in `from..=to` that `used` does not hold.
fn free_slot(from: u16, to: u16, used: &BTreeSet<u16>) -> Option<u16> {
    (from.max(*PRIORITIES.start())..=to.min(*PRIORITIES.end())).find(|p| !used.contains(p))
}

/// A managed target with what the plan needs about it.
struct Managed<'a> {
    target: &'a FirewallTarget,
    tag: String,
    /// Where DNAT translates to: the VM's first private IPv4 address.
    translated: Option<Ipv4Addr>,
}

/// The firewall sorted for planning.
struct Scene<'a> {
    names: Names,
    now: Timestamp,
    managed: BTreeMap<String, Managed<'a>>,
    ours: Vec<&'a Collection>,
    foreign: Vec<&'a Collection>,
    old_nat: Option<&'a Collection>,
    old_allow: Option<&'a Collection>,
}

impl<'a> Scene<'a> {
    fn new(desired: &'a FirewallDesired, observed: &'a FirewallObserved) -> Scene<'a> {
        let names = Names::new(&desired.cluster);
        let managed = desired
            .targets
            .iter()
            .map(|target| {
                let tag = target_tag(&target.key);
                let translated = target.private_ips.iter().find_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                });
                let m = Managed {
                    target,
                    tag: tag.clone(),
                    translated,
                };
                (tag, m)
            })
            .collect();
        let (ours, foreign): (Vec<&Collection>, Vec<&Collection>) =
            observed.collections.iter().partition(|c| names.owns(c));
        let find = |kind, name: String| {
            ours.iter()
                .find(|c| c.kind == kind && c.name == name)
                .copied()
        };
        let old_nat = find(CollectionKind::Nat, names.nat());
        let old_allow = find(CollectionKind::Network, names.allow());
        Scene {
            names,
            now: desired.now,
            managed,
            ours,
            foreign,
            old_nat,
            old_allow,
        }
    }

    /// Whether the deny collection named `name` stays as it is: it belongs to a target
    /// the plan does not manage, or to one whose policy is on hold.
    fn keeps_deny(&self, name: &str) -> bool {
        self.names
            .deny_target(name)
            .is_some_and(|t| self.managed.get(t).is_none_or(|m| m.target.hold))
    }

    /// Whether a rule in the shared collections belongs to a managed target.
    fn is_managed_rule(&self, name: &str) -> bool {
        rule_target(name).is_some_and(|t| self.managed.contains_key(t))
    }

    /// The rules of a shared collection that belong to targets the plan does not manage.
    fn unmanaged_rules(&self, old: Option<&Collection>) -> Vec<FwRule> {
        old.iter()
            .flat_map(|c| &c.rules)
            .filter(|r| !self.is_managed_rule(&r.name))
            .cloned()
            .collect()
    }

    fn old_deny(&self, tag: &str) -> Option<&'a Collection> {
        let name = self.names.deny(tag);
        self.ours
            .iter()
            .find(|c| c.kind == CollectionKind::Network && c.name == name)
            .copied()
    }
}

/// Collection priorities: taken ones, and where the shared collections go.
struct Slots {
    used_net: BTreeSet<u16>,
    nat: Option<u16>,
    /// Kept even while the allow collection is empty, so that the deny collections
    /// below it do not move when the first grant arrives.
    allow: Option<u16>,
}

impl Slots {
    fn new(scene: &Scene) -> Slots {
        let mut used_nat = BTreeSet::new();
        let mut used_net = BTreeSet::new();
        for c in &scene.foreign {
            match c.kind {
                CollectionKind::Nat => used_nat.insert(c.priority),
                CollectionKind::Network => used_net.insert(c.priority),
            };
        }
        for c in scene.ours.iter().filter(|c| scene.keeps_deny(&c.name)) {
            used_net.insert(c.priority);
        }
        let bands = scene.managed.values().map(|m| m.target.settings.band);
        let lo = bands.clone().map(|b| b.first).min();
        let hi = bands.map(|b| b.last).max();
        let place = |old: Option<&Collection>, used: &BTreeSet<u16>| match old {
            Some(c) if !used.contains(&c.priority) && PRIORITIES.contains(&c.priority) => {
                Some(c.priority)
            }
            _ => free_slot(lo?, hi?, used),
        };
        let nat = place(scene.old_nat, &used_nat);
        let allow = place(scene.old_allow, &used_net);
        if let Some(p) = allow {
            used_net.insert(p);
        }
        Slots {
            used_net,
            nat,
            allow,
        }
    }
}

/// Mapped ports listened on, per public address, as inclusive ranges.
#[derive(Default)]
struct Held(BTreeMap<Ipv4Addr, Vec<(u16, u16)>>);

impl Held {
    fn holds(&self, address: Ipv4Addr, port: u16) -> bool {
        self.0
            .get(&address)
            .is_some_and(|ranges| ranges.iter().any(|(a, b)| *a <= port && port <= *b))
    }

    fn take(&mut self, address: Ipv4Addr, port: u16) -> bool {
        if self.holds(address, port) {
            return false;
        }
        self.0.entry(address).or_default().push((port, port));
        true
    }

    /// Holds what `rule` listens on at any of `addresses`.
    fn rule(&mut self, rule: &FwRule, addresses: &BTreeSet<Ipv4Addr>) {
        for address in addresses {
            let ranges = rule.listens_on(IpAddr::V4(*address));
            self.0.entry(*address).or_default().extend(ranges);
        }
    }
}

/// A grant on its way to a DNAT rule.
struct Placed<'a> {
    m: &'a Managed<'a>,
    grant: &'a Grant,
    name: String,
    port: Option<u16>,
}

/// Something that cannot be placed now (room may free up, a foreign rule may change).
fn blocked(target: &FirewallTarget, item: BlockedItem, reason: String) -> FirewallBlocked {
    FirewallBlocked {
        target: target.key.clone(),
        item,
        kind: BlockKind::Conflict,
        reason,
    }
}

/// The live grants that can be placed, with the reasons of those that cannot.
fn grants<'a>(scene: &'a Scene, slots: &Slots, out: &mut Vec<FirewallBlocked>) -> Vec<Placed<'a>> {
    let mut placed = Vec::new();
    let mut named = BTreeSet::new();
    for m in scene.managed.values() {
        let t = m.target;
        for grant in t.grants.iter().filter(|g| g.expires_at > scene.now) {
            let item = || BlockedItem::Grant {
                request: grant.request.clone(),
                port: grant.port,
            };
            let never = BlockKind::Unsupported;
            let reason = if !grant.source.addr().is_ipv4() {
                Some((
                    never,
                    format!(
                        "DNAT listens on the public IPv4 address {}: an IPv6 source ({}) cannot reach it",
                        t.settings.public_ip, grant.source
                    ),
                ))
            } else if m.translated.is_none() {
                Some((
                    never,
                    "the VM has no private IPv4 address to translate to".into(),
                ))
            } else if slots.nat.is_none() || slots.allow.is_none() {
                Some((
                    BlockKind::Conflict,
                    format!(
                        "no free rule collection priority in {}-{} for the owned NAT and allow collections",
                        t.settings.band.first, t.settings.band.last
                    ),
                ))
            } else {
                None
            };
            if let Some((kind, reason)) = reason {
                out.push(FirewallBlocked {
                    kind,
                    ..blocked(t, item(), reason)
                });
                continue;
            }
            let name = grant_rule_name(&m.tag, grant);
            // One rule per name: desired() never gives two requests the same rule.
            if named.insert(name.clone()) {
                placed.push(Placed {
                    m,
                    grant,
                    name,
                    port: None,
                });
            }
        }
    }
    placed
}

/// Gives each grant a mapped port: an existing rule keeps its port while it still fits;
/// the others get the lowest port of their range nothing listens on.
fn map_ports(scene: &Scene, placed: &mut [Placed], out: &mut Vec<FirewallBlocked>) {
    let addresses: BTreeSet<Ipv4Addr> = scene
        .managed
        .values()
        .map(|m| m.target.settings.public_ip)
        .collect();
    let mut held = Held::default();
    for c in scene
        .foreign
        .iter()
        .filter(|c| c.kind == CollectionKind::Nat)
    {
        for rule in &c.rules {
            held.rule(rule, &addresses);
        }
    }
    for rule in scene.unmanaged_rules(scene.old_nat) {
        held.rule(&rule, &addresses);
    }
    for g in placed.iter_mut() {
        let settings = &g.m.target.settings;
        let kept = scene
            .old_nat
            .and_then(|c| c.rules.iter().find(|r| r.name == g.name))
            .filter(|r| r.destinations == [settings.public_ip.to_string()])
            .and_then(|r| match r.ports.as_slice() {
                [p] => p.trim().parse::<u16>().ok(),
                _ => None,
            })
            .filter(|p| settings.mapped_ports.contains(*p));
        if let Some(p) = kept
            && held.take(settings.public_ip, p)
        {
            g.port = Some(p);
        }
    }
    for g in placed.iter_mut().filter(|g| g.port.is_none()) {
        let t = g.m.target;
        let range = t.settings.mapped_ports;
        match (range.first..=range.last).find(|p| !held.holds(t.settings.public_ip, *p)) {
            Some(p) => {
                held.take(t.settings.public_ip, p);
                g.port = Some(p);
            }
            None => out.push(blocked(
                t,
                BlockedItem::Grant {
                    request: g.grant.request.clone(),
                    port: g.grant.port,
                },
                format!(
                    "every mapped port in {range} on {} is taken",
                    t.settings.public_ip
                ),
            )),
        }
    }
}

fn collection(
    kind: CollectionKind,
    name: String,
    priority: u16,
    action: &str,
    mut rules: Vec<FwRule>,
) -> Collection {
    rules.sort_by(|a, b| a.name.cmp(&b.name));
    Collection {
        kind,
        name,
        priority,
        action: action.into(),
        rules,
        exact: true,
    }
}

/// The NAT and allow collections (absent when empty), and where to connect.
fn grant_collections(
    scene: &Scene,
    slots: &Slots,
    placed: &[Placed],
) -> (Vec<Collection>, Vec<Connection>) {
    let mut nat_rules = scene.unmanaged_rules(scene.old_nat);
    let mut allow_rules = scene.unmanaged_rules(scene.old_allow);
    let mut connections = Vec::new();
    for g in placed {
        let (Some(mapped), Some(translated)) = (g.port, g.m.translated) else {
            continue;
        };
        let t = g.m.target;
        let description = Some(stamp::format(scene.names.cluster(), &g.grant.stamp()));
        let protocols = protocols(g.grant.port.protocol);
        let source = g.grant.source.to_string();
        nat_rules.push(FwRule {
            name: g.name.clone(),
            description: description.clone(),
            protocols: protocols.clone(),
            sources: vec![source.clone()],
            destinations: vec![t.settings.public_ip.to_string()],
            ports: vec![mapped.to_string()],
            translated_address: Some(translated.to_string()),
            translated_port: Some(g.grant.port.port.to_string()),
            opaque: false,
        });
        allow_rules.push(FwRule {
            name: g.name.clone(),
            description,
            protocols,
            sources: vec![source],
            destinations: vec![translated.to_string()],
            ports: vec![g.grant.port.port.to_string()],
            translated_address: None,
            translated_port: None,
            opaque: false,
        });
        connections.push(Connection {
            target: t.key.clone(),
            request: g.grant.request.clone(),
            port: g.grant.port,
            source: g.grant.source,
            address: t.settings.public_ip,
            mapped_port: mapped,
        });
    }
    let mut out = Vec::new();
    let nat = slots.nat.or(scene.old_nat.map(|c| c.priority));
    if let (false, Some(p)) = (nat_rules.is_empty(), nat) {
        let name = scene.names.nat();
        out.push(collection(CollectionKind::Nat, name, p, "Dnat", nat_rules));
    }
    let allow = slots.allow.or(scene.old_allow.map(|c| c.priority));
    if let (false, Some(p)) = (allow_rules.is_empty(), allow) {
        let name = scene.names.allow();
        out.push(collection(
            CollectionKind::Network,
            name,
            p,
            "Allow",
            allow_rules,
        ));
    }
    (out, connections)
}

/// Where one target's deny may go for `port`: below the lowest-precedence foreign allow
/// collection that reaches the VM on it (0: none), or why it cannot go anywhere.
fn deny_floor(scene: &Scene, t: &FirewallTarget, port: PortSpec) -> Result<u16, String> {
    let foreign = || scene.foreign.iter();
    let translating = foreign()
        .filter(|c| c.kind == CollectionKind::Nat)
        .find_map(|c| {
            let r = c
                .rules
                .iter()
                .find(|r| t.private_ips.iter().any(|ip| r.translates_to(*ip, port)))?;
            Some((c, r))
        });
    if let Some((c, r)) = translating {
        // Azure lets DNAT'ed traffic through unless an explicit deny matches it: a deny
        // here would close a door someone else opened on purpose.
        return Err(format!(
            "rule {} of NAT collection {} forwards to the VM on port {port}; a deny would override its implicit allow",
            r.name, c.name
        ));
    }
    // Foreign denies are not counted: deny after deny decides the same.
    let covering = foreign()
        .filter(|c| c.kind == CollectionKind::Network && c.action.eq_ignore_ascii_case("Allow"))
        .filter(|c| {
            c.rules
                .iter()
                .any(|r| t.private_ips.iter().any(|ip| r.reaches(*ip, port)))
        })
        .max_by_key(|c| c.priority);
    let band = t.settings.band;
    match covering {
        Some(c) if c.priority >= band.last => Err(format!(
            "network collection {} allows port {port} to the VM at priority {}, at or below the band {}-{}",
            c.name, c.priority, band.first, band.last
        )),
        Some(c) => Ok(c.priority),
        None => Ok(0),
    }
}

/// One managed target's deny collection, if it has a baseline that can be placed.
fn deny_collection(
    scene: &Scene,
    m: &Managed,
    slots: &mut Slots,
    out: &mut Vec<FirewallBlocked>,
) -> Option<Collection> {
    let t = m.target;
    let ports: BTreeSet<PortSpec> = t.baseline.iter().copied().collect();
    if ports.is_empty() {
        return None;
    }
    if t.private_ips.is_empty() {
        for port in ports {
            let reason = "the VM has no private address to deny traffic to".to_string();
            out.push(blocked(t, BlockedItem::Baseline(port), reason));
        }
        return None;
    }
    let mut placeable: Vec<PortSpec> = Vec::new();
    let mut floor = slots.allow.unwrap_or(0);
    for port in ports {
        match deny_floor(scene, t, port) {
            Ok(f) => {
                floor = floor.max(f);
                placeable.push(port);
            }
            Err(reason) => out.push(blocked(t, BlockedItem::Baseline(port), reason)),
        }
    }
    if placeable.is_empty() {
        return None;
    }
    let band = t.settings.band;
    let fits = |p: u16| p > floor && band.first <= p && p <= band.last;
    let priority = match scene.old_deny(&m.tag) {
        Some(c) if fits(c.priority) && !slots.used_net.contains(&c.priority) => Some(c.priority),
        _ => free_slot(
            band.first.max(floor.saturating_add(1)),
            band.last,
            &slots.used_net,
        ),
    };
    let Some(priority) = priority else {
        for port in placeable {
            let reason = format!(
                "no free rule collection priority in {}-{} below {floor}",
                band.first, band.last
            );
            out.push(blocked(t, BlockedItem::Baseline(port), reason));
        }
        return None;
    };
    slots.used_net.insert(priority);
    let description = Some(stamp::format(
        scene.names.cluster(),
        &Stamp::baseline(&t.key.policy),
    ));
    let destinations: Vec<String> = t.private_ips.iter().map(ToString::to_string).collect();
    let rules = placeable
        .into_iter()
        .map(|port| FwRule {
            name: deny_rule_name(port),
            description: description.clone(),
            protocols: protocols(port.protocol),
            sources: vec!["*".into()],
            destinations: destinations.clone(),
            ports: vec![port.port.to_string()],
            translated_address: None,
            translated_port: None,
            opaque: false,
        })
        .collect();
    let name = scene.names.deny(&m.tag);
    Some(collection(
        CollectionKind::Network,
        name,
        priority,
        "Deny",
        rules,
    ))
}

/// Plans the firewall's owned collections: see the module documentation of
/// [`super`]. Only the targets in `desired` are planned; owned rules of other targets
/// stay as they are.
pub fn plan(desired: &FirewallDesired, observed: &FirewallObserved) -> FirewallPlan {
    let scene = Scene::new(desired, observed);
    let mut slots = Slots::new(&scene);
    let mut out = Vec::new();
    let mut placed = grants(&scene, &slots, &mut out);
    map_ports(&scene, &mut placed, &mut out);
    let (mut owned, connections) = grant_collections(&scene, &slots, &placed);
    for c in scene.ours.iter().filter(|c| scene.keeps_deny(&c.name)) {
        owned.push((*c).clone());
    }
    for m in scene.managed.values().filter(|m| !m.target.hold) {
        owned.extend(deny_collection(&scene, m, &mut slots, &mut out));
    }

    let order = |c: &Collection| (c.kind, c.name.clone());
    owned.sort_by_key(order);
    let mut before = scene.ours.clone();
    before.sort_by_key(|c| order(c));
    let changed = before.len() != owned.len()
        || before
            .iter()
            .zip(&owned)
            .any(|(old, new)| !old.exact || *old != new);
    FirewallPlan {
        owned,
        changed,
        connections,
        blocked: out,
    }
}

/// The firewall after `owned` replaced installation `cluster`'s collections: foreign
/// ones stay where they were, owned ones are replaced in place, new ones go last.
pub fn apply(observed: &FirewallObserved, cluster: &str, owned: &[Collection]) -> FirewallObserved {
    let names = Names::new(cluster);
    let mut collections = Vec::new();
    let mut placed = BTreeSet::new();
    for c in &observed.collections {
        if !names.owns(c) {
            collections.push(c.clone());
        } else if let Some(new) = owned.iter().find(|n| n.kind == c.kind && n.name == c.name) {
            placed.insert((new.kind, new.name.clone()));
            collections.push(new.clone());
        }
    }
    for new in owned {
        if !placed.contains(&(new.kind, new.name.clone())) {
            collections.push(new.clone());
        }
    }
    FirewallObserved { collections }
}
