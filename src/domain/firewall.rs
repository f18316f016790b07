//! Azure Firewall (classic rules): the model of one firewall's rule collections, the
//! desired state of the targets behind it, and `plan()`. Pure: no Kubernetes, no SDK.
//!
//! A firewall is one resource shared by every target behind it (targets of several
//! policies may share it), so the plan covers the whole firewall and the backend writes
//! it in one PUT. Per installation (`--cluster-name`) the operator owns:
//!
//! - `portcullis-<cluster>-dnat`, a NAT collection (action `Dnat`): one rule per grant,
//!   `publicIp:<mapped port>` from the request's source, translated to the VM's private
//!   address and the requested port;
//! - `portcullis-<cluster>-allow`, a network collection (action `Allow`): one rule per
//!   grant for the translated traffic. Azure adds an implicit allow for DNAT traffic,
//!   but an explicit deny network rule overrides it, so without this collection the
//!   baseline below would block the grants themselves;
//! - `portcullis-<cluster>-deny-<target>`, a network collection (action `Deny`) per
//!   target: the baseline, one rule per governed port for the VM's private addresses,
//!   placed below the allow collection and below every foreign network collection that
//!   allows a governed port to the VM, so foreign collections keep their precedence.
//!
//! Everything else on the firewall is foreign and never changes. Rules are named
//! deterministically and stamped (owner and expiry) in their descriptions.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use jiff::Timestamp;

use super::model::{Band, Grant, ObjectKey, PortSpec, TargetKey};

mod matching;
mod names;
mod plan;
mod sweep;

pub use names::{Names, deny_rule_name, grant_rule_name, protocols, target_tag};
pub use plan::{apply, plan};
pub use sweep::{SweepScope, Swept, sweep};

/// Rule collection priorities Azure Firewall accepts (a lower number wins).
pub const PRIORITIES: std::ops::RangeInclusive<u16> = 100..=65000;

/// Where owned collections go unless the policy says otherwise: below the priorities
/// people usually pick, with room for a deny collection per target.
pub const DEFAULT_BAND: Band = Band {
    first: 60000,
    last: 64999,
};

/// The mapped ports grants get unless the policy says otherwise.
pub const DEFAULT_MAPPED_PORTS: PortRange = PortRange {
    first: 50000,
    last: 50999,
};

/// The name prefix of every collection an installation of Portcullis owns.
pub const PREFIX: &str = "portcullis-";

/// An inclusive range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port.
    pub last: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Parses `first-last` (1–65535, first ≤ last).
pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let bad = || format!("{text:?} is not a port range such as 50000-50999");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
    let (Some(first), Some(last)) = (port(a), port(b)) else {
        return Err(format!(
            "{text:?} is not a port range of ports 1-65535 such as 50000-50999"
        ));
    };
    if first > last {
        return Err(format!("{text:?} starts after it ends"));
    }
    Ok(PortRange { first, last })
}

/// What a policy says about the firewall in front of one of its targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallSettings {
    /// The firewall's ARM id.
    pub id: String,
    /// The public address DNAT rules listen on.
    pub public_ip: Ipv4Addr,
    /// The ports grants are mapped to.
    pub mapped_ports: PortRange,
    /// Where owned collections go.
    pub band: Band,
}

// ----- the observed firewall -----

/// The kind of a rule collection; priorities are unique per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CollectionKind {
    /// `natRuleCollections` (DNAT).
    Nat,
    /// `networkRuleCollections`.
    Network,
}

/// One rule of a NAT or network collection, as ARM states it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FwRule {
    /// The rule's name (unique in its collection).
    pub name: String,
    /// Its description; owned rules carry their stamp here.
    pub description: Option<String>,
    /// `TCP`, `UDP`, `Any`, `ICMP`.
    pub protocols: Vec<String>,
    /// Source addresses (CIDRs, addresses, ranges, `*`).
    pub sources: Vec<String>,
    /// Destination addresses (network rules: the traffic's target; NAT: the public IP).
    pub destinations: Vec<String>,
    /// Destination ports (`22`, `50000-50010`, `*`).
    pub ports: Vec<String>,
    /// NAT: the address traffic is translated to.
    pub translated_address: Option<String>,
    /// NAT: the port traffic is translated to.
    pub translated_port: Option<String>,
    /// The rule names destinations the model cannot read (FQDNs, IP groups): it may
    /// reach any address.
    pub opaque: bool,
}

/// A NAT or network rule collection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Collection {
    /// NAT or network.
    pub kind: CollectionKind,
    /// Its name (unique per kind).
    pub name: String,
    /// Its priority (unique per kind; a lower number wins).
    pub priority: u16,
    /// `Allow`, `Deny` (network) or `Dnat`, `Snat` (NAT), as ARM writes it.
    pub action: String,
    /// The rules, in order.
    pub rules: Vec<FwRule>,
    /// Whether the model holds all the collection says. An owned collection that holds
    /// more (a field someone added) is rewritten.
    pub exact: bool,
}

/// The NAT and network collections of a firewall (application collections are never
/// touched and not modelled).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FirewallObserved {
    /// In the order ARM lists them, NAT and network mixed.
    pub collections: Vec<Collection>,
}

// ----- the desired state -----

/// One target behind the firewall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallTarget {
    /// The target.
    pub key: TargetKey,
    /// Its firewall settings (public IP, mapped ports, band).
    pub settings: FirewallSettings,
    /// The VM's private addresses (the first IPv4 one is where DNAT translates to).
    pub private_ips: Vec<IpAddr>,
    /// Ports kept closed (empty while the policy is being deleted).
    pub baseline: Vec<PortSpec>,
    /// The policy's spec does not validate: the baseline stays exactly as it is (grants
    /// still close on time).
    pub hold: bool,
    /// Grants that should be open.
    pub grants: Vec<Grant>,
}

/// The desired state of one firewall, for the targets the caller manages. Owned rules
/// of targets not listed here are left as they are (the sweeper removes orphans).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallDesired {
    /// The firewall's ARM id.
    pub firewall: String,
    /// The installation's name (`--cluster-name`).
    pub cluster: String,
    /// The time: grants expired by now are never planned.
    pub now: Timestamp,
    /// The managed targets.
    pub targets: Vec<FirewallTarget>,
}

// ----- the plan -----

/// Where to connect for one grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The target.
    pub target: TargetKey,
    /// The request holding the grant.
    pub request: ObjectKey,
    /// The requested port.
    pub port: PortSpec,
    /// The grant's source.
    pub source: IpNet,
    /// The firewall's public address.
    pub address: Ipv4Addr,
    /// The mapped port on that address.
    pub mapped_port: u16,
}

/// What could not be placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockedItem {
    /// The baseline deny of a governed port.
    Baseline(PortSpec),
    /// A grant.
    Grant {
        /// The request.
        request: ObjectKey,
        /// The requested port.
        port: PortSpec,
    },
}

/// A part of the desired state the plan leaves out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallBlocked {
    /// The target.
    pub target: TargetKey,
    /// What.
    pub item: BlockedItem,
    /// `Unsupported` when no retry can place it (an IPv6 source), else `Conflict`.
    pub kind: super::plan::BlockKind,
    /// Why, for people.
    pub reason: String,
}

/// What the firewall's owned collections must become.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FirewallPlan {
    /// Every collection this installation owns, as it must be (a collection observed
    /// but not listed is removed).
    pub owned: Vec<Collection>,
    /// Whether that differs from what was observed: the firewall must be written.
    pub changed: bool,
    /// Where to connect, per placed grant.
    pub connections: Vec<Connection>,
    /// What was left out.
    pub blocked: Vec<FirewallBlocked>,
}

#[cfg(test)]
mod tests;
