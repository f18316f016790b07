//! Reading foreign rules: which traffic a network rule reaches, which ports a NAT rule
//! listens on. What cannot be read is assumed to match, so foreign rules keep precedence.

use std::net::IpAddr;

use ipnet::IpNet;

use super::super::model::{PortSpec, Proto};
use super::FwRule;

/// Whether a rule's protocols include traffic of `p` to a port.
pub(super) fn protocols_overlap(listed: &[String], p: Proto) -> bool {
    listed
        .iter()
        .any(|l| match l.to_ascii_uppercase().as_str() {
            "TCP" => p.overlaps(Proto::Tcp),
            "UDP" => p.overlaps(Proto::Udp),
            "ANY" => true,
            "ICMP" => false,
            // Unknown words: assume they may.
            _ => true,
        })
}

/// A port entry as a range (`*`: all); `None` when it cannot be read.
pub(super) fn port_entry(entry: &str) -> Option<(u16, u16)> {
    let entry = entry.trim();
    if entry == "*" {
        return Some((1, u16::MAX));
    }
    match entry.split_once('-') {
        Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
        None => entry.parse().ok().map(|p| (p, p)),
    }
}

fn ports_include(listed: &[String], port: u16) -> bool {
    listed.iter().any(|e| match port_entry(e) {
        Some((a, b)) => a <= port && port <= b,
        None => true,
    })
}

/// Whether an address entry (`*`, an address, a CIDR, a range `a-b`, a service tag)
/// may include `ip`. What cannot be read is assumed to.
fn address_includes(entry: &str, ip: IpAddr) -> bool {
    let entry = entry.trim();
    if entry == "*" {
        return true;
    }
    if let Ok(a) = entry.parse::<IpAddr>() {
        return a == ip;
    }
    if let Ok(net) = entry.parse::<IpNet>() {
        return net.contains(&ip);
    }
    if let Some((a, b)) = entry.split_once('-')
        && let (Ok(a), Ok(b)) = (a.trim().parse::<IpAddr>(), b.trim().parse::<IpAddr>())
    {
        return a <= ip && ip <= b;
    }
    true
}

impl FwRule {
    /// Whether this network rule matches traffic to `ip` on `port`.
    pub fn reaches(&self, ip: IpAddr, port: PortSpec) -> bool {
        protocols_overlap(&self.protocols, port.protocol)
            && ports_include(&self.ports, port.port.get())
            && (self.opaque || self.destinations.iter().any(|d| address_includes(d, ip)))
    }

    /// The ports this NAT rule listens on at `address`.
    pub(super) fn listens_on(&self, address: IpAddr) -> Vec<(u16, u16)> {
        if !self.opaque
            && !self
                .destinations
                .iter()
                .any(|d| address_includes(d, address))
        {
            return Vec::new();
        }
        self.ports
            .iter()
            .map(|e| port_entry(e).unwrap_or((1, u16::MAX)))
            .collect()
    }

    /// Whether this NAT rule translates traffic to `ip` on `port`.
    pub(super) fn translates_to(&self, ip: IpAddr, port: PortSpec) -> bool {
        let to_ip = self
            .translated_address
            .as_deref()
            .and_then(|a| a.trim().parse::<IpAddr>().ok())
            == Some(ip);
        let to_port = self
            .translated_port
            .as_deref()
            .and_then(|p| p.trim().parse::<u16>().ok())
            .map_or_else(
                || ports_include(&self.ports, port.port.get()),
                |p| p == port.port.get(),
            );
        to_ip && to_port && protocols_overlap(&self.protocols, port.protocol)
    }
}
