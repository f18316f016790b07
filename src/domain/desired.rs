//! `desired()`: from policies, requests and the time, what should be open and closed.

use std::collections::BTreeMap;

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
    /// Ports kept closed (empty while the policy is being deleted).
    pub baseline: Vec<PortSpec>,
    /// Grants that must be open now.
    pub grants: Vec<Grant>,
}

/// The outcome for one requested port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortOutcome {
    /// `Active` means "should be open now"; the other states are final.
    pub state: PortState,
    /// When the port closes (or closed).
    pub expires_at: Option<Timestamp>,
}

/// The outcome for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestOutcome {
    /// When the grant started (now, for a request seen for the first time).
    pub granted_at: Option<Timestamp>,
    /// Per spec port.
    pub ports: Vec<PortOutcome>,
}

impl RequestOutcome {
    /// When the last port closes.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.ports.iter().filter_map(|p| p.expires_at).max()
    }
}

/// The whole desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Per target of every policy.
    pub targets: BTreeMap<TargetKey, TargetDesired>,
    /// Per valid request.
    pub requests: BTreeMap<ObjectKey, RequestOutcome>,
    /// The next time something expires: when to look again.
    pub next_expiry: Option<Timestamp>,
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

/// Computes the desired state at `now`. Requests must have been validated against their
/// policies (see [`super::validate::request`]); requests of unknown policies are ignored.
pub fn desired(policies: &[Policy], requests: &[Request], now: Timestamp) -> Desired {
    let mut out = Desired::default();
    for p in policies {
        for t in &p.targets {
            let key = TargetKey {
                policy: p.key.clone(),
                target: t.name.clone(),
            };
            out.targets.insert(
                key.clone(),
                TargetDesired {
                    key,
                    locator: t.locator.clone(),
                    bands: p.bands,
                    baseline: if p.deleting {
                        Vec::new()
                    } else {
                        p.ports.iter().map(|p| p.spec).collect()
                    },
                    grants: Vec::new(),
                },
            );
        }
    }

    // First pass: each port's own fate; candidates for opening are collected per rule.
    type Slot = (ObjectKey, usize);
    /// A request port that wants a rule: (created, request, port index, grant).
    type Holder = (Timestamp, ObjectKey, usize, Grant);
    let mut candidates: BTreeMap<(TargetKey, RuleKey), Vec<Holder>> = BTreeMap::new();
    let mut outcomes: BTreeMap<ObjectKey, RequestOutcome> = BTreeMap::new();
    for r in requests {
        let policy_key = ObjectKey::new(&r.key.namespace, &r.policy);
        let Some(policy) = policies.iter().find(|p| p.key == policy_key) else {
            continue;
        };
        let target = TargetKey {
            policy: policy_key,
            target: r.target.clone(),
        };
        let lead = policy
            .target(&r.target)
            .map_or(SignedDuration::ZERO, |t| close_lead(&t.locator));
        // Grants start on a whole second: stamps and Kubernetes times carry seconds.
        let granted_at = r
            .granted_at
            .unwrap_or_else(|| Timestamp::from_second(now.as_second()).unwrap_or(now));
        let mut ports = Vec::with_capacity(r.ports.len());
        for (i, port) in r.ports.iter().enumerate() {
            let expires_at = r.expiry(i, granted_at);
            let recorded = r.recorded.get(i).copied().flatten();
            let state = match recorded {
                Some(s) if s.is_final() => s,
                _ if r.revoked => PortState::Revoked(CloseReason::UserRequested),
                _ if policy.deleting => PortState::Revoked(CloseReason::PolicyChanged),
                _ if expires_at - lead <= now => PortState::Expired,
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
            ports.push(PortOutcome {
                state,
                expires_at: Some(expires_at),
            });
        }
        outcomes.insert(
            r.key.clone(),
            RequestOutcome {
                granted_at: Some(granted_at),
                ports,
            },
        );
    }

    // Second pass: one rule, one holder. The newest request wins, as in Defender.
    let mut superseded: Vec<Slot> = Vec::new();
    for ((target, _), mut holders) in candidates {
        holders.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let (_, _, _, winner) = holders.pop().expect("non-empty");
        superseded.extend(holders.into_iter().map(|(_, key, i, _)| (key, i)));
        if let Some(t) = out.targets.get_mut(&target) {
            let closes_at = winner.expires_at - close_lead(&t.locator);
            out.next_expiry = Some(out.next_expiry.map_or(closes_at, |n| n.min(closes_at)));
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
            deleting: false,
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
            granted_at: None,
            recorded: vec![None],
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn a_new_request_is_granted_from_now() {
        let d = desired(
            &[policy()],
            &[request("a", 0, "203.0.113.7/32", 30)],
            at(100),
        );
        let t = d.targets.values().next().unwrap();
        assert_eq!(t.baseline, vec![ssh()]);
        assert_eq!(t.grants.len(), 1);
        assert_eq!(t.grants[0].expires_at, at(130));
        assert_eq!(d.next_expiry, Some(at(130)));
        assert_eq!(
            d.requests[&ObjectKey::new("ns", "a")].ports[0].state,
            PortState::Active
        );
    }

    #[test]
    fn the_newest_request_for_a_rule_wins() {
        let d = desired(
            &[policy()],
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
            d.requests[&ObjectKey::new("ns", "old")].ports[0].state,
            PortState::Revoked(CloseReason::NewerRequestInitiated)
        );
    }

    #[test]
    fn closed_ports_stay_closed() {
        let mut old = request("old", 0, "203.0.113.7/32", 300);
        old.granted_at = Some(at(0));
        old.recorded = vec![Some(PortState::Revoked(CloseReason::NewerRequestInitiated))];
        let mut newer = request("new", 10, "203.0.113.7/32", 300);
        newer.revoked = true;
        let d = desired(&[policy()], &[old, newer], at(20));
        assert!(d.targets.values().next().unwrap().grants.is_empty());
        assert_eq!(
            d.requests[&ObjectKey::new("ns", "new")].ports[0].state,
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
        let mut r = request("a", 0, "203.0.113.7/32", 30);
        r.granted_at = Some(at(100));
        // 30 s grant from 100: open at 126, closing (not desired) from 127 on.
        let d = desired(std::slice::from_ref(&p), std::slice::from_ref(&r), at(126));
        assert_eq!(d.targets.values().next().unwrap().grants.len(), 1);
        assert_eq!(d.next_expiry, Some(at(127)));
        let d = desired(&[p], &[r], at(127));
        assert!(d.targets.values().next().unwrap().grants.is_empty());
        assert_eq!(
            d.requests[&ObjectKey::new("ns", "a")].ports[0].state,
            PortState::Expired
        );
        assert_eq!(
            d.requests[&ObjectKey::new("ns", "a")].ports[0].expires_at,
            Some(at(130))
        );
    }

    #[test]
    fn a_deleted_policy_opens_and_closes_nothing() {
        let mut p = policy();
        p.deleting = true;
        let d = desired(&[p], &[request("a", 0, "203.0.113.7/32", 30)], at(1));
        let t = d.targets.values().next().unwrap();
        assert!(t.baseline.is_empty() && t.grants.is_empty());
        assert_eq!(
            d.requests[&ObjectKey::new("ns", "a")].ports[0].state,
            PortState::Revoked(CloseReason::PolicyChanged)
        );
    }
}
