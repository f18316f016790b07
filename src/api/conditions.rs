//! Condition types and reasons, and a helper that keeps `lastTransitionTime` stable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// kstatus: the resource is fully reconciled.
pub const READY: &str = "Ready";
/// kstatus: the controller is working towards the desired state.
pub const RECONCILING: &str = "Reconciling";
/// kstatus: progress stopped; the spec or the environment must change.
pub const STALLED: &str = "Stalled";
/// Foreign rules or limits prevent the desired state.
pub const CONFLICT: &str = "Conflict";
/// The target uses something Portcullis does not support (e.g. a Firewall Manager policy).
pub const UNSUPPORTED: &str = "Unsupported";
/// Part of the policy works and part does not.
pub const DEGRADED: &str = "Degraded";

/// Sets `kind` to the given status, reason and message. `lastTransitionTime` changes only
/// when the status does, as the Kubernetes API conventions ask. Returns whether anything
/// changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Time,
) -> bool {
    let status = if status { "True" } else { "False" }.to_string();
    // The API server refuses an empty message (k8s-openapi sends it as null).
    let message = if message.is_empty() { reason } else { message };
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(c) => {
            let before = c.clone();
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = generation;
            *c != before
        }
        None => {
            conditions.push(Condition {
                type_: kind.to_string(),
                status,
                reason: reason.to_string(),
                message: message.to_string(),
                observed_generation: generation,
                last_transition_time: now,
            });
            true
        }
    }
}

/// Whether condition `kind` is present with status True.
pub fn is_true(conditions: &[Condition], kind: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == kind && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut c = Vec::new();
        assert!(set(
            &mut c,
            READY,
            false,
            "Reconciling",
            "working",
            Some(1),
            at(10)
        ));
        assert!(set(
            &mut c,
            READY,
            false,
            "Reconciling",
            "still working",
            Some(1),
            at(20)
        ));
        assert_eq!(c[0].last_transition_time, at(10));
        assert!(!set(
            &mut c,
            READY,
            false,
            "Reconciling",
            "still working",
            Some(1),
            at(30)
        ));
        assert!(set(
            &mut c,
            READY,
            true,
            "Converged",
            "done",
            Some(1),
            at(40)
        ));
        assert_eq!(c[0].last_transition_time, at(40));
        assert!(is_true(&c, READY));
        assert!(!is_true(&c, STALLED));
    }
}
