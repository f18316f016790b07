//! Names of owned collections and rules: deterministic, and whole-name matched.

use super::super::model::{Grant, PortSpec, Proto, TargetKey};
use super::super::stamp::{cluster_id, short_hash};
use super::{Collection, CollectionKind, PREFIX};

/// Eight hex digits naming a target in rule and collection names.
pub fn target_tag(target: &TargetKey) -> String {
    short_hash(&format!(
        "{}/{}/{}",
        target.policy.namespace, target.policy.name, target.target
    ))
}

/// The names of one installation's collections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    tag: String,
}

impl Names {
    /// The names for installation `cluster` (`--cluster-name`), which appears in them as
    /// its stamp id ([`cluster_id`]).
    pub fn new(cluster: &str) -> Names {
        Names {
            tag: cluster_id(cluster),
        }
    }

    /// The installation's id, as its stamps carry it.
    pub fn cluster(&self) -> &str {
        &self.tag
    }

    /// The NAT collection.
    pub fn nat(&self) -> String {
        format!("{PREFIX}{}-dnat", self.tag)
    }

    /// The network collection that allows granted traffic.
    pub fn allow(&self) -> String {
        format!("{PREFIX}{}-allow", self.tag)
    }

    /// The network collection holding one target's baseline.
    pub fn deny(&self, target_tag: &str) -> String {
        format!("{PREFIX}{}-deny-{target_tag}", self.tag)
    }

    /// The target tag of a deny collection of this installation, if `name` is one.
    pub fn deny_target<'a>(&self, name: &'a str) -> Option<&'a str> {
        let rest = name.strip_prefix(&format!("{PREFIX}{}-deny-", self.tag))?;
        is_tag(rest).then_some(rest)
    }

    /// Whether this installation owns collection `c`. Names are compared whole, so an
    /// installation whose name extends this one's is never mistaken for it.
    pub fn owns(&self, c: &Collection) -> bool {
        match c.kind {
            CollectionKind::Nat => c.name == self.nat(),
            CollectionKind::Network => {
                c.name == self.allow() || self.deny_target(&c.name).is_some()
            }
        }
    }
}

pub(super) fn is_tag(s: &str) -> bool {
    s.len() == 8
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// The name of a grant's DNAT rule and of its allow rule.
pub fn grant_rule_name(target_tag: &str, grant: &Grant) -> String {
    format!(
        "{target_tag}-{}{}-{}",
        grant.port.port,
        proto_short(grant.port.protocol),
        short_hash(&grant.source.to_string())
    )
}

/// The name of a governed port's deny rule (inside the target's deny collection).
pub fn deny_rule_name(port: PortSpec) -> String {
    format!("{}{}", port.port, proto_short(port.protocol))
}

/// The target tag a grant rule's name starts with.
pub(super) fn rule_target(name: &str) -> Option<&str> {
    let tag = name.get(..8)?;
    (is_tag(tag) && name[8..].starts_with('-')).then_some(tag)
}

fn proto_short(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Any => "any",
    }
}

/// The protocols a rule for `p` lists (DNAT takes TCP and UDP only).
pub fn protocols(p: Proto) -> Vec<String> {
    match p {
        Proto::Tcp => vec!["TCP".into()],
        Proto::Udp => vec!["UDP".into()],
        Proto::Any => vec!["TCP".into(), "UDP".into()],
    }
}
