//! The cloud identities the chart sets up, end to end: IRSA and Azure Workload Identity.

use super::*;

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
    let args: Vec<String> = vec![
        "run".into(),
        format!("--kubeconfig={}", tb.kubeconfig(ADMIN).display()),
        format!("--namespace={ns}"),
        format!("--operator-namespace={ns}"),
        format!("--cluster-name={ns}"),
        "--resync=2s".into(),
        "--webhook-listen=127.0.0.1:0".into(),
        "--webhook-url=https://127.0.0.1:0".into(),
        format!("--webhook-config-name=portcullis-{ns}"),
        "--metrics-listen=127.0.0.1:0".into(),
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
    let op = Operator::start_exact(tb, &ns, binary(), args, envs);
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
    let args: Vec<String> = vec![
        "run".into(),
        format!("--kubeconfig={}", tb.kubeconfig(ADMIN).display()),
        format!("--namespace={ns}"),
        format!("--operator-namespace={ns}"),
        format!("--cluster-name={ns}"),
        "--resync=2s".into(),
        "--webhook-listen=127.0.0.1:0".into(),
        "--webhook-url=https://127.0.0.1:0".into(),
        format!("--webhook-config-name=portcullis-{ns}"),
        "--metrics-listen=127.0.0.1:0".into(),
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
    let op = Operator::start_exact(tb, &ns, binary(), args, envs);
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
