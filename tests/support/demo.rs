//! `cargo run --example demo` (via `scripts/demo`): Portcullis on the local test bed.
//!
//! Starts etcd, a real kube-apiserver and moto on loopback, installs the CRDs, creates a
//! sample EC2 instance whose security group leaves SSH open to the world, starts the
//! operator, applies a policy and a short request, and shows the port closing, opening
//! for one address, and closing again at expiry. Then it keeps running until Ctrl-C (or
//! exits at once with `--exit`, for scripts); everything it started stops with it.

#[path = "mod.rs"]
mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use portcullis::api::{AccessRequest, JitPolicy, Phase};
use support::arm::ArmEmulator;
use support::aws;
use support::kube_helpers::{namespace_named, wait_for_webhook};
use support::operator::Operator;
use support::testbed::{ADMIN, ALICE, Testbed, repo_root, run};

const NS: &str = "demo";

fn step(text: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("\n\x1b[1m==> {text}\x1b[0m");
    } else {
        println!("\n==> {text}");
    }
}

async fn show_group(ec2: &aws_sdk_ec2::Client, what: &str, group: &str) {
    println!("{what} ({group}) ingress:");
    let rules = aws::ingress_summary(ec2, group).await;
    if rules.is_empty() {
        println!("    (none)");
    }
    for (proto, from, to, cidr, desc) in rules {
        println!("    {proto} {from}-{to} from {cidr:<18} {desc}");
    }
}

fn show_nsg(arm: &ArmEmulator, what: &str, nsg: &str) {
    println!("{what} rules:");
    let mut rules = arm.rules(nsg);
    rules.sort_by_key(|r| r["properties"]["priority"].as_u64());
    if rules.is_empty() {
        println!("    (none besides the six defaults)");
    }
    for r in rules {
        let p = &r["properties"];
        println!(
            "    {:>4} {:<5} {:<3} port {:<5} from {:<16} {}",
            p["priority"],
            p["access"].as_str().unwrap_or(""),
            p["protocol"].as_str().unwrap_or(""),
            p["destinationPortRange"].as_str().unwrap_or(""),
            p["sourceAddressPrefix"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or("")
        );
    }
}

/// Another team's collections on the demo firewall: a web server published on 443.
fn demo_firewall() -> serde_json::Value {
    serde_json::json!({
        "natRuleCollections": [{
            "name": "web-publish",
            "properties": {
                "priority": 100,
                "action": { "type": "Dnat" },
                "rules": [{
                    "name": "https",
                    "protocols": ["TCP"],
                    "sourceAddresses": ["*"],
                    "destinationAddresses": ["198.51.100.4"],
                    "destinationPorts": ["443"],
                    "translatedAddress": "10.2.0.10",
                    "translatedPort": "443",
                }]
            }
        }]
    })
}

fn show_firewall(arm: &ArmEmulator, id: &str) {
    println!("firewall rule collections:");
    let fw = arm.firewall(id).unwrap_or_default();
    for kind in ["natRuleCollections", "networkRuleCollections"] {
        for c in fw["properties"][kind].as_array().into_iter().flatten() {
            let p = &c["properties"];
            println!(
                "    {:>5} {:<5} {}",
                p["priority"],
                p["action"]["type"].as_str().unwrap_or(""),
                c["name"].as_str().unwrap_or("")
            );
            for r in p["rules"].as_array().into_iter().flatten() {
                println!(
                    "          from {} to {} port {} {}",
                    r["sourceAddresses"],
                    r["destinationAddresses"],
                    r["destinationPorts"],
                    r["translatedAddress"]
                        .as_str()
                        .map(|a| format!("-> {a}:{}", r["translatedPort"].as_str().unwrap_or("")))
                        .unwrap_or_default()
                );
            }
        }
    }
}

async fn wait_phase(api: &Api<AccessRequest>, name: &str, phase: Phase) -> AccessRequest {
    let start = Instant::now();
    loop {
        if let Ok(r) = api.get(name).await
            && r.status.as_ref().and_then(|s| s.phase) == Some(phase)
        {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "request {name} never became {phase:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let exit_at_once = std::env::args().any(|a| a == "--exit");
    step("Starting the test bed: etcd, kube-apiserver 1.20 (real), moto's EC2 server");
    let tb = Testbed::start()?;
    tb.install_crds()?;
    print!(
        "{}",
        run(tb.kubectl(ADMIN).args(["get", "crd", "-o", "name"]))?
    );
    let client = tb.client(ADMIN).await;
    namespace_named(&client, NS).await;

    step("Creating a sample EC2 instance (in moto) whose group leaves SSH open to the world");
    let ec2 = aws::client(&tb.moto_url);
    let vm = aws::instance(&ec2).await;
    println!("instance {} with ENI {}", vm.instance_id, vm.eni_id);
    show_group(&ec2, "its security group", &vm.group_id).await;

    step("Starting the ARM emulator with an Azure VM whose NIC and subnet each have an NSG");
    let arm = ArmEmulator::start().await;
    let azvm = arm.seed_vm_with_network("rg-demo", "jump-1", "10.1.0.4");
    println!("VM {}", azvm.vm_id);
    let appvm = arm.seed_vm_with_network("rg-demo", "app-1", "10.2.0.4");
    let firewall = arm.seed_firewall("rg-hub", "hub-fw", demo_firewall()).id;
    println!("VM {} behind Azure Firewall {firewall}", appvm.vm_id);
    let ca = tb.dir.join("arm-ca.pem");
    std::fs::write(&ca, &arm.ca_pem).map_err(|e| e.to_string())?;
    let ca = ca.display().to_string();

    step("Starting the operator: portcullis run --namespace demo");
    let env = [
        ("PORTCULLIS_ARM_ENDPOINT", arm.url.as_str()),
        ("PORTCULLIS_ARM_CA_FILE", ca.as_str()),
        ("PORTCULLIS_ARM_TOKEN", arm.token.as_str()),
    ];
    let mut operator = Operator::start_env(&tb, NS, &tb.moto_url, "10s", &env);
    wait_for_webhook(&client, NS).await;
    println!("admission webhook registered and answering");

    step("Applying a JitPolicy for the instance (examples/jitpolicy-aws.yaml, with its id)");
    let policy_yaml = std::fs::read_to_string(repo_root().join("examples/jitpolicy-aws.yaml"))
        .map_err(|e| e.to_string())?
        .replace("i-0123456789abcdef0", &vm.instance_id);
    let policy: JitPolicy = serde_saphyr::from_str(&policy_yaml).map_err(|e| e.to_string())?;
    let policies: Api<JitPolicy> = Api::namespaced(client.clone(), NS);
    policies
        .create(&PostParams::default(), &policy)
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    loop {
        let p = policies
            .get("build-hosts")
            .await
            .map_err(|e| e.to_string())?;
        if p.status
            .as_ref()
            .is_some_and(|s| portcullis::api::conditions::is_true(&s.conditions, "Ready"))
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the policy did not become Ready; operator log:\n{}",
                operator.log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    print!(
        "{}",
        run(tb.kubectl(ADMIN).args(["get", "jitpolicy", "-n", NS]))?
    );
    show_group(&ec2, "the instance's group now", &vm.group_id).await;

    step("Filing an AccessRequest: SSH from 203.0.113.7/32 for 20s");
    let request_yaml = std::fs::read_to_string(repo_root().join("examples/accessrequest.yaml"))
        .map_err(|e| e.to_string())?
        .replace("duration: 30m", "duration: 20s");
    let request: AccessRequest =
        serde_saphyr::from_str(&request_yaml).map_err(|e| e.to_string())?;
    let requests: Api<AccessRequest> = Api::namespaced(client.clone(), NS);
    let filed = Instant::now();
    requests
        .create(&PostParams::default(), &request)
        .await
        .map_err(|e| e.to_string())?;
    let r = wait_phase(&requests, "fix-the-build", Phase::Active).await;
    println!("open after {:.2}s", filed.elapsed().as_secs_f64());
    print!(
        "{}",
        run(tb.kubectl(ADMIN).args(["get", "accessrequest", "-n", NS]))?
    );
    let owned = aws::owned_groups(&ec2, NS).await;
    for g in &owned {
        show_group(&ec2, "the operator's group on the ENI", g).await;
    }

    let expires = r.status.and_then(|s| s.expires_at).map(|t| t.0);
    step(&format!(
        "Waiting for the expiry at {}",
        expires.map(|t| t.to_string()).unwrap_or_default()
    ));
    wait_phase(&requests, "fix-the-build", Phase::Expired).await;
    if let Some(t) = expires {
        println!(
            "closed {:.2}s after expiresAt",
            jiff::Timestamp::now().duration_since(t).as_secs_f64()
        );
    }
    print!(
        "{}",
        run(tb.kubectl(ADMIN).args(["get", "accessrequest", "-n", NS]))?
    );
    for g in &owned {
        show_group(&ec2, "the operator's group", g).await;
    }
    println!("events:");
    print!(
        "{}",
        run(tb.kubectl(ADMIN).args([
            "get",
            "events",
            "-n",
            NS,
            "--sort-by=.metadata.creationTimestamp"
        ]))?
    );

    step("Azure: applying examples/jitpolicy-azure.yaml for the emulated VM");
    let yaml = std::fs::read_to_string(repo_root().join("examples/jitpolicy-azure.yaml"))
        .map_err(|e| e.to_string())?
        .replace(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/ops/providers/Microsoft.Compute/virtualMachines/jump-1",
            &azvm.vm_id,
        );
    let policy: JitPolicy = serde_saphyr::from_str(&yaml).map_err(|e| e.to_string())?;
    policies
        .create(&PostParams::default(), &policy)
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    while !policies
        .get("jump-hosts")
        .await
        .ok()
        .and_then(|p| p.status)
        .is_some_and(|s| portcullis::api::conditions::is_true(&s.conditions, "Ready"))
    {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the Azure policy did not become Ready; operator log:\n{}",
                operator.log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    show_nsg(&arm, "NIC NSG", &azvm.nic_nsg_id);
    show_nsg(&arm, "subnet NSG", &azvm.subnet_nsg_id);
    step("Azure: requesting SSH from 203.0.113.7/32 for 15s");
    let yaml = "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {name: jump-ssh}\nspec:\n  policyRef: {name: jump-hosts}\n  target: jump\n  ports: [{port: 22, sourcePrefix: 203.0.113.7/32, duration: 15s}]\n  justification: demo\n";
    let request: AccessRequest = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
    let filed = Instant::now();
    requests
        .create(&PostParams::default(), &request)
        .await
        .map_err(|e| e.to_string())?;
    wait_phase(&requests, "jump-ssh", Phase::Active).await;
    println!(
        "open in both NSGs after {:.2}s",
        filed.elapsed().as_secs_f64()
    );
    show_nsg(&arm, "NIC NSG", &azvm.nic_nsg_id);
    wait_phase(&requests, "jump-ssh", Phase::Expired).await;
    println!("expired:");
    show_nsg(&arm, "NIC NSG", &azvm.nic_nsg_id);
    print!(
        "{}",
        run(tb
            .kubectl(ADMIN)
            .args(["get", "jitpolicy,accessrequest", "-n", NS]))?
    );

    step("Azure Firewall: applying examples/jitpolicy-azure-firewall.yaml for a VM behind it");
    let yaml = std::fs::read_to_string(repo_root().join("examples/jitpolicy-azure-firewall.yaml"))
        .map_err(|e| e.to_string())?
        .replace(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/app/providers/Microsoft.Compute/virtualMachines/app-1",
            &appvm.vm_id,
        )
        .replace(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/hub/providers/Microsoft.Network/azureFirewalls/hub-fw",
            &firewall,
        );
    let policy: JitPolicy = serde_saphyr::from_str(&yaml).map_err(|e| e.to_string())?;
    policies
        .create(&PostParams::default(), &policy)
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    while !policies
        .get("app-servers")
        .await
        .ok()
        .and_then(|p| p.status)
        .is_some_and(|s| portcullis::api::conditions::is_true(&s.conditions, "Ready"))
    {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the firewall policy did not become Ready; operator log:\n{}",
                operator.log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    show_firewall(&arm, &firewall);
    step("Azure Firewall: requesting SSH from 203.0.113.7/32 for 15s");
    let yaml = "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {name: app-ssh}\nspec:\n  policyRef: {name: app-servers}\n  target: app\n  ports: [{port: 22, sourcePrefix: 203.0.113.7/32, duration: 15s}]\n  justification: demo\n";
    let request: AccessRequest = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
    let filed = Instant::now();
    requests
        .create(&PostParams::default(), &request)
        .await
        .map_err(|e| e.to_string())?;
    let r = wait_phase(&requests, "app-ssh", Phase::Active).await;
    println!(
        "open through the firewall after {:.2}s",
        filed.elapsed().as_secs_f64()
    );
    if let Some(c) = r
        .status
        .as_ref()
        .and_then(|s| s.ports[0].connection.as_ref())
    {
        println!(
            "connect to {}:{} (ssh -p {} azureuser@{})",
            c.address, c.port, c.port, c.address
        );
    }
    print!(
        "{}",
        run(tb
            .kubectl(ADMIN)
            .args(["get", "accessrequest", "app-ssh", "-n", NS, "-o", "wide"]))?
    );
    show_firewall(&arm, &firewall);
    show_nsg(
        &arm,
        "its NIC NSG (open to the firewall's subnet)",
        &appvm.nic_nsg_id,
    );
    wait_phase(&requests, "app-ssh", Phase::Expired).await;
    println!("expired:");
    show_firewall(&arm, &firewall);

    // A stable path for the kubeconfig, so the commands below can be pasted as they are.
    let local = repo_root().join(".testbed");
    std::fs::create_dir_all(&local).map_err(|e| e.to_string())?;
    for (user, file) in [(ADMIN, "kubeconfig"), (ALICE, "kubeconfig-alice")] {
        std::fs::copy(tb.kubeconfig(user), local.join(file)).map_err(|e| e.to_string())?;
    }
    let kc = local.join("kubeconfig");
    println!(
        "\nThe test bed is up:\n\
         \x20 API server  {api}  (kube-apiserver 1.20, etcd; users admin, alice, bob)\n\
         \x20 AWS (moto)  {moto}  (instance {id})\n\
         \x20 Azure (ARM emulator) {arm_url}  (VM {azvm})\n\
         \x20 logs        {dir}  (operator: operator-demo-*.log)\n\n\
         Try:\n\
         \x20 export KUBECONFIG={kc}\n\
         \x20 kubectl get jitpolicies,accessrequests -n {NS}\n\
         \x20 kubectl apply -n {NS} -f - <<EOF\n\
         \x20 apiVersion: jit.portcullis.dev/v1alpha1\n\
         \x20 kind: AccessRequest\n\
         \x20 metadata: {{name: again}}\n\
         \x20 spec:\n\
         \x20   policyRef: {{name: build-hosts}}\n\
         \x20   target: builder\n\
         \x20   ports: [{{port: 22, sourcePrefix: 198.51.100.9/32, duration: 1m}}]\n\
         \x20   justification: trying it out\n\
         \x20 EOF\n\
         \x20 kubectl get accessrequest again -n {NS} -w\n",
        api = tb.apiserver_url,
        moto = tb.moto_url,
        id = vm.instance_id,
        arm_url = arm.url,
        azvm = azvm.vm_id,
        dir = tb.dir.display(),
        kc = kc.display(),
    );
    if exit_at_once {
        operator.kill();
        tb.stop();
        return Ok(());
    }
    println!("Press Ctrl-C to stop the operator and the test bed.");
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    operator.kill();
    tb.stop();
    Ok(())
}
