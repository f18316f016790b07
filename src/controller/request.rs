//! The `AccessRequest` controller: hands request changes to their policy's reconcile,
//! settles requests whose policy does not exist, and deletes finished requests after
//! their time to live.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, instrument};

use super::kube_ops::{publish, remove_finalizer, write_request_status};
use super::request_status::{phase_of, refused_ports, request_conditions};
use super::convert::time;
use super::{Context, Error};
use crate::api::{AccessRequest, JitPolicy, Phase};
use crate::metrics;

/// Reconciles one request.
#[instrument(skip_all, fields(request = %format!("{}/{}", req.namespace().unwrap_or_default(), req.name_any())))]
pub async fn reconcile(req: Arc<AccessRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = settle(&req, &ctx).await;
    metrics::reconcile(
        "accessrequest",
        match &result {
            Ok(_) => "ok",
            Err(e) => e.category(),
        },
    );
    result
}

/// Requeues failed reconciles with backoff and jitter.
pub fn error_policy(_req: Arc<AccessRequest>, err: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(super::retry_after(err))
}

async fn settle(req: &AccessRequest, ctx: &Context) -> Result<Action, Error> {
    let ns = req.namespace().unwrap_or_default();
    let policy_name = req.spec.policy_ref.name.clone();
    let policy_ref = ObjectRef::<JitPolicy>::new(&policy_name).within(&ns);
    let status = req.status.clone().unwrap_or_default();

    if let Some(wait) = time_to_live_left(req, ctx) {
        if wait.is_zero() {
            info!("finished request reached its time to live; deleting it");
            let api: Api<AccessRequest> = ctx.api(&ns);
            api.delete(&req.name_any(), &DeleteParams::default())
                .await
                .ok();
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(wait.min(ctx.settings.resync)));
    }

    ctx.policies.wait_until_ready().await.ok();
    if ctx.policies.get(&policy_ref).is_some() {
        // The policy's targets own everything about their requests.
        return Ok(Action::requeue(ctx.settings.resync));
    }
    // The cache can lag behind a policy created a moment ago: ask the API server.
    let policies: Api<JitPolicy> = ctx.api(&ns);
    if policies.get_opt(&policy_name).await?.is_some() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    // No policy: nothing may open, and whatever it held is for the sweeper.
    if req.metadata.deletion_timestamp.is_some() {
        remove_finalizer(ctx, req).await?;
        return Ok(Action::await_change());
    }
    let granted = status.granted_at.is_some();
    let mut s = status.clone();
    s.observed_generation = req.metadata.generation;
    s.ports = refused_ports(req, &status);
    s.phase = Some(phase_of(&s.ports));
    s.message = Some(format!(
        "spec.policyRef.name: JitPolicy {policy_name:?} does not exist in namespace {ns:?}"
    ));
    if s.finished_at.is_none() {
        s.finished_at = Some(time(ctx.now()));
    }
    request_conditions(&mut s, req.metadata.generation, ctx);
    if req.status.as_ref() != Some(&s) {
        write_request_status(ctx, req, &s).await?;
        if status.phase != s.phase {
            publish(
                ctx,
                req,
                EventType::Warning,
                if granted { "Revoked" } else { "Denied" },
                s.message.clone().unwrap_or_default(),
            )
            .await;
        }
    }
    Ok(Action::requeue(ctx.settings.resync))
}

/// How long a finished request has left before deletion (zero: delete now), counted from
/// when it finished; `None` while it is not finished (or no time to live is set).
fn time_to_live_left(req: &AccessRequest, ctx: &Context) -> Option<Duration> {
    let ttl = ctx.settings.finished_ttl?;
    let status = req.status.as_ref()?;
    let finished = matches!(
        status.phase,
        Some(Phase::Expired | Phase::Revoked | Phase::Denied | Phase::Failed)
    );
    if !finished {
        return None;
    }
    let since = status.finished_at.as_ref()?.0;
    let age = Duration::try_from(ctx.now().duration_since(since)).unwrap_or(Duration::ZERO);
    Some(ttl.saturating_sub(age))
}
