//! Who may open a port: the admission webhook stamps the requester, checks the RBAC verb
//! `request` with a SubjectAccessReview, and validates with messages naming the field.

use std::time::Duration;

use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use portcullis::api::{AccessRequest, JitPolicy, Phase};

use crate::aws::{MINUTE, World};
use crate::support::ec2_proxy::Faults;
use crate::support::kube_helpers::object;
use crate::support::testbed::{ADMIN, ALICE, BOB, Testbed};

/// Alice may `request` through policy `jit`; Bob may create requests but not that.
async fn grant_rbac(w: &World) {
    let client = Testbed::shared().client(ADMIN).await;
    let roles: Api<Role> = Api::namespaced(client.clone(), &w.ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client, &w.ns);
    let role = |name: &str, with_request: bool| -> Role {
        let mut rules = vec![
            serde_json::json!({"apiGroups": ["jit.portcullis.dev"], "resources": ["accessrequests"], "verbs": ["create", "get", "list", "watch", "patch"]}),
        ];
        if with_request {
            rules.push(serde_json::json!({"apiGroups": ["jit.portcullis.dev"], "resources": ["jitpolicies"], "resourceNames": ["jit"], "verbs": ["request"]}));
        }
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "rules": rules}))
            .unwrap()
    };
    let bind = |name: &str, user: &str| -> RoleBinding {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        }))
        .unwrap()
    };
    roles
        .create(&PostParams::default(), &role("may-request", true))
        .await
        .unwrap();
    roles
        .create(&PostParams::default(), &role("may-only-create", false))
        .await
        .unwrap();
    bindings
        .create(&PostParams::default(), &bind("may-request", ALICE.name))
        .await
        .unwrap();
    bindings
        .create(&PostParams::default(), &bind("may-only-create", BOB.name))
        .await
        .unwrap();
}

fn request_yaml(name: &str, extra_metadata: &str) -> String {
    format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {{name: {name}{extra_metadata}}}\nspec:\n  policyRef: {{name: jit}}\n  target: web\n  ports: [{{port: 22, sourcePrefix: 203.0.113.7/32, duration: 10m}}]\n  justification: identity test\n"
    )
}

#[tokio::test]
async fn identity_stamp_and_the_request_verb() {
    let w = World::new("id-rbac", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    grant_rbac(&w).await;
    let tb = Testbed::shared();
    let as_alice: Api<AccessRequest> = Api::namespaced(tb.client(ALICE).await, &w.ns);
    let as_bob: Api<AccessRequest> = Api::namespaced(tb.client(BOB).await, &w.ns);

    // 1. Alice may: admitted, stamped as Alice, opened.
    let r: AccessRequest = serde_saphyr::from_str(&request_yaml("alice-ssh", "")).unwrap();
    as_alice
        .create(&PostParams::default(), &r)
        .await
        .expect("alice's request is admitted");
    let r = w.phase("alice-ssh", Phase::Active, MINUTE).await;
    let who = r.status.unwrap().requester.unwrap();
    assert_eq!(
        (who.username.as_str(), who.uid.as_deref()),
        ("alice", Some("uid-alice"))
    );
    assert_eq!(
        who.groups,
        vec!["devs".to_string(), "system:authenticated".to_string()]
    );
    assert_eq!(w.owned_rules().await.len(), 1);

    // 2. Bob may create requests but not `request` through `jit`: refused, nothing opens.
    w.proxy.clear();
    let r: AccessRequest = serde_saphyr::from_str(&request_yaml("bob-ssh", "")).unwrap();
    let err = as_bob
        .create(&PostParams::default(), &r)
        .await
        .expect_err("bob is refused");
    let msg = err.to_string();
    assert!(
        msg.contains("\"request\"") && msg.contains("\"jit\""),
        "{msg}"
    );
    assert!(as_bob.get_opt("bob-ssh").await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(2500)).await; // a resync passes
    assert_eq!(
        w.proxy.writes(),
        Vec::<String>::new(),
        "bob's refused request reached the cloud"
    );

    // 3. Alice writes Bob in as the requester: stored as herself.
    let forged = format!(
        ", annotations: {{jit.portcullis.dev/requester: '{}'}}",
        r#"{"username":"bob","groups":["devs"],"signature":"AAAA"}"#
    );
    let r: AccessRequest = serde_saphyr::from_str(
        &request_yaml("alice-as-bob", &forged).replace("203.0.113.7/32", "203.0.113.9/32"),
    )
    .unwrap();
    let created = as_alice.create(&PostParams::default(), &r).await.unwrap();
    assert!(created.annotations()["jit.portcullis.dev/requester"].contains("\"alice\""));
    let r = w.phase("alice-as-bob", Phase::Active, MINUTE).await;
    assert_eq!(r.status.unwrap().requester.unwrap().username, "alice");
    // And the stamp cannot be changed afterwards.
    let patch = serde_json::json!({"metadata": {"annotations": {"jit.portcullis.dev/requester": "{\"username\":\"bob\",\"signature\":\"x\"}"}}});
    let after = as_alice
        .patch(
            "alice-as-bob",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    assert!(after.annotations()["jit.portcullis.dev/requester"].contains("\"alice\""));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        w.phase("alice-as-bob", Phase::Active, MINUTE)
            .await
            .status
            .unwrap()
            .requester
            .unwrap()
            .username,
        "alice"
    );
}

/// One object the webhook (or the schema) must refuse, and the field its message names.
struct Bad {
    what: &'static str,
    yaml: String,
    field: &'static str,
}

fn requests() -> Vec<Bad> {
    let base = request_yaml("bad", "");
    let r = |what, from: &str, to: &str, field| {
        assert!(base.contains(from), "{what}");
        Bad {
            what,
            yaml: base.replacen(from, to, 1),
            field,
        }
    };
    let long = "x".repeat(1025);
    vec![
        r(
            "port not in the policy",
            "port: 22",
            "port: 2222",
            "spec.ports[0].port",
        ),
        r(
            "protocol not in the policy",
            "port: 22,",
            "port: 22, protocol: UDP,",
            "spec.ports[0].port",
        ),
        r(
            "duration over maxDuration",
            "duration: 10m",
            "duration: 2h",
            "spec.ports[0].duration",
        ),
        r(
            "duration under 10s",
            "duration: 10m",
            "duration: 5s",
            "spec.ports[0].duration",
        ),
        r(
            "malformed duration",
            "duration: 10m",
            "duration: 10 minutes",
            "spec.ports.duration",
        ),
        r(
            "source outside the allowed prefixes",
            "203.0.113.7/32",
            "198.51.100.7/32",
            "spec.ports[0].sourcePrefix",
        ),
        r(
            "0.0.0.0/0 where not allowed",
            "203.0.113.7/32",
            "0.0.0.0/0",
            "spec.ports[0].sourcePrefix",
        ),
        r(
            "source wider than allowed",
            "203.0.113.7/32",
            "203.0.112.0/23",
            "spec.ports[0].sourcePrefix",
        ),
        r(
            "host bits set",
            "203.0.113.7/32",
            "203.0.113.7/24",
            "spec.ports[0].sourcePrefix",
        ),
        r(
            "IPv6 source where only IPv4 is allowed",
            "203.0.113.7/32",
            "2001:db8::/64",
            "spec.ports[0].sourcePrefix",
        ),
        r(
            "malformed IPv6",
            "203.0.113.7/32",
            "2001:db8::1::/64",
            "spec.ports[0].sourcePrefix",
        ),
        r(
            "IPv6 without a length",
            "203.0.113.7/32",
            "2001:db8::1",
            "spec.ports.sourcePrefix",
        ),
        r(
            "malformed CIDR",
            "203.0.113.7/32",
            "203.0.113.300/32",
            "spec.ports.sourcePrefix",
        ),
        r(
            "unknown policy",
            "policyRef: {name: jit}",
            "policyRef: {name: nope}",
            "spec.policyRef.name",
        ),
        r("unknown target", "target: web", "target: db", "spec.target"),
        r(
            "duplicate ports",
            "ports: [{port: 22, sourcePrefix: 203.0.113.7/32, duration: 10m}]",
            "ports: [{port: 22, sourcePrefix: 203.0.113.7/32, duration: 10m}, {port: 22, sourcePrefix: 203.0.113.8/32, duration: 10m}]",
            "spec.ports[1].port",
        ),
        r(
            "blank justification",
            "justification: identity test",
            "justification: '   '",
            "spec.justification",
        ),
        r(
            "oversized justification",
            "justification: identity test",
            &format!("justification: {long}"),
            "spec.justification",
        ),
        r(
            "missing justification",
            "  justification: identity test\n",
            "",
            "spec.justification",
        ),
    ]
}

fn policies() -> Vec<Bad> {
    let base = "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {name: badp}\nspec:\n  targets:\n    - name: web\n      aws: {region: eu-west-1, instanceId: i-0123456789abcdef0}\n  ports:\n    - {port: 22, protocol: TCP, allowedSourcePrefixes: [\"203.0.113.0/24\"], maxDuration: 1h}\n".to_string();
    let p = |what, from: &str, to: &str, field| {
        assert!(base.contains(from), "{what}");
        Bad {
            what,
            yaml: base.replacen(from, to, 1),
            field,
        }
    };
    vec![
        p(
            "maxDuration under 5m",
            "maxDuration: 1h",
            "maxDuration: 1m",
            "spec.ports[0].maxDuration",
        ),
        p(
            "maxDuration over 24h",
            "maxDuration: 1h",
            "maxDuration: 25h",
            "spec.ports[0].maxDuration",
        ),
        p(
            "allowed prefix with host bits",
            "203.0.113.0/24",
            "203.0.113.1/24",
            "spec.ports[0].allowedSourcePrefixes[0]",
        ),
        p(
            "duplicate ports",
            "maxDuration: 1h}\n",
            "maxDuration: 1h}\n    - {port: 22, protocol: Any, allowedSourcePrefixes: [\"*\"], maxDuration: 1h}\n",
            "spec.ports[1].port",
        ),
        p(
            "duplicate target names",
            "  ports:\n",
            "    - name: web\n      aws: {region: eu-west-1, instanceId: i-0123456789abcdef1}\n  ports:\n",
            "spec.targets[1].name",
        ),
        p(
            "allow band below the deny band",
            "maxDuration: 1h}\n",
            "maxDuration: 1h}\n  priorityBands:\n    allow: {first: 3900, last: 4000}\n    deny: {first: 3000, last: 3100}\n",
            "spec.priorityBands",
        ),
        p(
            "band first after last",
            "maxDuration: 1h}\n",
            "maxDuration: 1h}\n  priorityBands:\n    allow: {first: 3500, last: 3000}\n    deny: {first: 3900, last: 4000}\n",
            "spec.priorityBands.allow",
        ),
    ]
}

#[tokio::test]
async fn identity_invalid_requests_and_policies_are_refused_naming_the_field() {
    let w = World::new("id-invalid", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.proxy.clear();
    let client = Testbed::shared().client(ADMIN).await;
    let mut failures = Vec::new();
    let cases: Vec<(Bad, bool)> = requests()
        .into_iter()
        .map(|b| (b, true))
        .chain(policies().into_iter().map(|b| (b, false)))
        .collect();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    for (i, (bad, is_request)) in cases.iter().enumerate() {
        let mut obj = object(&bad.yaml);
        obj.metadata.name = Some(format!("bad-{i}"));
        let res = crate::support::kube_helpers::create(&client, &w.ns, &obj).await;
        match res {
            Ok(_) => failures.push(format!("{}: admitted", bad.what)),
            Err(e) => {
                let msg = e.to_string();
                if !msg.contains(bad.field) {
                    failures.push(format!(
                        "{}: message does not name {}: {msg}",
                        bad.what, bad.field
                    ));
                } else {
                    let short: String = msg.chars().take(160).collect();
                    eprintln!(
                        "refused {:<40} {short}",
                        format!(
                            "{} {}:",
                            if *is_request { "request" } else { "policy" },
                            bad.what
                        )
                    );
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        w.proxy.writes(),
        Vec::<String>::new(),
        "refused objects caused cloud writes"
    );
    let reqs: Api<AccessRequest> = Api::namespaced(client.clone(), &w.ns);
    assert!(
        reqs.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let pols: Api<JitPolicy> = Api::namespaced(client, &w.ns);
    assert_eq!(pols.list(&Default::default()).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn identity_without_the_webhook_nothing_opens() {
    let w = World::new_with("id-nowebhook", Faults::None, false).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.proxy.clear();
    // A perfectly valid request, created straight through the API server.
    w.create_request("direct", 22, "203.0.113.7/32", "10m")
        .await;
    let r = w.phase("direct", Phase::Denied, MINUTE).await;
    let msg = r.status.unwrap().message.unwrap_or_default();
    assert!(msg.contains("jit.portcullis.dev/requester"), "{msg}");
    // Even with a forged stamp.
    let forged: AccessRequest = serde_saphyr::from_str(
        &request_yaml("forged", ", annotations: {jit.portcullis.dev/requester: '{\"username\":\"admin\",\"signature\":\"AAAA\"}'}")
            .replace("203.0.113.7/32", "203.0.113.8/32"),
    )
    .unwrap();
    w.requests
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();
    let r = w.phase("forged", Phase::Denied, MINUTE).await;
    assert!(
        r.status
            .unwrap()
            .message
            .unwrap_or_default()
            .contains("does not verify")
    );
    // A request naming a policy that does not exist: Denied by the request controller.
    let orphan: AccessRequest = serde_saphyr::from_str(
        &request_yaml("orphan", "").replace("policyRef: {name: jit}", "policyRef: {name: nope}"),
    )
    .unwrap();
    w.requests
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    let r = w.phase("orphan", Phase::Denied, MINUTE).await;
    assert!(
        r.status
            .unwrap()
            .message
            .unwrap_or_default()
            .contains("spec.policyRef.name")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        w.proxy.writes(),
        Vec::<String>::new(),
        "an unstamped request caused cloud writes"
    );
    assert!(w.owned_rules().await.is_empty());
}

#[tokio::test]
async fn identity_webhook_serves_certificates_from_cert_manager() {
    // cert-manager mounts ca.crt, tls.crt and tls.key; the operator serves with them and
    // puts that CA in its webhook configurations instead of making its own.
    let tb = Testbed::shared();
    tb.install_crds().unwrap();
    let client = tb.client(ADMIN).await;
    let ns = crate::support::kube_helpers::namespace(&client, "id-certmgr").await;
    let material = portcullis::certs::serving_cert("from-cert-manager", &["127.0.0.1"]).unwrap();
    let dir = tb.dir.join(format!("cert-manager-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, pem) in [
        ("ca.crt", &material.ca_pem),
        ("tls.crt", &material.cert_pem),
        ("tls.key", &material.key_pem),
    ] {
        std::fs::write(dir.join(file), pem).unwrap();
    }
    let config = format!("portcullis-{ns}");
    let args = vec![
        "--webhook-listen".to_string(),
        "127.0.0.1:0".to_string(),
        "--webhook-url".into(),
        "https://127.0.0.1:0".to_string(),
        "--webhook-config-name".into(),
        config.clone(),
        "--webhook-cert-dir".into(),
        dir.display().to_string(),
    ];
    let _operator =
        crate::support::operator::Operator::start_with(tb, &ns, &tb.moto_url, "2s", args, &[]);
    crate::support::kube_helpers::wait_for_webhook(&client, &ns).await;
    let hooks: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let hook = hooks.get(&config).await.unwrap();
    let bundle = hook.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .unwrap()
        .0;
    assert_eq!(
        String::from_utf8(bundle).unwrap(),
        material.ca_pem,
        "the caBundle is cert-manager's CA"
    );
}
