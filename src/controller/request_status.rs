//! A request's status from the reconcile's outcome: per-port states, phase, conditions,
//! events, and letting go of deleted requests.

use std::collections::BTreeMap;

use kube::runtime::events::EventType;

use super::convert::{self, time};
use super::kube_ops::{publish, remove_finalizer, write_request_status};
use super::policy::{Gathered, TargetResult};
use super::{Context, Error};
use crate::api::conditions::{self, READY, RECONCILING, STALLED};
use crate::api::{AccessRequest, AccessRequestStatus, Phase, PortStatus};
use crate::domain::validate;
use crate::domain::{OwnedRule, PortState, stamp};

/// The ports of a request that may not open: Denied when it was never granted,
/// Revoked (PolicyChanged) when it was; ports already closed keep their state.
pub(super) fn refused_ports(req: &AccessRequest, old: &AccessRequestStatus) -> Vec<PortStatus> {
    let granted = old.granted_at.is_some();
    req.spec
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let prev = old.ports.get(i).filter(|x| x.port == p.port);
            match prev {
                Some(x)
                    if matches!(
                        x.state,
                        Phase::Expired | Phase::Revoked | Phase::Denied | Phase::Failed
                    ) =>
                {
                    x.clone()
                }
                _ => PortStatus {
                    port: p.port,
                    state: if granted {
                        Phase::Revoked
                    } else {
                        Phase::Denied
                    },
                    reason: granted.then_some(crate::api::PortReason::PolicyChanged),
                    expires_at: prev.and_then(|x| x.expires_at.clone()),
                    rule_ids: Vec::new(),
                    connection: None,
                },
            }
        })
        .collect()
}

/// The phase a request's ports add up to.
pub(super) fn phase_of(ports: &[PortStatus]) -> Phase {
    let states: Vec<Phase> = ports.iter().map(|p| p.state).collect();
    if states.contains(&Phase::Active) {
        Phase::Active
    } else if states.contains(&Phase::Pending) {
        Phase::Pending
    } else if !states.is_empty() && states.iter().all(|s| *s == Phase::Expired) {
        Phase::Expired
    } else if !states.is_empty() && states.iter().all(|s| *s == Phase::Denied) {
        Phase::Denied
    } else if states.contains(&Phase::Failed) {
        Phase::Failed
    } else {
        Phase::Revoked
    }
}

/// Sets a request's conditions from its phase.
pub(super) fn request_conditions(
    s: &mut AccessRequestStatus,
    generation: Option<i64>,
    ctx: &Context,
) {
    let now = time(ctx.now());
    let phase = s.phase.unwrap_or(Phase::Pending);
    let message = s.message.clone().unwrap_or_default();
    let reason = format!("{phase:?}");
    let (ready, reconciling, stalled) = match phase {
        Phase::Pending => (false, true, false),
        Phase::Active | Phase::Expired | Phase::Revoked => (true, false, false),
        Phase::Denied | Phase::Failed => (false, false, true),
    };
    for (kind, on) in [
        (READY, ready),
        (RECONCILING, reconciling),
        (STALLED, stalled),
    ] {
        conditions::set(
            &mut s.conditions,
            kind,
            on,
            &reason,
            if on { &message } else { "" },
            generation,
            now.clone(),
        );
    }
}

pub(super) async fn settle_request(
    ctx: &Context,
    g: &Gathered,
    want: &crate::domain::Desired,
    results: &BTreeMap<String, TargetResult>,
) -> Result<(), Error> {
    let req = &g.object;
    let old = req.status.clone().unwrap_or_default();
    let mut s = old.clone();
    s.observed_generation = req.metadata.generation;
    s.requester = g.requester.clone();
    let deleting = req.metadata.deletion_timestamp.is_some();
    let target_done = results
        .get(&req.spec.target)
        .is_some_and(|r| r.converged && r.error.is_none());
    match &g.parsed {
        Err(errors) => {
            s.ports = refused_ports(req, &old);
            s.message = Some(validate::join(errors));
        }
        Ok(r) => {
            let outcome = &want.requests[&r.key];
            let owned: Vec<&OwnedRule> = results
                .get(&r.target)
                .and_then(|t| t.observation.as_ref())
                .map(|o| o.observed.owned.iter().collect())
                .unwrap_or_default();
            let owner = stamp::owner_id(&r.key);
            s.granted_at = outcome.granted_at.map(time).or(s.granted_at);
            s.expires_at = outcome.expires_at().map(time);
            s.ports = r
                .ports
                .iter()
                .zip(&outcome.ports)
                .map(|(p, o)| {
                    let rule_ids: Vec<String> = owned
                        .iter()
                        .filter(|x| {
                            x.stamp.owner == owner && x.port == p.spec && x.source == Some(p.source)
                        })
                        .flat_map(|x| x.cloud_id.split(',').map(str::to_string))
                        .collect();
                    let state = match o.state {
                        // Open only once the cloud says so.
                        PortState::Active if !target_done || rule_ids.is_empty() => {
                            PortState::Pending
                        }
                        s => s,
                    };
                    let (phase, reason) = convert::port_state_to_api(state);
                    PortStatus {
                        port: i32::from(p.spec.port.get()),
                        state: phase,
                        reason,
                        expires_at: o.expires_at.map(time),
                        rule_ids: if phase == Phase::Active {
                            rule_ids
                        } else {
                            Vec::new()
                        },
                        connection: None,
                    }
                })
                .collect();
            s.message = Some(match phase_of(&s.ports) {
                Phase::Active => format!(
                    "open until {}",
                    outcome
                        .expires_at()
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                ),
                Phase::Pending => "opening".to_string(),
                Phase::Expired => "closed: the grant expired".to_string(),
                Phase::Revoked => "closed before its time".to_string(),
                Phase::Denied | Phase::Failed => s.message.clone().unwrap_or_default(),
            });
        }
    }
    s.phase = Some(phase_of(&s.ports));
    request_conditions(&mut s, req.metadata.generation, ctx);
    write_request_status(ctx, req, &s).await?;
    announce(ctx, req, &old, &s).await;

    // A deleted request lets go once nothing of it is open.
    let all_closed = s
        .ports
        .iter()
        .all(|p| p.state != Phase::Active && p.state != Phase::Pending);
    if deleting && (all_closed && target_done || g.parsed.is_err()) {
        remove_finalizer(ctx, req).await?;
    }
    Ok(())
}

/// Events for what changed in a request's status.
pub(super) async fn announce(
    ctx: &Context,
    req: &AccessRequest,
    old: &AccessRequestStatus,
    new: &AccessRequestStatus,
) {
    if old.phase == new.phase {
        return;
    }
    let note = new.message.clone().unwrap_or_default();
    let (kind, reason) = match new.phase {
        Some(Phase::Active) => (EventType::Normal, "Granted"),
        Some(Phase::Expired) => (EventType::Normal, "Expired"),
        Some(Phase::Revoked) => (EventType::Normal, "Revoked"),
        Some(Phase::Denied) => (EventType::Warning, "Denied"),
        Some(Phase::Failed) => (EventType::Warning, "Failed"),
        _ => return,
    };
    publish(ctx, req, kind, reason, note).await;
}
