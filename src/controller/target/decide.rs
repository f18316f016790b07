//! Pure: what one target should look like now, from its policy, its requests and the
//! operator's record. No I/O; `now` is an argument.

use std::collections::BTreeSet;

use jiff::Timestamp;

use crate::domain::record::TargetRecord;
use crate::domain::validate::{self, FieldError};
use crate::domain::{
    Locator, ObjectKey, Policy, Request, RequestOutcome, TargetDesired, TargetKey, desired,
};

/// A request of the target as the controller read it.
#[derive(Clone, Debug)]
pub struct RequestInput {
    /// Its identity.
    pub key: ObjectKey,
    /// Parsed and checked against the policy, or why not.
    pub parsed: Result<Request, Vec<FieldError>>,
}

/// The policy as far as a target run needs it.
#[derive(Clone, Debug)]
pub enum PolicyInput {
    /// The spec validates.
    Valid(Policy),
    /// The spec does not validate (see [`validate::held_policy`]), with the errors.
    Held(Policy, String),
}

impl PolicyInput {
    /// The parsed policy (held or not).
    pub fn policy(&self) -> &Policy {
        match self {
            PolicyInput::Valid(p) | PolicyInput::Held(p, _) => p,
        }
    }
}

/// What a run of one target is to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The desired state of the target.
    pub desired: TargetDesired,
    /// Per valid request of the target, its ports' fate.
    pub outcomes: std::collections::BTreeMap<ObjectKey, RequestOutcome>,
    /// The next time a grant of this target starts closing.
    pub next_expiry: Option<Timestamp>,
    /// Why this is a cleanup, when it is one (the policy or the target is going, or the
    /// target moved to another VM): for events and messages.
    pub cleanup: Option<Cleanup>,
    /// The policy's spec does not validate (why): nothing new opens.
    pub held: Option<String>,
}

/// Why a target is being cleaned up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// The policy is being deleted.
    PolicyDeleted,
    /// The target left the policy's spec.
    TargetRemoved,
    /// The target now names another VM: the one the record names is cleaned up first.
    TargetMoved,
}

/// Decides one target. `record` is the operator's verified record of it, if any. `None`
/// when there is nothing to do for this target (not in the spec, nothing recorded).
pub fn decide(
    policy: &PolicyInput,
    target: &str,
    requests: &[RequestInput],
    record: Option<&TargetRecord>,
    now: Timestamp,
) -> Option<Decision> {
    let p = policy.policy();
    let key = TargetKey {
        policy: p.key.clone(),
        target: target.to_string(),
    };
    let in_spec = p.target(target);
    let peers = || -> BTreeSet<String> {
        p.targets
            .iter()
            .filter(|t| t.name != target)
            .filter_map(|t| match &t.locator {
                Locator::Aws { instance_id, .. } => Some(instance_id.clone()),
                Locator::Azure { .. } => None,
            })
            .collect()
    };
    let peer_ports = || {
        if p.deleting || p.hold {
            Vec::new()
        } else {
            p.ports.iter().map(|p| p.spec).collect()
        }
    };
    let cleanup_of = |locator: &Locator, why: Cleanup| Decision {
        desired: TargetDesired::cleanup(key.clone(), locator.clone(), peers(), peer_ports()),
        outcomes: Default::default(),
        next_expiry: None,
        cleanup: Some(why),
        held: None,
    };
    let Some(t) = in_spec else {
        return record.map(|r| cleanup_of(&r.locator, Cleanup::TargetRemoved));
    };
    if let Some(r) = record
        && r.locator != t.locator
    {
        return Some(cleanup_of(&r.locator, Cleanup::TargetMoved));
    }
    let valid: Vec<Request> = requests
        .iter()
        .filter_map(|r| r.parsed.as_ref().ok().cloned())
        .collect();
    let mut d = desired(p, &valid, now);
    let desired = d.targets.remove(&key)?;
    Some(Decision {
        next_expiry: d.next_expiry.get(&key).copied(),
        outcomes: d.requests,
        cleanup: p.deleting.then_some(Cleanup::PolicyDeleted),
        held: match policy {
            PolicyInput::Held(_, why) => Some(why.clone()),
            PolicyInput::Valid(_) => None,
        },
        desired,
    })
}

/// Parses one request of a target for [`decide`]: against the policy when it validates,
/// without it (to close on time only) when the policy is held.
pub fn parse_request(
    policy: &PolicyInput,
    key: ObjectKey,
    spec: &crate::api::AccessRequestSpec,
    created: Timestamp,
    deleting: bool,
    recorded: validate::Recorded,
) -> Result<Request, Vec<FieldError>> {
    match policy {
        PolicyInput::Valid(p) => validate::request(key, spec, Some(p), created, deleting, recorded),
        PolicyInput::Held(..) => Ok(validate::request_unchecked(
            key, spec, created, deleting, recorded,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Bands, PolicyTarget, SharedGroups};

    fn locator(id: &str) -> Locator {
        Locator::Aws {
            region: "eu-west-1".into(),
            instance_id: id.into(),
        }
    }

    fn policy(targets: &[(&str, &str)]) -> Policy {
        Policy {
            key: ObjectKey::new("ns", "p"),
            targets: targets
                .iter()
                .map(|(n, i)| PolicyTarget {
                    name: n.to_string(),
                    locator: locator(i),
                })
                .collect(),
            ports: vec![],
            bands: Bands::default(),
            shared_groups: SharedGroups::default(),
            deleting: false,
            hold: false,
        }
    }

    fn record(target: &str, id: &str) -> TargetRecord {
        TargetRecord::new(target, &locator(id))
    }

    #[test]
    fn a_removed_target_is_cleaned_up_from_its_record_only() {
        let p = PolicyInput::Valid(policy(&[("web", "i-1")]));
        let now = Timestamp::from_second(0).unwrap();
        assert_eq!(decide(&p, "db", &[], None, now), None);
        let d = decide(&p, "db", &[], Some(&record("db", "i-2")), now).unwrap();
        assert_eq!(d.cleanup, Some(Cleanup::TargetRemoved));
        assert_eq!(d.desired.locator, locator("i-2"));
        assert!(d.desired.baseline.is_empty());
        assert_eq!(d.desired.peers, BTreeSet::from(["i-1".to_string()]));
    }

    #[test]
    fn a_target_that_moved_cleans_up_the_old_vm_first() {
        let p = PolicyInput::Valid(policy(&[("web", "i-new")]));
        let now = Timestamp::from_second(0).unwrap();
        let d = decide(&p, "web", &[], Some(&record("web", "i-old")), now).unwrap();
        assert_eq!(d.cleanup, Some(Cleanup::TargetMoved));
        assert_eq!(d.desired.locator, locator("i-old"));
        let d = decide(&p, "web", &[], Some(&record("web", "i-new")), now).unwrap();
        assert_eq!(d.cleanup, None);
        assert_eq!(d.desired.locator, locator("i-new"));
    }
}
