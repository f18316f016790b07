//! `helm install`, `upgrade` and `uninstall` against the real kube-apiserver, with the
//! operator running as the chart's ServiceAccount: its RBAC sufficient and not excessive.

use super::*;

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
    let team_ns = format!("namespaces/{team}");
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
        vec!["patch", &team_ns],
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
        vec!["patch", "namespaces/default"],
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
    let name = format!("portcullis-{ns}");
    // As the cluster admin: only the mode keeps it from creating them.
    let op = Operator::start_with(
        tb,
        &ns,
        &tb.moto_url,
        "1s",
        vec![
            "--webhook-listen".into(),
            "127.0.0.1:0".to_string(),
            "--webhook-url".into(),
            "https://127.0.0.1:0".to_string(),
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
