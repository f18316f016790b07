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
    Access, ForeignRule, ForeignRuleSpec, ForeignSource, Grant, OwnedRule, PortSpec, Proto, Stamp,
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

/// A rule of a group the operator does not own.
pub fn foreign_rule(r: &SecurityGroupRule) -> Option<ForeignRule> {
    let protocol = r.ip_protocol()?.to_string();
    let ports = match (r.from_port(), r.to_port()) {
        _ if protocol == "-1" => None,
        (Some(from), Some(to)) if from >= 0 && to >= 0 => Some((from as u16, to as u16)),
        _ => None,
    };
    Some(ForeignRule {
        cloud_id: r.security_group_rule_id()?.to_string(),
        spec: ForeignRuleSpec {
            container: r.group_id()?.to_string(),
            protocol,
            ports,
            source: rule_source(r)?,
            description: r.description().map(str::to_string),
        },
        access: Access::Allow,
        priority: None,
    })
}

/// The rules of an owned group, as owned rules at `location`. A TCP and a UDP rule with
/// the same port, source and stamp are one `Any` rule.
pub fn owned_rules(location: &str, rules: &[&SecurityGroupRule]) -> Vec<OwnedRule> {
    let mut by_key: BTreeMap<(i32, i32, String, String), Vec<&SecurityGroupRule>> = BTreeMap::new();
    for r in rules {
        let source = r.cidr_ipv4().or(r.cidr_ipv6()).unwrap_or("").to_string();
        by_key
            .entry((
                r.from_port().unwrap_or(-1),
                r.to_port().unwrap_or(-1),
                source,
                r.description().unwrap_or("").to_string(),
            ))
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for ((from, to, source, description), rules) in by_key {
        let protos: Vec<&str> = rules.iter().filter_map(|r| r.ip_protocol()).collect();
        let both = protos.contains(&"tcp") && protos.contains(&"udp");
        let stamp = stamp::parse(&description).unwrap_or(Stamp {
            owner: String::new(),
            expires_at: None,
        });
        // A rule we did not write the way we write them (a range, a group source, a
        // missing source) gets no source, so it matches no grant and is removed.
        let single_port = (from == to)
            .then(|| u16::try_from(from).ok().and_then(NonZeroU16::new))
            .flatten();
        let source: Option<IpNet> = source.parse().ok().filter(|_| single_port.is_some());
        let port = single_port.unwrap_or(NonZeroU16::MIN);
        if both {
            let ids: Vec<&str> = rules
                .iter()
                .filter_map(|r| r.security_group_rule_id())
                .collect();
            out.push(OwnedRule {
                location: location.to_string(),
                cloud_id: ids.join(","),
                access: Access::Allow,
                port: PortSpec {
                    port,
                    protocol: Proto::Any,
                },
                source,
                stamp: stamp.clone(),
                priority: None,
            });
            // Anything beyond the pair (e.g. an all-traffic rule) is its own rule.
            for r in rules
                .iter()
                .filter(|r| !matches!(r.ip_protocol(), Some("tcp" | "udp")))
            {
                out.push(owned_one(location, r, port, None, &stamp));
            }
        } else {
            for r in rules {
                let s = match r.ip_protocol() {
                    Some("tcp" | "udp") => source,
                    _ => None,
                };
                out.push(owned_one(location, r, port, s, &stamp));
            }
        }
    }
    out
}

fn owned_one(
    location: &str,
    r: &SecurityGroupRule,
    port: NonZeroU16,
    source: Option<IpNet>,
    stamp: &Stamp,
) -> OwnedRule {
    let protocol = match r.ip_protocol() {
        Some("udp") => Proto::Udp,
        _ => Proto::Tcp,
    };
    OwnedRule {
        location: location.to_string(),
        cloud_id: r.security_group_rule_id().unwrap_or_default().to_string(),
        access: Access::Allow,
        port: PortSpec { port, protocol },
        source,
        stamp: stamp.clone(),
        priority: None,
    }
}

/// The EC2 permissions that carry a grant (two for `Any`).
pub fn grant_permissions(grant: &Grant) -> Vec<IpPermission> {
    let description = stamp::format(&grant.stamp());
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
pub fn restamp_request(grant: &Grant, protocol: &str) -> SecurityGroupRuleRequest {
    let description = stamp::format(&grant.stamp());
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

/// The permission that restores a recorded foreign rule exactly.
pub fn restore_permission(spec: &ForeignRuleSpec) -> IpPermission {
    let mut b = IpPermission::builder().ip_protocol(&spec.protocol);
    if let Some((from, to)) = spec.ports {
        b = b.from_port(i32::from(from)).to_port(i32::from(to));
    }
    let d = spec.description.clone();
    match &spec.source {
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
