use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::domain::exposure::addresses::is_public;
use crate::domain::exposure::parse_port;

fn rule(name: &str, priority: u32, access: Access, port: &str, source: &str) -> NsgRule {
    NsgRule {
        name: name.into(),
        priority,
        access,
        protocol: "Tcp".into(),
        sources: vec![source.into()],
        source_groups: Vec::new(),
        destinations: vec!["*".into()],
        destination_groups: Vec::new(),
        ports: vec![port.into()],
    }
}

fn nsg(name: &str, mut rules: Vec<NsgRule>) -> Nsg {
    rules.extend(default_rules());
    Nsg {
        name: name.into(),
        rules,
    }
}

fn mgmt() -> Vec<PortSpec> {
    ["22", "3389", "5985", "5986"]
        .iter()
        .map(|p| parse_port(p).unwrap())
        .collect()
}

const VM: &str = "10.0.0.4";

fn scan(subnet: Option<&Nsg>, nic: Option<&Nsg>) -> Vec<(u16, Reach, Vec<String>, Vec<String>)> {
    let hop = Hop {
        address: VM.parse().unwrap(),
        groups: &[],
        subnet_nsg: subnet,
        nic_nsg: nic,
    };
    open_ports(&[hop], &mgmt())
        .into_iter()
        .map(|o| (o.port.port.get(), o.reach, o.sources, o.rules))
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_deny_in_the_subnet_nsg_beats_an_allow_in_the_nic_nsg() {
    let subnet = nsg(
        "subnet-nsg",
        vec![rule("deny-ssh", 100, Access::Deny, "22", "*")],
    );
    let nic = nsg(
        "nic-nsg",
        vec![rule("allow-ssh", 200, Access::Allow, "22", "*")],
    );
    assert_eq!(scan(Some(&subnet), Some(&nic)), Vec::new());
    // Without the subnet's deny, the default DenyAllInBound of the subnet NSG still stops
    // the internet: both NSGs must allow.
    let plain = nsg("subnet-nsg", Vec::new());
    assert_eq!(scan(Some(&plain), Some(&nic)), Vec::new());
    // With no subnet NSG, the NIC's allow decides.
    assert_eq!(
        scan(None, Some(&nic)),
        vec![(
            22,
            Reach::Internet,
            strings(&["*"]),
            strings(&["nic-nsg/allow-ssh"])
        )]
    );
}

#[test]
fn the_internet_service_tag_opens_to_the_internet() {
    let nic = nsg(
        "nic-nsg",
        vec![rule("allow-rdp", 300, Access::Allow, "3389", "Internet")],
    );
    assert_eq!(
        scan(None, Some(&nic)),
        vec![(
            3389,
            Reach::Internet,
            strings(&["Internet"]),
            strings(&["nic-nsg/allow-rdp"])
        )]
    );
}

#[test]
fn both_allows_show_the_tighter_sources() {
    let subnet = nsg(
        "subnet-nsg",
        vec![rule("allow-any", 100, Access::Allow, "*", "*")],
    );
    let nic = nsg(
        "nic-nsg",
        vec![rule(
            "allow-office",
            100,
            Access::Allow,
            "22",
            "203.0.113.0/24",
        )],
    );
    assert_eq!(
        scan(Some(&subnet), Some(&nic)),
        vec![(
            22,
            Reach::Internet,
            strings(&["203.0.113.0/24"]),
            strings(&["subnet-nsg/allow-any + nic-nsg/allow-office"])
        )]
    );
}

#[test]
fn higher_priority_denies_cut_what_lower_allows_admit() {
    let nic = nsg(
        "nic-nsg",
        vec![
            rule("deny-internet", 100, Access::Deny, "22", "Internet"),
            rule("allow-all", 200, Access::Allow, "22", "*"),
        ],
    );
    assert_eq!(
        scan(None, Some(&nic)),
        vec![(
            22,
            Reach::Internal,
            strings(&["*"]),
            strings(&["nic-nsg/allow-all"])
        )]
    );
    // A deny of the whole IPv4 space also covers service tags.
    let nic = nsg(
        "nic-nsg",
        vec![
            rule("deny-v4", 100, Access::Deny, "22", "0.0.0.0/0"),
            rule("allow-cloud", 200, Access::Allow, "22", "AzureCloud"),
        ],
    );
    assert_eq!(scan(None, Some(&nic)), Vec::new());
    // A lower-priority deny changes nothing.
    let nic = nsg(
        "nic-nsg",
        vec![
            rule("allow-cloud", 100, Access::Allow, "22", "AzureCloud"),
            rule("deny-v4", 200, Access::Deny, "22", "0.0.0.0/0"),
        ],
    );
    assert_eq!(
        scan(None, Some(&nic)),
        vec![(
            22,
            Reach::Internet,
            strings(&["AzureCloud"]),
            strings(&["nic-nsg/allow-cloud"])
        )]
    );
}

#[test]
fn destinations_protocols_and_ranges_must_match() {
    let mut other_vm = rule("allow-other", 100, Access::Allow, "22", "*");
    other_vm.destinations = vec!["10.9.9.9/32".into()];
    let mut udp = rule("allow-udp", 110, Access::Allow, "3389", "*");
    udp.protocol = "Udp".into();
    let mut vnet = rule("allow-vnet-dest", 120, Access::Allow, "5980-5990", "*");
    vnet.destinations = vec!["VirtualNetwork".into()];
    let nic = nsg("nic-nsg", vec![other_vm, udp, vnet]);
    assert_eq!(
        scan(None, Some(&nic)),
        vec![
            (
                5985,
                Reach::Internet,
                strings(&["*"]),
                strings(&["nic-nsg/allow-vnet-dest"])
            ),
            (
                5986,
                Reach::Internet,
                strings(&["*"]),
                strings(&["nic-nsg/allow-vnet-dest"])
            ),
        ]
    );
}

#[test]
fn application_security_groups() {
    let asg = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/applicationSecurityGroups/web".to_string();
    let mut to_asg = rule("allow-asg", 100, Access::Allow, "22", "*");
    to_asg.destinations = Vec::new();
    to_asg.destination_groups = vec![asg.to_uppercase()];
    let mut from_asg = rule("allow-from-asg", 110, Access::Allow, "3389", "*");
    from_asg.sources = Vec::new();
    from_asg.source_groups = vec![asg.clone()];
    let nic = nsg("nic-nsg", vec![to_asg, from_asg]);
    let member = [asg.clone()];
    let in_group = Hop {
        address: VM.parse().unwrap(),
        groups: &member,
        subnet_nsg: None,
        nic_nsg: Some(&nic),
    };
    let out: Vec<(u16, Reach)> = open_ports(&[in_group], &mgmt())
        .into_iter()
        .map(|o| (o.port.port.get(), o.reach))
        .collect();
    assert_eq!(out, vec![(22, Reach::Internet), (3389, Reach::Internal)]);
    let outside = Hop {
        address: VM.parse().unwrap(),
        groups: &[],
        subnet_nsg: None,
        nic_nsg: Some(&nic),
    };
    let out: Vec<u16> = open_ports(&[outside], &mgmt())
        .into_iter()
        .map(|o| o.port.port.get())
        .collect();
    assert_eq!(out, vec![3389]);
}

#[test]
fn default_rules_alone_report_nothing() {
    let a = nsg("a", Vec::new());
    let b = nsg("b", Vec::new());
    assert_eq!(scan(Some(&a), Some(&b)), Vec::new());
    assert_eq!(scan(None, Some(&b)), Vec::new());
}

#[test]
fn several_addresses_merge_per_port() {
    let nic = nsg(
        "nic-nsg",
        vec![{
            let mut r = rule("allow-second", 100, Access::Allow, "22", "*");
            r.destinations = vec!["10.0.0.5".into()];
            r
        }],
    );
    let hops = [
        Hop {
            address: "10.0.0.4".parse().unwrap(),
            groups: &[],
            subnet_nsg: None,
            nic_nsg: Some(&nic),
        },
        Hop {
            address: "10.0.0.5".parse().unwrap(),
            groups: &[],
            subnet_nsg: None,
            nic_nsg: Some(&nic),
        },
    ];
    let out = open_ports(&hops, &mgmt());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reach, Reach::Internet);
}

// ----- against a brute-force evaluation of concrete addresses -----

const SOURCES: &[&str] = &[
    "*",
    "Internet",
    "VirtualNetwork",
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "203.0.113.0/24",
    "198.51.100.7",
    "0.0.0.0/1",
    "::/0",
    "2001:db8::/32",
];

/// Addresses that hit every piece the sources above (and the private ranges) cut the
/// address space into: each CIDR's first and last address and their neighbours.
fn probes() -> Vec<IpAddr> {
    let mut nets: Vec<ipnet::IpNet> = SOURCES.iter().filter_map(|s| s.parse().ok()).collect();
    nets.push("198.51.100.7/32".parse().unwrap());
    for p in [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    ] {
        nets.push(p.parse().unwrap());
    }
    let mut out = Vec::new();
    for n in nets {
        match n {
            ipnet::IpNet::V4(n) => {
                let (a, b) = (u32::from(n.network()), u32::from(n.broadcast()));
                for x in [a.checked_sub(1), Some(a), Some(b), b.checked_add(1)]
                    .into_iter()
                    .flatten()
                {
                    out.push(IpAddr::from(std::net::Ipv4Addr::from(x)));
                }
            }
            ipnet::IpNet::V6(n) => {
                let (a, b) = (u128::from(n.network()), u128::from(n.broadcast()));
                for x in [a.checked_sub(1), Some(a), Some(b), b.checked_add(1)]
                    .into_iter()
                    .flatten()
                {
                    out.push(IpAddr::from(std::net::Ipv6Addr::from(x)));
                }
            }
        }
    }
    out
}

fn source_holds(source: &str, ip: IpAddr) -> bool {
    match source {
        "*" => true,
        "Internet" => is_public(&ipnet::IpNet::from(ip)),
        "VirtualNetwork" => !is_public(&ipnet::IpNet::from(ip)),
        // A tag of its own; no probe address is in it.
        "AzureLoadBalancer" => false,
        cidr => {
            let net: ipnet::IpNet = cidr
                .parse()
                .unwrap_or_else(|_| ipnet::IpNet::from(cidr.parse::<IpAddr>().unwrap()));
            net.contains(&ip)
        }
    }
}

/// First match by priority for one address; no NSG lets everything through.
fn brute(nsg: Option<&Nsg>, ip: IpAddr, port: u16) -> bool {
    let Some(nsg) = nsg else { return true };
    let mut rules: Vec<&NsgRule> = nsg.rules.iter().collect();
    rules.sort_by_key(|r| r.priority);
    for r in rules {
        let port_ok = r.ports.iter().any(|p| match p.split_once('-') {
            _ if p == "*" => true,
            Some((a, b)) => a.parse::<u16>().unwrap() <= port && port <= b.parse().unwrap(),
            None => p.parse::<u16>().unwrap() == port,
        });
        if port_ok && r.sources.iter().any(|s| source_holds(s, ip)) {
            return r.access == Access::Allow;
        }
    }
    false
}

fn nsg_strategy(name: &'static str) -> impl Strategy<Value = Option<Nsg>> {
    let rule = (
        prop::sample::select(SOURCES.to_vec()),
        any::<bool>(),
        prop::sample::select(vec!["22", "*", "20-30", "3389"]),
    );
    prop::option::of(prop::collection::vec(rule, 0..6).prop_map(move |specs| {
        let rules = specs
            .into_iter()
            .enumerate()
            .map(|(i, (src, allow, port))| {
                let access = if allow { Access::Allow } else { Access::Deny };
                rule_at(i, access, port, src)
            })
            .collect();
        nsg(name, rules)
    }))
}

fn rule_at(i: usize, access: Access, port: &str, source: &str) -> NsgRule {
    rule(&format!("r{i}"), 100 + 10 * i as u32, access, port, source)
}

proptest! {
    /// The evaluation over pieces agrees with first-match evaluation of single addresses
    /// through both NSGs: a port is reported open from the internet exactly when some
    /// public address gets through both, and not at all when no address does (apart
    /// from what the default rules alone admit).
    #[test]
    fn agrees_with_brute_force(subnet in nsg_strategy("s"), nic in nsg_strategy("n"), port in prop::sample::select(vec![22u16, 3389])) {
        let spec = parse_port(&port.to_string()).unwrap();
        let hop = Hop { address: VM.parse().unwrap(), groups: &[], subnet_nsg: subnet.as_ref(), nic_nsg: nic.as_ref() };
        let open = open_ports(&[hop], &[spec]);
        let through: Vec<IpAddr> = probes()
            .into_iter()
            .filter(|ip| brute(subnet.as_ref(), *ip, port) && brute(nic.as_ref(), *ip, port))
            .collect();
        let public_through = through.iter().any(|ip| is_public(&ipnet::IpNet::from(*ip)));
        let reported_internet = open.iter().any(|o| o.reach == Reach::Internet);
        prop_assert_eq!(reported_internet, public_through, "through: {:?}, open: {:?}", through, open);
        if through.is_empty() {
            prop_assert!(open.is_empty(), "{:?}", open);
        }
    }
}
