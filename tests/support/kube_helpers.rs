//! Helpers for tests that talk to the test bed's API server.

use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery;

/// Creates a namespace with a unique name starting with `prefix` and returns its name.
pub async fn namespace(client: &kube::Client, prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    namespace_named(client, &name).await;
    name
}

/// Parses one YAML document into a dynamic object.
pub fn object(yaml: &str) -> DynamicObject {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("bad YAML in test: {e}\n{yaml}"))
}

/// Creates a dynamic object in `namespace` through the API server; returns the server's
/// answer, so a test can check how the server rejected it.
pub async fn create(
    client: &kube::Client,
    namespace: &str,
    obj: &DynamicObject,
) -> Result<DynamicObject, kube::Error> {
    let types = obj.types.as_ref().expect("object has apiVersion and kind");
    let gvk = GroupVersionKind::try_from(types).expect("valid apiVersion");
    let (ar, _) = discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    api.create(&PostParams::default(), obj).await
}

/// The API resource for a kind of the `jit.portcullis.dev/v1alpha1` group.
pub fn jit_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "jit.portcullis.dev",
        "v1alpha1",
        kind,
    ))
}

/// Creates namespace `name` unless it exists.
pub async fn namespace_named(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        // As `kubectl create namespace` makes it on 1.20: without the
        // `kubernetes.io/metadata.name` label (the operator sets it for its webhooks).
        "metadata": {"name": name},
    }))
    .unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("cannot create namespace {name}: {e}"),
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout` naming
/// `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                super::process::watched_logs(40)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Waits until the namespace's admission webhook answers (a server-side dry run is
/// stamped, or refused by the webhook).
pub async fn wait_for_webhook(client: &kube::Client, ns: &str) {
    use kube::ResourceExt;
    use portcullis::api::AccessRequest;
    let api: Api<AccessRequest> = Api::namespaced(client.clone(), ns);
    let probe: AccessRequest = serde_saphyr::from_str(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {name: probe}\nspec:\n  policyRef: {name: probe}\n  target: probe\n  ports: [{port: 22, sourcePrefix: 203.0.113.7/32, duration: 1m}]\n  justification: probe\n",
    )
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        "the admission webhook to answer",
        std::time::Duration::from_secs(60),
        || {
            let (api, probe, dry) = (api.clone(), probe.clone(), dry.clone());
            async move {
                match api.create(&dry, &probe).await {
                    Ok(r) => r
                        .annotations()
                        .contains_key("jit.portcullis.dev/requester")
                        .then_some(()),
                    Err(kube::Error::Api(s)) if s.message.contains("denied the request") => {
                        Some(())
                    }
                    Err(_) => None,
                }
            }
        },
    )
    .await
}

/// Deletes `name` and waits until it is gone (finalizers done), or panics after a minute.
pub async fn delete_and_wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &kube::api::DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("cannot delete {name}: {e}"));
    eventually(
        &format!("{name} to be gone"),
        std::time::Duration::from_secs(60),
        || async { api.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await
}
