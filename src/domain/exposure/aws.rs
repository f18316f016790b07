//! AWS: security groups only allow, so a port is open from the union of the ingress
//! rules of every group on every network interface of the instance.

use ipnet::IpNet;

use super::addresses::is_public;
use super::{OpenPort, Reach, merge};
use crate::domain::{PortSpec, Proto};

/// Where an ingress rule lets traffic come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleSource {
    /// An IPv4 or IPv6 CIDR.
    Cidr(IpNet),
    /// A managed prefix list (counted as internal).
    PrefixList(String),
    /// Members of a security group (internal).
    Group(String),
}

/// One ingress rule of a security group, as EC2 states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressRule {
    /// The group holding it.
    pub group: String,
    /// Its id (`sgr-…`).
    pub id: String,
    /// `tcp`, `udp`, `-1` (all traffic), a protocol number or name.
    pub protocol: String,
    /// The port range; `None` for all ports.
    pub ports: Option<(i32, i32)>,
    /// Where the traffic may come from.
    pub source: RuleSource,
}

impl IngressRule {
    fn opens(&self, port: PortSpec) -> bool {
        let all = self.protocol == "-1";
        let proto = match self.protocol.to_ascii_lowercase().as_str() {
            "-1" | "all" => true,
            "tcp" | "6" => port.protocol.overlaps(Proto::Tcp),
            "udp" | "17" => port.protocol.overlaps(Proto::Udp),
            _ => false,
        };
        let p = i32::from(port.port.get());
        let in_range = match self.ports {
            _ if all => true,
            None => true,
            // EC2 writes "all ports" of tcp/udp as 0-65535 (or -1 in some answers).
            Some((from, _)) if from < 0 => true,
            Some((from, to)) => from <= p && p <= to,
        };
        proto && in_range
    }

    fn label(&self) -> String {
        format!("{}/{}", self.group, self.id)
    }

    fn source_text(&self) -> String {
        match &self.source {
            RuleSource::Cidr(net) => net.to_string(),
            RuleSource::PrefixList(p) | RuleSource::Group(p) => p.clone(),
        }
    }

    fn reach(&self) -> Reach {
        match &self.source {
            RuleSource::Cidr(net) if is_public(net) => Reach::Internet,
            _ => Reach::Internal,
        }
    }
}

/// The management ports in `ports` that `rules` (every ingress rule of every group on the
/// instance's interfaces) open, and from where.
pub fn open_ports(rules: &[IngressRule], ports: &[PortSpec]) -> Vec<OpenPort> {
    let mut found = Vec::new();
    for port in ports {
        for rule in rules.iter().filter(|r| r.opens(*port)) {
            found.push(OpenPort {
                port: *port,
                reach: rule.reach(),
                sources: vec![rule.source_text()],
                rules: vec![rule.label()],
            });
        }
    }
    merge(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::exposure::parse_port;
    use proptest::prelude::*;

    fn rule(id: &str, protocol: &str, ports: Option<(i32, i32)>, source: &str) -> IngressRule {
        let source = if let Some(pl) = source.strip_prefix("pl-") {
            RuleSource::PrefixList(format!("pl-{pl}"))
        } else if source.starts_with("sg-") {
            RuleSource::Group(source.to_string())
        } else {
            RuleSource::Cidr(source.parse().unwrap())
        };
        IngressRule {
            group: "sg-1".into(),
            id: id.into(),
            protocol: protocol.into(),
            ports,
            source,
        }
    }

    fn mgmt() -> Vec<PortSpec> {
        ["22", "3389", "5985", "5986"]
            .iter()
            .map(|p| parse_port(p).unwrap())
            .collect()
    }

    fn summary(open: &[OpenPort]) -> Vec<(u16, Reach, Vec<String>, Vec<String>)> {
        open.iter()
            .map(|o| {
                (
                    o.port.port.get(),
                    o.reach,
                    o.sources.clone(),
                    o.rules.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn the_union_of_the_rules_decides() {
        let rules = [
            rule("sgr-ssh", "tcp", Some((22, 22)), "0.0.0.0/0"),
            rule("sgr-rdp", "tcp", Some((3389, 3389)), "10.0.0.0/8"),
            rule("sgr-pl", "tcp", Some((5985, 5986)), "pl-0abc"),
            rule("sgr-ref", "tcp", Some((22, 22)), "sg-other"),
            rule("sgr-web", "tcp", Some((443, 443)), "0.0.0.0/0"),
            rule("sgr-v6", "tcp", Some((5986, 5986)), "::/0"),
        ];
        assert_eq!(
            summary(&open_ports(&rules, &mgmt())),
            vec![
                (
                    22,
                    Reach::Internet,
                    vec!["0.0.0.0/0".into()],
                    vec!["sg-1/sgr-ssh".into()]
                ),
                (
                    3389,
                    Reach::Internal,
                    vec!["10.0.0.0/8".into()],
                    vec!["sg-1/sgr-rdp".into()]
                ),
                (
                    5985,
                    Reach::Internal,
                    vec!["pl-0abc".into()],
                    vec!["sg-1/sgr-pl".into()]
                ),
                (
                    5986,
                    Reach::Internet,
                    vec!["::/0".into()],
                    vec!["sg-1/sgr-v6".into()]
                ),
            ]
        );
    }

    #[test]
    fn all_traffic_and_full_ranges_open_every_port() {
        let all = [rule("sgr-all", "-1", None, "203.0.113.0/24")];
        assert_eq!(open_ports(&all, &mgmt()).len(), 4);
        let range = [rule("sgr-range", "tcp", Some((0, 65535)), "0.0.0.0/0")];
        assert_eq!(open_ports(&range, &mgmt()).len(), 4);
        let udp = [rule("sgr-udp", "udp", Some((0, 65535)), "0.0.0.0/0")];
        assert!(open_ports(&udp, &mgmt()).is_empty());
        let icmp = [rule("sgr-icmp", "icmp", Some((-1, -1)), "0.0.0.0/0")];
        assert!(open_ports(&icmp, &mgmt()).is_empty());
    }

    #[test]
    fn internet_sources_win_over_internal_ones() {
        let rules = [
            rule("sgr-in", "tcp", Some((22, 22)), "10.0.0.0/8"),
            rule("sgr-out", "tcp", Some((20, 30)), "198.51.100.7/32"),
            rule("sgr-out2", "-1", None, "2001:db8::/32"),
        ];
        assert_eq!(
            summary(&open_ports(&rules, &mgmt()[..1])),
            vec![(
                22,
                Reach::Internet,
                vec!["198.51.100.7/32".into(), "2001:db8::/32".into()],
                vec!["sg-1/sgr-out".into(), "sg-1/sgr-out2".into()]
            )]
        );
    }

    proptest! {
        /// A port is open from the internet exactly when some rule covering it names a
        /// public CIDR, and open at all exactly when some rule covers it.
        #[test]
        fn union_matches_brute_force(
            specs in prop::collection::vec((
                prop::sample::select(vec!["tcp", "udp", "-1", "6"]),
                0i32..4000, 0i32..200,
                prop::sample::select(vec!["0.0.0.0/0", "10.0.0.0/8", "203.0.113.0/24", "::/0", "fd00::/8", "pl-1", "sg-2"]),
            ), 0..8),
            port in prop::sample::select(vec![22u16, 3389, 5985]),
        ) {
            let rules: Vec<IngressRule> = specs
                .iter()
                .enumerate()
                .map(|(i, (proto, from, width, src))| rule(&format!("sgr-{i}"), proto, Some((*from, from + width)), src))
                .collect();
            let spec = parse_port(&port.to_string()).unwrap();
            let open = open_ports(&rules, &[spec]);
            let covering: Vec<&IngressRule> = rules
                .iter()
                .filter(|r| {
                    let p = i32::from(port);
                    (r.protocol == "-1") || (["tcp", "6"].contains(&r.protocol.as_str()) && r.ports.is_some_and(|(a, b)| a <= p && p <= b))
                })
                .collect();
            prop_assert_eq!(open.len(), usize::from(!covering.is_empty()));
            let public = covering.iter().any(|r| matches!(&r.source, RuleSource::Cidr(n) if is_public(n)));
            if let Some(o) = open.first() {
                prop_assert_eq!(o.reach == Reach::Internet, public);
            }
        }
    }
}
