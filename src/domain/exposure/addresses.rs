//! Sources as rules write them, and the sets of addresses they stand for.
//!
//! An exposure question ("who can reach port 22?") is answered over a small finite
//! universe built from the rules at hand: the address space cut at every CIDR boundary the
//! rules mention (and at the private ranges' boundaries, so each piece is wholly private
//! or wholly public), plus one opaque piece per service tag or reference the rules use
//! (whose addresses nobody here knows). A rule's source is then a set of pieces, and rule
//! evaluation is set algebra on those.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// IPv4 ranges that are not reachable from the internet: RFC 1918, shared address space
/// (RFC 6598, used by some VNets and carrier NAT), loopback and link-local.
const PRIVATE_V4: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
];

/// IPv6 ranges that are not reachable from the internet: unique local, link-local and
/// loopback.
const PRIVATE_V6: &[&str] = &["fc00::/7", "fe80::/10", "::1/128"];

fn private_nets() -> impl Iterator<Item = IpNet> {
    PRIVATE_V4
        .iter()
        .chain(PRIVATE_V6)
        .map(|s| s.parse().expect("the private ranges are valid CIDRs"))
}

/// Whether any address of `net` is on the internet (outside the private ranges).
pub fn is_public(net: &IpNet) -> bool {
    !private_nets().any(|p| p.contains(net))
}

/// A source as a rule writes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// Any address: Azure `*` / `Any`.
    Any,
    /// A CIDR or a single address. `0.0.0.0/0` and `::/0` also cover every service tag of
    /// their family, since service tags are made of addresses.
    Net(IpNet),
    /// Azure's `Internet` tag: every public address, service tags included.
    Internet,
    /// Azure's `VirtualNetwork` tag, taken as the private ranges: the VNet's space, its
    /// peers' and on-premises networks are private in practice.
    VirtualNetwork,
    /// A named set of public addresses nobody here can enumerate (an Azure service tag
    /// such as `AzureCloud`): reachable from the internet.
    PublicTag(String),
    /// A named set of internal sources (Azure `AzureLoadBalancer`, an application
    /// security group, an AWS prefix list or security group reference).
    InternalTag(String),
}

impl Source {
    /// Parses an Azure source prefix (`*`, a CIDR, an address or a service tag).
    pub fn azure(text: &str) -> Source {
        let t = text.trim();
        if t == "*" || t.eq_ignore_ascii_case("any") {
            return Source::Any;
        }
        if let Ok(net) = t.parse::<IpNet>() {
            return Source::Net(net.trunc());
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Source::Net(IpNet::from(ip));
        }
        match t.to_ascii_lowercase().as_str() {
            "internet" => Source::Internet,
            "virtualnetwork" => Source::VirtualNetwork,
            "azureloadbalancer" => Source::InternalTag("AzureLoadBalancer".into()),
            _ => Source::PublicTag(t.to_string()),
        }
    }

    /// Whether this source holds internet addresses.
    pub fn is_public(&self) -> bool {
        match self {
            Source::Any | Source::Internet | Source::PublicTag(_) => true,
            Source::Net(net) => is_public(net),
            Source::VirtualNetwork | Source::InternalTag(_) => false,
        }
    }
}

/// A set of pieces of a [`Universe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pieces(Vec<u64>);

impl Pieces {
    fn empty(len: usize) -> Pieces {
        Pieces(vec![0; len.div_ceil(64)])
    }

    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Whether no piece is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The pieces in both sets.
    pub fn and(&self, other: &Pieces) -> Pieces {
        Pieces(self.0.iter().zip(&other.0).map(|(a, b)| a & b).collect())
    }

    /// The pieces in either set.
    pub fn or(&self, other: &Pieces) -> Pieces {
        Pieces(self.0.iter().zip(&other.0).map(|(a, b)| a | b).collect())
    }

    /// The pieces in `self` but not in `other`.
    pub fn minus(&self, other: &Pieces) -> Pieces {
        Pieces(self.0.iter().zip(&other.0).map(|(a, b)| a & !b).collect())
    }

    /// Whether the sets share a piece.
    pub fn meets(&self, other: &Pieces) -> bool {
        !self.and(other).is_empty()
    }
}

/// The finite universe of sources for one evaluation.
#[derive(Clone, Debug)]
pub struct Universe {
    /// First address of each IPv4 piece, ascending, starting at 0.
    v4: Vec<u32>,
    /// First address of each IPv6 piece, ascending, starting at 0.
    v6: Vec<u128>,
    /// Opaque pieces: name → whether it is public.
    tags: BTreeMap<String, bool>,
}

fn v4_range(net: &IpNet) -> Option<(u32, u32)> {
    match net {
        IpNet::V4(n) => Some((u32::from(n.network()), u32::from(n.broadcast()))),
        IpNet::V6(_) => None,
    }
}

fn v6_range(net: &IpNet) -> Option<(u128, u128)> {
    match net {
        IpNet::V6(n) => Some((u128::from(n.network()), u128::from(n.broadcast()))),
        IpNet::V4(_) => None,
    }
}

impl Universe {
    /// The universe that tells apart every source in `sources` (and private from public).
    pub fn new<'a>(sources: impl IntoIterator<Item = &'a Source>) -> Universe {
        let mut v4 = vec![0u32];
        let mut v6 = vec![0u128];
        let mut tags = BTreeMap::new();
        let mut cut = |net: &IpNet| {
            if let Some((a, b)) = v4_range(net) {
                v4.push(a);
                if let Some(next) = b.checked_add(1) {
                    v4.push(next);
                }
            }
            if let Some((a, b)) = v6_range(net) {
                v6.push(a);
                if let Some(next) = b.checked_add(1) {
                    v6.push(next);
                }
            }
        };
        for p in private_nets() {
            cut(&p);
        }
        for s in sources {
            match s {
                Source::Net(net) => cut(net),
                Source::PublicTag(t) => {
                    tags.insert(t.clone(), true);
                }
                Source::InternalTag(t) => {
                    tags.insert(t.clone(), false);
                }
                Source::Any | Source::Internet | Source::VirtualNetwork => {}
            }
        }
        v4.sort_unstable();
        v4.dedup();
        v6.sort_unstable();
        v6.dedup();
        Universe { v4, v6, tags }
    }

    fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.tags.len()
    }

    /// Whether piece `i` is made of internet addresses.
    fn piece_is_public(&self, i: usize) -> bool {
        let (n4, n6) = (self.v4.len(), self.v6.len());
        if i < n4 {
            let first = IpAddr::from(std::net::Ipv4Addr::from(self.v4[i]));
            is_public(&IpNet::from(first))
        } else if i < n4 + n6 {
            let first = IpAddr::from(std::net::Ipv6Addr::from(self.v6[i - n4]));
            is_public(&IpNet::from(first))
        } else {
            *self
                .tags
                .values()
                .nth(i - n4 - n6)
                .expect("piece index in range")
        }
    }

    /// Every piece.
    pub fn all(&self) -> Pieces {
        let mut p = Pieces::empty(self.len());
        for i in 0..self.len() {
            p.insert(i);
        }
        p
    }

    /// No piece.
    pub fn none(&self) -> Pieces {
        Pieces::empty(self.len())
    }

    /// The pieces made of internet addresses.
    pub fn public(&self) -> Pieces {
        let mut p = Pieces::empty(self.len());
        for i in (0..self.len()).filter(|i| self.piece_is_public(*i)) {
            p.insert(i);
        }
        p
    }

    /// The pieces of `source`. A source the universe was not built from covers what it
    /// can (a CIDR only whole pieces inside it; an unknown tag nothing).
    pub fn pieces(&self, source: &Source) -> Pieces {
        let (n4, n6) = (self.v4.len(), self.v6.len());
        let tag_index = |name: &str| self.tags.keys().position(|k| k == name);
        let mut p = Pieces::empty(self.len());
        match source {
            Source::Any => return self.all(),
            Source::Internet => return self.public(),
            Source::VirtualNetwork => {
                return self.all().minus(&self.public()).minus(&self.tag_pieces());
            }
            Source::PublicTag(t) | Source::InternalTag(t) => {
                if let Some(i) = tag_index(t) {
                    p.insert(n4 + n6 + i);
                }
            }
            Source::Net(net) => {
                if let Some((a, b)) = v4_range(net) {
                    for (i, start) in self.v4.iter().enumerate() {
                        let end = self.v4.get(i + 1).map_or(u32::MAX, |n| n - 1);
                        if *start >= a && end <= b {
                            p.insert(i);
                        }
                    }
                }
                if let Some((a, b)) = v6_range(net) {
                    for (i, start) in self.v6.iter().enumerate() {
                        let end = self.v6.get(i + 1).map_or(u128::MAX, |n| n - 1);
                        if *start >= a && end <= b {
                            p.insert(n4 + i);
                        }
                    }
                }
                // A whole address family holds every service tag's addresses of that family.
                if net.prefix_len() == 0 {
                    for (i, public) in self.tags.values().enumerate() {
                        if *public {
                            p.insert(n4 + n6 + i);
                        }
                    }
                }
            }
        }
        p
    }

    fn tag_pieces(&self) -> Pieces {
        let start = self.v4.len() + self.v6.len();
        let mut p = Pieces::empty(self.len());
        for i in start..self.len() {
            p.insert(i);
        }
        p
    }

    /// Whether the address `ip` lies in the pieces `set` (for checks; tags never hold a
    /// concrete address here).
    pub fn holds(&self, set: &Pieces, ip: IpAddr) -> bool {
        let i = match ip {
            IpAddr::V4(a) => self.v4.partition_point(|s| *s <= u32::from(a)) - 1,
            IpAddr::V6(a) => self.v4.len() + self.v6.partition_point(|s| *s <= u128::from(a)) - 1,
        };
        set.contains(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn public_and_private() {
        let public = |s: &str| is_public(&s.parse().unwrap());
        assert!(public("0.0.0.0/0"));
        assert!(public("203.0.113.0/24"));
        assert!(public("10.0.0.0/7"), "11.0.0.0/8 is public");
        assert!(!public("10.0.0.0/8"));
        assert!(!public("10.1.2.3/32"));
        assert!(!public("172.20.0.0/16"));
        assert!(!public("100.64.0.0/10"));
        assert!(public("::/0"));
        assert!(public("2001:db8::/32"));
        assert!(!public("fd00::/8"));
    }

    #[test]
    fn azure_sources() {
        assert_eq!(Source::azure("*"), Source::Any);
        assert_eq!(Source::azure("Internet"), Source::Internet);
        assert_eq!(Source::azure("VIRTUALNETWORK"), Source::VirtualNetwork);
        assert_eq!(
            Source::azure("10.1.2.3"),
            Source::Net("10.1.2.3/32".parse().unwrap())
        );
        assert_eq!(
            Source::azure("10.1.2.3/8"),
            Source::Net("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            Source::azure("AzureLoadBalancer"),
            Source::InternalTag("AzureLoadBalancer".into())
        );
        assert_eq!(
            Source::azure("AzureCloud.WestEurope"),
            Source::PublicTag("AzureCloud.WestEurope".into())
        );
        assert!(Source::azure("Storage").is_public());
        assert!(!Source::azure("VirtualNetwork").is_public());
    }

    #[test]
    fn tags_sit_inside_the_internet_and_whole_families() {
        let cloud = Source::PublicTag("AzureCloud".into());
        let lb = Source::InternalTag("AzureLoadBalancer".into());
        let world = Source::Net("0.0.0.0/0".parse().unwrap());
        let u = Universe::new([&cloud, &lb, &world]);
        let tag = u.pieces(&cloud);
        assert!(tag.meets(&u.pieces(&Source::Internet)));
        assert!(tag.meets(&u.pieces(&world)));
        assert!(tag.meets(&u.pieces(&Source::Any)));
        assert!(!tag.meets(&u.pieces(&Source::VirtualNetwork)));
        assert!(!u.pieces(&lb).meets(&u.public()));
        assert!(!u.pieces(&lb).meets(&u.pieces(&Source::Internet)));
        assert!(u.pieces(&lb).meets(&u.pieces(&Source::Any)));
    }

    fn net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
                IpNet::new(IpAddr::from(std::net::Ipv4Addr::from(a)), l)
                    .unwrap()
                    .trunc()
            }),
            // Addresses near the private ranges, so that pieces split them.
            (
                prop::sample::select(vec![0x0a00_0000u32, 0xac10_0000, 0xc0a8_0000]),
                any::<u16>(),
                6u8..=32
            )
                .prop_map(|(base, low, l)| {
                    IpNet::new(
                        IpAddr::from(std::net::Ipv4Addr::from(base | u32::from(low))),
                        l,
                    )
                    .unwrap()
                    .trunc()
                }),
            (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
                IpNet::new(IpAddr::from(std::net::Ipv6Addr::from(a)), l)
                    .unwrap()
                    .trunc()
            }),
        ]
    }

    fn addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::from(std::net::Ipv4Addr::from(a))),
            (
                prop::sample::select(vec![0x0a00_0000u32, 0xac10_0000, 0xc0a8_0000]),
                any::<u16>()
            )
                .prop_map(|(b, l)| IpAddr::from(std::net::Ipv4Addr::from(b | u32::from(l)))),
            any::<u128>().prop_map(|a| IpAddr::from(std::net::Ipv6Addr::from(a))),
        ]
    }

    proptest! {
        /// The pieces of a CIDR hold exactly its addresses, and a piece is public exactly
        /// when its addresses are.
        #[test]
        fn pieces_hold_exactly_the_addresses(nets in prop::collection::vec(net(), 1..6), ips in prop::collection::vec(addr(), 1..20)) {
            let sources: Vec<Source> = nets.iter().map(|n| Source::Net(*n)).collect();
            let u = Universe::new(&sources);
            let public = u.public();
            for ip in &ips {
                for n in &nets {
                    prop_assert_eq!(u.holds(&u.pieces(&Source::Net(*n)), *ip), n.contains(ip), "{} in {}", ip, n);
                }
                prop_assert_eq!(u.holds(&public, *ip), is_public(&IpNet::from(*ip)), "{} public", ip);
                prop_assert_eq!(u.holds(&u.pieces(&Source::Internet), *ip), is_public(&IpNet::from(*ip)));
                prop_assert!(u.holds(&u.pieces(&Source::Any), *ip));
            }
        }
    }
}
