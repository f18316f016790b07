//! `sweep()`: owned rules whose time is up or whose owner is gone.

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::super::stamp;
use super::names::rule_target;
use super::{Collection, FirewallObserved, Names};

/// What may keep owned rules: the live owners.
#[derive(Clone, Copy, Debug)]
pub struct SweepScope<'a> {
    /// The time: grant rules whose stamp expired by now go.
    pub now: Timestamp,
    /// Owner ids of requests that may hold grants.
    pub requests: &'a BTreeSet<String>,
    /// Owner ids of existing policies (whose baselines stay).
    pub policies: &'a BTreeSet<String>,
    /// Tags ([`target_tag`]) of targets of existing policies.
    pub targets: &'a BTreeSet<String>,
}

/// What a sweep leaves of the owned collections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// The owned collections after the sweep.
    pub owned: Vec<Collection>,
    /// Rules removed because their stamp expired.
    pub expired: usize,
    /// Rules removed because their owner or target is gone (or they carry no stamp).
    pub orphaned: usize,
}

impl Swept {
    /// Whether anything is removed.
    pub fn changed(&self) -> bool {
        self.expired + self.orphaned > 0
    }
}

/// Removes owned rules whose stamp expired or whose owner is not live; collections
/// left empty go too.
pub fn sweep(observed: &FirewallObserved, cluster: &str, scope: SweepScope) -> Swept {
    let names = Names::new(cluster);
    let mut out = Swept::default();
    for c in observed.collections.iter().filter(|c| names.owns(c)) {
        let deny_of = names.deny_target(&c.name);
        let mut kept = Vec::new();
        for rule in &c.rules {
            // A stamp of another installation in our collection is nobody's here.
            let stamp = rule
                .description
                .as_deref()
                .and_then(|d| stamp::parse_own(names.cluster(), d));
            let (live, expired) = match (deny_of, &stamp) {
                (_, None) => (false, false),
                (Some(target), Some(s)) => (
                    s.expires_at.is_none()
                        && scope.policies.contains(&s.owner)
                        && scope.targets.contains(target),
                    false,
                ),
                (None, Some(s)) => {
                    let expired = s.expires_at.is_none_or(|t| t <= scope.now);
                    let target_live =
                        rule_target(&rule.name).is_some_and(|t| scope.targets.contains(t));
                    (
                        !expired && target_live && scope.requests.contains(&s.owner),
                        s.expires_at.is_some_and(|t| t <= scope.now),
                    )
                }
            };
            if live {
                kept.push(rule.clone());
            } else if expired {
                out.expired += 1;
            } else {
                out.orphaned += 1;
            }
        }
        if !kept.is_empty() {
            out.owned.push(Collection {
                rules: kept,
                ..c.clone()
            });
        }
    }
    out
}
