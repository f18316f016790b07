//! The `JitPolicy` reconcile: the finalizer, then gather → dispatch the targets to their
//! actors → report their outcomes in the status. It does no cloud work itself, so it
//! never waits for a cloud: the targets' actors do that (see [`super::target`]).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use tracing::{info, instrument};

use super::convert::time;
use super::kube_ops::{write_policy_status, write_request_status};
use super::policy_status;
use super::request_status::{announce, phase_of, refused_ports, request_conditions};
use super::{Context, Error, FINALIZER, records};
use crate::api::{AccessRequest, JitPolicy, JitPolicyStatus};
use crate::domain::requester::ANNOTATION;
use crate::domain::{ObjectKey, TargetKey, validate};
use crate::metrics;

/// Reconciles one policy; the finalizer is its only top-level step.
#[instrument(skip_all, fields(policy = %format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any())))]
pub async fn reconcile(policy: Arc<JitPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<JitPolicy> = ctx.api(&ns);
    let result = finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            Event::Apply(p) => converge(&p, &ctx).await,
            Event::Cleanup(p) => converge(&p, &ctx).await,
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

async fn converge(policy: &JitPolicy, ctx: &Arc<Context>) -> Result<Action, Error> {
    let ns = policy.namespace().unwrap_or_default();
    let key = ObjectKey::new(&ns, policy.name_any());
    let deleting = policy.metadata.deletion_timestamp.is_some();
    let requests: Vec<Arc<AccessRequest>> = ctx
        .requests
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()) && r.spec.policy_ref.name == key.name)
        .collect();

    // The targets: those in the spec, and those the operator still has to undo.
    let mut names: Vec<String> = Vec::new();
    for t in &policy.spec.targets {
        if !names.contains(&t.name) {
            names.push(t.name.clone());
        }
    }
    let in_spec: BTreeSet<String> = names.iter().cloned().collect();
    for t in records::recorded_targets(policy).into_iter().chain(
        ctx.runner
            .keys()
            .into_iter()
            .filter(|k| k.policy == key)
            .map(|k| k.target),
    ) {
        if !names.contains(&t) {
            names.push(t);
        }
    }

    // Dispatch: each target's actor runs when what it reads changed.
    for name in &names {
        let target = TargetKey {
            policy: key.clone(),
            target: name.clone(),
        };
        ctx.runner
            .touch(ctx, &target, fingerprint(policy, &requests, name));
    }

    // Requests that name no target of the policy are refused here (no actor sees them).
    for r in requests.iter().filter(|r| !in_spec.contains(&r.spec.target) && !names.contains(&r.spec.target)) {
        deny_unknown_target(ctx, policy, r, &names).await?;
    }

    // The status, from the targets' outcomes.
    let outcomes: BTreeMap<String, super::target::Outcome> = {
        let all = ctx.outcomes.lock().expect("outcomes poisoned");
        names
            .iter()
            .filter_map(|n| {
                let k = TargetKey {
                    policy: key.clone(),
                    target: n.clone(),
                };
                all.get(&k).map(|o| (n.clone(), o.clone()))
            })
            .collect()
    };
    let invalid = validate::policy(key.clone(), &policy.spec, deleting)
        .err()
        .map(|e| validate::join(&e));
    let old = policy.status.clone().unwrap_or_default();
    let mut status = JitPolicyStatus {
        observed_generation: policy.metadata.generation,
        conditions: old.conditions.clone(),
        targets: policy_status::targets(&names, &outcomes),
    };
    let per_target: BTreeMap<String, Option<&super::target::Outcome>> = names
        .iter()
        .map(|n| (n.clone(), outcomes.get(n)))
        .collect();
    policy_status::set_conditions(
        &mut status.conditions,
        policy.metadata.generation,
        time(ctx.now()),
        policy_status::standing(invalid.as_deref(), &per_target),
    );
    if policy_status::without_records(&old) != status {
        write_policy_status(&ctx.api(&ns), &key.name, &status).await?;
    }

    if deleting {
        let done = names.iter().all(|n| {
            outcomes
                .get(n)
                .is_some_and(|o| o.cleaning && o.clean)
        });
        if done {
            info!("policy cleanup done");
            return Ok(Action::await_change());
        }
        return Err(Error::CleanupPending(format!(
            "{} target(s) still being cleaned up",
            names
                .iter()
                .filter(|n| !outcomes.get(*n).is_some_and(|o| o.clean))
                .count()
        )));
    }
    Ok(Action::requeue(ctx.settings.resync))
}

/// A digest of what a target's run reads from Kubernetes: the policy's spec and deletion,
/// and its requests' specs, deletions, finalizers and stamps. Status writes do not change
/// it, so the operator's own writes never trigger cloud work.
fn fingerprint(policy: &JitPolicy, requests: &[Arc<AccessRequest>], target: &str) -> u64 {
    let mut h = DefaultHasher::new();
    policy.metadata.generation.hash(&mut h);
    policy.uid().hash(&mut h);
    policy.metadata.deletion_timestamp.is_some().hash(&mut h);
    for r in requests.iter().filter(|r| r.spec.target == target) {
        r.uid().hash(&mut h);
        r.metadata.generation.hash(&mut h);
        r.metadata.deletion_timestamp.is_some().hash(&mut h);
        r.finalizers().iter().any(|f| f == FINALIZER).hash(&mut h);
        r.annotations().get(ANNOTATION).hash(&mut h);
    }
    h.finish()
}

/// A request naming a target the policy does not have: Denied (Revoked when it had been
/// granted), and let go when deleted.
async fn deny_unknown_target(
    ctx: &Context,
    policy: &JitPolicy,
    req: &AccessRequest,
    known: &[String],
) -> Result<(), Error> {
    let old = req.status.clone().unwrap_or_default();
    let mut s = old.clone();
    s.observed_generation = req.metadata.generation;
    s.ports = refused_ports(req, &old);
    s.phase = Some(phase_of(&s.ports));
    s.message = Some(format!(
        "spec.target: policy {:?} has no target {:?} (it has {})",
        policy.name_any(),
        req.spec.target,
        known.join(", ")
    ));
    if s.finished_at.is_none() {
        s.finished_at = Some(time(ctx.now()));
    }
    request_conditions(&mut s, req.metadata.generation, ctx);
    if old != s {
        write_request_status(ctx, req, &s).await?;
        announce(ctx, req, &old, &s).await;
    }
    if req.metadata.deletion_timestamp.is_some() {
        super::kube_ops::remove_finalizer(ctx, req).await?;
    }
    Ok(())
}
