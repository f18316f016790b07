//! Azure: effective inbound evaluation of the subnet's NSG and then the NIC's NSG.
//!
//! Each NSG is read in priority order, its default rules last; the first rule that
//! matches a packet decides. Inbound traffic passes the subnet's NSG and then the NIC's,
//! so a source reaches a port only when every NSG that exists allows it; with no NSG at
//! a level, that level lets everything through.

use std::net::IpAddr;

use ipnet::IpNet;

use super::addresses::{Pieces, Source, Universe};
use super::{OpenPort, Reach, merge};
use crate::domain::{Access, PortSpec, Proto};

/// One inbound security rule, with its fields as ARM writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsgRule {
    /// The rule's name.
    pub name: String,
    /// 100–4096 for rules, 65000+ for default rules; lower wins.
    pub priority: u32,
    /// Allow or deny.
    pub access: Access,
    /// `Tcp`, `Udp`, `Icmp`, `Esp`, `Ah` or `*`.
    pub protocol: String,
    /// `sourceAddressPrefix(es)`: CIDRs, addresses, `*`, service tags.
    pub sources: Vec<String>,
    /// `sourceApplicationSecurityGroups` ids.
    pub source_groups: Vec<String>,
    /// `destinationAddressPrefix(es)`.
    pub destinations: Vec<String>,
    /// `destinationApplicationSecurityGroups` ids.
    pub destination_groups: Vec<String>,
    /// `destinationPortRange(s)`: `*`, `22`, `20-30`.
    pub ports: Vec<String>,
}

/// An NSG's inbound rules, its default rules included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nsg {
    /// The NSG's name (used in rule labels).
    pub name: String,
    /// Every inbound rule, in any order.
    pub rules: Vec<NsgRule>,
}

/// The path into one private address of a VM: the address, the application security
/// groups of its IP configuration, the NSG of its subnet and the NSG of its NIC.
#[derive(Clone, Copy, Debug)]
pub struct Hop<'a> {
    /// The private address traffic is for.
    pub address: IpAddr,
    /// Ids of the application security groups the IP configuration belongs to.
    pub groups: &'a [String],
    /// The subnet's NSG, evaluated first.
    pub subnet_nsg: Option<&'a Nsg>,
    /// The NIC's NSG, evaluated second.
    pub nic_nsg: Option<&'a Nsg>,
}

/// The three inbound default rules every NSG has, for NSG answers that omit them.
pub fn default_rules() -> Vec<NsgRule> {
    let rule = |name: &str, priority, access, source: &str, destination: &str| NsgRule {
        name: name.into(),
        priority,
        access,
        protocol: "*".into(),
        sources: vec![source.into()],
        source_groups: Vec::new(),
        destinations: vec![destination.into()],
        destination_groups: Vec::new(),
        ports: vec!["*".into()],
    };
    vec![
        rule(
            "AllowVnetInBound",
            65000,
            Access::Allow,
            "VirtualNetwork",
            "VirtualNetwork",
        ),
        rule(
            "AllowAzureLoadBalancerInBound",
            65001,
            Access::Allow,
            "AzureLoadBalancer",
            "*",
        ),
        rule("DenyAllInBound", 65500, Access::Deny, "*", "*"),
    ]
}

fn group_source(id: &str) -> Source {
    Source::InternalTag(format!("asg:{}", id.to_ascii_lowercase()))
}

impl NsgRule {
    /// Whether this is one of the NSG's default rules (priority 65000 and above).
    pub fn is_default(&self) -> bool {
        self.priority >= 65000
    }

    /// The sources this rule names, parsed; no source at all is taken as any.
    fn parsed_sources(&self) -> Vec<(String, Source)> {
        let mut out: Vec<(String, Source)> = self
            .sources
            .iter()
            .map(|s| (s.clone(), Source::azure(s)))
            .collect();
        out.extend(self.source_groups.iter().map(|g| {
            (
                g.rsplit('/').next().unwrap_or(g).to_string(),
                group_source(g),
            )
        }));
        if out.is_empty() {
            out.push(("*".into(), Source::Any));
        }
        out
    }

    fn carries(&self, port: PortSpec) -> bool {
        let proto = match self.protocol.to_ascii_lowercase().as_str() {
            "*" | "any" => true,
            "tcp" => port.protocol.overlaps(Proto::Tcp),
            "udp" => port.protocol.overlaps(Proto::Udp),
            _ => false,
        };
        let p = port.port.get();
        let in_ranges = self.ports.is_empty()
            || self.ports.iter().any(|r| match r.trim() {
                "*" => true,
                text => match text.split_once('-') {
                    Some((a, b)) => matches!(
                        (a.trim().parse::<u16>(), b.trim().parse::<u16>()),
                        (Ok(a), Ok(b)) if a <= p && p <= b
                    ),
                    None => text.parse::<u16>() == Ok(p),
                },
            });
        proto && in_ranges
    }

    fn targets(&self, hop: &Hop) -> bool {
        if self.destinations.is_empty() && self.destination_groups.is_empty() {
            return true;
        }
        let by_prefix = self.destinations.iter().any(|d| match Source::azure(d) {
            Source::Any => true,
            Source::Net(net) => net.contains(&hop.address),
            // The VM's own address is in its virtual network.
            Source::VirtualNetwork => !Source::Net(IpNet::from(hop.address)).is_public(),
            _ => false,
        });
        let by_group = self
            .destination_groups
            .iter()
            .any(|g| hop.groups.iter().any(|h| h.eq_ignore_ascii_case(g)));
        by_prefix || by_group
    }
}

/// What one NSG lets through to one address and port: disjoint pieces, each with the
/// allow rule that admits it.
fn admitted<'a>(
    nsg: &'a Nsg,
    hop: &Hop,
    port: PortSpec,
    universe: &Universe,
) -> Vec<(&'a NsgRule, Pieces)> {
    let mut rules: Vec<&NsgRule> = nsg.rules.iter().collect();
    rules.sort_by_key(|r| r.priority);
    let mut undecided = universe.all();
    let mut out = Vec::new();
    for rule in rules {
        if undecided.is_empty() {
            break;
        }
        if !rule.carries(port) || !rule.targets(hop) {
            continue;
        }
        let matched = rule
            .parsed_sources()
            .iter()
            .fold(universe.none(), |acc, (_, s)| acc.or(&universe.pieces(s)));
        let decided = matched.and(&undecided);
        if decided.is_empty() {
            continue;
        }
        undecided = undecided.minus(&decided);
        if rule.access == Access::Allow {
            out.push((rule, decided));
        }
    }
    // Whatever no rule decided is denied (an NSG without its default rules still ends
    // with DenyAllInBound).
    out
}

/// The written sources of `rule` that meet `part`, with their pieces.
fn shown(rule: &NsgRule, part: &Pieces, universe: &Universe) -> (Vec<String>, Pieces) {
    let mut texts = Vec::new();
    let mut pieces = universe.none();
    for (text, s) in rule.parsed_sources() {
        let p = universe.pieces(&s);
        if p.meets(part) {
            texts.push(text);
            pieces = pieces.or(&p);
        }
    }
    (texts, pieces)
}

/// The management ports in `ports` reachable through the hops (every private address of
/// the VM), from where, and through which rules.
pub fn open_ports(hops: &[Hop], ports: &[PortSpec]) -> Vec<OpenPort> {
    let mut sources = Vec::new();
    for hop in hops {
        for nsg in [hop.subnet_nsg, hop.nic_nsg].into_iter().flatten() {
            for rule in &nsg.rules {
                sources.extend(rule.parsed_sources().into_iter().map(|(_, s)| s));
            }
        }
    }
    let universe = Universe::new(&sources);
    let public = universe.public();
    let mut found = Vec::new();
    for hop in hops {
        for port in ports {
            let level = |nsg: Option<&'_ Nsg>| -> Vec<(Option<(String, NsgRule)>, Pieces)> {
                match nsg {
                    None => vec![(None, universe.all())],
                    Some(n) => admitted(n, hop, *port, &universe)
                        .into_iter()
                        .map(|(r, p)| (Some((n.name.clone(), r.clone())), p))
                        .collect(),
                }
            };
            let (first, second) = (level(hop.subnet_nsg), level(hop.nic_nsg));
            for (a, pa) in &first {
                for (b, pb) in &second {
                    let both = pa.and(pb);
                    if both.is_empty() {
                        continue;
                    }
                    let internet = both.and(&public);
                    let (reach, part) = if internet.is_empty() {
                        (Reach::Internal, both)
                    } else {
                        (Reach::Internet, internet)
                    };
                    let rules: Vec<&(String, NsgRule)> = [a, b].into_iter().flatten().collect();
                    // Every VM is reachable from its own network through the default rules;
                    // saying so for each VM would drown what people wrote.
                    if reach == Reach::Internal && rules.iter().any(|(_, r)| r.is_default()) {
                        continue;
                    }
                    let label = rules
                        .iter()
                        .map(|(nsg, r)| format!("{nsg}/{}", r.name))
                        .collect::<Vec<_>>()
                        .join(" + ");
                    // Show the sources of the tighter rule; both when neither holds the other.
                    let views: Vec<(Vec<String>, Pieces)> = rules
                        .iter()
                        .map(|(_, r)| shown(r, &part, &universe))
                        .collect();
                    let sources = match views.as_slice() {
                        [one] => one.0.clone(),
                        [x, y] if x.1.minus(&y.1).is_empty() => x.0.clone(),
                        [x, y] if y.1.minus(&x.1).is_empty() => y.0.clone(),
                        many => {
                            let mut all: Vec<String> = Vec::new();
                            for (texts, _) in many {
                                for t in texts {
                                    if !all.contains(t) {
                                        all.push(t.clone());
                                    }
                                }
                            }
                            all
                        }
                    };
                    found.push(OpenPort {
                        port: *port,
                        reach,
                        sources,
                        rules: vec![label],
                    });
                }
            }
        }
    }
    merge(found)
}

#[cfg(test)]
#[path = "azure_tests.rs"]
mod tests;
