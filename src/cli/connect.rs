//! The user's cluster, as kubectl would pick it: `--kubeconfig`, `--context`, `-n`.

use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{Error, Global};

/// A client for the chosen cluster and the namespace commands work in.
pub struct Session {
    /// Acts as the user the kubeconfig names.
    pub client: kube::Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
}

/// Builds the client. Makes no API call.
pub async fn session(global: &Global) -> Result<Session, Error> {
    let options = KubeConfigOptions {
        context: global.context.clone(),
        cluster: None,
        user: None,
    };
    let bad = |e: &dyn std::fmt::Display| Error::Failed(format!("kubeconfig: {e}"));
    let config = match &global.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| Error::Usage(format!("--kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| bad(&e))?
        }
        // $KUBECONFIG (a list of files, merged) or ~/.kube/config; inside a pod without
        // either, the pod's service account, as kubectl does.
        None => match kube::Config::from_kubeconfig(&options).await {
            Ok(c) => c,
            Err(e) if global.context.is_none() => kube::Config::incluster().map_err(|_| bad(&e))?,
            Err(e) => return Err(bad(&e)),
        },
    };
    let namespace = global
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|e| bad(&e))?;
    Ok(Session { client, namespace })
}
