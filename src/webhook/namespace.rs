//! The label the webhooks select a namespace by.
//!
//! A namespace-scoped install's webhook configurations select its namespace by
//! `kubernetes.io/metadata.name`, which Kubernetes sets on every namespace from 1.21 on.
//! On 1.20 a namespace made with `kubectl create namespace` has no such label: the
//! webhooks would never be called, no request would carry a requester stamp, and every
//! request would be denied. So the operator sets the label itself, to the value
//! Kubernetes would give it (it needs `get` and `patch` on that one namespace).

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use tracing::{info, warn};

/// The label Kubernetes sets on every namespace from 1.21 on.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What [`ensure_name_label`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Labelled {
    /// The namespace already carried the label (Kubernetes ≥ 1.21, or set before).
    Already,
    /// The operator set it.
    Set,
}

/// Makes sure the namespace `ns` carries `kubernetes.io/metadata.name: <ns>`.
pub async fn ensure_name_label(client: &kube::Client, ns: &str) -> Result<Labelled, kube::Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let current = api.get(ns).await?;
    let has = current
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(NAME_LABEL))
        .is_some_and(|v| v == ns);
    if has {
        return Ok(Labelled::Already);
    }
    let patch = serde_json::json!({"metadata": {"labels": {NAME_LABEL: ns}}});
    api.patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    info!(
        namespace = ns,
        label = NAME_LABEL,
        "labelled the watched namespace for the webhooks (Kubernetes < 1.21 does not)"
    );
    Ok(Labelled::Set)
}

/// [`ensure_name_label`], with a warning that says what to do when it cannot be done.
pub async fn ensure_or_warn(client: &kube::Client, ns: &str) {
    if let Err(e) = ensure_name_label(client, ns).await {
        warn!(
            namespace = ns,
            error = %e,
            "cannot check or set the namespace label the webhooks select by; on Kubernetes < 1.21 run: kubectl label namespace {ns} {NAME_LABEL}={ns}"
        );
    }
}
