//! Carve-outs: what a foreign rule opens beyond the governed ports.
//!
//! The AWS baseline can only revoke a rule whole. When a rule opens more than the governed
//! ports ("tcp 0–65535 from 10.0.0.0/8", "all traffic from this group"), revoking it would
//! close traffic the policy does not govern. So before revoking, the operator adds owned
//! rules with the same source for the rest of the rule's reach, and removes them once the
//! rule is restored. This module computes that rest.

use super::model::{ForeignRuleSpec, PortSpec, Proto, RuleShape};

/// The highest port.
const MAX_PORT: u16 = 65535;

/// The shapes that keep open what `rule` opens besides the `governed` ports. Empty when
/// the rule opens governed ports only. For an all-protocols rule the rest is TCP, UDP and
/// ICMP (ICMPv6 for an IPv6 source); other IP protocols cannot be carved out by port and
/// stay closed until the rule is restored ([`lost_protocols`] says so).
pub fn carve_outs(rule: &ForeignRuleSpec, governed: &[PortSpec]) -> Vec<RuleShape> {
    let shape = |protocol: &str, ports: Option<(u16, u16)>| RuleShape {
        protocol: protocol.to_string(),
        ports,
        source: rule.source.clone(),
    };
    let mut out = Vec::new();
    let mut rest_of = |proto: Proto, name: &str| {
        let (from, to) = rule.ports.unwrap_or((0, MAX_PORT));
        for (a, b) in remainder(from, to, governed_ports(governed, proto)) {
            out.push(shape(name, Some((a, b))));
        }
    };
    match protocol(rule) {
        Some(Proto::Tcp) => rest_of(Proto::Tcp, "tcp"),
        Some(Proto::Udp) => rest_of(Proto::Udp, "udp"),
        Some(Proto::Any) => {
            rest_of(Proto::Tcp, "tcp");
            rest_of(Proto::Udp, "udp");
            let icmp = if is_v6(rule) { "icmpv6" } else { "icmp" };
            out.push(shape(icmp, None));
        }
        None => {}
    }
    out
}

/// Whether revoking `rule` loses traffic that no carve-out can keep (an all-protocols
/// rule also opens protocols such as GRE or ESP).
pub fn lost_protocols(rule: &ForeignRuleSpec) -> bool {
    protocol(rule) == Some(Proto::Any)
}

fn protocol(rule: &ForeignRuleSpec) -> Option<Proto> {
    match rule.protocol.to_ascii_lowercase().as_str() {
        "-1" | "*" | "all" => Some(Proto::Any),
        "tcp" | "6" => Some(Proto::Tcp),
        "udp" | "17" => Some(Proto::Udp),
        _ => None,
    }
}

fn is_v6(rule: &ForeignRuleSpec) -> bool {
    matches!(&rule.source, super::model::ForeignSource::Cidr(c) if c.contains(':'))
}

fn governed_ports(governed: &[PortSpec], proto: Proto) -> Vec<u16> {
    let mut ports: Vec<u16> = governed
        .iter()
        .filter(|p| p.protocol.overlaps(proto))
        .map(|p| p.port.get())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// `from..=to` without the `holes` (sorted), as inclusive ranges.
fn remainder(from: u16, to: u16, holes: Vec<u16>) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let mut start = u32::from(from);
    for h in holes.into_iter().map(u32::from) {
        if h < start || h > u32::from(to) {
            continue;
        }
        if h > start {
            out.push((start as u16, (h - 1) as u16));
        }
        start = h + 1;
    }
    if start <= u32::from(to) {
        out.push((start as u16, to));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::ForeignSource;
    use proptest::prelude::*;
    use std::num::NonZeroU16;

    fn port(p: u16, protocol: Proto) -> PortSpec {
        PortSpec {
            port: NonZeroU16::new(p).unwrap(),
            protocol,
        }
    }

    fn rule(protocol: &str, ports: Option<(u16, u16)>, source: &str) -> ForeignRuleSpec {
        ForeignRuleSpec {
            container: "sg-1".into(),
            protocol: protocol.into(),
            ports,
            source: ForeignSource::Cidr(source.into()),
            description: None,
        }
    }

    fn ranges(shapes: &[RuleShape]) -> Vec<(String, Option<(u16, u16)>)> {
        shapes
            .iter()
            .map(|s| (s.protocol.clone(), s.ports))
            .collect()
    }

    #[test]
    fn a_range_rule_keeps_the_rest_of_its_range() {
        let r = rule("tcp", Some((0, 65535)), "10.0.0.0/8");
        let c = carve_outs(&r, &[port(22, Proto::Tcp), port(3389, Proto::Tcp)]);
        assert_eq!(
            ranges(&c),
            vec![
                ("tcp".into(), Some((0, 21))),
                ("tcp".into(), Some((23, 3388))),
                ("tcp".into(), Some((3390, 65535)))
            ]
        );
        assert!(c.iter().all(|s| s.source == r.source));
    }

    #[test]
    fn a_rule_for_the_governed_port_only_needs_nothing() {
        assert!(carve_outs(&rule("tcp", Some((22, 22)), "0.0.0.0/0"), &[port(22, Proto::Tcp)]).is_empty());
        // A UDP governed port does not carve a TCP rule.
        assert_eq!(
            ranges(&carve_outs(&rule("tcp", Some((20, 23)), "0.0.0.0/0"), &[port(22, Proto::Udp)])),
            vec![("tcp".into(), Some((20, 23)))]
        );
    }

    #[test]
    fn all_traffic_keeps_tcp_udp_and_icmp() {
        let r = ForeignRuleSpec {
            source: ForeignSource::Group("sg-1".into()),
            ..rule("-1", None, "")
        };
        let c = carve_outs(&r, &[port(22, Proto::Any)]);
        assert_eq!(
            ranges(&c),
            vec![
                ("tcp".into(), Some((0, 21))),
                ("tcp".into(), Some((23, 65535))),
                ("udp".into(), Some((0, 21))),
                ("udp".into(), Some((23, 65535))),
                ("icmp".into(), None),
            ]
        );
        assert!(lost_protocols(&r));
        let v6 = carve_outs(&rule("-1", None, "::/0"), &[port(22, Proto::Tcp)]);
        assert_eq!(v6.last().unwrap().protocol, "icmpv6");
    }

    proptest! {
        /// Every port the rule opened is either governed or in exactly one carve-out, and
        /// no carve-out opens a governed port.
        #[test]
        fn carve_outs_cover_exactly_the_rest(
            from in 0u16..2000, len in 0u16..2000,
            governed in prop::collection::vec((1u16..4000, prop::sample::select(vec![Proto::Tcp, Proto::Udp, Proto::Any])), 0..5),
            proto in prop::sample::select(vec!["tcp", "udp"]),
        ) {
            let to = from.saturating_add(len);
            let governed: Vec<PortSpec> = governed.into_iter().map(|(p, pr)| port(p, pr)).collect();
            let r = rule(proto, Some((from, to)), "10.0.0.0/8");
            let shapes = carve_outs(&r, &governed);
            for p in from..=to {
                let gov = governed.iter().any(|g| g.port.get() == p && r.covers(*g));
                let n = shapes.iter().filter(|s| s.ports.is_some_and(|(a, b)| a <= p && p <= b)).count();
                prop_assert_eq!(n, usize::from(!gov), "port {}", p);
            }
            for s in &shapes {
                let (a, b) = s.ports.unwrap();
                prop_assert!(from <= a && a <= b && b <= to);
            }
        }
    }
}
