//! Item 1 of issue 14: a mix of VMs on both clouds, each in the right category with the
//! right reason, in a table written here.

use aws_sdk_ec2::types::AddPrefixListEntry;
use kube::api::{Api, PostParams};
use portcullis::api::JitPolicy;
use serde_json::json;

use super::{Scanner, allow, allow_prefix_list, assert_rows, ec2, group, launch, row, rows, vpc};
use crate::aws::MINUTE;
use crate::support::arm::{ArmEmulator, ArmOptions, Faults};
use crate::support::kube_helpers::{eventually, namespace};
use crate::support::operator::Operator;
use crate::support::testbed::{ADMIN, Testbed};

/// A region no other test uses, so the scan sees only this test's instances.
const REGION: &str = "ca-central-1";
const RG: &str = "rg-scan";

fn nsg_rule(access: &str, priority: u32, port: &str, source: &str) -> serde_json::Value {
    json!({"protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": port,
           "sourceAddressPrefix": source, "destinationAddressPrefix": "*",
           "access": access, "priority": priority, "direction": "Inbound"})
}

#[tokio::test]
async fn scan_sorts_a_mix_of_vms_with_reasons() {
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let ns = namespace(&client, "scan-mix").await;

    // ----- AWS: one group per instance, so that closing one closes no other -----
    let ec2 = ec2(&tb.moto_url, REGION);
    let net = vpc(&ec2, "10.30.0.0/16", "10.30.1.0/24").await;
    let list = ec2
        .create_managed_prefix_list()
        .prefix_list_name("offices")
        .max_entries(5)
        .address_family("IPv4")
        .entries(
            AddPrefixListEntry::builder()
                .cidr("198.51.100.0/24")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .prefix_list()
        .unwrap()
        .prefix_list_id()
        .unwrap()
        .to_string();
    let world = |p| allow("tcp", p, p, "0.0.0.0/0");
    let (ssh_g, ssh_r) = group(&ec2, &net, "ssh-world", vec![world(22)]).await;
    let (rdp_g, _) = group(
        &ec2,
        &net,
        "rdp-internal",
        vec![allow("tcp", 3389, 3389, "10.0.0.0/8")],
    )
    .await;
    let (all_g, all_r) = group(
        &ec2,
        &net,
        "all-ports",
        vec![allow("tcp", 0, 65535, "0.0.0.0/0")],
    )
    .await;
    let (v6_g, v6_r) = group(
        &ec2,
        &net,
        "all-traffic-v6",
        vec![allow("-1", -1, -1, "::/0")],
    )
    .await;
    let (pl_g, _) = group(
        &ec2,
        &net,
        "prefix-list",
        vec![allow_prefix_list(22, &list)],
    )
    .await;
    let (web_g, _) = group(&ec2, &net, "web-only", vec![world(443)]).await;
    let (gov_g, _) = group(&ec2, &net, "governed", vec![world(22)]).await;
    let (stop_g, _) = group(&ec2, &net, "stopped", vec![world(22)]).await;
    let mut ids = std::collections::BTreeMap::new();
    for (name, g) in [
        ("aws-ssh-world", &ssh_g),
        ("aws-rdp-internal", &rdp_g),
        ("aws-all-ports", &all_g),
        ("aws-all-traffic-v6", &v6_g),
        ("aws-prefix-list", &pl_g),
        ("aws-closed", &web_g),
        ("aws-governed", &gov_g),
        ("aws-stopped", &stop_g),
    ] {
        ids.insert(name, launch(&ec2, &net, name, &[g], 1).await.remove(0));
    }
    ec2.stop_instances()
        .instance_ids(&ids["aws-stopped"])
        .send()
        .await
        .unwrap();

    // ----- Azure -----
    let arm = ArmEmulator::start_with(ArmOptions {
        // Small pages, so that every list takes several calls and paging is exercised.
        list_page_size: 2,
        ..ArmOptions::default()
    })
    .await;
    let deny = arm.seed_vm_with_network(RG, "az-deny", "10.40.1.4");
    arm.seed_rule(
        &deny.nic_nsg_id,
        "allow-ssh",
        nsg_rule("Allow", 200, "22", "*"),
    );
    arm.seed_rule(
        &deny.subnet_nsg_id,
        "deny-ssh",
        nsg_rule("Deny", 100, "22", "*"),
    );
    let rdp = arm.seed_vm_with_network(RG, "az-rdp", "10.40.2.4");
    arm.seed_rule(
        &rdp.nic_nsg_id,
        "allow-rdp-internet",
        nsg_rule("Allow", 300, "3389", "Internet"),
    );
    arm.set_subnet_nsg(&rdp.subnet_id, None);
    arm.seed_public_ip(RG, "az-rdp-ip", "203.0.113.20", Some(&rdp.nic_id));
    let bare = arm.seed_vm_with_network(RG, "az-bare", "10.40.3.4");
    arm.set_nic_nsg(&bare.nic_id, None);
    arm.set_subnet_nsg(&bare.subnet_id, None);
    let fw = arm.seed_vm_with_network(RG, "az-fw", "10.40.4.4");
    arm.seed_rule(
        &fw.nic_nsg_id,
        "allow-ssh",
        nsg_rule("Allow", 200, "22", "*"),
    );
    arm.set_subnet_nsg(&fw.subnet_id, None);
    arm.seed_listed_firewall(
        RG,
        "fw1",
        "az-fw-vnet",
        "10.40.99.0/26",
        "10.40.99.4",
        Some("fw-policy"),
    );
    let off = arm.seed_vm_with_network(RG, "az-off", "10.40.5.4");
    arm.seed_rule(
        &off.nic_nsg_id,
        "allow-rdp",
        nsg_rule("Allow", 200, "3389", "*"),
    );
    arm.set_subnet_nsg(&off.subnet_id, None);
    arm.set_power_state(&off.vm_id, "deallocated");
    arm.seed_classic_vm(RG, "az-classic");
    let behind = arm.seed_vm_with_network(RG, "az-classic-fw", "10.40.6.4");
    arm.seed_rule(
        &behind.nic_nsg_id,
        "allow-rdp",
        nsg_rule("Allow", 200, "3389", "*"),
    );
    arm.set_subnet_nsg(&behind.subnet_id, None);
    arm.seed_listed_firewall(
        RG,
        "fw2",
        "az-classic-fw-vnet",
        "10.40.98.0/26",
        "10.40.98.4",
        None,
    );

    let scanner =
        Scanner::new(&tb.moto_url).with_arm(&arm, &tb.dir.join(format!("arm-ca-{ns}.pem")));

    // ----- one instance governed by a policy the operator has made Ready -----
    let policies: Api<JitPolicy> = Api::namespaced(client.clone(), &ns);
    let policy: JitPolicy = serde_saphyr::from_str(&format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: existing}}\nspec:\n  targets:\n    - {{name: governed, aws: {{region: {REGION}, instanceId: {}}}}}\n  ports:\n    - {{port: 22, allowedSourcePrefixes: [\"203.0.113.0/24\"], maxDuration: 1h}}\n",
        ids["aws-governed"]
    ))
    .unwrap();
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let _operator =
        Operator::start_env_without_webhook(tb, &ns, &tb.moto_url, "2s", &scanner.envs());
    eventually("policy existing Ready", MINUTE, || async {
        let p = policies.get("existing").await.ok()?;
        let s = p.status.as_ref()?;
        (portcullis::api::conditions::is_true(&s.conditions, "Ready")
            && s.observed_generation == p.metadata.generation)
            .then_some(())
    })
    .await;

    // ----- the scan -----
    arm.clear_calls();
    let kubeconfig = tb.kubeconfig(ADMIN).display().to_string();
    let sub = arm.subscription.clone();
    let out = scanner
        .run(&[
            "--aws-region",
            REGION,
            "--azure-subscription",
            &sub,
            "--kubeconfig",
            &kubeconfig,
            "-n",
            &ns,
            "-o",
            "json",
        ])
        .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let report = out.json();

    let via = |g: &str, r: &[String]| format!("{g}/{}", r[0]);
    let every = |source: &str, g: &str, r: &[String]| {
        ["22", "3389", "5985", "5986"]
            .iter()
            .map(|p| format!("{p}/tcp from {source} via {}", via(g, r)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let open = "open to the internet and governed by no JitPolicy: ";
    let none_open = "no management port is open to the internet";
    let all4 = "22/tcp, 3389/tcp, 5985/tcp, 5986/tcp";
    let not_running = "; JIT applies to running VMs";
    let expected = [
        row(
            "aws-ssh-world",
            "Unhealthy",
            "22/tcp",
            format!("{open}22/tcp from 0.0.0.0/0 via {}", via(&ssh_g, &ssh_r)),
        ),
        row(
            "aws-rdp-internal",
            "Healthy",
            "3389/tcp (internal)",
            format!("{none_open}; reachable from internal sources: 3389/tcp"),
        ),
        row(
            "aws-all-ports",
            "Unhealthy",
            all4,
            format!("{open}{}", every("0.0.0.0/0", &all_g, &all_r)),
        ),
        row(
            "aws-all-traffic-v6",
            "Unhealthy",
            all4,
            format!("{open}{}", every("::/0", &v6_g, &v6_r)),
        ),
        row(
            "aws-prefix-list",
            "Healthy",
            "22/tcp (internal)",
            format!("{none_open}; reachable from internal sources: 22/tcp"),
        ),
        row("aws-closed", "Healthy", "-", none_open),
        row(
            "aws-governed",
            "Healthy",
            "-",
            format!("{none_open}; governed by JitPolicy {ns}/existing (22/tcp)"),
        ),
        row(
            "aws-stopped",
            "NotApplicable",
            "22/tcp",
            format!("not running (stopped){not_running}"),
        ),
        row("az-deny", "Healthy", "-", none_open),
        row(
            "az-rdp",
            "Unhealthy",
            "3389/tcp",
            format!("{open}3389/tcp from Internet via az-rdp-nic-nsg/allow-rdp-internet"),
        ),
        row(
            "az-bare",
            "NotApplicable",
            // Without an NSG nothing stands in the way.
            all4,
            "JIT needs an NSG: neither the VM's network interfaces nor their subnets have one",
        ),
        row(
            "az-fw",
            "NotApplicable",
            "22/tcp",
            "behind Azure Firewall fw1, whose rules Firewall Manager policy fw-policy governs; JIT does not manage Firewall Manager rules",
        ),
        row(
            "az-off",
            "NotApplicable",
            "3389/tcp",
            format!("not running (deallocated){not_running}"),
        ),
        row(
            "az-classic",
            "NotApplicable",
            "-",
            "classic (Azure Service Manager) VM; JIT needs an Azure Resource Manager VM",
        ),
        row(
            "az-classic-fw",
            "Unhealthy",
            "3389/tcp",
            format!(
                "{open}3389/tcp from * via az-classic-fw-nic-nsg/allow-rdp; behind Azure Firewall fw2 (classic rules; its DNAT rules are not evaluated here)"
            ),
        ),
    ];
    let names: Vec<&str> = expected.iter().map(|r| r.name.as_str()).collect();
    assert_rows(&rows(&report, &names), &expected);

    // The rest of each VM's entry.
    let vm = |name: &str| {
        report["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        vm("aws-governed")["policy"],
        json!(format!("{ns}/existing"))
    );
    assert_eq!(vm("aws-ssh-world")["policy"], json!(null));
    assert_eq!(vm("aws-ssh-world")["id"], json!(ids["aws-ssh-world"]));
    assert_eq!(vm("aws-ssh-world")["region"], REGION);
    assert_eq!(
        vm("aws-ssh-world")["openPorts"],
        json!([{"port": 22, "protocol": "TCP", "reach": "internet", "sources": ["0.0.0.0/0"], "rule": via(&ssh_g, &ssh_r)}])
    );
    assert_eq!(vm("az-rdp")["id"], json!(rdp.vm_id));
    assert_eq!(vm("az-rdp")["resourceGroup"], RG);
    assert_eq!(vm("az-rdp")["publicIps"], json!(["203.0.113.20"]));
    assert_eq!(vm("az-classic")["cloud"], "azure");
    let counts = |cat: &str| expected.iter().filter(|r| r.category == cat).count();
    for cat in ["Healthy", "Unhealthy", "NotApplicable"] {
        assert_eq!(
            report["summary"][cat],
            json!(counts(cat)),
            "{cat}: {}",
            report["summary"]
        );
    }

    // Azure was read a page at a time: one GET per page of each list, nothing per VM.
    let calls = arm.calls();
    assert!(
        calls.iter().all(|c| c.method == "GET" && c.status == 200),
        "{calls:#?}"
    );
    let pages = |n: usize| n.div_ceil(2).max(1);
    // VMs and their statuses (6 each), NICs (6), NSGs (12, two per VM, associated or
    // not), public IPs (1), firewalls (2), classic VMs (1).
    let expected_calls = 2 * pages(6) + pages(6) + pages(12) + pages(1) + pages(2) + pages(1);
    assert_eq!(
        calls.len(),
        expected_calls,
        "{:#?}",
        calls.iter().map(|c| &c.path).collect::<Vec<_>>()
    );
    eprintln!(
        "scan of the mix: {} ARM calls for 6 VMs at 2 items a page",
        calls.len()
    );

    // One resource group: its VMs come with their instance view in one list.
    let in_group = scanner
        .run(&[
            "--azure-subscription",
            &sub,
            "--resource-group",
            RG,
            "--kubeconfig",
            &kubeconfig,
            "-n",
            &ns,
            "-o",
            "json",
        ])
        .await;
    assert_eq!(in_group.code, 0, "{}", in_group.stderr);
    let azure: Vec<_> = expected
        .iter()
        .filter(|r| r.name.starts_with("az-"))
        .cloned()
        .collect();
    let azure_names: Vec<&str> = azure.iter().map(|r| r.name.as_str()).collect();
    assert_rows(&rows(&in_group.json(), &azure_names), &azure);
    assert_eq!(
        in_group.json()["vms"].as_array().map(Vec::len),
        Some(azure.len())
    );
    // A resource group that does not exist is an error for that scope only.
    let missing = scanner
        .run(&[
            "--aws-region",
            REGION,
            "--azure-subscription",
            &sub,
            "--resource-group",
            "no-such-rg",
            "--no-cluster",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing
            .stderr
            .contains(&format!("error: azure {sub}/no-such-rg: ")),
        "{}",
        missing.stderr
    );
    assert!(
        missing.stderr.contains("ResourceGroupNotFound"),
        "{}",
        missing.stderr
    );
    let partial = missing.json();
    assert_eq!(
        partial["errors"][0]["scope"],
        format!("azure {sub}/no-such-rg")
    );
    assert_eq!(
        partial["vms"].as_array().map(Vec::len),
        Some(8),
        "the AWS VMs are still reported"
    );

    // The table says the same, one line per VM.
    let table = scanner
        .run(&[
            "--aws-region",
            REGION,
            "--azure-subscription",
            &sub,
            "--kubeconfig",
            &kubeconfig,
            "-n",
            &ns,
        ])
        .await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let header = table.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("CLOUD") && header.ends_with("REASON"),
        "{header}"
    );
    for r in &expected {
        let line = table
            .stdout
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(r.name.as_str()))
            .unwrap_or_else(|| panic!("no line for {}:\n{}", r.name, table.stdout));
        let cloud = if r.name.starts_with("aws") {
            "aws"
        } else {
            "azure"
        };
        assert!(line.starts_with(cloud), "{line}");
        for cell in [&r.category, &r.ports, &r.reason] {
            assert!(line.contains(cell.as_str()), "{line}\nlacks {cell}");
        }
    }
    assert!(table.stdout.contains("\n15 VMs: "), "{}", table.stdout);

    // ARM throttles every third call: the scan waits as told and reports the same. (One
    // resource group, so that no two lists share a path and the emulator can tell a
    // retry from another list's call.)
    arm.set_faults(Faults::ThrottleEvery {
        every: 3,
        retry_after_secs: 1,
    });
    let throttled = scanner
        .run(&[
            "--azure-subscription",
            &sub,
            "--resource-group",
            RG,
            "--kubeconfig",
            &kubeconfig,
            "-n",
            &ns,
            "-o",
            "json",
        ])
        .await;
    assert_eq!(throttled.code, 0, "{}", throttled.stderr);
    let azure: Vec<_> = expected
        .iter()
        .filter(|r| r.name.starts_with("az-"))
        .cloned()
        .collect();
    let azure_names: Vec<&str> = azure.iter().map(|r| r.name.as_str()).collect();
    assert_rows(&rows(&throttled.json(), &azure_names), &azure);
    assert!(arm.injected() >= 3, "{}", arm.injected());
    let waited = arm
        .min_wait_after_429()
        .expect("a throttled call was retried");
    assert!(
        waited >= std::time::Duration::from_secs(1),
        "retried after {waited:?}"
    );
    arm.set_faults(Faults::None);

    // For CI: unhealthy VMs make the exit code 3.
    let strict = scanner
        .run(&[
            "--aws-region",
            REGION,
            "--no-cluster",
            "--fail-on-unhealthy",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(strict.code, 3, "{}", strict.stderr);

    // Without a cluster, the scan says so and counts nothing as governed.
    let nowhere = tb.dir.join(format!("kubeconfig-nowhere-{ns}"));
    std::fs::write(
        &nowhere,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    )
    .unwrap();
    let alone = scanner
        .run(&[
            "--aws-region",
            REGION,
            "--kubeconfig",
            &nowhere.display().to_string(),
            "-o",
            "json",
        ])
        .await;
    assert_eq!(alone.code, 0, "{}", alone.stderr);
    assert!(
        alone.stderr.contains("no cluster reachable"),
        "{}",
        alone.stderr
    );
    let governed = rows(&alone.json(), &["aws-governed"]);
    assert_eq!(governed, [row("aws-governed", "Healthy", "-", none_open)]);

    // A user who may not list JitPolicies hears that, not that there is no cluster.
    let alice = tb
        .kubeconfig(crate::support::testbed::ALICE)
        .display()
        .to_string();
    let refused = scanner
        .run(&["--aws-region", REGION, "--kubeconfig", &alice, "-o", "json"])
        .await;
    assert_eq!(refused.code, 0, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("the cluster refused to list JitPolicies (403 Forbidden"),
        "{}",
        refused.stderr
    );
}
