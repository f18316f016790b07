//! The chart on its own: CRDs identical to the generated ones, `helm lint --strict`,
//! rendering with defaults and with every feature, and the values schema.

use super::*;

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
    let row = |g: &str, r: &str, v: &str, n: &str| {
        (g.to_string(), r.to_string(), v.to_string(), n.to_string())
    };
    assert_eq!(
        cluster,
        [
            row("authorization.k8s.io", "subjectaccessreviews", "create", ""),
            row("", "namespaces", "get", "team-a"),
            row("", "namespaces", "patch", "team-a"),
        ],
        "a namespace-scoped install with a cluster name and cert-manager needs cluster-wide only SubjectAccessReviews and its namespace's label"
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
