//! `desired()`: from policies, requests and the time, what should be open and closed.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};

use super::model::*;

/// What one target should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetDesired {
    /// The target.
    pub key: TargetKey,
    /// Where it lives.
    pub locator: Locator,
    /// Where owned Azure rules go.
    pub bands: Bands,
    /// Ports kept closed (empty while the policy is being deleted or the target was
    /// removed from it: the baseline is lifted).
    pub baseline: Vec<PortSpec>,
    /// The policy's spec is invalid: the baseline stays exactly as it is and nothing new
    /// opens; grants still close on time, on revocation and on deletion.
    pub hold: bool,
    /// Grants that must be open now.
    pub grants: Vec<Grant>,
    /// AWS: the instances of the policy's other targets.
    pub peers: BTreeSet<String>,
    /// AWS: the ports those other targets keep closed; a recorded rule in a group they use
    /// is not restored while one of these covers it.
    pub peer_ports: Vec<PortSpec>,
    /// AWS: what to do in groups that instances outside the policy share.
    pub shared_groups: SharedGroups,
}

impl TargetDesired {
    /// A target whose every rule goes and whose revocations are restored: its policy is
    /// gone or being deleted, or the target left the policy. `peers` and `peer_ports` are
    /// the policy's remaining AWS instances and ports (empty when the policy goes).
    pub fn cleanup(
        key: TargetKey,
        locator: Locator,
        peers: BTreeSet<String>,
        peer_ports: Vec<PortSpec>,
    ) -> Self {
        TargetDesired {
            key,
            locator,
            bands: Bands::default(),
            baseline: Vec::new(),
            hold: false,
            grants: Vec::new(),
            peers,
            peer_ports,
            shared_groups: SharedGroups::default(),
        }
    }
}

/// The outcome for one requested port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortOutcome {
    /// `Active` means "should be open now"; the other states are final (or `Pending`
    /// while the policy cannot open anything).
    pub state: PortState,
    /// When the port closes (or closed).
    pub expires_at: Timestamp,
}

/// The outcome for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestOutcome {
    /// Per spec port.
    pub ports: Vec<PortOutcome>,
}

impl RequestOutcome {
    /// When the last port closes.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.ports.iter().map(|p| p.expires_at).max()
    }
}

/// The whole desired state of one policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Per target of the policy.
    pub targets: BTreeMap<TargetKey, TargetDesired>,
    /// Per request given.
    pub requests: BTreeMap<ObjectKey, RequestOutcome>,
    /// Per target, the next time one of its grants starts closing: when to look again.
    pub next_expiry: BTreeMap<TargetKey, Timestamp>,
}

/// How long before its expiry a grant starts closing. NSG writes are long-running ARM
/// operations that take seconds, so Azure grants close this much early: no allow rule
/// outlives its grant. EC2 writes take effect at once.
pub const AZURE_CLOSE_LEAD: SignedDuration = SignedDuration::from_secs(3);

/// How long before expiry a target's grants start closing.
pub fn close_lead(locator: &Locator) -> SignedDuration {
    match locator {
        Locator::Azure { .. } => AZURE_CLOSE_LEAD,
        Locator::Aws { .. } => SignedDuration::ZERO,
    }
}

/// Computes the desired state of one policy at `now`. `requests` must have been parsed
/// (see [`super::validate::request`], or [`super::validate::request_unchecked`] while the
/// policy is on hold); requests of other policies are ignored.
pub fn desired(policy: &Policy, requests: &[Request], now: Timestamp) -> Desired {
    let mut out = Desired::default();
    let instances: BTreeMap<&str, &str> = policy
        .targets
        .iter()
        .filter_map(|t| match &t.locator {
            Locator::Aws { instance_id, .. } => Some((t.name.as_str(), instance_id.as_str())),
            Locator::Azure { .. } => None,
        })
        .collect();
    let ports: Vec<PortSpec> = if policy.deleting || policy.hold {
        Vec::new()
    } else {
        policy.ports.iter().map(|p| p.spec).collect()
    };
    for t in &policy.targets {
        let key = TargetKey {
            policy: policy.key.clone(),
            target: t.name.clone(),
        };
        out.targets.insert(
            key.clone(),
            TargetDesired {
                key,
                locator: t.locator.clone(),
                bands: policy.bands,
                baseline: ports.clone(),
                hold: policy.hold,
                grants: Vec::new(),
                peers: instances
                    .iter()
                    .filter(|(name, _)| **name != t.name)
                    .map(|(_, id)| id.to_string())
                    .collect(),
                peer_ports: ports.clone(),
                shared_groups: policy.shared_groups,
            },
        );
    }

    // First pass: each port's own fate; candidates for opening are collected per rule.
    type Slot = (ObjectKey, usize);
    /// A request port that wants a rule: (created, request, port index, grant).
    type Holder = (Timestamp, ObjectKey, usize, Grant);
    let mut candidates: BTreeMap<(TargetKey, RuleKey), Vec<Holder>> = BTreeMap::new();
    let mut outcomes: BTreeMap<ObjectKey, RequestOutcome> = BTreeMap::new();
    for r in requests {
        if r.key.namespace != policy.key.namespace || r.policy != policy.key.name {
            continue;
        }
        let target = TargetKey {
            policy: policy.key.clone(),
            target: r.target.clone(),
        };
        let lead = policy
            .target(&r.target)
            .map_or(SignedDuration::ZERO, |t| close_lead(&t.locator));
        let mut ports = Vec::with_capacity(r.ports.len());
        for (i, port) in r.ports.iter().enumerate() {
            let expires_at = r.expiry(i);
            let recorded = r.recorded.get(i).copied().flatten();
            let state = match recorded {
                Some(s) if s.is_final() => s,
                _ if expires_at - lead <= now => PortState::Expired,
                _ if r.revoked => PortState::Revoked(CloseReason::UserRequested),
                _ if policy.deleting => PortState::Revoked(CloseReason::PolicyChanged),
                _ => {
                    let grant = Grant {
                        request: r.key.clone(),
                        port: port.spec,
                        source: port.source,
                        expires_at,
                    };
                    candidates
                        .entry((target.clone(), grant.rule_key()))
                        .or_default()
                        .push((r.created, r.key.clone(), i, grant));
                    PortState::Active
                }
            };
            ports.push(PortOutcome { state, expires_at });
        }
        outcomes.insert(r.key.clone(), RequestOutcome { ports });
    }

    // Second pass: one rule, one holder. The newest request wins, as in Defender.
    let mut superseded: Vec<Slot> = Vec::new();
    for ((target, _), mut holders) in candidates {
        holders.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let (_, _, _, winner) = holders.pop().expect("non-empty");
        superseded.extend(holders.into_iter().map(|(_, key, i, _)| (key, i)));
        if let Some(t) = out.targets.get_mut(&target) {
            let closes_at = winner.expires_at - close_lead(&t.locator);
            let next = out.next_expiry.entry(target.clone()).or_insert(closes_at);
            *next = (*next).min(closes_at);
            t.grants.push(winner);
        }
    }
    for (key, i) in superseded {
        if let Some(o) = outcomes.get_mut(&key) {
            o.ports[i].state = PortState::Revoked(CloseReason::NewerRequestInitiated);
        }
    }
    for t in out.targets.values_mut() {
        t.grants
            .sort_by(|a, b| (a.rule_key(), &a.request).cmp(&(b.rule_key(), &b.request)));
    }
    out.requests = outcomes;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU16;
    use std::time::Duration;

    pub(crate) fn ssh() -> PortSpec {
        PortSpec {
            port: NonZeroU16::new(22).unwrap(),
            protocol: Proto::Tcp,
        }
    }

    fn policy() -> Policy {
        Policy {
            key: ObjectKey::new("ns", "p"),
            targets: vec![PolicyTarget {
                name: "web".into(),
                locator: Locator::Aws {
                    region: "eu-west-1".into(),
                    instance_id: "i-01234567".into(),
                },
            }],
            ports: vec![PolicyPort {
                spec: ssh(),
                allowed: vec![AllowedSource::Any],
                max_duration: Duration::from_secs(3600),
            }],
            bands: Bands::default(),
            shared_groups: SharedGroups::default(),
            deleting: false,
            hold: false,
        }
    }

    fn request(name: &str, created: i64, source: &str, secs: u64) -> Request {
        Request {
            key: ObjectKey::new("ns", name),
            policy: "p".into(),
            target: "web".into(),
            ports: vec![RequestedPort {
                spec: ssh(),
                source: source.parse().unwrap(),
                duration: Duration::from_secs(secs),
            }],
            created: Timestamp::from_second(created).unwrap(),
            revoked: false,
            recorded: vec![None],
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("ns", name)
    }

    #[test]
    fn a_request_is_granted_from_its_creation() {
        let d = desired(&policy(), &[request("a", 100, "203.0.113.7/32", 30)], at(110));
        let t = d.targets.values().next().unwrap();
        assert_eq!(t.baseline, vec![ssh()]);
        assert_eq!(t.grants.len(), 1);
        assert_eq!(t.grants[0].expires_at, at(130));
        assert_eq!(d.next_expiry.values().next(), Some(&at(130)));
        assert_eq!(d.requests[&key("a")].ports[0].state, PortState::Active);
        // Seen for the first time after its time ran out (the operator was down): expired,
        // never opened late.
        let d = desired(&policy(), &[request("a", 100, "203.0.113.7/32", 30)], at(130));
        assert!(d.targets.values().next().unwrap().grants.is_empty());
        assert_eq!(d.requests[&key("a")].ports[0].state, PortState::Expired);
    }

    #[test]
    fn the_newest_request_for_a_rule_wins() {
        let d = desired(
            &policy(),
            &[
                request("old", 0, "203.0.113.7/32", 300),
                request("new", 10, "203.0.113.7/32", 300),
            ],
            at(20),
        );
        let t = d.targets.values().next().unwrap();
        assert_eq!(t.grants.len(), 1);
        assert_eq!(t.grants[0].request.name, "new");
        assert_eq!(
            d.requests[&key("old")].ports[0].state,
            PortState::Revoked(CloseReason::NewerRequestInitiated)
        );
    }

    #[test]
    fn closed_ports_stay_closed() {
        let mut old = request("old", 0, "203.0.113.7/32", 300);
        old.recorded = vec![Some(PortState::Revoked(CloseReason::NewerRequestInitiated))];
        let mut newer = request("new", 10, "203.0.113.7/32", 300);
        newer.revoked = true;
        let d = desired(&policy(), &[old, newer], at(20));
        assert!(d.targets.values().next().unwrap().grants.is_empty());
        assert_eq!(
            d.requests[&key("new")].ports[0].state,
            PortState::Revoked(CloseReason::UserRequested)
        );
    }

    #[test]
    fn azure_grants_start_closing_early() {
        let mut p = policy();
        p.targets[0].locator = Locator::Azure {
            vm_id: "vm".into(),
            firewall: None,
        };
        let r = request("a", 100, "203.0.113.7/32", 30);
        // 30 s grant from 100: open at 126, closing (not desired) from 127 on.
        let d = desired(&p, std::slice::from_ref(&r), at(126));
        assert_eq!(d.targets.values().next().unwrap().grants.len(), 1);
        assert_eq!(d.next_expiry.values().next(), Some(&at(127)));
        let d = desired(&p, &[r], at(127));
        assert!(d.targets.values().next().unwrap().grants.is_empty());
        assert_eq!(d.requests[&key("a")].ports[0].state, PortState::Expired);
        assert_eq!(d.requests[&key("a")].ports[0].expires_at, at(130));
    }

    #[test]
    fn a_deleted_policy_opens_and_closes_nothing() {
        let mut p = policy();
        p.deleting = true;
        let d = desired(&p, &[request("a", 0, "203.0.113.7/32", 30)], at(1));
        let t = d.targets.values().next().unwrap();
        assert!(t.baseline.is_empty() && t.grants.is_empty());
        assert_eq!(
            d.requests[&key("a")].ports[0].state,
            PortState::Revoked(CloseReason::PolicyChanged)
        );
    }

    #[test]
    fn a_policy_on_hold_keeps_its_baseline_and_closes_on_time() {
        let mut p = policy();
        p.hold = true;
        let mut revoked = request("gone", 0, "203.0.113.8/32", 300);
        revoked.revoked = true;
        let d = desired(&p, &[request("a", 0, "203.0.113.7/32", 30), revoked], at(1));
        let t = d.targets.values().next().unwrap();
        assert!(t.hold);
        assert_eq!(t.grants.len(), 1, "the live grant may stay");
        assert_eq!(
            d.requests[&key("gone")].ports[0].state,
            PortState::Revoked(CloseReason::UserRequested)
        );
        let d = desired(&p, &[request("a", 0, "203.0.113.7/32", 30)], at(30));
        assert!(d.targets.values().next().unwrap().grants.is_empty());
    }

    #[test]
    fn aws_peers_are_the_other_targets_instances() {
        let mut p = policy();
        p.targets.push(PolicyTarget {
            name: "db".into(),
            locator: Locator::Aws {
                region: "eu-west-1".into(),
                instance_id: "i-0db".into(),
            },
        });
        let d = desired(&p, &[], at(1));
        let web = &d.targets[&TargetKey {
            policy: p.key.clone(),
            target: "web".into(),
        }];
        assert_eq!(web.peers, BTreeSet::from(["i-0db".to_string()]));
        assert_eq!(web.peer_ports, vec![ssh()]);
    }
}
