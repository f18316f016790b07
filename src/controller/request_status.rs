//! Pieces of a request's status shared by the controllers: refused ports, the phase they
//! add up to, conditions, events.

use kube::runtime::events::EventType;

use super::Context;
use super::convert::time;
use super::kube_ops::publish;
use crate::api::conditions::{self, READY, RECONCILING, STALLED};
use crate::api::{AccessRequest, AccessRequestStatus, Phase, PortStatus};

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
