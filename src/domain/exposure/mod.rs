//! Exposure: which management ports of a VM are reachable, from where, and what that
//! makes the VM (Defender for Cloud's JIT recommendation: healthy, unhealthy, not
//! applicable).
//!
//! Pure: the cloud readers hand in the rule sets as the clouds state them; the answers
//! are the reachable ports with the sources and rules that open them
//! ([`aws::open_ports`], [`azure::open_ports`]) and a [`verdict::Verdict`] with its
//! reason sentence.

pub mod addresses;
pub mod aws;
pub mod azure;
pub mod verdict;

use std::fmt;

use crate::domain::PortSpec;

pub use verdict::{Category, Governing, Verdict, verdict};

/// The management ports looked for unless the user says otherwise: SSH, RDP, WinRM over
/// HTTP and HTTPS.
pub const DEFAULT_PORTS: [u16; 4] = [22, 3389, 5985, 5986];

/// From where an open port can be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reach {
    /// From some internet address.
    Internet,
    /// Only from private addresses, the VM's network and references to other resources.
    Internal,
}

/// A management port a VM's rules leave open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenPort {
    /// The port and protocol.
    pub port: PortSpec,
    /// From where.
    pub reach: Reach,
    /// The sources that reach it, as the rules write them (only the internet ones when
    /// `reach` is `Internet`).
    pub sources: Vec<String>,
    /// The rules that open it (`group/rule`, `nsg/rule`, or `subnet-nsg/rule + nic-nsg/rule`).
    pub rules: Vec<String>,
}

/// The cloud a VM is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cloud {
    /// AWS EC2.
    Aws,
    /// Azure.
    Azure,
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cloud::Aws => "aws",
            Cloud::Azure => "azure",
        })
    }
}

/// Why JIT does not apply to a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotApplicable {
    /// The VM is not running (stopped, deallocated, …); `state` as the cloud names it.
    NotRunning {
        /// The cloud's word for the state.
        state: String,
    },
    /// Azure: neither a network interface nor its subnet has an NSG.
    NoNsg,
    /// Azure: the VM is behind an Azure Firewall that a Firewall Manager policy governs.
    FirewallManager {
        /// The firewall's name.
        firewall: String,
        /// The Firewall Manager policy's name.
        policy: String,
    },
    /// Azure: a classic (Azure Service Manager) VM.
    Classic,
}

/// A VM as the scan read it, before the policies are consulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedVm {
    /// The cloud.
    pub cloud: Cloud,
    /// The instance id (AWS) or ARM id (Azure).
    pub id: String,
    /// The `Name` tag or instance id (AWS), the VM's name (Azure).
    pub name: String,
    /// The region (AWS) or location (Azure).
    pub region: String,
    /// Azure: the resource group (as the VM's id spells it).
    pub resource_group: Option<String>,
    /// Its public addresses.
    pub public_ips: Vec<String>,
    /// The management ports its rules leave open, in port order.
    pub open_ports: Vec<OpenPort>,
    /// Set when JIT does not apply.
    pub not_applicable: Option<NotApplicable>,
    /// Something the reason should mention (e.g. a classic Azure Firewall in front).
    pub note: Option<String>,
}

/// Parses a management port as the command line writes it: `22`, `22/tcp`, `500/udp`.
pub fn parse_port(text: &str) -> Result<PortSpec, String> {
    let (number, proto) = match text.split_once('/') {
        Some((n, p)) => (n, p),
        None => (text, "tcp"),
    };
    let port = number
        .trim()
        .parse::<u16>()
        .ok()
        .and_then(std::num::NonZeroU16::new)
        .ok_or_else(|| format!("{text:?}: the port must be a number from 1 to 65535"))?;
    let protocol = match proto.trim().to_ascii_lowercase().as_str() {
        "tcp" => crate::domain::Proto::Tcp,
        "udp" => crate::domain::Proto::Udp,
        _ => return Err(format!("{text:?}: the protocol must be tcp or udp")),
    };
    Ok(PortSpec { port, protocol })
}

/// Merges the open ports found per interface or address: one entry per port, internet
/// reach winning, sources and rules united in order of first appearance.
pub(crate) fn merge(found: Vec<OpenPort>) -> Vec<OpenPort> {
    let mut out: Vec<OpenPort> = Vec::new();
    for f in found {
        match out.iter_mut().find(|o| o.port == f.port) {
            Some(o) if o.reach == f.reach => {
                for s in f.sources {
                    if !o.sources.contains(&s) {
                        o.sources.push(s);
                    }
                }
                for r in f.rules {
                    if !o.rules.contains(&r) {
                        o.rules.push(r);
                    }
                }
            }
            Some(o) if f.reach < o.reach => *o = f,
            Some(_) => {}
            None => out.push(f),
        }
    }
    out.sort_by_key(|o| o.port);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Proto;

    #[test]
    fn ports_parse_with_a_protocol() {
        let p = parse_port("22").unwrap();
        assert_eq!((p.port.get(), p.protocol), (22, Proto::Tcp));
        let p = parse_port("500/UDP").unwrap();
        assert_eq!((p.port.get(), p.protocol), (500, Proto::Udp));
        assert!(parse_port("0").unwrap_err().contains("1 to 65535"));
        assert!(parse_port("ssh").is_err());
        assert!(parse_port("22/icmp").unwrap_err().contains("tcp or udp"));
    }
}
