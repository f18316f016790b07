//! The webhook configurations: created by the operator itself (server-side apply, the
//! local test bed and the demo) or owned by an installer such as the Helm chart, in which
//! case the operator only keeps their `caBundle` current.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, Patch, PatchParams};

use super::{MUTATE_REQUESTS, VALIDATE_POLICIES, VALIDATE_REQUESTS};
use crate::api::GROUP;

/// Who owns the webhook configurations, and so what the operator writes to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The operator creates and re-applies both configurations (development, the local
    /// test bed). They outlive the operator.
    Create,
    /// An installer (the Helm chart) owns them, so they go with the install; the operator
    /// only patches the `caBundle` of configurations that exist, and creates nothing.
    PatchCa,
    /// Something else (cert-manager's CA injector) keeps the `caBundle` current: the
    /// operator does not touch the configurations at all.
    None,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "create" => Ok(Mode::Create),
            "patch-ca" => Ok(Mode::PatchCa),
            "none" => Ok(Mode::None),
            other => Err(format!(
                "unknown webhook registration {other:?} (create, patch-ca or none)"
            )),
        }
    }
}

/// Where the API server reaches the webhook.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A URL (outside a cluster: development and the local test bed).
    Url(String),
    /// The operator's Service.
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its port.
        port: i32,
    },
}

impl Endpoint {
    /// The endpoint with port 0 in a URL's authority (`https://127.0.0.1:0/...`) replaced
    /// by `port`, the port the webhook bound; any other endpoint as it is.
    pub fn with_bound_port(self, port: u16) -> Endpoint {
        let Endpoint::Url(url) = &self else {
            return self;
        };
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        match authority.strip_suffix(":0") {
            Some(host) => Endpoint::Url(format!("{scheme}://{host}:{port}{path}")),
            None => self,
        }
    }
}

/// What to register.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The configurations' name.
    pub name: String,
    /// Where the webhook is.
    pub endpoint: Endpoint,
    /// The CA that signed the webhook's certificate.
    pub ca_pem: String,
    /// Restrict admission to one namespace (for an operator that watches one).
    pub namespace: Option<String>,
}

fn client_config(r: &Registration, path: &str) -> WebhookClientConfig {
    let ca = Some(ByteString(r.ca_pem.clone().into_bytes()));
    match &r.endpoint {
        Endpoint::Url(base) => WebhookClientConfig {
            url: Some(format!("{}{path}", base.trim_end_matches('/'))),
            ca_bundle: ca,
            service: None,
        },
        Endpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            url: None,
            ca_bundle: ca,
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.to_string()),
                port: Some(*port),
            }),
        },
    }
}

fn rule(resource: &str) -> Vec<RuleWithOperations> {
    vec![RuleWithOperations {
        api_groups: Some(vec![GROUP.into()]),
        api_versions: Some(vec!["v1alpha1".into()]),
        operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
        resources: Some(vec![resource.into()]),
        scope: Some("Namespaced".into()),
    }]
}

fn selector(r: &Registration) -> Option<LabelSelector> {
    // `kubernetes.io/metadata.name` is set on every namespace from Kubernetes 1.21 on.
    r.namespace.as_ref().map(|ns| LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![ns.clone()]),
        }]),
        match_labels: None,
    })
}

fn validating(r: &Registration, name: &str, path: &str, resource: &str) -> ValidatingWebhook {
    ValidatingWebhook {
        name: name.into(),
        client_config: client_config(r, path),
        rules: Some(rule(resource)),
        failure_policy: Some("Fail".into()),
        side_effects: "None".into(),
        admission_review_versions: vec!["v1".into()],
        timeout_seconds: Some(10),
        namespace_selector: selector(r),
        ..ValidatingWebhook::default()
    }
}

/// Both configurations, `failurePolicy: Fail`: a request that cannot be checked is not
/// admitted. The Helm chart's `templates/webhook.yaml` must say the same (a test checks).
pub fn configurations(
    r: &Registration,
) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
    let mutating = MutatingWebhookConfiguration {
        metadata: kube::api::ObjectMeta {
            name: Some(r.name.clone()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "stamp.accessrequests.jit.portcullis.dev".into(),
            client_config: client_config(r, MUTATE_REQUESTS),
            rules: Some(rule("accessrequests")),
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            admission_review_versions: vec!["v1".into()],
            timeout_seconds: Some(10),
            namespace_selector: selector(r),
            ..MutatingWebhook::default()
        }]),
    };
    let validating = ValidatingWebhookConfiguration {
        metadata: kube::api::ObjectMeta {
            name: Some(r.name.clone()),
            ..Default::default()
        },
        webhooks: Some(vec![
            validating(
                r,
                "validate.accessrequests.jit.portcullis.dev",
                VALIDATE_REQUESTS,
                "accessrequests",
            ),
            validating(
                r,
                "validate.jitpolicies.jit.portcullis.dev",
                VALIDATE_POLICIES,
                "jitpolicies",
            ),
        ]),
    };
    (mutating, validating)
}

/// Applies both [`configurations`] (server-side apply): [`Mode::Create`].
pub async fn apply(client: &kube::Client, r: &Registration) -> Result<(), kube::Error> {
    let (mutating, validating) = configurations(r);
    let pp = PatchParams::apply(crate::controller::MANAGER).force();
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    m.patch(&r.name, &pp, &Patch::Apply(&mutating)).await?;
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    v.patch(&r.name, &pp, &Patch::Apply(&validating)).await?;
    Ok(())
}

/// What [`patch_ca`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaPatch {
    /// Every webhook of both configurations already carried the CA: nothing written.
    Current,
    /// This many webhooks got the CA.
    Patched(usize),
    /// A configuration does not exist (not installed yet, or uninstalled): nothing
    /// written, nothing created.
    Missing,
}

/// Sets the `caBundle` of every webhook in the configurations named `name` to `ca_pem`,
/// writing only to those whose bundle differs. Configurations that do not exist are left
/// alone (their owner, e.g. `helm uninstall`, removed them on purpose).
pub async fn patch_ca(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> Result<CaPatch, kube::Error> {
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let (Some(mutating), Some(validating)) = (m.get_opt(name).await?, v.get_opt(name).await?)
    else {
        return Ok(CaPatch::Missing);
    };
    let stale = |names: Vec<(String, Option<&ByteString>)>| -> Vec<String> {
        names
            .into_iter()
            .filter(|(_, ca)| ca.map(|c| c.0.as_slice()) != Some(ca_pem.as_bytes()))
            .map(|(n, _)| n)
            .collect()
    };
    let m_stale = stale(
        mutating
            .webhooks
            .iter()
            .flatten()
            .map(|w| (w.name.clone(), w.client_config.ca_bundle.as_ref()))
            .collect(),
    );
    let v_stale = stale(
        validating
            .webhooks
            .iter()
            .flatten()
            .map(|w| (w.name.clone(), w.client_config.ca_bundle.as_ref()))
            .collect(),
    );
    // A strategic merge patch: `webhooks` merges by `name`, so only `caBundle` changes.
    let patch = |stale: &[String]| {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
        serde_json::json!({
            "webhooks": stale
                .iter()
                .map(|n| serde_json::json!({"name": n, "clientConfig": {"caBundle": ca}}))
                .collect::<Vec<_>>()
        })
    };
    let pp = PatchParams::default();
    if !m_stale.is_empty() {
        m.patch(name, &pp, &Patch::Strategic(patch(&m_stale)))
            .await?;
    }
    if !v_stale.is_empty() {
        v.patch(name, &pp, &Patch::Strategic(patch(&v_stale)))
            .await?;
    }
    Ok(match m_stale.len() + v_stale.len() {
        0 => CaPatch::Current,
        n => CaPatch::Patched(n),
    })
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    fn url(e: Endpoint) -> String {
        match e {
            Endpoint::Url(u) => u,
            other => panic!("not a URL: {other:?}"),
        }
    }

    #[test]
    fn port_zero_in_a_url_becomes_the_bound_port() {
        let bound = |u: &str| url(Endpoint::Url(u.into()).with_bound_port(40123));
        assert_eq!(bound("https://127.0.0.1:0"), "https://127.0.0.1:40123");
        assert_eq!(bound("https://127.0.0.1:0/"), "https://127.0.0.1:40123/");
        assert_eq!(bound("https://[::1]:0/hooks"), "https://[::1]:40123/hooks");
        // A port the user chose stays, even one ending in 0.
        assert_eq!(bound("https://127.0.0.1:9440"), "https://127.0.0.1:9440");
        assert_eq!(bound("https://127.0.0.1"), "https://127.0.0.1");
        assert_eq!(
            bound("https://host.example/x:0"),
            "https://host.example/x:0"
        );
    }

    #[test]
    fn a_service_endpoint_keeps_its_port() {
        let e = Endpoint::Service {
            namespace: "ns".into(),
            name: "svc".into(),
            port: 443,
        }
        .with_bound_port(1);
        assert!(matches!(e, Endpoint::Service { port: 443, .. }));
    }
}
