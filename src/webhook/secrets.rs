//! Material the operator keeps in Secrets, shared by its replicas: the requester-stamp
//! key and (without cert-manager) the webhook's CA and serving certificate.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

/// Reads Secret `name` in `namespace`, creating it with `make()` when it does not exist.
/// When two replicas race, the one that loses reads the winner's Secret.
pub async fn get_or_create(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    make: impl FnOnce() -> anyhow::Result<BTreeMap<String, Vec<u8>>>,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(s) = api.get_opt(name).await? {
        return Ok(data(&s));
    }
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.to_string());
    secret.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "portcullis".to_string(),
    )]));
    secret.data = Some(
        make()?
            .into_iter()
            .map(|(k, v)| (k, ByteString(v)))
            .collect(),
    );
    match api.create(&PostParams::default(), &secret).await {
        Ok(s) => Ok(data(&s)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(data(&api.get(name).await?)),
        Err(e) => Err(e.into()),
    }
}

fn data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// 32 random bytes.
pub fn random_key() -> Vec<u8> {
    (0..32).map(|_| rand::random::<u8>()).collect()
}
