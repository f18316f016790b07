//! EC2 shapes ↔ the domain model.

use std::collections::BTreeMap;
use std::num::NonZeroU16;

use aws_sdk_ec2::types::{
    IpPermission, IpRange, Ipv6Range, PrefixListId, SecurityGroupRule, SecurityGroupRuleRequest,
    UserIdGroupPair,
};
use ipnet::IpNet;

use crate::domain::stamp;
use crate::domain::{
    Access, ForeignRule, ForeignRuleSpec, ForeignSource, Grant, OwnedKind, OwnedRule, PortSpec,
    Proto, RuleShape, Stamp,
};

/// The EC2 protocols that carry a domain protocol (`Any` is a TCP and a UDP rule).
pub fn ec2_protocols(p: Proto) -> &'static [&'static str] {
    match p {
        Proto::Tcp => &["tcp"],
        Proto::Udp => &["udp"],
        Proto::Any => &["tcp", "udp"],
    }
}

/// The source of a rule as EC2 reports it.
pub fn rule_source(r: &SecurityGroupRule) -> Option<ForeignSource> {
    if let Some(c) = r.cidr_ipv4() {
        return Some(ForeignSource::Cidr(c.to_string()));
    }
    if let Some(c) = r.cidr_ipv6() {
        return Some(ForeignSource::Cidr(c.to_string()));
    }
    if let Some(g) = r.referenced_group_info().and_then(|g| g.group_id()) {
        return Some(ForeignSource::Group(g.to_string()));
    }
    r.prefix_list_id()
        .map(|p| ForeignSource::PrefixList(p.to_string()))
}

/// The ports of a rule as EC2 reports them (`None`: all, or not port-based).
fn rule_ports(r: &SecurityGroupRule) -> Option<(u16, u16)> {
    match (r.ip_protocol(), r.from_port(), r.to_port()) {
        (Some("-1"), _, _) => None,
        (_, Some(from), Some(to)) if from >= 0 && to >= 0 => Some((from as u16, to as u16)),
        _ => None,
    }
}

/// A rule of a group the operator does not own.
pub fn foreign_rule(r: &SecurityGroupRule) -> Option<ForeignRule> {
    Some(ForeignRule {
        cloud_id: r.security_group_rule_id()?.to_string(),
        spec: ForeignRuleSpec {
            container: r.group_id()?.to_string(),
            protocol: r.ip_protocol()?.to_string(),
            ports: rule_ports(r),
            source: rule_source(r)?,
            description: r.description().map(str::to_string),
        },
        access: Access::Allow,
        priority: None,
    })
}

/// The rules of an owned group of installation `cluster`, as owned rules at `location`:
/// grants (a TCP and a UDP rule with the same port, source and stamp are one `Any`
/// grant), carve-outs (stamped without expiry), and strays (anything else: they go).
pub fn owned_rules(cluster: &str, location: &str, rules: &[&SecurityGroupRule]) -> Vec<OwnedRule> {
    let stray = Stamp {
        owner: String::new(),
        expires_at: None,
    };
    let mut out = Vec::new();
    // Grant candidates by (port, source, description).
    let mut grants: BTreeMap<(u16, IpNet, String), Vec<(&SecurityGroupRule, Stamp)>> =
        BTreeMap::new();
    for r in rules {
        let id = r.security_group_rule_id().unwrap_or_default().to_string();
        let stamp = r.description().and_then(|d| stamp::parse_own(cluster, d));
        let owned = |kind, stamp: Stamp| OwnedRule {
            location: location.to_string(),
            cloud_id: id.clone(),
            kind,
            stamp,
            priority: None,
            destinations: Vec::new(),
        };
        let single_port = rule_ports(r)
            .filter(|(a, b)| a == b)
            .map(|(a, _)| a)
            .filter(|p| *p > 0);
        let cidr: Option<IpNet> = r.cidr_ipv4().or(r.cidr_ipv6()).and_then(|c| c.parse().ok());
        match (stamp, r.ip_protocol(), single_port, cidr) {
            (Some(s), Some("tcp" | "udp"), Some(port), Some(source)) if s.expires_at.is_some() => {
                grants
                    .entry((port, source, r.description().unwrap_or("").to_string()))
                    .or_default()
                    .push((r, s));
            }
            (Some(s), Some(protocol), _, _) if s.expires_at.is_none() => match rule_source(r) {
                Some(source) => out.push(owned(
                    OwnedKind::CarveOut(RuleShape {
                        protocol: protocol.to_string(),
                        ports: rule_ports(r),
                        source,
                    }),
                    s,
                )),
                None => out.push(owned(OwnedKind::Stray, stray.clone())),
            },
            _ => out.push(owned(OwnedKind::Stray, stray.clone())),
        }
    }
    for ((port, source, _), rules) in grants {
        let port = NonZeroU16::new(port).expect("ports above zero");
        let has = |p: &str| rules.iter().any(|(r, _)| r.ip_protocol() == Some(p));
        let grant = |protocol, ids: Vec<&str>, stamp: &Stamp| OwnedRule {
            location: location.to_string(),
            cloud_id: ids.join(","),
            kind: OwnedKind::Grant {
                port: PortSpec { port, protocol },
                source,
            },
            stamp: stamp.clone(),
            priority: None,
            destinations: Vec::new(),
        };
        if has("tcp") && has("udp") {
            let tcp = rules.iter().find(|(r, _)| r.ip_protocol() == Some("tcp"));
            let udp = rules.iter().find(|(r, _)| r.ip_protocol() == Some("udp"));
            let (Some((t, stamp)), Some((u, _))) = (tcp, udp) else {
                continue;
            };
            let ids = vec![
                t.security_group_rule_id().unwrap_or_default(),
                u.security_group_rule_id().unwrap_or_default(),
            ];
            out.push(grant(Proto::Any, ids, stamp));
            // A second rule of the same protocol is a duplicate: it goes.
            for (r, s) in rules.iter().filter(|(r, _)| {
                r.security_group_rule_id() != t.security_group_rule_id()
                    && r.security_group_rule_id() != u.security_group_rule_id()
            }) {
                let mut dup = grant(Proto::Tcp, vec![r.security_group_rule_id().unwrap_or_default()], s);
                dup.kind = OwnedKind::Stray;
                out.push(dup);
            }
        } else {
            for (r, s) in &rules {
                let protocol = if r.ip_protocol() == Some("udp") {
                    Proto::Udp
                } else {
                    Proto::Tcp
                };
                out.push(grant(protocol, vec![r.security_group_rule_id().unwrap_or_default()], s));
            }
        }
    }
    out
}

/// The EC2 permissions that carry a grant (two for `Any`), stamped for `cluster`.
pub fn grant_permissions(cluster: &str, grant: &Grant) -> Vec<IpPermission> {
    let description = stamp::format(cluster, &grant.stamp());
    let port = i32::from(grant.port.port.get());
    ec2_protocols(grant.port.protocol)
        .iter()
        .map(|proto| {
            let b = IpPermission::builder()
                .ip_protocol(*proto)
                .from_port(port)
                .to_port(port);
            match grant.source {
                IpNet::V4(n) => b.ip_ranges(
                    IpRange::builder()
                        .cidr_ip(n.to_string())
                        .description(&description)
                        .build(),
                ),
                IpNet::V6(n) => b.ipv6_ranges(
                    Ipv6Range::builder()
                        .cidr_ipv6(n.to_string())
                        .description(&description)
                        .build(),
                ),
            }
            .build()
        })
        .collect()
}

/// The rule update that rewrites a rule's stamp for a grant.
pub fn restamp_request(cluster: &str, grant: &Grant, protocol: &str) -> SecurityGroupRuleRequest {
    let description = stamp::format(cluster, &grant.stamp());
    let port = i32::from(grant.port.port.get());
    let b = SecurityGroupRuleRequest::builder()
        .ip_protocol(protocol)
        .from_port(port)
        .to_port(port)
        .description(description);
    match grant.source {
        IpNet::V4(n) => b.cidr_ipv4(n.to_string()),
        IpNet::V6(n) => b.cidr_ipv6(n.to_string()),
    }
    .build()
}

/// The permission of a carve-out, stamped with the policy (no expiry).
pub fn carve_out_permission(cluster: &str, owner: &Stamp, shape: &RuleShape) -> IpPermission {
    permission(
        &shape.protocol,
        shape.ports,
        &shape.source,
        Some(stamp::format(cluster, owner)),
    )
}

/// The permission that restores a recorded foreign rule exactly.
pub fn restore_permission(spec: &ForeignRuleSpec) -> IpPermission {
    permission(
        &spec.protocol,
        spec.ports,
        &spec.source,
        spec.description.clone(),
    )
}

fn permission(
    protocol: &str,
    ports: Option<(u16, u16)>,
    source: &ForeignSource,
    d: Option<String>,
) -> IpPermission {
    let mut b = IpPermission::builder().ip_protocol(protocol);
    match ports {
        Some((from, to)) => b = b.from_port(i32::from(from)).to_port(i32::from(to)),
        // ICMP without ports means every type and code.
        None if protocol.starts_with("icmp") => b = b.from_port(-1).to_port(-1),
        None => {}
    }
    match source {
        ForeignSource::Cidr(c) if c.contains(':') => {
            b.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(c).set_description(d).build())
        }
        ForeignSource::Cidr(c) => {
            b.ip_ranges(IpRange::builder().cidr_ip(c).set_description(d).build())
        }
        ForeignSource::Group(g) => b.user_id_group_pairs(
            UserIdGroupPair::builder()
                .group_id(g)
                .set_description(d)
                .build(),
        ),
        ForeignSource::PrefixList(p) | ForeignSource::Tag(p) => b.prefix_list_ids(
            PrefixListId::builder()
                .prefix_list_id(p)
                .set_description(d)
                .build(),
        ),
    }
    .build()
}
