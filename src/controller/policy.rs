//! The `JitPolicy` reconcile: gather → validate → desire → per target observe, plan,
//! record, apply, verify → status for the policy and its requests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event, finalizer};
use tracing::{info, instrument, warn};

use super::convert::{self, time};
use super::kube_ops::{add_finalizer, publish, write_policy_status, write_request_status};
use super::request_status::settle_request;
use super::{Context, Error, FINALIZER};
use crate::api::conditions::{self, CONFLICT, DEGRADED, READY, RECONCILING, STALLED, UNSUPPORTED};
use crate::api::policy::TargetStatus;
use crate::api::{AccessRequest, JitPolicy, JitPolicyStatus, Phase};
use crate::cloud::{CloudError, Observation};
use crate::domain::requester;
use crate::domain::validate::{self, FieldError};
use crate::domain::{
    Change, ForeignRuleSpec, ObjectKey, PortSpec, PortState, Request, TargetDesired, desired, plan,
};
use crate::metrics;

/// Reconciles one policy; the finalizer is its only top-level step.
#[instrument(skip_all, fields(policy = %format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any())))]
pub async fn reconcile(policy: Arc<JitPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<JitPolicy> = ctx.api(&ns);
    let result = finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            Event::Apply(p) => converge(&p, &ctx, false).await,
            Event::Cleanup(p) => converge(&p, &ctx, true).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    metrics::reconcile(
        "jitpolicy",
        match &result {
            Ok(_) => "ok",
            Err(e) => e.category(),
        },
    );
    result
}

/// Requeues failed reconciles with backoff and jitter.
pub fn error_policy(_policy: Arc<JitPolicy>, err: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(super::retry_after(err))
}

/// What happened to one target in this reconcile.
pub(super) struct TargetResult {
    pub(super) observation: Option<Observation>,
    pub(super) converged: bool,
    pub(super) error: Option<TargetError>,
    pub(super) drift: u64,
}

pub(super) enum TargetError {
    Cloud(CloudError),
    Unsupported(String),
    /// Priorities that cannot be placed without touching foreign rules (Azure).
    Blocked(String),
}

impl TargetError {
    fn message(&self) -> String {
        match self {
            TargetError::Cloud(e) => e.to_string(),
            TargetError::Unsupported(m) | TargetError::Blocked(m) => m.clone(),
        }
    }
}

/// A request of this policy, parsed or not.
pub(super) struct Gathered {
    pub(super) object: Arc<AccessRequest>,
    pub(super) parsed: Result<Request, Vec<FieldError>>,
    /// Who asked, when the stamp verifies.
    pub(super) requester: Option<crate::api::Requester>,
}

async fn converge(policy: &JitPolicy, ctx: &Context, deleting: bool) -> Result<Action, Error> {
    let now = ctx.now();
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let key = ObjectKey::new(&ns, &name);
    let generation = policy.metadata.generation;
    let old_status = policy.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    status.observed_generation = generation;
    let api: Api<JitPolicy> = ctx.api(&ns);

    // Validate.
    let parsed = match validate::policy(key.clone(), &policy.spec, deleting) {
        Ok(p) => p,
        Err(errors) => {
            let message = validate::join(&errors);
            warn!(%message, "policy spec is invalid");
            set_conditions(
                &mut status,
                generation,
                ctx,
                Outcome::Stalled("InvalidSpec", message.clone()),
            );
            write_policy_status(&api, &name, &old_status, &status).await?;
            if deleting {
                if status.targets.iter().all(|t| t.revoked_rules.is_empty()) {
                    return Ok(Action::await_change());
                }
                return Err(Error::CleanupPending(format!(
                    "the spec must parse to restore revoked rules: {message}"
                )));
            }
            return Ok(Action::requeue(ctx.settings.resync));
        }
    };

    // Gather this policy's requests from the cache.
    let gathered: Vec<Gathered> = ctx
        .requests
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(&ns) && r.spec.policy_ref.name == name)
        .map(|r| {
            let ports: Vec<i32> = r.spec.ports.iter().map(|p| p.port).collect();
            let recorded = convert::recorded(r.status.as_ref(), &ports);
            let created = r
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(now);
            let stamp = r
                .annotations()
                .get(requester::ANNOTATION)
                .map(String::as_str);
            let name_any = r.name_any();
            let stamped = requester::Object {
                namespace: &ns,
                name: &name_any,
                created: r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            };
            let requester = requester::verify(&ctx.stamp_key, stamped, stamp, &r.spec);
            let parsed = validate::request(
                ObjectKey::new(&ns, r.name_any()),
                &r.spec,
                Some(&parsed),
                created,
                r.metadata.deletion_timestamp.is_some(),
                recorded,
            )
            .and_then(|p| match &requester {
                Ok(_) => Ok(p),
                // Nothing opens for someone we cannot name.
                Err(message) => Err(vec![FieldError {
                    field: format!("metadata.annotations[{}]", requester::ANNOTATION),
                    message: message.clone(),
                }]),
            });
            Gathered {
                object: r,
                parsed,
                requester: requester.ok(),
            }
        })
        .collect();
    let valid: Vec<Request> = gathered
        .iter()
        .filter_map(|g| g.parsed.as_ref().ok().cloned())
        .collect();
    let want = desired(std::slice::from_ref(&parsed), &valid, now);

    // Record new grants (and hold requests with a finalizer) before any cloud call, so a
    // crash never leaves a rule whose expiry nobody knows.
    for g in &gathered {
        let Ok(r) = &g.parsed else { continue };
        let outcome = &want.requests[&r.key];
        let opening = outcome.ports.iter().any(|p| p.state == PortState::Active);
        if opening
            && g.object.metadata.deletion_timestamp.is_none()
            && !g.object.finalizers().iter().any(|f| f == FINALIZER)
        {
            add_finalizer(ctx, &g.object).await?;
        }
        if opening && r.granted_at.is_none() {
            let mut s = g.object.status.clone().unwrap_or_default();
            s.granted_at = outcome.granted_at.map(time);
            s.expires_at = outcome.expires_at().map(time);
            s.phase = Some(Phase::Pending);
            write_request_status(ctx, &g.object, &s).await?;
        }
    }

    // Per target: observe, plan, record, apply, verify.
    let active_before: BTreeSet<(ObjectKey, PortSpec)> = valid
        .iter()
        .flat_map(|r| {
            r.ports
                .iter()
                .zip(&r.recorded)
                .filter(|(_, s)| **s == Some(PortState::Active))
                .map(|(p, _)| (r.key.clone(), p.spec))
        })
        .collect();
    let mut results: BTreeMap<String, TargetResult> = BTreeMap::new();
    for td in want.targets.values() {
        let result = reconcile_target(
            ctx,
            policy,
            &api,
            &name,
            &old_status,
            &mut status,
            td,
            &active_before,
        )
        .await;
        results.insert(td.key.target.clone(), result);
    }

    // The policy's status.
    let mut drift_total = 0;
    for td in want.targets.values() {
        let r = &results[&td.key.target];
        let entry = target_status(&mut status, &td.key.target);
        if let Some(obs) = &r.observation {
            let res = &obs.resolved;
            entry.private_ips = res.private_ips();
            entry.network_interface_ids = res.interfaces.iter().map(|i| i.id.clone()).collect();
            entry.security_group_ids =
                dedup(res.interfaces.iter().flat_map(|i| i.groups.iter().cloned()));
            entry.owned_security_group_ids =
                dedup(res.interfaces.iter().filter_map(|i| i.owned_group.clone()));
            entry.nsg_ids = res.nsg_ids.clone();
            entry.firewall_id = res.firewall_id.clone();
        }
        entry.baseline = Some(
            match (&r.error, r.converged) {
                (None, true) if td.baseline.is_empty() => "Lifted",
                (None, true) => "Enforced",
                (Some(_), _) => "Failed",
                _ => "Pending",
            }
            .to_string(),
        );
        if r.converged && r.error.is_none() {
            entry.last_converge_time = Some(time(now));
        }
        entry.drift_corrections += r.drift as i64;
        drift_total += r.drift;
    }
    let wanted: BTreeSet<&String> = want.targets.values().map(|t| &t.key.target).collect();
    status
        .targets
        .retain(|t| wanted.contains(&t.name) || !t.revoked_rules.is_empty());
    let outcome = policy_outcome(&results);
    set_conditions(&mut status, generation, ctx, outcome);
    write_policy_status(&api, &name, &old_status, &status).await?;
    if drift_total > 0 {
        publish(
            ctx,
            policy,
            EventType::Warning,
            "DriftCorrected",
            format!("put {drift_total} drifted rule(s) right"),
        )
        .await;
    }

    // The requests' statuses.
    for g in &gathered {
        settle_request(ctx, g, &want, &results).await?;
    }

    let all_converged = results.values().all(|r| r.converged && r.error.is_none());
    if deleting {
        if all_converged {
            info!("policy cleanup done");
            return Ok(Action::await_change());
        }
        return Err(Error::CleanupPending("cloud state not yet restored".into()));
    }
    let mut next = ctx.settings.resync;
    if let Some(at) = want.next_expiry {
        let until = Duration::try_from(at.duration_since(ctx.now())).unwrap_or(Duration::ZERO);
        // Wake just after the expiry instant: desired() treats `expires_at <= now` as over.
        next = next.min(until + Duration::from_millis(5));
    }
    if !all_converged {
        next = next.min(Duration::from_secs(2));
    }
    Ok(Action::requeue(next))
}

#[allow(clippy::too_many_arguments)]
async fn reconcile_target(
    ctx: &Context,
    policy: &JitPolicy,
    api: &Api<JitPolicy>,
    name: &str,
    old_status: &JitPolicyStatus,
    status: &mut JitPolicyStatus,
    td: &TargetDesired,
    active_before: &BTreeSet<(ObjectKey, PortSpec)>,
) -> TargetResult {
    let fail = |error: TargetError, observation: Option<Observation>| TargetResult {
        observation,
        converged: false,
        error: Some(error),
        drift: 0,
    };
    let backend = match ctx.backends.for_locator(&td.locator) {
        Ok(b) => b.clone(),
        Err(m) => return fail(TargetError::Unsupported(m), None),
    };
    let prev = old_status.targets.iter().find(|t| t.name == td.key.target);
    let mut recorded: BTreeSet<ForeignRuleSpec> = prev
        .map(|t| {
            t.revoked_rules
                .iter()
                .map(convert::revoked_from_api)
                .collect()
        })
        .unwrap_or_default();
    let obs = match backend.observe(&td.key, &td.locator).await {
        Ok(o) => o,
        Err(e) => return fail(TargetError::Cloud(e), None),
    };
    let rec_vec: Vec<ForeignRuleSpec> = recorded.iter().cloned().collect();
    let p = plan(td, &obs.observed, &rec_vec);
    if p.is_empty() && !obs.housekeeping {
        return TargetResult {
            error: blocked_error(&p),
            converged: p.blocked.is_empty(),
            observation: Some(obs),
            drift: 0,
        };
    }
    info!(target = %td.key, changes = p.changes.len(), "applying plan");

    // Record what the baseline revokes before revoking it.
    let revoking: Vec<ForeignRuleSpec> = p
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::RevokeForeign(r) => Some(r.spec.clone()),
            _ => None,
        })
        .collect();
    if revoking.iter().any(|s| !recorded.contains(s)) {
        recorded.extend(revoking.iter().cloned());
        target_status(status, &td.key.target).revoked_rules =
            recorded.iter().map(convert::revoked_to_api).collect();
        if let Err(e) = write_policy_status(api, name, old_status, status).await {
            warn!(error = %e, "cannot record revocations; not revoking");
            return fail(
                TargetError::Cloud(CloudError::Retryable {
                    op: "record",
                    code: "Kubernetes".into(),
                    message: e.to_string(),
                }),
                Some(obs),
            );
        }
    }

    // A foreign rule that opens more than the governed ports is revoked whole (and
    // restored whole later): say so, since it closes those other ports meanwhile.
    for c in &p.changes {
        if let Change::RevokeForeign(r) = c {
            let only_governed = r.spec.ports.is_some_and(|(from, to)| {
                (from..=to).all(|port| td.baseline.iter().any(|b| b.port.get() == port))
            });
            if !only_governed {
                let range = r
                    .spec
                    .ports
                    .map_or("all ports".to_string(), |(f, t)| format!("ports {f}-{t}"));
                publish(
                    ctx,
                    policy,
                    EventType::Warning,
                    "RevokedBroadRule",
                    format!(
                        "rule {} in {} ({} {range} from {:?}) opens more than the governed ports; it is revoked whole and restored when the policy lets go of the port",
                        r.cloud_id, r.spec.container, r.spec.protocol, r.spec.source
                    ),
                )
                .await;
            }
        }
    }

    if let Err(e) = backend.apply(&td.key, &td.locator, &obs, &p).await {
        warn!(error = %e, "apply failed");
        return fail(TargetError::Cloud(e), Some(obs));
    }
    for c in &p.changes {
        if let Change::RestoreForeign(s) | Change::Unrecord(s) = c {
            recorded.remove(s);
        }
    }
    target_status(status, &td.key.target).revoked_rules =
        recorded.iter().map(convert::revoked_to_api).collect();

    // Drift: changes to things that were already in place before.
    let baseline_was_enforced = prev.and_then(|t| t.baseline.as_deref()) == Some("Enforced");
    let drift = p
        .changes
        .iter()
        .filter(|c| match c {
            Change::RevokeForeign(_) | Change::PutDeny { .. } => baseline_was_enforced,
            Change::CreateGrant { grant, .. } => {
                active_before.contains(&(grant.request.clone(), grant.port))
            }
            _ => false,
        })
        .count() as u64;
    if drift > 0 {
        metrics::drift(
            if baseline_was_enforced {
                "baseline"
            } else {
                "grant"
            },
            drift,
        );
        warn!(target = %td.key, drift, "corrected drift");
    }

    // Verify: the cloud now matches.
    let rec_vec: Vec<ForeignRuleSpec> = recorded.iter().cloned().collect();
    match backend.observe(&td.key, &td.locator).await {
        Ok(after) => {
            let again = plan(td, &after.observed, &rec_vec);
            TargetResult {
                converged: again.is_empty(),
                error: blocked_error(&again),
                observation: Some(after),
                drift,
            }
        }
        Err(e) => TargetResult {
            observation: Some(obs),
            converged: false,
            error: Some(TargetError::Cloud(e)),
            drift,
        },
    }
}

/// What a plan could not place, as a target error (the Conflict condition).
fn blocked_error(p: &crate::domain::Plan) -> Option<TargetError> {
    (!p.blocked.is_empty()).then(|| {
        TargetError::Blocked(
            p.blocked
                .iter()
                .map(|b| format!("{}: {}", b.location, b.reason))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

fn dedup(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    it.filter(|s| seen.insert(s.clone())).collect()
}

fn target_status<'a>(status: &'a mut JitPolicyStatus, name: &str) -> &'a mut TargetStatus {
    if let Some(i) = status.targets.iter().position(|t| t.name == name) {
        return &mut status.targets[i];
    }
    status.targets.push(TargetStatus {
        name: name.to_string(),
        ..TargetStatus::default()
    });
    status.targets.last_mut().expect("just pushed")
}

/// How the policy stands after this reconcile.
enum Outcome {
    Ready,
    Progressing(String),
    Stalled(&'static str, String),
    Partial {
        reason: &'static str,
        message: String,
        extra: Option<&'static str>,
    },
}

fn policy_outcome(results: &BTreeMap<String, TargetResult>) -> Outcome {
    let failing: Vec<(&String, &TargetError)> = results
        .iter()
        .filter_map(|(n, r)| r.error.as_ref().map(|e| (n, e)))
        .collect();
    if failing.is_empty() {
        if results.values().all(|r| r.converged) {
            return Outcome::Ready;
        }
        return Outcome::Progressing("waiting for the cloud state to match".into());
    }
    let message = failing
        .iter()
        .map(|(n, e)| format!("target {n}: {}", e.message()))
        .collect::<Vec<_>>()
        .join("; ");
    let transient = failing
        .iter()
        .all(|(_, e)| matches!(e, TargetError::Cloud(c) if c.is_transient()));
    if transient {
        return Outcome::Progressing(message);
    }
    let extra = failing.iter().find_map(|(_, e)| match e {
        TargetError::Unsupported(_) => Some(UNSUPPORTED),
        TargetError::Cloud(CloudError::Limit { .. }) | TargetError::Blocked(_) => Some(CONFLICT),
        _ => None,
    });
    let reason = match failing.iter().find_map(|(_, e)| match e {
        TargetError::Cloud(c) => Some(c.category()),
        TargetError::Blocked(_) => Some("limit"),
        TargetError::Unsupported(_) => None,
    }) {
        Some("not_found") => "TargetNotFound",
        Some("limit") => "LimitReached",
        Some(_) => "CloudError",
        None => "Unsupported",
    };
    if failing.len() < results.len() {
        return Outcome::Partial {
            reason,
            message,
            extra: Some(extra.unwrap_or(DEGRADED)),
        };
    }
    Outcome::Partial {
        reason,
        message,
        extra,
    }
}

fn set_conditions(
    status: &mut JitPolicyStatus,
    generation: Option<i64>,
    ctx: &Context,
    outcome: Outcome,
) {
    let now = time(ctx.now());
    let c = &mut status.conditions;
    let set = |c: &mut Vec<Condition>, kind: &str, on: bool, reason: &str, message: &str| {
        conditions::set(c, kind, on, reason, message, generation, now.clone());
    };
    match outcome {
        Outcome::Ready => {
            set(
                c,
                READY,
                true,
                "Converged",
                "every target matches the policy",
            );
            set(c, RECONCILING, false, "Converged", "");
            set(c, STALLED, false, "Converged", "");
            for k in [CONFLICT, UNSUPPORTED, DEGRADED] {
                if c.iter().any(|x| x.type_ == k) {
                    set(c, k, false, "Resolved", "");
                }
            }
        }
        Outcome::Progressing(m) => {
            set(c, READY, false, "Reconciling", &m);
            set(c, RECONCILING, true, "Reconciling", &m);
            set(c, STALLED, false, "Reconciling", "");
        }
        Outcome::Stalled(reason, m) => {
            set(c, READY, false, reason, &m);
            set(c, RECONCILING, false, reason, "");
            set(c, STALLED, true, reason, &m);
        }
        Outcome::Partial {
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
        }
    }
}
