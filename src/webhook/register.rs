//! The webhook configurations, applied by the operator itself (server-side apply).

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, Patch, PatchParams};

use super::{MUTATE_REQUESTS, VALIDATE_POLICIES, VALIDATE_REQUESTS};
use crate::api::GROUP;

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

/// Applies both configurations, `failurePolicy: Fail`: a request that cannot be checked
/// is not admitted.
pub async fn apply(client: &kube::Client, r: &Registration) -> Result<(), kube::Error> {
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
    let pp = PatchParams::apply(crate::controller::MANAGER).force();
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    m.patch(&r.name, &pp, &Patch::Apply(&mutating)).await?;
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    v.patch(&r.name, &pp, &Patch::Apply(&validating)).await?;
    Ok(())
}
