//! The production paths: an operator that watches every namespace (a cluster-wide
//! install), in namespaces made the way people make them (`kubectl create namespace`, on
//! Kubernetes 1.20 without the `kubernetes.io/metadata.name` label).

use kube::api::{Api, PostParams};
use portcullis::api::{AccessRequest, JitPolicy, Phase};

use crate::aws::MINUTE;
use crate::support::aws;
use crate::support::kube_helpers::{eventually, wait_for_webhook};
use crate::support::operator::Operator;
use crate::support::testbed::{ADMIN, Testbed, run};

#[tokio::test]
async fn a_cluster_wide_operator_serves_namespaces_made_with_kubectl() {
    // A test bed of its own: a cluster-wide operator must not meet the other tests'.
    let tb = Testbed::start().expect("a private test bed");
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    for ns in ["portcullis-system", "team-a", "team-b"] {
        run(tb.kubectl(ADMIN).args(["create", "namespace", ns])).unwrap();
    }
    let labels = run(tb.kubectl(ADMIN).args([
        "get",
        "namespace",
        "team-a",
        "-o",
        "jsonpath={.metadata.labels}",
    ]))
    .unwrap();
    assert!(
        !labels.contains("kubernetes.io/metadata.name"),
        "1.20 sets no such label: {labels}"
    );

    let ec2 = aws::client(&tb.moto_url);
    let _op = Operator::start_with(
        &tb,
        "portcullis-system",
        &tb.moto_url,
        "2s",
        vec![
            "--all-namespaces".into(),
            "--cluster-name".into(),
            "cluster-wide".into(),
            "--webhook-listen".into(),
            "127.0.0.1:0".to_string(),
            "--webhook-url".into(),
            "https://127.0.0.1:0".to_string(),
            "--webhook-config-name".into(),
            "portcullis".into(),
        ],
        &[],
    );
    for ns in ["team-a", "team-b"] {
        wait_for_webhook(&client, ns).await;
        let vm = aws::instance(&ec2).await;
        let policies: Api<JitPolicy> = Api::namespaced(client.clone(), ns);
        let p: JitPolicy = serde_saphyr::from_str(&format!(
            "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: jit}}\nspec:\n  targets:\n    - name: web\n      aws: {{region: {}, instanceId: {}}}\n  ports:\n    - {{port: 22, protocol: TCP, allowedSourcePrefixes: [\"203.0.113.0/24\"], maxDuration: 1h}}\n",
            aws::REGION, vm.instance_id
        ))
        .unwrap();
        policies.create(&PostParams::default(), &p).await.unwrap();
        let requests: Api<AccessRequest> = Api::namespaced(client.clone(), ns);
        let r: AccessRequest = serde_saphyr::from_str(
            "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {name: ssh}\nspec:\n  policyRef: {name: jit}\n  target: web\n  ports:\n    - {port: 22, sourcePrefix: 203.0.113.7/32, duration: 10m}\n  justification: cluster-wide\n",
        )
        .unwrap();
        requests.create(&PostParams::default(), &r).await.unwrap();
        let r = eventually(&format!("{ns}/ssh Active"), MINUTE, || async {
            let r = requests.get("ssh").await.ok()?;
            (r.status.as_ref()?.phase == Some(Phase::Active)).then_some(r)
        })
        .await;
        assert_eq!(
            r.status.unwrap().requester.unwrap().username,
            "admin",
            "stamped by the webhook in a namespace made with kubectl"
        );
        assert!(
            !aws::ingress_summary(&ec2, &vm.group_id)
                .await
                .iter()
                .any(|x| x.1 == 22),
            "the baseline holds in {ns}"
        );
    }
}

/// Issue 8, item 16: a namespace-scoped operator in a namespace made with `kubectl create
/// namespace` on Kubernetes 1.20 (no `kubernetes.io/metadata.name` label, which its
/// webhooks select by). Without the label the webhooks are never called and every
/// request is Denied for want of a requester stamp; the operator labels its namespace.
#[tokio::test]
async fn a_namespace_scoped_operator_in_a_namespace_made_with_kubectl() {
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let ns = format!("made-by-kubectl-{}", std::process::id());
    run(tb.kubectl(ADMIN).args(["create", "namespace", &ns])).unwrap();
    let label = || {
        run(tb.kubectl(ADMIN).args([
            "get",
            "namespace",
            &ns,
            "-o",
            "jsonpath={.metadata.labels.kubernetes\\.io/metadata\\.name}",
        ]))
        .unwrap()
    };
    assert_eq!(label(), "", "1.20 sets no such label");

    let ec2 = aws::client(&tb.moto_url);
    let vm = aws::instance(&ec2).await;
    let _op = Operator::start_with(
        tb,
        &ns,
        &tb.moto_url,
        "2s",
        vec![
            "--webhook-listen".into(),
            "127.0.0.1:0".to_string(),
            "--webhook-url".into(),
            "https://127.0.0.1:0".to_string(),
            "--webhook-config-name".into(),
            format!("portcullis-{ns}"),
        ],
        &[],
    );
    wait_for_webhook(&client, &ns).await;
    assert_eq!(label(), ns, "the operator labelled its namespace");

    let policies: Api<JitPolicy> = Api::namespaced(client.clone(), &ns);
    let p: JitPolicy = serde_saphyr::from_str(&format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: jit}}\nspec:\n  targets:\n    - name: web\n      aws: {{region: {}, instanceId: {}}}\n  ports:\n    - {{port: 22, protocol: TCP, allowedSourcePrefixes: [\"203.0.113.0/24\"], maxDuration: 1h}}\n",
        aws::REGION, vm.instance_id
    ))
    .unwrap();
    policies.create(&PostParams::default(), &p).await.unwrap();
    let requests: Api<AccessRequest> = Api::namespaced(client.clone(), &ns);
    let r: AccessRequest = serde_saphyr::from_str(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {name: ssh}\nspec:\n  policyRef: {name: jit}\n  target: web\n  ports:\n    - {port: 22, sourcePrefix: 203.0.113.7/32, duration: 10m}\n  justification: namespace made with kubectl\n",
    )
    .unwrap();
    requests.create(&PostParams::default(), &r).await.unwrap();
    let r = eventually("ssh Active", MINUTE, || async {
        let r = requests.get("ssh").await.ok()?;
        (r.status.as_ref()?.phase == Some(Phase::Active)).then_some(r)
    })
    .await;
    assert_eq!(
        r.status.unwrap().requester.unwrap().username,
        "admin",
        "stamped by the webhook"
    );
}
