//! The cloud-agnostic rule model.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;

pub use crate::api::Protocol;

/// A namespaced object's identity (`namespace/name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// Makes a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One policy target: `namespace/policy/target`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    /// The policy.
    pub policy: ObjectKey,
    /// The target's name within the policy.
    pub target: String,
}

impl fmt::Display for TargetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.policy, self.target)
    }
}

/// A port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    /// The port number.
    pub port: NonZeroU16,
    /// The protocol.
    pub protocol: Proto,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// A transport protocol, ordered so it can key maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// TCP and UDP.
    Any,
}

impl Proto {
    /// Whether traffic of `self` includes some of `other`.
    pub fn overlaps(self, other: Proto) -> bool {
        self == other || self == Proto::Any || other == Proto::Any
    }
}

impl From<Protocol> for Proto {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => Proto::Tcp,
            Protocol::Udp => Proto::Udp,
            Protocol::Any => Proto::Any,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Any => "any",
        })
    }
}

/// Where a target lives, as the backends need it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Locator {
    /// An Azure VM, optionally behind an Azure Firewall.
    Azure {
        /// The VM's ARM id.
        vm_id: String,
        /// The firewall's ARM id and public IP, when the VM is reached through one.
        firewall: Option<(String, String)>,
    },
    /// An EC2 instance.
    Aws {
        /// The region.
        region: String,
        /// The instance id.
        instance_id: String,
    },
}

/// An inclusive range of NSG priorities (lower wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Band {
    /// The first priority.
    pub first: u16,
    /// The last priority.
    pub last: u16,
}

/// Where owned Azure rules go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bands {
    /// Allow rules (grants).
    pub allow: Band,
    /// Deny rules (the baseline).
    pub deny: Band,
}

impl Default for Bands {
    /// Allow 3000–3899, deny 3900–4096: below the rules teams usually write (100–2999),
    /// so foreign rules keep their precedence.
    fn default() -> Self {
        Bands {
            allow: Band {
                first: 3000,
                last: 3899,
            },
            deny: Band {
                first: 3900,
                last: 4096,
            },
        }
    }
}

/// A policy port after parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyPort {
    /// Port and protocol.
    pub spec: PortSpec,
    /// Sources a request may name: a request's source must lie inside one of them.
    pub allowed: Vec<AllowedSource>,
    /// The longest grant.
    pub max_duration: Duration,
}

/// A source prefix a policy allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowedSource {
    /// `*`: any address, IPv4 or IPv6.
    Any,
    /// A CIDR.
    Net(IpNet),
}

impl AllowedSource {
    /// Whether `source` lies inside this allowed prefix.
    pub fn contains(&self, source: &IpNet) -> bool {
        match self {
            AllowedSource::Any => true,
            AllowedSource::Net(net) => net.contains(source),
        }
    }
}

/// A policy target after parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyTarget {
    /// The target's name.
    pub name: String,
    /// Where it lives.
    pub locator: Locator,
}

/// A parsed, valid policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The policy's identity.
    pub key: ObjectKey,
    /// The protected VMs.
    pub targets: Vec<PolicyTarget>,
    /// The governed ports.
    pub ports: Vec<PolicyPort>,
    /// Where owned Azure rules go.
    pub bands: Bands,
    /// AWS: what to do with a security group that instances outside the policy share.
    pub shared_groups: SharedGroups,
    /// Being deleted: everything it opened or closed is to be undone.
    pub deleting: bool,
    /// The spec does not validate: the baseline stays as it is and nothing new opens,
    /// while grants still close on time, on revocation and on deletion.
    pub hold: bool,
}

/// AWS: what the baseline does in a security group that instances outside the policy
/// also use. Revoking there would close the port on VMs the policy does not govern.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SharedGroups {
    /// Do not revoke: report a conflict naming the group and the other users.
    #[default]
    Conflict,
    /// Revoke anyway (the policy's owner accepts closing the port for them too).
    Revoke,
}

impl Policy {
    /// The target named `name`.
    pub fn target(&self, name: &str) -> Option<&PolicyTarget> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// The policy port matching a requested port number and (optional) protocol.
    pub fn port(&self, port: u16, protocol: Option<Proto>) -> Option<&PolicyPort> {
        self.ports.iter().find(|p| {
            p.spec.port.get() == port && protocol.is_none_or(|proto| proto == p.spec.protocol)
        })
    }
}

/// The state of one requested port, as recorded in the request's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortState {
    /// Accepted, not open yet.
    Pending,
    /// Open.
    Active,
    /// Closed: time ran out.
    Expired,
    /// Closed early, for the reason given.
    Revoked(CloseReason),
    /// Refused.
    Denied,
    /// The cloud refused it for good.
    Failed,
}

impl PortState {
    /// Whether the port is finished and must never open again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PortState::Expired | PortState::Revoked(_) | PortState::Denied | PortState::Failed
        )
    }
}

/// Why a port closed before its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Revoked or deleted by a person.
    UserRequested,
    /// A newer request for the same target, port and source took over.
    NewerRequestInitiated,
    /// The policy no longer allows it.
    PolicyChanged,
}

/// One requested port after parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestedPort {
    /// Port and protocol (the protocol resolved against the policy).
    pub spec: PortSpec,
    /// The source.
    pub source: IpNet,
    /// How long it stays open.
    pub duration: Duration,
}

/// A parsed, valid request, with what its status already records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The request's identity.
    pub key: ObjectKey,
    /// The policy it names (same namespace).
    pub policy: String,
    /// The target it names.
    pub target: String,
    /// The ports, in spec order.
    pub ports: Vec<RequestedPort>,
    /// When it was created (orders supersession).
    pub created: Timestamp,
    /// Revoked by `spec.revoke` or being deleted.
    pub revoked: bool,
    /// Per port (spec order), a final state the status records; `None` otherwise. The
    /// status is writable by people, so this may only ever keep a port closed.
    pub recorded: Vec<Option<PortState>>,
}

impl Request {
    /// When port `i` closes: its duration after the request was created. The creation
    /// time is the API server's, so nobody can move an expiry by writing the status.
    pub fn expiry(&self, i: usize) -> Timestamp {
        let d = self.ports[i].duration;
        self.created
            .checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(Timestamp::MAX)
    }
}

/// One grant: a source allowed on a port of a target until a time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    /// The request that carries it.
    pub request: ObjectKey,
    /// Port and protocol.
    pub port: PortSpec,
    /// The source.
    pub source: IpNet,
    /// When it closes.
    pub expires_at: Timestamp,
}

impl Grant {
    /// The stamp its rules carry: the request and the expiry.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            owner: super::stamp::owner_id(&self.request),
            expires_at: Some(self.expires_at),
        }
    }

    /// What makes two grants the same rule: at most one request holds it at a time.
    pub fn rule_key(&self) -> RuleKey {
        RuleKey {
            port: self.port,
            source: self.source,
        }
    }
}

/// The identity of an owned allow rule in one location: port, protocol and source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// Port and protocol.
    pub port: PortSpec,
    /// The source.
    pub source: IpNet,
}

/// What an owned rule's description says: who owns it and until when.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The owner's id ([`super::stamp::owner_id`]): the request for grants, the policy
    /// for the baseline.
    pub owner: String,
    /// When the rule must be gone (grants only).
    pub expires_at: Option<Timestamp>,
}

impl Stamp {
    /// The stamp of a policy's baseline rules (Azure deny rules): the policy, no expiry.
    pub fn baseline(policy: &ObjectKey) -> Stamp {
        Stamp {
            owner: super::stamp::owner_id(policy),
            expires_at: None,
        }
    }
}

/// What a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Lets traffic in.
    Allow,
    /// Keeps traffic out.
    Deny,
}

/// An IP address family: an NSG rule never mixes the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of a prefix.
    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// What an owned rule is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OwnedKind {
    /// An allow rule that carries a grant: one port, one source.
    Grant {
        /// Port and protocol.
        port: PortSpec,
        /// The source.
        source: IpNet,
    },
    /// A baseline deny rule for a governed port, for the VM's addresses of one family
    /// (Azure).
    Deny {
        /// Port and protocol.
        port: PortSpec,
        /// The family of its destinations.
        family: Family,
    },
    /// AWS: an allow rule that keeps open what a revoked foreign rule opened beyond the
    /// governed ports (the rest of its port range), so revoking it breaks nothing else.
    CarveOut(RuleShape),
    /// Something with an owned name or in an owned group that is none of the above (a
    /// rule someone edited, a leftover): it goes.
    Stray,
}

/// The shape of an allow rule: protocol, ports and source, as the cloud names them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleShape {
    /// The protocol as the cloud names it (`tcp`, `udp`, `icmp`, `-1`, …).
    pub protocol: String,
    /// The first and last port (`None`: all ports).
    pub ports: Option<(u16, u16)>,
    /// The source.
    pub source: ForeignSource,
}

/// A rule the operator owns (recognised by name prefix or group tag, and stamp).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnedRule {
    /// The location it is in (AWS: the ENI its owned group serves; Azure: the NSG id).
    pub location: String,
    /// The cloud's id for the rule.
    pub cloud_id: String,
    /// What it is for.
    pub kind: OwnedKind,
    /// Owner and expiry.
    pub stamp: Stamp,
    /// The NSG priority (Azure).
    pub priority: Option<u16>,
    /// The destination addresses it names (Azure; empty on AWS, where the group's
    /// attachment decides).
    pub destinations: Vec<IpAddr>,
}

impl OwnedRule {
    /// The grant's port and source, when the rule carries a grant.
    pub fn grant(&self) -> Option<RuleKey> {
        match &self.kind {
            OwnedKind::Grant { port, source } => Some(RuleKey {
                port: *port,
                source: *source,
            }),
            _ => None,
        }
    }
}

/// A source as a foreign rule names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ForeignSource {
    /// An IPv4 or IPv6 CIDR.
    Cidr(String),
    /// Another security group (AWS) or application security group (Azure).
    Group(String),
    /// A managed prefix list (AWS).
    PrefixList(String),
    /// A service tag or `*` (Azure).
    Tag(String),
}

/// What a rule the operator does not own says: enough to restore it exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ForeignRuleSpec {
    /// The group or NSG it is in.
    pub container: String,
    /// The protocol as the cloud names it (`tcp`, `udp`, `-1`, `6`, `*`, …).
    pub protocol: String,
    /// The first and last port (`None`: all ports).
    pub ports: Option<(u16, u16)>,
    /// The source.
    pub source: ForeignSource,
    /// The rule's description.
    pub description: Option<String>,
}

impl ForeignRuleSpec {
    /// Its protocol, ports and source.
    pub fn shape(&self) -> RuleShape {
        RuleShape {
            protocol: self.protocol.clone(),
            ports: self.ports,
            source: self.source.clone(),
        }
    }

    /// Whether the rule lets traffic of `port` in.
    pub fn covers(&self, port: PortSpec) -> bool {
        let proto_ok = match self.protocol.to_ascii_lowercase().as_str() {
            "-1" | "*" | "all" => true,
            "tcp" | "6" => port.protocol.overlaps(Proto::Tcp),
            "udp" | "17" => port.protocol.overlaps(Proto::Udp),
            _ => false,
        };
        let p = port.port.get();
        proto_ok && self.ports.is_none_or(|(from, to)| from <= p && p <= to)
    }
}

/// An inbound allow rule the operator does not own, as observed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ForeignRule {
    /// The cloud's id for the rule.
    pub cloud_id: String,
    /// What it says.
    pub spec: ForeignRuleSpec,
    /// Allow or deny.
    pub access: Access,
    /// The NSG priority (Azure).
    pub priority: Option<u16>,
}

/// What a backend saw for one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Where grant rules go (AWS: ENI ids; Azure: NSG ids).
    pub locations: Vec<String>,
    /// Rules the operator owns.
    pub owned: Vec<OwnedRule>,
    /// Inbound rules the operator does not own.
    pub foreign: Vec<ForeignRule>,
    /// Priorities taken by rules that are neither this target's nor foreign (the
    /// operator's rules for other targets in a shared NSG): `(location, priority)`.
    pub reserved: Vec<(String, u16)>,
    /// The VM's private addresses: the destinations of Azure rules.
    pub addresses: Vec<IpAddr>,
    /// AWS: per foreign group attached to the target, who else uses it (instance ids,
    /// or interface ids for interfaces attached to no instance).
    pub group_users: BTreeMap<String, BTreeSet<String>>,
    /// AWS: per location (ENI), the foreign groups attached to it.
    pub attached: BTreeMap<String, BTreeSet<String>>,
    /// Containers named in the records that no longer exist (their records are dropped).
    pub gone_containers: BTreeSet<String>,
}
