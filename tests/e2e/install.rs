//! Installing Portcullis the way users do: the Helm chart (lint, render, schema), a
//! `helm install` into the real kube-apiserver with the operator running as the chart's
//! ServiceAccount, the RBAC proven sufficient (requests go Active on moto and on the ARM
//! emulator with no `forbidden`) and not excessive (`kubectl auth can-i`), upgrade and
//! uninstall, and the OCI image built here and run from its unpacked rootfs.

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
use crate::support::process::free_port;
use crate::support::testbed::{ADMIN, Testbed, repo_root, run};

const MINUTE: Duration = Duration::from_secs(60);

/// Every optional feature of the chart switched on.
fn every_feature() -> Value {
    json!({
        "replicaCount": 3,
        "image": {"repository": "registry.example/portcullis", "tag": "0.1.0-test", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "clusterName": "prod-eu",
        "watchNamespace": "team-a",
        "resync": "30s",
        "finishedTtl": "1h",
        "logFormat": "text",
        "awsRegions": ["eu-west-1", "us-east-1"],
        "extraArgs": ["--concurrency=8"],
        "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}],
        "serviceAccount": {"create": true, "name": "jit-operator", "annotations": {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/portcullis"}},
        "azure": {"workloadIdentity": {"enabled": true, "clientId": "00000000-0000-0000-0000-000000000001", "tenantId": "00000000-0000-0000-0000-000000000002"}},
        "webhook": {"port": 10443, "timeoutSeconds": 5, "certManager": {"enabled": true}},
        "metrics": {"port": 9090, "serviceMonitor": {"enabled": true, "interval": "15s", "labels": {"release": "prom"}}},
        "leaderElection": {"leaseDuration": "20s"},
        "podDisruptionBudget": {"enabled": true, "minAvailable": 1},
        "networkPolicy": {"enabled": true},
        "rbac": {"peopleRoles": true},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "portcullis"}}}],
        "podAnnotations": {"example.com/scrape": "true"},
        "podLabels": {"team": "platform"},
        "priorityClassName": "system-cluster-critical",
    })
}

fn kinds(objects: &[Value]) -> Vec<String> {
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

fn container(objects: &[Value], deployment: &str) -> Value {
    helm::find(objects, "Deployment", deployment).expect("the Deployment")["spec"]["template"]["spec"]["containers"][0].clone()
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The rules of a Role or ClusterRole as (apiGroup, resource, verb, resourceNames) rows.
fn rules(role: &Value) -> Vec<(String, String, String, String)> {
    let mut rows = Vec::new();
    for r in role["rules"].as_array().unwrap() {
        let names = r["resourceNames"]
            .as_array()
            .map(|n| {
                n.iter()
                    .map(|x| x.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                for v in r["verbs"].as_array().unwrap() {
                    rows.push((
                        g.as_str().unwrap().into(),
                        res.as_str().unwrap().into(),
                        v.as_str().unwrap().into(),
                        names.clone(),
                    ));
                }
            }
        }
    }
    rows
}

/// The webhooks the operator would register itself, without the caBundle it adds.
fn webhooks_of_the_operator(namespace: &str, watch: Option<&str>, timeout: i32) -> (Value, Value) {
    let (m, v) = register::configurations(&Registration {
        name: "portcullis".into(),
        endpoint: Endpoint::Service {
            namespace: namespace.into(),
            name: "portcullis-webhook".into(),
            port: 443,
        },
        ca_pem: String::new(),
        namespace: watch.map(String::from),
    });
    let strip = |mut hooks: Value| {
        for h in hooks.as_array_mut().unwrap() {
            h["clientConfig"]
                .as_object_mut()
                .unwrap()
                .remove("caBundle");
            h["timeoutSeconds"] = json!(timeout);
        }
        hooks
    };
    (
        strip(serde_json::to_value(m).unwrap()["webhooks"].clone()),
        strip(serde_json::to_value(v).unwrap()["webhooks"].clone()),
    )
}

#[test]
fn chart_crds_are_the_generated_ones_and_its_app_version_is_the_crate_version() {
    let read_dir = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let top = repo_root().join("crds");
    let chart = helm::chart().join("crds");
    assert_eq!(read_dir(&top), read_dir(&chart), "the same CRD files");
    for name in read_dir(&top) {
        assert_eq!(
            std::fs::read(top.join(&name)).unwrap(),
            std::fs::read(chart.join(&name)).unwrap(),
            "charts/portcullis/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/portcullis/crds/"
        );
    }
    let chart_yaml: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(helm::chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart_yaml["apiVersion"], "v2");
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn chart_lints_strict_and_renders_with_defaults_and_with_every_feature() {
    for values in [json!({}), every_feature()] {
        let report = helm::lint(values.clone());
        assert_eq!(report["errors"], json!([]), "lint --strict: {report}");
        let warnings: Vec<&Value> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_u64() >= Some(2))
            .collect();
        assert!(warnings.is_empty(), "lint --strict warnings: {warnings:?}");
    }

    // Defaults: a cluster-wide install that owns its webhook configurations.
    let objs = helm::render(json!({}), "portcullis", "portcullis-system").unwrap();
    assert_eq!(
        kinds(&objs),
        [
            "ClusterRole/portcullis-operator",
            "ClusterRole/portcullis-policy-admin",
            "ClusterRole/portcullis-requester",
            "ClusterRoleBinding/portcullis-operator",
            "Deployment/portcullis",
            "MutatingWebhookConfiguration/portcullis",
            "PodDisruptionBudget/portcullis",
            "Role/portcullis-operator",
            "RoleBinding/portcullis-operator",
            "Service/portcullis-metrics",
            "Service/portcullis-webhook",
            "ServiceAccount/portcullis",
            "ValidatingWebhookConfiguration/portcullis",
        ]
    );
    let d = helm::find(&objs, "Deployment", "portcullis").unwrap();
    assert_eq!(d["spec"]["replicas"], 2);
    let pdb = helm::find(&objs, "PodDisruptionBudget", "portcullis").unwrap();
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let one = helm::render(
        json!({"replicaCount": 1}),
        "portcullis",
        "portcullis-system",
    )
    .unwrap();
    assert!(
        helm::find(&one, "PodDisruptionBudget", "portcullis").is_none(),
        "one replica: no PDB that would block every drain"
    );
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    let c = container(&objs, "portcullis");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["limits"]["memory"].is_string());
    let a = args(&c);
    assert!(
        a.contains(&"--webhook-registration=patch-ca".into()),
        "{a:?}"
    );
    assert!(
        !a.iter().any(|x| x.starts_with("--namespace")),
        "all namespaces: {a:?}"
    );
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["POD_NAME", "POD_NAMESPACE"]);
    // The chart's webhooks are the operator's own.
    let (m, v) = webhooks_of_the_operator("portcullis-system", None, 10);
    assert_eq!(
        helm::find(&objs, "MutatingWebhookConfiguration", "portcullis").unwrap()["webhooks"],
        m
    );
    assert_eq!(
        helm::find(&objs, "ValidatingWebhookConfiguration", "portcullis").unwrap()["webhooks"],
        v
    );
    let cluster = rules(helm::find(&objs, "ClusterRole", "portcullis-operator").unwrap());
    assert!(cluster.contains(&(
        "".into(),
        "namespaces".into(),
        "get".into(),
        "kube-system".into()
    )));

    // Every feature on.
    let objs = helm::render(every_feature(), "jit", "ops").unwrap();
    let names = kinds(&objs);
    for expected in [
        "Certificate/jit-portcullis-ca",
        "Certificate/jit-portcullis-webhook",
        "Issuer/jit-portcullis-ca",
        "Issuer/jit-portcullis-selfsigned",
        "NetworkPolicy/jit-portcullis",
        "Role/jit-portcullis-operator-watched",
        "RoleBinding/jit-portcullis-operator-watched",
        "ServiceMonitor/jit-portcullis",
        "ServiceAccount/jit-operator",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "{expected} in {names:?}"
        );
    }
    let d = helm::find(&objs, "Deployment", "jit-portcullis").unwrap();
    let pod = &d["spec"]["template"];
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        pod["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    assert_eq!(pod["metadata"]["annotations"]["example.com/scrape"], "true");
    assert_eq!(pod["spec"]["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["spec"]["imagePullSecrets"][0]["name"], "regcred");
    assert_eq!(pod["spec"]["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "dedicated");
    assert!(pod["spec"]["affinity"]["nodeAffinity"].is_object());
    assert_eq!(
        pod["spec"]["topologySpreadConstraints"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "jit-operator");
    let c = container(&objs, "jit-portcullis");
    assert_eq!(c["image"], "registry.example/portcullis:0.1.0-test");
    assert_eq!(c["imagePullPolicy"], "Always");
    let a = args(&c);
    for expected in [
        "--cluster-name=prod-eu",
        "--namespace=team-a",
        "--resync=30s",
        "--finished-ttl=1h",
        "--log-format=text",
        "--aws-region=eu-west-1,us-east-1",
        "--concurrency=8",
        "--webhook-registration=none",
        "--webhook-cert-dir=/etc/portcullis/webhook-cert",
        "--webhook-listen=0.0.0.0:10443",
        "--metrics-listen=0.0.0.0:9090",
        "--lease-duration=20s",
    ] {
        assert!(a.contains(&expected.to_string()), "{expected} in {a:?}");
    }
    assert_eq!(c["env"][2]["name"], "AWS_REGION");
    let sa = helm::find(&objs, "ServiceAccount", "jit-operator").unwrap();
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/portcullis"
    );
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "00000000-0000-0000-0000-000000000001"
    );
    let sm = helm::find(&objs, "ServiceMonitor", "jit-portcullis").unwrap();
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    // cert-manager's CA injector keeps the caBundle: the operator gets no rights on the
    // webhook configurations, and its certificate comes from the mounted Secret.
    let mutating = helm::find(&objs, "MutatingWebhookConfiguration", "jit-portcullis").unwrap();
    assert_eq!(
        mutating["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "ops/jit-portcullis-webhook"
    );
    let cluster = rules(helm::find(&objs, "ClusterRole", "jit-portcullis-operator").unwrap());
    assert_eq!(
        cluster,
        [(
            "authorization.k8s.io".to_string(),
            "subjectaccessreviews".to_string(),
            "create".to_string(),
            String::new()
        )],
        "a namespace-scoped install with a cluster name and cert-manager needs only SubjectAccessReviews cluster-wide"
    );
    let watched = helm::find(&objs, "Role", "jit-portcullis-operator-watched").unwrap();
    assert_eq!(watched["metadata"]["namespace"], "team-a");
    assert!(rules(watched).contains(&(
        "jit.portcullis.dev".into(),
        "accessrequests".into(),
        "delete".into(),
        String::new()
    )));
    // Admission covers only the watched namespace, as the operator's own registration.
    let (m, _) = webhooks_of_the_operator("ops", Some("team-a"), 5);
    let mut chart_hooks = mutating["webhooks"].clone();
    chart_hooks[0]["clientConfig"]["service"]["name"] = json!("portcullis-webhook");
    assert_eq!(chart_hooks, m);
    let cert = helm::find(&objs, "Certificate", "jit-portcullis-webhook").unwrap();
    assert_eq!(
        cert["spec"]["dnsNames"][2],
        "jit-portcullis-webhook.ops.svc"
    );
}

#[test]
fn the_schema_rejects_wrong_values() {
    helm::validate(json!({})).expect("the defaults pass");
    helm::validate(every_feature()).expect("every feature passes");
    for (values, says) in [
        (json!({"replicaCount": "2"}), "/replicaCount"),
        (json!({"logFormat": "xml"}), "/logFormat"),
        (json!({"replicaCuont": 2}), "replicaCuont"),
        (json!({"resync": "1 minute"}), "/resync"),
        (
            json!({"image": {"pullPolicy": "Sometimes"}}),
            "/image/pullPolicy",
        ),
        (
            json!({"webhook": {"certManager": {"enabled": "yes"}}}),
            "/webhook/certManager/enabled",
        ),
        (json!({"serviceAccount": {"anotations": {}}}), "anotations"),
    ] {
        let err = helm::validate(values.clone()).expect_err(&format!("{values} must be rejected"));
        assert!(err.contains(says), "{values}: {err}");
        // Rendering (what install does) refuses them too.
        let err =
            helm::render(values.clone(), "p", "x").expect_err(&format!("{values} must not render"));
        assert!(err.contains(says), "{values}: {err}");
    }
}

/// A kubeconfig for `token` against the test bed's API server.
fn token_kubeconfig(tb: &Testbed, token: &str, path: &Path) {
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
async fn service_account_token(client: &kube::Client, ns: &str, name: &str) -> String {
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
async fn run_deployment(
    tb: &Testbed,
    client: &kube::Client,
    ns: &str,
    name: &str,
    kubeconfig: &Path,
    pod: &str,
) -> (Operator, String) {
    let d: Deployment = Api::namespaced(client.clone(), ns).get(name).await.unwrap();
    let c = d.spec.template.spec.unwrap().containers.remove(0);
    let (webhook_port, metrics_port) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{webhook_port}");
    let mut args: Vec<String> = c
        .args
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            if a.starts_with("--webhook-listen=") {
                format!("--webhook-listen=127.0.0.1:{webhook_port}")
            } else if a.starts_with("--metrics-listen=") {
                format!("--metrics-listen=127.0.0.1:{metrics_port}")
            } else {
                a
            }
        })
        .collect();
    args.push(format!("--webhook-url={url}"));
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
    let op = Operator::start_exact(
        tb,
        pod,
        binary(),
        args,
        envs,
        format!("http://127.0.0.1:{metrics_port}"),
    );
    (op, url)
}

/// Points the chart's webhook configurations at `url` (`to: Some`) instead of the
/// Service, or back at the Service (`to: None`). The API server outside a cluster network
/// cannot reach a Service (no kube-proxy), so the test stands in for that path; it undoes
/// this before Helm applies the configurations again (Helm's server-side apply would
/// otherwise meet both a url and a service). Nothing else of them changes; the caBundle
/// stays the operator's business.
async fn route_webhooks(
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
fn can_i(tb: &Testbed, sa: &str, what: &[&str]) -> bool {
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

async fn aws_request_goes_active(
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

async fn request_goes_active(
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

#[tokio::test]
async fn helm_install_runs_as_its_service_account_upgrades_and_uninstalls() {
    let started = Instant::now();
    // A test bed of its own: a cluster-wide install must not meet the other tests'.
    let tb = Testbed::start().expect("a private test bed");
    let client = tb.client(ADMIN).await;
    let arm = ArmEmulator::start().await;
    let arm_ca = tb.dir.join("arm-ca.pem");
    std::fs::write(&arm_ca, &arm.ca_pem).unwrap();
    let (release, ns) = ("portcullis", "portcullis-system");
    let sa = format!("system:serviceaccount:{ns}:portcullis");
    let env = |k: &str, v: &str| json!({"name": k, "value": v});
    // The values a user would give (the endpoints are the test bed's clouds).
    let values = json!({
        "logFormat": "text",
        "resync": "2s",
        "leaderElection": {"leaseDuration": "3s"},
        "extraEnv": [
            env("AWS_ENDPOINT_URL", &tb.moto_url),
            env("AWS_ACCESS_KEY_ID", "testing"),
            env("AWS_SECRET_ACCESS_KEY", "testing"),
            env("AWS_REGION", aws::REGION),
            env("AWS_EC2_METADATA_DISABLED", "true"),
            env("PORTCULLIS_ARM_ENDPOINT", &arm.url),
            env("PORTCULLIS_ARM_CA_FILE", &arm_ca.display().to_string()),
            env("PORTCULLIS_ARM_TOKEN", &arm.token),
        ],
    });
    let kubeconfig = tb.kubeconfig(ADMIN);

    // helm install creates every object of the release (and the CRDs from crds/).
    let installed =
        helm::release("install", &kubeconfig, release, ns, values.clone()).expect("helm install");
    let manifest = tb.dir.join("release.yaml");
    std::fs::write(&manifest, installed["manifest"].as_str().unwrap()).unwrap();
    let rendered = helm::objects(installed["manifest"].as_str().unwrap());
    let found = run(tb
        .kubectl(ADMIN)
        .args(["get", "-o", "name", "-f"])
        .arg(&manifest))
    .expect("every object exists");
    assert_eq!(found.lines().count(), rendered.len(), "{found}");
    assert_eq!(rendered.len(), 13, "{:?}", kinds(&rendered));
    run(tb.kubectl(ADMIN).args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/jitpolicies.jit.portcullis.dev",
        "crd/accessrequests.jit.portcullis.dev",
    ]))
    .expect("CRDs from the chart");
    eprintln!(
        "helm install done after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // The operator as the chart's ServiceAccount.
    let token = service_account_token(&client, ns, "portcullis").await;
    let sa_kubeconfig = tb.dir.join("kubeconfig-sa");
    token_kubeconfig(&tb, &token, &sa_kubeconfig);
    let service = (ns, "portcullis-webhook");
    let (mut op, url) =
        run_deployment(&tb, &client, ns, release, &sa_kubeconfig, "portcullis-0").await;
    route_webhooks(&client, release, service, Some(&url)).await;
    namespace_named(&client, "team-a").await;
    wait_for_webhook(&client, "team-a").await;

    let ec2 = aws::client(&tb.moto_url);
    aws_request_goes_active(&client, &ec2, "team-a", "aws", "ssh-aws").await;
    let vm = arm.seed_vm_with_network("rg-jit", "vm1", "10.1.0.4");
    let policies: Api<JitPolicy> = Api::namespaced(client.clone(), "team-a");
    let p: JitPolicy = serde_saphyr::from_str(&format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: azure}}\nspec:\n  targets:\n    - name: vm1\n      azure: {{vmId: {}}}\n  ports:\n    - {{port: 22, protocol: TCP, allowedSourcePrefixes: [\"203.0.113.0/24\"], maxDuration: 1h}}\n",
        vm.vm_id
    ))
    .unwrap();
    policies.create(&PostParams::default(), &p).await.unwrap();
    request_goes_active(&client, "team-a", "azure", "vm1", "ssh-azure").await;
    let log = op.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the chart's RBAC must be sufficient:\n{log}"
    );
    assert!(
        log.contains("patched the webhook caBundle"),
        "the operator keeps the chart's caBundle:\n{log}"
    );
    eprintln!(
        "AWS and Azure requests Active as the ServiceAccount after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Not excessive.
    let yes: &[&[&str]] = &[
        &["get", "secrets", "-n", ns],
        &["create", "secrets", "-n", ns],
        &["update", "leases/portcullis-leader", "-n", ns],
        &["create", "subjectaccessreviews.authorization.k8s.io"],
        &["patch", "mutatingwebhookconfigurations/portcullis"],
        &["patch", "validatingwebhookconfigurations/portcullis"],
        &[
            "list",
            "accessrequests.jit.portcullis.dev",
            "--all-namespaces",
        ],
        &[
            "patch",
            "jitpolicies.jit.portcullis.dev",
            "--subresource=status",
            "-n",
            "team-a",
        ],
        &["get", "namespaces/kube-system"],
    ];
    let no: &[&[&str]] = &[
        &["*", "*"],
        &["*", "*", "-n", ns],
        &["get", "secrets", "-n", "team-a"],
        &["get", "secrets", "-n", "kube-system"],
        &["list", "secrets", "-n", ns],
        &["watch", "secrets", "-n", ns],
        &["delete", "secrets", "-n", ns],
        &["get", "pods", "-n", ns],
        &["list", "pods", "--all-namespaces"],
        &["create", "pods", "-n", "team-a"],
        &["create", "mutatingwebhookconfigurations"],
        &["patch", "mutatingwebhookconfigurations/someone-else"],
        &["delete", "validatingwebhookconfigurations/portcullis"],
        &["update", "leases/someone-else", "-n", ns],
        &["delete", "jitpolicies.jit.portcullis.dev", "-n", "team-a"],
        &["create", "jitpolicies.jit.portcullis.dev", "-n", "team-a"],
        &["request", "jitpolicies.jit.portcullis.dev", "-n", "team-a"],
        &[
            "update",
            "accessrequests.jit.portcullis.dev",
            "-n",
            "team-a",
        ],
        &["get", "namespaces/default"],
        &["list", "namespaces"],
        &["create", "clusterrolebindings"],
        &["get", "configmaps", "-n", ns],
    ];
    for what in yes {
        assert!(can_i(&tb, &sa, what), "the operator needs {what:?}");
    }
    for what in no {
        assert!(
            !can_i(&tb, &sa, what),
            "the operator must not have {what:?}"
        );
    }

    // helm upgrade with changed values; the new pod (a process from the new Deployment)
    // serves and reconciles as before.
    let mut changed = values.clone();
    changed["replicaCount"] = json!(3);
    changed["extraArgs"] = json!(["--concurrency=8"]);
    route_webhooks(&client, release, service, None).await;
    let upgraded =
        helm::release("upgrade", &kubeconfig, release, ns, changed).expect("helm upgrade");
    assert_eq!(upgraded["revision"], 2, "{upgraded}");
    // The operator's caBundle survives the upgrade (Helm applies only the fields it owns).
    let m: MutatingWebhookConfiguration = Api::all(client.clone()).get(release).await.unwrap();
    let webhooks = m.webhooks.unwrap();
    assert!(
        webhooks[0]
            .client_config
            .ca_bundle
            .as_ref()
            .is_some_and(|b| !b.0.is_empty()),
        "{webhooks:?}"
    );
    assert!(
        webhooks[0].client_config.service.is_some(),
        "the chart's Service again: {webhooks:?}"
    );
    let d: Deployment = Api::namespaced(client.clone(), ns)
        .get(release)
        .await
        .unwrap();
    assert_eq!(d.spec.replicas, Some(3));
    assert!(
        d.spec.template.spec.unwrap().containers[0]
            .args
            .as_ref()
            .unwrap()
            .contains(&"--concurrency=8".to_string())
    );
    op.terminate(Duration::from_secs(10))
        .expect("the old pod stops on SIGTERM");
    let (mut op, url) =
        run_deployment(&tb, &client, ns, release, &sa_kubeconfig, "portcullis-1").await;
    route_webhooks(&client, release, service, Some(&url)).await;
    wait_for_webhook(&client, "team-a").await;
    aws_request_goes_active(&client, &ec2, "team-a", "aws-2", "ssh-aws-2").await;
    assert!(
        !op.log().to_lowercase().contains("forbidden"),
        "{}",
        op.log()
    );

    // Uninstall as the README says: end the grants first, while the operator runs.
    let requests: Api<AccessRequest> = Api::namespaced(client.clone(), "team-a");
    for r in ["ssh-aws", "ssh-azure", "ssh-aws-2"] {
        delete_and_wait_gone(&requests, r).await;
    }
    for p in ["aws", "azure", "aws-2"] {
        delete_and_wait_gone(&policies, p).await;
    }
    assert!(
        !arm.rules(&vm.nic_nsg_id)
            .iter()
            .any(|r| r["name"].as_str().unwrap_or_default().starts_with("jit")),
        "the operator removed its NSG rules: {:?}",
        arm.rules(&vm.nic_nsg_id)
    );
    let uninstalled =
        helm::release("uninstall", &kubeconfig, release, ns, json!({})).expect("helm uninstall");
    assert!(uninstalled.is_object());
    op.terminate(Duration::from_secs(10))
        .expect("the pod stops");
    let left = tb
        .kubectl(ADMIN)
        .args(["get", "-o", "name", "--ignore-not-found", "-f"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "",
        "uninstall removes every object of the release"
    );
    // No webhook is left to refuse people: objects of the kept CRDs can be made.
    let p: JitPolicy = serde_saphyr::from_str(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {name: after}\nspec:\n  targets:\n    - name: web\n      aws: {region: eu-west-1, instanceId: i-0123456789abcdef0}\n  ports:\n    - {port: 22, protocol: TCP, allowedSourcePrefixes: [\"203.0.113.0/24\"], maxDuration: 1h}\n",
    )
    .unwrap();
    policies
        .create(&PostParams::default(), &p)
        .await
        .expect("no webhook configuration outlives the install");
    eprintln!(
        "install, upgrade and uninstall done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Builds the image with `scripts/image` from the binary under test and unpacks it
/// (`umoci unpack`): the bundle directory, holding `rootfs/` and the runtime `config.json`
/// made from the image's config.
fn build_and_unpack_image(out: &Path) -> (PathBuf, Value) {
    let printed = run(Command::new(repo_root().join("scripts/image"))
        .arg("--binary")
        .arg(binary())
        .arg("--out")
        .arg(out))
    .expect("scripts/image");
    let layout = printed
        .lines()
        .find_map(|l| l.strip_prefix("PORTCULLIS_IMAGE_LAYOUT="))
        .expect("the layout");
    let archive = printed
        .lines()
        .find_map(|l| l.strip_prefix("PORTCULLIS_IMAGE_ARCHIVE="))
        .expect("the archive");
    let size = std::fs::metadata(archive).unwrap().len();
    eprintln!("OCI archive {archive}: {:.1} MiB", size as f64 / 1048576.0);
    // The archive is a valid OCI layout: unpack from a copy extracted from it.
    let from_archive = out.join("from-archive");
    std::fs::create_dir_all(&from_archive).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&from_archive))
    .unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(from_archive.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(index["imageLayoutVersion"], "1.0.0");
    let tag = layout.rsplit(':').next().unwrap();
    let bundle = out.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:{tag}", from_archive.display()))
        .arg(&bundle))
    .expect("umoci unpack");
    let config: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    (bundle, config)
}

#[tokio::test]
async fn the_image_builds_here_and_its_entrypoint_runs_from_the_unpacked_rootfs() {
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let ns = crate::support::kube_helpers::namespace(&client, "image").await;
    let started = Instant::now();
    let (bundle, config) = build_and_unpack_image(&tb.dir.join(format!("image-{ns}")));
    eprintln!(
        "image built and unpacked in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let rootfs = bundle.join("rootfs");
    let process = &config["process"];
    assert_eq!(process["user"]["uid"], 65532, "non-root");
    assert_eq!(process["user"]["gid"], 65532);
    let entry: Vec<String> = process["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        entry,
        ["/usr/local/bin/portcullis", "run"],
        "entrypoint and default command"
    );
    assert!(!rootfs.join("bin/sh").exists(), "no shell in the image");
    let files: Vec<String> = walk(&rootfs);
    eprintln!("rootfs files: {files:?}");
    let rootfs_size: u64 = files
        .iter()
        .map(|f| {
            std::fs::metadata(rootfs.join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    eprintln!(
        "rootfs: {} files, {:.1} MiB",
        files.len(),
        rootfs_size as f64 / 1048576.0
    );
    let env: Vec<String> = process["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();

    // Run it as the image says, inside the rootfs: only what the image holds is there.
    let in_rootfs = |args: &[String]| {
        let mut cmd = Command::new("chroot");
        cmd.arg("--userspec=65532:65532")
            .arg(&rootfs)
            .arg(&entry[0])
            .args(args)
            .env_clear();
        for e in &env {
            let (k, v) = e.split_once('=').unwrap();
            cmd.env(k, v);
        }
        cmd
    };
    let version = run(&mut in_rootfs(&["--version".into()])).expect("--version from the rootfs");
    assert_eq!(
        version.trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );

    // `run` against the test bed, until /readyz answers.
    let kubeconfig = rootfs.join("tmp/kubeconfig");
    std::fs::copy(tb.kubeconfig(ADMIN), &kubeconfig).unwrap();
    std::fs::set_permissions(
        &kubeconfig,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let (webhook_port, metrics_port) = (free_port(), free_port());
    let args: Vec<String> = [
        "run".to_string(),
        "--kubeconfig=/tmp/kubeconfig".into(),
        format!("--namespace={ns}"),
        format!("--operator-namespace={ns}"),
        format!("--cluster-name={ns}"),
        format!("--webhook-listen=127.0.0.1:{webhook_port}"),
        format!("--webhook-url=https://127.0.0.1:{webhook_port}"),
        format!("--webhook-config-name=portcullis-{ns}"),
        format!("--metrics-listen=127.0.0.1:{metrics_port}"),
    ]
    .into();
    let log = tb.dir.join(format!("operator-image-{ns}.log"));
    crate::support::process::watch_log("portcullis (image)", &log);
    let mut child = crate::support::process::spawn_bound(&mut in_rootfs(&args), &log)
        .expect("start from the rootfs");
    let readyz = format!("http://127.0.0.1:{metrics_port}/readyz");
    eventually(
        "/readyz of the operator run from the image",
        MINUTE,
        || async { matches!(http_get(&readyz).await, Ok((200, _))).then_some(()) },
    )
    .await;
    wait_for_webhook(&client, &ns).await;
    child.kill().ok();
    child.wait().ok();
    eprintln!(
        "ready from the image's rootfs after {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The files (not directories) under `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// IRSA as aws-config sees it in a pod that EKS's identity webhook set up: `AWS_ROLE_ARN`
/// (the chart's ServiceAccount annotation) and `AWS_WEB_IDENTITY_TOKEN_FILE` holding a
/// projected ServiceAccount token (here from the TokenRequest API, audience
/// `sts.amazonaws.com`), and no static keys: the SDK exchanges the token through STS
/// `AssumeRoleWithWebIdentity` (moto's) and signs its EC2 calls with what it got.
#[tokio::test]
async fn irsa_credentials_come_from_a_service_account_token_through_sts() {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let ns = crate::support::kube_helpers::namespace(&client, "irsa").await;
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ] {
        assert!(
            std::env::var_os(k).is_none(),
            "{k} is set in the test's environment; the operator would inherit it"
        );
    }
    let role = "arn:aws:iam::123456789012:role/portcullis-irsa";
    let objs = helm::render(
        json!({"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": role}}}),
        "portcullis",
        &ns,
    )
    .unwrap();
    let sa: ServiceAccount = serde_json::from_value(
        helm::find(&objs, "ServiceAccount", "portcullis")
            .unwrap()
            .clone(),
    )
    .unwrap();
    let role_arn = sa.metadata.annotations.as_ref().unwrap()["eks.amazonaws.com/role-arn"].clone();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["sts.amazonaws.com".into()]),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token: TokenRequest = sas
        .create_subresource("token", "portcullis", &PostParams::default(), &request)
        .await
        .unwrap();
    let token_file = tb.dir.join(format!("irsa-token-{ns}"));
    std::fs::write(&token_file, token.status.and_then(|s| s.token).unwrap()).unwrap();

    let proxy = crate::support::ec2_proxy::Ec2Proxy::start(&tb.moto_url).await;
    let (webhook_port, metrics_port) = (free_port(), free_port());
    let args: Vec<String> = vec![
        "run".into(),
        format!("--kubeconfig={}", tb.kubeconfig(ADMIN).display()),
        format!("--namespace={ns}"),
        format!("--operator-namespace={ns}"),
        format!("--cluster-name={ns}"),
        "--resync=2s".into(),
        format!("--webhook-listen=127.0.0.1:{webhook_port}"),
        format!("--webhook-url=https://127.0.0.1:{webhook_port}"),
        format!("--webhook-config-name=portcullis-{ns}"),
        format!("--metrics-listen=127.0.0.1:{metrics_port}"),
        "--no-leader-election".into(),
    ];
    let nowhere = tb.dir.join("no-such-aws-file").display().to_string();
    let envs: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", proxy.url.as_str()),
        ("AWS_REGION", aws::REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_SHARED_CREDENTIALS_FILE", nowhere.as_str()),
        ("AWS_CONFIG_FILE", nowhere.as_str()),
        ("AWS_ROLE_ARN", role_arn.as_str()),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            &token_file.display().to_string(),
        ),
        ("AWS_ROLE_SESSION_NAME", "portcullis"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let op = Operator::start_exact(
        tb,
        &ns,
        binary(),
        args,
        envs,
        format!("http://127.0.0.1:{metrics_port}"),
    );
    wait_for_webhook(&client, &ns).await;
    let ec2 = aws::client(&tb.moto_url);
    aws_request_goes_active(&client, &ec2, &ns, "jit", "ssh").await;
    let calls = proxy.calls();
    let exchanged = calls.iter().position(|a| a == "AssumeRoleWithWebIdentity");
    let first_ec2 = calls.iter().position(|a| a.starts_with("Describe"));
    assert!(
        exchanged.is_some(),
        "the token was exchanged through STS: {calls:?}\n{}",
        op.log()
    );
    assert!(
        exchanged < first_ec2,
        "before the first EC2 call: {calls:?}"
    );
}

/// Azure Workload Identity as azure_identity sees it in a pod the identity webhook set
/// up (the chart labels the pod and annotates the ServiceAccount with the client id):
/// `AZURE_FEDERATED_TOKEN_FILE` (a projected ServiceAccount token for
/// `api://AzureADTokenExchange`, here from the TokenRequest API), `AZURE_CLIENT_ID`,
/// `AZURE_TENANT_ID` and `AZURE_AUTHORITY_HOST` (a token endpoint beside the ARM emulator
/// that checks the assertion as a federated credential does), and no ARM token given:
/// the only way to the emulator's bearer token is the exchange.
#[tokio::test]
async fn workload_identity_exchanges_a_service_account_token_for_arm_access() {
    use crate::support::entra::{AUDIENCE, Federation, TokenEndpoint};
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let ns = crate::support::kube_helpers::namespace(&client, "azwi").await;
    let (client_id, tenant_id) = (
        "6f1b1a6e-1d2b-4c3d-9e8f-0a1b2c3d4e5f",
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
    );
    let objs = helm::render(
        json!({"azure": {"workloadIdentity": {"enabled": true, "clientId": client_id, "tenantId": tenant_id}}}),
        "portcullis",
        &ns,
    )
    .unwrap();
    let pod_labels = &helm::find(&objs, "Deployment", "portcullis").unwrap()["spec"]["template"]["metadata"]
        ["labels"];
    assert_eq!(
        pod_labels["azure.workload.identity/use"], "true",
        "the identity webhook acts on the pod"
    );
    let sa: ServiceAccount = serde_json::from_value(
        helm::find(&objs, "ServiceAccount", "portcullis")
            .unwrap()
            .clone(),
    )
    .unwrap();
    let annotations = sa.metadata.annotations.clone().unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let token_for = |audience: &str| TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.into()]),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token: TokenRequest = sas
        .create_subresource(
            "token",
            "portcullis",
            &PostParams::default(),
            &token_for(AUDIENCE),
        )
        .await
        .unwrap();
    let token = token.status.and_then(|s| s.token).unwrap();
    let token_file = tb.dir.join(format!("azure-identity-token-{ns}"));
    std::fs::write(&token_file, &token).unwrap();

    let arm = ArmEmulator::start().await;
    let entra = TokenEndpoint::start(
        client.clone(),
        Federation {
            tenant_id: annotations["azure.workload.identity/tenant-id"].clone(),
            client_id: annotations["azure.workload.identity/client-id"].clone(),
            subject: format!("system:serviceaccount:{ns}:portcullis"),
            scope: format!("{}/.default", arm.url),
            access_token: arm.token.clone(),
        },
    )
    .await;
    // The endpoint refuses what a federated credential refuses.
    let form = |assertion: &str| {
        [
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_id", client_id),
            ("scope", &format!("{}/.default", arm.url)),
            ("client_assertion", assertion),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<std::collections::BTreeMap<_, _>>()
    };
    let path = format!("/{tenant_id}/oauth2/v2.0/token");
    assert!(entra.exchange(&path, &form(&token)).await.is_ok());
    let api_token: TokenRequest = sas
        .create_subresource(
            "token",
            "portcullis",
            &PostParams::default(),
            &token_for("https://kubernetes.default.svc"),
        )
        .await
        .unwrap();
    let api_token = api_token.status.and_then(|s| s.token).unwrap();
    let refused = entra
        .exchange(&path, &form(&api_token))
        .await
        .expect_err("a token for another audience");
    assert!(refused.contains("not a valid token"), "{refused}");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap(),
    )
    .await
    .unwrap();
    let other: TokenRequest = sas
        .create_subresource(
            "token",
            "other",
            &PostParams::default(),
            &token_for(AUDIENCE),
        )
        .await
        .unwrap();
    let refused = entra
        .exchange(&path, &form(&other.status.and_then(|s| s.token).unwrap()))
        .await
        .expect_err("another ServiceAccount");
    assert!(refused.contains("no federated credential"), "{refused}");
    entra.exchanges.lock().unwrap().clear();

    // The operator with the environment the identity webhook gives a pod.
    let ca_file = tb.dir.join(format!("azure-cas-{ns}.pem"));
    std::fs::write(&ca_file, format!("{}{}", arm.ca_pem, entra.ca_pem)).unwrap();
    let (webhook_port, metrics_port) = (free_port(), free_port());
    let args: Vec<String> = vec![
        "run".into(),
        format!("--kubeconfig={}", tb.kubeconfig(ADMIN).display()),
        format!("--namespace={ns}"),
        format!("--operator-namespace={ns}"),
        format!("--cluster-name={ns}"),
        "--resync=2s".into(),
        format!("--webhook-listen=127.0.0.1:{webhook_port}"),
        format!("--webhook-url=https://127.0.0.1:{webhook_port}"),
        format!("--webhook-config-name=portcullis-{ns}"),
        format!("--metrics-listen=127.0.0.1:{metrics_port}"),
        "--no-leader-election".into(),
    ];
    let envs: Vec<(String, String)> = [
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        (
            "AZURE_CLIENT_ID",
            annotations["azure.workload.identity/client-id"].clone(),
        ),
        (
            "AZURE_TENANT_ID",
            annotations["azure.workload.identity/tenant-id"].clone(),
        ),
        ("AZURE_AUTHORITY_HOST", entra.url.clone()),
        ("PORTCULLIS_ARM_ENDPOINT", arm.url.clone()),
        ("PORTCULLIS_ARM_CA_FILE", ca_file.display().to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert!(std::env::var_os("PORTCULLIS_ARM_TOKEN").is_none());
    let op = Operator::start_exact(
        tb,
        &ns,
        binary(),
        args,
        envs,
        format!("http://127.0.0.1:{metrics_port}"),
    );
    wait_for_webhook(&client, &ns).await;
    let vm = arm.seed_vm_with_network("rg-jit", "vm1", "10.1.0.4");
    let policies: Api<JitPolicy> = Api::namespaced(client.clone(), &ns);
    let p: JitPolicy = serde_saphyr::from_str(&format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: azure}}\nspec:\n  targets:\n    - name: vm1\n      azure: {{vmId: {}}}\n  ports:\n    - {{port: 22, protocol: TCP, allowedSourcePrefixes: [\"203.0.113.0/24\"], maxDuration: 1h}}\n",
        vm.vm_id
    ))
    .unwrap();
    policies.create(&PostParams::default(), &p).await.unwrap();
    request_goes_active(&client, &ns, "azure", "vm1", "ssh").await;
    let exchanges = entra.exchanges.lock().unwrap().clone();
    assert!(
        exchanges.first().is_some_and(
            |e| e.as_deref() == Ok(format!("system:serviceaccount:{ns}:portcullis").as_str())
        ),
        "the operator exchanged its ServiceAccount token: {exchanges:?}\n{}",
        op.log()
    );
    assert!(exchanges.iter().all(Result::is_ok), "{exchanges:?}");
}

/// A namespace-scoped install (`watchNamespace`): Roles in the watched namespace instead
/// of cluster-wide rights on the resources, admission only there; sufficient (a request
/// goes Active with no `forbidden`) and confined (`kubectl auth can-i`).
#[tokio::test]
async fn a_namespace_scoped_install_works_with_roles_in_its_namespace_only() {
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let ns = crate::support::kube_helpers::namespace(&client, "helm-ops").await;
    let team = crate::support::kube_helpers::namespace(&client, "helm-team").await;
    let release = format!("jit-{}", ns.rsplit('-').next().unwrap());
    let fullname = format!("{release}-portcullis");
    let env = |k: &str, v: &str| json!({"name": k, "value": v});
    let values = json!({
        "watchNamespace": team,
        "clusterName": ns,
        "resync": "2s",
        "leaderElection": {"leaseDuration": "3s"},
        "extraEnv": [
            env("AWS_ENDPOINT_URL", &tb.moto_url),
            env("AWS_ACCESS_KEY_ID", "testing"),
            env("AWS_SECRET_ACCESS_KEY", "testing"),
            env("AWS_REGION", aws::REGION),
            env("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    });
    let kubeconfig = tb.kubeconfig(ADMIN);
    helm::release("install", &kubeconfig, &release, &ns, values).expect("helm install");
    let token = service_account_token(&client, &ns, &fullname).await;
    let sa_kubeconfig = tb.dir.join(format!("kubeconfig-{fullname}"));
    token_kubeconfig(tb, &token, &sa_kubeconfig);
    let (op, url) = run_deployment(
        tb,
        &client,
        &ns,
        &fullname,
        &sa_kubeconfig,
        &format!("{fullname}-0"),
    )
    .await;
    let service = format!("{fullname}-webhook");
    route_webhooks(&client, &fullname, (&ns, &service), Some(&url)).await;
    wait_for_webhook(&client, &team).await;
    let ec2 = aws::client(&tb.moto_url);
    aws_request_goes_active(&client, &ec2, &team, "jit", "ssh").await;
    assert!(
        !op.log().to_lowercase().contains("forbidden"),
        "{}",
        op.log()
    );

    let sa = format!("system:serviceaccount:{ns}:{fullname}");
    for what in [
        vec![
            "list",
            "accessrequests.jit.portcullis.dev",
            "-n",
            team.as_str(),
        ],
        vec![
            "patch",
            "jitpolicies.jit.portcullis.dev",
            "--subresource=status",
            "-n",
            team.as_str(),
        ],
        vec!["create", "events.events.k8s.io", "-n", team.as_str()],
    ] {
        assert!(can_i(tb, &sa, &what), "the operator needs {what:?}");
    }
    for what in [
        vec![
            "list",
            "accessrequests.jit.portcullis.dev",
            "--all-namespaces",
        ],
        vec!["list", "jitpolicies.jit.portcullis.dev", "-n", "default"],
        vec!["create", "events.events.k8s.io", "-n", "default"],
        vec!["get", "namespaces/kube-system"],
        vec!["get", "secrets", "-n", team.as_str()],
        vec!["patch", "mutatingwebhookconfigurations/portcullis"],
    ] {
        assert!(
            !can_i(tb, &sa, &what),
            "the operator must not have {what:?}"
        );
    }
    let requests: Api<AccessRequest> = Api::namespaced(client.clone(), &team);
    delete_and_wait_gone(&requests, "ssh").await;
    let policies: Api<JitPolicy> = Api::namespaced(client.clone(), &team);
    delete_and_wait_gone(&policies, "jit").await;
    helm::release("uninstall", &kubeconfig, &release, &ns, json!({})).expect("helm uninstall");
    let gone: Option<MutatingWebhookConfiguration> =
        Api::all(client.clone()).get_opt(&fullname).await.unwrap();
    assert!(
        gone.is_none(),
        "uninstall removes the webhook configuration"
    );
}

/// `--webhook-registration patch-ca` (the chart's) never creates the configurations:
/// after `helm uninstall` removed them, a replica still running must not bring them back.
#[tokio::test]
async fn patch_ca_mode_never_creates_webhook_configurations() {
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let ns = crate::support::kube_helpers::namespace(&client, "patchca").await;
    let port = free_port();
    let name = format!("portcullis-{ns}");
    // As the cluster admin: only the mode keeps it from creating them.
    let op = Operator::start_with(
        tb,
        &ns,
        &tb.moto_url,
        "1s",
        vec![
            "--webhook-listen".into(),
            format!("127.0.0.1:{port}"),
            "--webhook-url".into(),
            format!("https://127.0.0.1:{port}"),
            "--webhook-config-name".into(),
            name.clone(),
            "--webhook-registration".into(),
            "patch-ca".into(),
        ],
        &[],
    );
    eventually(
        "three looks at the missing configurations",
        MINUTE,
        || async {
            (op.log()
                .matches("the webhook configurations do not exist")
                .count()
                >= 3)
                .then_some(())
        },
    )
    .await;
    let m: Option<MutatingWebhookConfiguration> =
        Api::all(client.clone()).get_opt(&name).await.unwrap();
    let v: Option<ValidatingWebhookConfiguration> =
        Api::all(client.clone()).get_opt(&name).await.unwrap();
    assert!(
        m.is_none() && v.is_none(),
        "patch-ca created a configuration"
    );
}
