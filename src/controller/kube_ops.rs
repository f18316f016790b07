//! Writes to the Kubernetes API: status by server-side apply, finalizers, events.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::{Context, FINALIZER, MANAGER};
use crate::api::{AccessRequest, AccessRequestStatus, JitPolicy, JitPolicyStatus};

/// Writes a policy's status by server-side apply (field manager `portcullis`; the records
/// are their own managers' and are never sent here).
pub(super) async fn write_policy_status(
    api: &Api<JitPolicy>,
    name: &str,
    new: &JitPolicyStatus,
) -> Result<(), kube::Error> {
    let patch =
        json!({"apiVersion": "jit.portcullis.dev/v1alpha1", "kind": "JitPolicy", "status": new});
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Writes a request's status (server-side apply; callers write only what changed).
pub(super) async fn write_request_status(
    ctx: &Context,
    req: &AccessRequest,
    new: &AccessRequestStatus,
) -> Result<(), kube::Error> {
    let api: Api<AccessRequest> = ctx.api(&req.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": "jit.portcullis.dev/v1alpha1", "kind": "AccessRequest", "status": new});
    match api
        .patch_status(
            &req.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: nothing left to record.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Adds our finalizer to a request (guarded by its resourceVersion).
pub(super) async fn add_finalizer(ctx: &Context, req: &AccessRequest) -> Result<(), kube::Error> {
    let api: Api<AccessRequest> = ctx.api(&req.namespace().unwrap_or_default());
    let mut finalizers = req.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": req.resource_version()}});
    api.patch(
        &req.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Removes the request's finalizer. The patch carries the resourceVersion it was made
/// from (so a finalizer someone added meanwhile is never dropped); when the object moved
/// on (typically: its status was just written from the same copy), it is read again and
/// the patch retried, so a deleted request goes at once instead of at the next resync.
pub(super) async fn remove_finalizer(
    ctx: &Context,
    req: &AccessRequest,
) -> Result<(), kube::Error> {
    let api: Api<AccessRequest> = ctx.api(&req.namespace().unwrap_or_default());
    let mut current = req.clone();
    let mut attempt = 0;
    loop {
        attempt += 1;
        if !current.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        let finalizers: Vec<&String> = current
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .collect();
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": current.resource_version()}});
        match api
            .patch(
                &current.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 3 => {
                match api.get_opt(&current.name_any()).await? {
                    Some(fresh) => current = fresh,
                    None => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Publishes an event about `obj`; failures are logged, never fatal.
pub(super) async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = KubeEvent {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: reason.to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        warn!(error = %e, reason, "cannot publish event");
    }
}
