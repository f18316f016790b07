//! A policy's status from its targets' outcomes: per target what was resolved and where
//! its baseline stands, and the policy's conditions (kstatus plus Conflict, Unsupported,
//! Degraded). Pure, except for the write.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::convert::time;
use super::target::{Outcome, Trouble};
use crate::api::JitPolicyStatus;
use crate::api::conditions::{self, CONFLICT, DEGRADED, READY, RECONCILING, STALLED, UNSUPPORTED};
use crate::api::policy::{BaselineState, TargetStatus};

/// How the policy stands.
pub enum Standing {
    /// Every target matches.
    Ready,
    /// Work in progress (or passing trouble).
    Progressing(String),
    /// The spec does not validate.
    InvalidSpec(String),
    /// Some or all targets are stuck.
    Stuck {
        reason: &'static str,
        message: String,
        extra: Option<&'static str>,
    },
}

/// The per-target part of the status (the records are written by their own managers).
pub fn targets(names: &[String], outcomes: &BTreeMap<String, Outcome>) -> Vec<TargetStatus> {
    names
        .iter()
        .map(|name| {
            let mut t = TargetStatus {
                name: name.clone(),
                baseline: Some(BaselineState::Pending),
                ..TargetStatus::default()
            };
            let Some(o) = outcomes.get(name) else {
                return t;
            };
            if let Some(res) = &o.resolved {
                t.private_ips = res.private_ips();
                t.public_ips = res.public_ips.clone();
                t.network_interface_ids = res.interfaces.iter().map(|i| i.id.clone()).collect();
                t.security_group_ids =
                    dedup(res.interfaces.iter().flat_map(|i| i.groups.iter().cloned()));
                t.owned_security_group_ids =
                    dedup(res.interfaces.iter().filter_map(|i| i.owned_group.clone()));
                t.nsg_ids = res.nsg_ids.clone();
                t.firewall_id = res.firewall_id.clone();
            }
            t.baseline = Some(o.baseline);
            t.message = o.message.clone();
            t.last_converge_time = o.last_converge_time.map(time);
            t.drift_corrections = o.drift_total;
            t
        })
        .collect()
}

fn dedup(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    it.filter(|s| seen.insert(s.clone())).collect()
}

/// How the policy stands, from its targets' outcomes (`None`: not run yet).
pub fn standing(invalid: Option<&str>, outcomes: &BTreeMap<String, Option<&Outcome>>) -> Standing {
    if let Some(m) = invalid {
        return Standing::InvalidSpec(m.to_string());
    }
    let troubled: Vec<(&String, &Outcome)> = outcomes
        .iter()
        .filter_map(|(n, o)| o.filter(|o| o.trouble.is_some()).map(|o| (n, o)))
        .collect();
    if troubled.is_empty() {
        if outcomes.values().all(|o| o.is_some_and(|o| o.converged)) {
            return Standing::Ready;
        }
        return Standing::Progressing("waiting for the cloud to match".into());
    }
    let message = troubled
        .iter()
        .map(|(n, o)| {
            format!(
                "target {n}: {}",
                o.message.clone().unwrap_or_else(|| "trouble".into())
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let kinds: Vec<&Trouble> = troubled.iter().filter_map(|(_, o)| o.trouble.as_ref()).collect();
    if kinds.iter().all(|k| **k == Trouble::Transient) {
        return Standing::Progressing(message);
    }
    let extra = kinds.iter().find_map(|k| match k {
        Trouble::Unsupported => Some(UNSUPPORTED),
        Trouble::Conflict => Some(CONFLICT),
        _ => None,
    });
    let reason = match kinds.iter().find(|k| ***k != Trouble::Transient) {
        Some(Trouble::NotFound) => "TargetNotFound",
        Some(Trouble::Conflict) => "Conflict",
        Some(Trouble::Unsupported) => "Unsupported",
        Some(Trouble::Unauthorized) => "CloudUnauthorized",
        _ => "CloudError",
    };
    let partial = troubled.len() < outcomes.len();
    Standing::Stuck {
        reason,
        message,
        extra: if partial { Some(extra.unwrap_or(DEGRADED)) } else { extra },
    }
}

/// Sets the conditions for `standing`; conditions that no longer apply turn False.
pub fn set_conditions(
    c: &mut Vec<Condition>,
    generation: Option<i64>,
    now: Time,
    standing: Standing,
) {
    let set = |c: &mut Vec<Condition>, kind: &str, on: bool, reason: &str, message: &str| {
        conditions::set(c, kind, on, reason, message, generation, now.clone());
    };
    let clear_extras = |c: &mut Vec<Condition>, keep: Option<&str>| {
        for k in [CONFLICT, UNSUPPORTED, DEGRADED] {
            if Some(k) != keep && c.iter().any(|x| x.type_ == k) {
                conditions::set(c, k, false, "Resolved", "", generation, now.clone());
            }
        }
    };
    match standing {
        Standing::Ready => {
            set(c, READY, true, "Converged", "every target matches the policy");
            set(c, RECONCILING, false, "Converged", "");
            set(c, STALLED, false, "Converged", "");
            clear_extras(c, None);
        }
        Standing::Progressing(m) => {
            set(c, READY, false, "Reconciling", &m);
            set(c, RECONCILING, true, "Reconciling", &m);
            set(c, STALLED, false, "Reconciling", "");
        }
        Standing::InvalidSpec(m) => {
            set(c, READY, false, "InvalidSpec", &m);
            set(c, RECONCILING, false, "InvalidSpec", "");
            set(c, STALLED, true, "InvalidSpec", &m);
        }
        Standing::Stuck {
            reason,
            message,
            extra,
        } => {
            set(c, READY, false, reason, &message);
            set(c, RECONCILING, false, reason, "");
            set(c, STALLED, true, reason, &message);
            if let Some(k) = extra {
                set(c, k, true, reason, &message);
            }
            clear_extras(c, extra);
        }
    }
}

/// The status with only the fields the `portcullis` field manager writes (records are
/// other managers').
pub fn without_records(s: &JitPolicyStatus) -> JitPolicyStatus {
    let mut s = s.clone();
    for t in &mut s.targets {
        t.record = None;
    }
    s
}
