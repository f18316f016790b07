//! Installing Portcullis the way users do: the Helm chart (lint, render, schema), a
//! `helm install` into the real kube-apiserver with the operator running as the chart's
//! ServiceAccount, the RBAC proven sufficient (requests go Active on moto and on the ARM
//! emulator with no `forbidden`) and not excessive (`kubectl auth can-i`), upgrade and
//! uninstall, the OCI image built here and run from its unpacked rootfs, and the cloud
//! identities (IRSA, Azure Workload Identity) end to end.

mod chart;
mod identity;
mod image;
mod release;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use portcullis::api::{AccessRequest, JitPolicy, Phase};
use portcullis::webhook::register::{self, Endpoint, Registration};
use serde_json::{Value, json};

use crate::support::arm::ArmEmulator;
use crate::support::aws;
use crate::support::helm;
use crate::support::kube_helpers::{
    delete_and_wait_gone, eventually, namespace_named, wait_for_webhook,
};
use crate::support::operator::{Operator, binary, http_get};
use crate::support::testbed::{ADMIN, Testbed, repo_root, run};

pub(crate) const MINUTE: Duration = Duration::from_secs(60);

pub(super) fn kinds(objects: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    v.sort();
    v
}

/// A kubeconfig for `token` against the test bed's API server.
pub(super) fn token_kubeconfig(tb: &Testbed, token: &str, path: &Path) {
    use base64::Engine;
    let ca = std::fs::read_to_string(tb.dir.join("ca.crt")).unwrap();
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context: {{cluster: testbed, user: sa}}\ncurrent-context: sa\n",
            tb.apiserver_url
        ),
    )
    .unwrap();
}

/// A token for ServiceAccount `ns/name` from the TokenRequest API, as the kubelet gets
/// one for a pod.
pub(super) async fn service_account_token(client: &kube::Client, ns: &str, name: &str) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let answer: TokenRequest = sas
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .expect("a TokenRequest for the chart's ServiceAccount");
    answer.status.and_then(|s| s.token).expect("a token")
}

/// Runs the container of the installed Deployment as a process: its args and env as
/// rendered, with only what differs outside a pod changed: the listen addresses (loopback
/// ports of its own, as a pod has its own network), `--webhook-url` (the API server
/// reaches it there instead of through the Service) and `--kubeconfig` (the
/// ServiceAccount's token, as the kubelet would mount it). Returns it and its webhook URL.
pub(super) async fn run_deployment(
    tb: &Testbed,
    client: &kube::Client,
    ns: &str,
    name: &str,
    kubeconfig: &Path,
    pod: &str,
) -> (Operator, String) {
    let d: Deployment = Api::namespaced(client.clone(), ns).get(name).await.unwrap();
    let c = d.spec.template.spec.unwrap().containers.remove(0);
    let mut args: Vec<String> = c
        .args
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            if a.starts_with("--webhook-listen=") {
                "--webhook-listen=127.0.0.1:0".into()
            } else if a.starts_with("--metrics-listen=") {
                "--metrics-listen=127.0.0.1:0".into()
            } else {
                a
            }
        })
        .collect();
    args.push("--webhook-url=https://127.0.0.1:0".into());
    args.push(format!("--kubeconfig={}", kubeconfig.display()));
    let envs: Vec<(String, String)> = c
        .env
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let value = match e.value_from.and_then(|v| v.field_ref).map(|f| f.field_path) {
                Some(p) if p == "metadata.name" => pod.to_string(),
                Some(p) if p == "metadata.namespace" => ns.to_string(),
                Some(p) => panic!("the test cannot resolve fieldRef {p}"),
                None => e.value.unwrap_or_default(),
            };
            (e.name, value)
        })
        .collect();
    let op = Operator::start_exact(tb, pod, binary(), args, envs);
    let url = format!(
        "https://127.0.0.1:{}",
        op.webhook_port.expect("the webhook's port")
    );
    (op, url)
}

/// Points the chart's webhook configurations at `url` (`to: Some`) instead of the
/// Service, or back at the Service (`to: None`). The API server outside a cluster network
/// cannot reach a Service (no kube-proxy), so the test stands in for that path; it undoes
/// this before Helm applies the configurations again (Helm's server-side apply would
/// otherwise meet both a url and a service). Nothing else of them changes; the caBundle
/// stays the operator's business.
pub(super) async fn route_webhooks(
    client: &kube::Client,
    name: &str,
    service: (&str, &str),
    to: Option<&str>,
) {
    async fn reroute<K>(api: Api<K>, name: &str, service: (&str, &str), to: Option<&str>)
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let current = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
        let mut ops = Vec::new();
        for (i, h) in current["webhooks"].as_array().unwrap().iter().enumerate() {
            let path = match &h["clientConfig"]["service"]["path"] {
                Value::String(p) => p.clone(),
                _ => h["clientConfig"]["url"]
                    .as_str()
                    .unwrap()
                    .split_once("//")
                    .unwrap()
                    .1
                    .split_once('/')
                    .map(|(_, p)| format!("/{p}"))
                    .unwrap(),
            };
            let at = |f: &str| format!("/webhooks/{i}/clientConfig/{f}");
            match to {
                Some(url) if h["clientConfig"]["service"].is_object() => {
                    ops.push(json!({"op": "remove", "path": at("service")}));
                    ops.push(
                        json!({"op": "add", "path": at("url"), "value": format!("{url}{path}")}),
                    );
                }
                None if h["clientConfig"]["url"].is_string() => {
                    ops.push(json!({"op": "remove", "path": at("url")}));
                    ops.push(json!({"op": "add", "path": at("service"), "value": {
                        "namespace": service.0, "name": service.1, "path": path, "port": 443}}));
                }
                _ => {}
            }
        }
        if !ops.is_empty() {
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
            api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
                .await
                .unwrap();
        }
    }
    reroute(
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
        name,
        service,
        to,
    )
    .await;
    reroute(
        Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        name,
        service,
        to,
    )
    .await;
}

/// `kubectl auth can-i … --as <the chart's ServiceAccount>`.
pub(super) fn can_i(tb: &Testbed, sa: &str, what: &[&str]) -> bool {
    let out = tb
        .kubectl(ADMIN)
        .args(["auth", "can-i"])
        .args(what)
        .arg(format!("--as={sa}"))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {what:?}: {other:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

pub(super) async fn aws_request_goes_active(
    client: &kube::Client,
    ec2: &aws_sdk_ec2::Client,
    ns: &str,
    policy: &str,
    request: &str,
) {
    let vm = aws::instance(ec2).await;
    let policies: Api<JitPolicy> = Api::namespaced(client.clone(), ns);
    let p: JitPolicy = serde_saphyr::from_str(&format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: {policy}}}\nspec:\n  targets:\n    - name: web\n      aws: {{region: {}, instanceId: {}}}\n  ports:\n    - {{port: 22, protocol: TCP, allowedSourcePrefixes: [\"203.0.113.0/24\"], maxDuration: 1h}}\n",
        aws::REGION, vm.instance_id
    ))
    .unwrap();
    policies.create(&PostParams::default(), &p).await.unwrap();
    request_goes_active(client, ns, policy, "web", request).await;
}

pub(super) async fn request_goes_active(
    client: &kube::Client,
    ns: &str,
    policy: &str,
    target: &str,
    request: &str,
) {
    let requests: Api<AccessRequest> = Api::namespaced(client.clone(), ns);
    let r: AccessRequest = serde_saphyr::from_str(&format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {{name: {request}}}\nspec:\n  policyRef: {{name: {policy}}}\n  target: {target}\n  ports:\n    - {{port: 22, sourcePrefix: 203.0.113.7/32, duration: 10m}}\n  justification: installed with Helm\n"
    ))
    .unwrap();
    requests.create(&PostParams::default(), &r).await.unwrap();
    let r = eventually(&format!("{ns}/{request} Active"), MINUTE, || async {
        let r = requests.get(request).await.ok()?;
        (r.status.as_ref()?.phase == Some(Phase::Active)).then_some(r)
    })
    .await;
    assert_eq!(
        r.status.unwrap().requester.unwrap().username,
        "admin",
        "stamped by the chart's webhook"
    );
}
