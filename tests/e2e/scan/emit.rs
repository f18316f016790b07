//! Item 2 of issue 14: `--emit-policies` writes YAML that `kubectl apply` takes as is;
//! once the operator has made the policies Ready, a second scan finds those VMs Healthy.

use kube::api::Api;
use portcullis::api::JitPolicy;
use serde_json::json;

use super::{Scanner, allow, assert_rows, ec2, group, launch, row, rows, vpc};
use crate::aws::MINUTE;
use crate::support::arm::ArmEmulator;
use crate::support::kube_helpers::{eventually, namespace};
use crate::support::operator::Operator;
use crate::support::testbed::{ADMIN, Testbed};

const REGION: &str = "ap-southeast-2";
const RG: &str = "rg-emit";

#[tokio::test]
async fn emitted_policies_apply_and_govern_what_the_scan_found() {
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let ns = namespace(&client, "scan-emit").await;

    let ec2 = ec2(&tb.moto_url, REGION);
    let net = vpc(&ec2, "10.50.0.0/16", "10.50.1.0/24").await;
    let (ssh, _) = group(&ec2, &net, "ssh", vec![allow("tcp", 22, 22, "0.0.0.0/0")]).await;
    let (rdp, _) = group(
        &ec2,
        &net,
        "rdp",
        vec![allow("tcp", 3389, 3389, "0.0.0.0/0")],
    )
    .await;
    let (fine, _) = group(&ec2, &net, "fine", vec![allow("tcp", 22, 22, "10.0.0.0/8")]).await;
    let web = launch(&ec2, &net, "web", &[&ssh], 1).await.remove(0);
    let win = launch(&ec2, &net, "win", &[&rdp], 1).await.remove(0);
    launch(&ec2, &net, "fine", &[&fine], 1).await;

    let arm = ArmEmulator::start().await;
    let az = arm.seed_vm_with_network(RG, "az-open", "10.60.1.4");
    arm.seed_rule(
        &az.nic_nsg_id,
        "allow-rdp-internet",
        json!({"protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "3389",
               "sourceAddressPrefix": "Internet", "destinationAddressPrefix": "*",
               "access": "Allow", "priority": 300, "direction": "Inbound"}),
    );
    arm.set_subnet_nsg(&az.subnet_id, None);

    let scanner =
        Scanner::new(&tb.moto_url).with_arm(&arm, &tb.dir.join(format!("arm-ca-{ns}.pem")));
    let kubeconfig = tb.kubeconfig(ADMIN).display().to_string();
    let sub = arm.subscription.clone();
    let scope = [
        "--aws-region",
        REGION,
        "--azure-subscription",
        &sub,
        "--kubeconfig",
        &kubeconfig,
        "-n",
        &ns,
    ];

    // The YAML, applied with kubectl's default validation against the real API server.
    let emitted = scanner
        .run(
            &[
                &scope[..],
                &["--emit-policies", "--allow", "203.0.113.0/24"],
            ]
            .concat(),
        )
        .await;
    assert_eq!(emitted.code, 0, "{}", emitted.stderr);
    assert!(
        emitted
            .stdout
            .starts_with("# portcullis scan: 2 JitPolicies for 3 unhealthy VMs\n"),
        "{}",
        emitted.stdout
    );
    assert!(
        emitted
            .stderr
            .contains("4 VMs: 1 Healthy, 0 NotApplicable, 3 Unhealthy"),
        "the summary goes to stderr: {}",
        emitted.stderr
    );
    let file = tb.dir.join(format!("emitted-{ns}.yaml"));
    std::fs::write(&file, &emitted.stdout).unwrap();
    let applied = tb
        .kubectl(ADMIN)
        .args(["apply", "-n", &ns, "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "kubectl apply refused the emitted YAML: {}\n{}",
        String::from_utf8_lossy(&applied.stderr),
        emitted.stdout
    );

    let policies: Api<JitPolicy> = Api::namespaced(client.clone(), &ns);
    let aws_policy = policies.get(&format!("jit-aws-{REGION}")).await.unwrap();
    let ids: Vec<String> = aws_policy
        .spec
        .targets
        .iter()
        .map(|t| match &t.cloud {
            portcullis::api::TargetCloud::Aws(a) => a.instance_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    let mut want = vec![web.clone(), win.clone()];
    want.sort();
    let mut got = ids.clone();
    got.sort();
    assert_eq!(got, want, "the healthy instance gets no target");
    let ports: Vec<(i32, Vec<String>, String)> = aws_policy
        .spec
        .ports
        .iter()
        .map(|p| {
            (
                p.port,
                p.allowed_source_prefixes.clone(),
                p.max_duration.clone(),
            )
        })
        .collect();
    let allowed = vec!["203.0.113.0/24".to_string()];
    assert_eq!(
        ports,
        [
            (22, allowed.clone(), "3h".to_string()),
            (3389, allowed, "3h".to_string())
        ]
    );
    let az_policy = policies.get(&format!("jit-azure-{RG}")).await.unwrap();
    assert_eq!(
        az_policy
            .spec
            .ports
            .iter()
            .map(|p| p.port)
            .collect::<Vec<_>>(),
        [3389]
    );

    // The operator enforces them.
    let _operator =
        Operator::start_env_without_webhook(tb, &ns, &tb.moto_url, "2s", &scanner.envs());
    for name in [format!("jit-aws-{REGION}"), format!("jit-azure-{RG}")] {
        eventually(&format!("policy {name} Ready"), MINUTE, || async {
            let p = policies.get(&name).await.ok()?;
            let s = p.status.as_ref()?;
            (portcullis::api::conditions::is_true(&s.conditions, "Ready")
                && s.observed_generation == p.metadata.generation)
                .then_some(())
        })
        .await;
    }

    // Scanned again: governed. On AWS the baseline revoked the rules, so nothing is open;
    // on Azure the foreign allow keeps its precedence over the policy's deny, and the
    // reason says so.
    let again = scanner.run(&[&scope[..], &["-o", "json"]].concat()).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    let aws_governed = format!(
        "no management port is open to the internet; governed by JitPolicy {ns}/jit-aws-{REGION} (22/tcp, 3389/tcp)"
    );
    let expected = [
        row("web", "Healthy", "-", aws_governed.clone()),
        row("win", "Healthy", "-", aws_governed),
        row(
            "fine",
            "Healthy",
            "22/tcp (internal)",
            "no management port is open to the internet; reachable from internal sources: 22/tcp",
        ),
        row(
            "az-open",
            "Healthy",
            "3389/tcp",
            format!(
                "governed by JitPolicy {ns}/jit-azure-{RG} (3389/tcp); still open to the internet through rules the policy's deny does not override: 3389/tcp from Internet via az-open-nic-nsg/allow-rdp-internet"
            ),
        ),
    ];
    assert_rows(
        &rows(&again.json(), &["web", "win", "fine", "az-open"]),
        &expected,
    );
    let denies: Vec<String> = arm
        .rules(&az.nic_nsg_id)
        .iter()
        .filter_map(|r| {
            r["name"]
                .as_str()
                .filter(|n| n.starts_with("portcullis-deny-"))
                .map(str::to_string)
        })
        .collect();
    assert_eq!(denies.len(), 1, "the operator's deny is in the NIC's NSG");

    // Nothing is left to govern: no YAML.
    let nothing = scanner
        .run(
            &[
                &scope[..],
                &["--emit-policies", "--allow", "203.0.113.0/24"],
            ]
            .concat(),
        )
        .await;
    assert_eq!(nothing.code, 0, "{}", nothing.stderr);
    assert_eq!(nothing.stdout, "");
    assert!(
        nothing.stderr.contains("no unhealthy VM left to govern"),
        "{}",
        nothing.stderr
    );
}
