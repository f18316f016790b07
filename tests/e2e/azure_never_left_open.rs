//! Never left open, never lost, on Azure: removed targets and vanished VMs are cleaned
//! up, two installations share an NSG without undoing each other, and rules name only
//! the VM's own addresses.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use portcullis::api::{AccessRequest, JitPolicy, Phase, PortReason};
use serde_json::{Value, json};

use crate::aws::{MINUTE, port_reason};
use crate::azure::AzWorld;
use crate::support::arm::{ArmEmulator, ArmOptions};
use crate::support::kube_helpers::{delete_and_wait_gone, eventually, namespace, wait_for_webhook};
use crate::support::operator::Operator;
use crate::support::testbed::{ADMIN, Testbed};

const RG: &str = "rg-jit";

/// A second VM in the first one's subnet (so under the same subnet NSG), with its own NIC
/// NSG: `(vm id, nic id, nic nsg id)`.
fn neighbour(arm: &ArmEmulator, subnet_id: &str, name: &str, ip: &str) -> (String, String, String) {
    let nsg = arm.seed_nsg(RG, &format!("{name}-nic-nsg"));
    let nic = arm.seed_nic(RG, &format!("{name}-nic"), subnet_id, &[ip], Some(&nsg));
    let vm = arm.seed_vm(RG, name, &[&nic]);
    (vm, nic, nsg)
}

fn owned_in(arm: &ArmEmulator, nsg: &str) -> Vec<Value> {
    arm.rules(nsg)
        .into_iter()
        .filter(|r| {
            r["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("portcullis-"))
        })
        .collect()
}

fn policy(targets: &[(&str, &str)], prefixes: &str) -> JitPolicy {
    let targets: String = targets
        .iter()
        .map(|(n, vm)| format!("    - name: {n}\n      azure: {{vmId: {vm}}}\n"))
        .collect();
    serde_saphyr::from_str(&format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: jit}}\nspec:\n  targets:\n{targets}  ports:\n    - {{port: 22, protocol: TCP, allowedSourcePrefixes: {prefixes}, maxDuration: 1h}}\n"
    ))
    .unwrap()
}

async fn request(
    w: &AzWorld,
    name: &str,
    target: &str,
    source: &str,
) -> Result<AccessRequest, kube::Error> {
    let r: AccessRequest = serde_saphyr::from_str(&format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {{name: {name}}}\nspec:\n  policyRef: {{name: jit}}\n  target: {target}\n  ports:\n    - {{port: 22, sourcePrefix: {source}, duration: 10m}}\n  justification: azure never left open\n"
    ))
    .unwrap();
    w.requests.create(&PostParams::default(), &r).await
}

fn destinations(rule: &Value) -> Vec<String> {
    rule["properties"]["destinationAddressPrefixes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 8, item 1 (Azure): a target that leaves the policy loses its rules in its NIC's
/// and its subnet's NSG; the other target's stay.
#[tokio::test]
async fn azure_a_removed_target_leaves_nothing_in_its_nsgs() {
    let w = AzWorld::new("az-gone-target", ArmOptions::default(), true).await;
    let (vm2, _, nsg2) = neighbour(&w.arm, &w.vm.subnet_id, "vm2", "10.1.0.5");
    w.policies
        .create(
            &PostParams::default(),
            &policy(
                &[("vm1", &w.vm.vm_id), ("vm2", &vm2)],
                "[\"203.0.113.0/24\"]",
            ),
        )
        .await
        .unwrap();
    w.ready().await;
    request(&w, "two", "vm2", "203.0.113.7/32").await.unwrap();
    w.phase("two", Phase::Active).await;
    let subnet_before = owned_in(&w.arm, &w.vm.subnet_nsg_id).len();
    assert_eq!(
        subnet_before, 3,
        "two denies and one allow in the shared subnet NSG"
    );

    let only_vm1 = policy(&[("vm1", &w.vm.vm_id)], "[\"203.0.113.0/24\"]");
    w.policies
        .patch(
            "jit",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"targets": only_vm1.spec.targets}})),
        )
        .await
        .unwrap();
    eventually("vm2's rules gone", MINUTE, || async {
        (owned_in(&w.arm, &nsg2).is_empty() && owned_in(&w.arm, &w.vm.subnet_nsg_id).len() == 1)
            .then_some(())
    })
    .await;
    let left = owned_in(&w.arm, &w.vm.subnet_nsg_id);
    assert_eq!(
        destinations(&left[0]),
        vec![w.vm.private_ip.clone()],
        "vm1's deny stays"
    );
    assert_eq!(owned_in(&w.arm, &w.vm.nic_nsg_id).len(), 1);
    let r = w.phase("two", Phase::Revoked).await;
    assert_eq!(port_reason(&r), Some(PortReason::PolicyChanged));
}

/// Issue 8, item 4 (Azure): a deleted VM does not hold its policy's deletion; the rules
/// the operator wrote for it are found through its record and removed.
#[tokio::test]
async fn azure_a_deleted_vm_does_not_hold_the_policys_deletion() {
    let w = AzWorld::new("az-vanished", ArmOptions::default(), true).await;
    w.create_policy().await;
    w.ready().await;
    w.create_request("ssh", "203.0.113.7/32", "10m").await;
    w.phase("ssh", Phase::Active).await;
    w.arm.remove_vm(&w.vm.vm_id);
    delete_and_wait_gone(&w.policies, "jit").await;
    for nsg in w.nsgs() {
        assert!(owned_in(&w.arm, &nsg).is_empty(), "rules left in {nsg}");
    }
    let events = crate::support::testbed::run(
        Testbed::shared()
            .kubectl(ADMIN)
            .args(["get", "events", "-n", &w.ns]),
    )
    .unwrap();
    assert!(events.contains("TargetGone"), "{events}");
}

/// Issue 8, item 9: rules name the VM's own addresses and follow them when they change;
/// a VM without an address gets no rule at all (a rule without destination would cover
/// the whole subnet).
#[tokio::test]
async fn azure_rules_follow_the_vms_addresses_and_never_name_the_subnet() {
    let w = AzWorld::new("az-addresses", ArmOptions::default(), true).await;
    w.create_policy().await;
    w.ready().await;
    w.create_request("ssh", "203.0.113.7/32", "10m").await;
    w.phase("ssh", Phase::Active).await;
    w.arm.set_nic_ips(&w.vm.nic_id, &["10.1.0.9"]);
    eventually("every rule names the new address", MINUTE, || async {
        w.nsgs()
            .iter()
            .flat_map(|n| owned_in(&w.arm, n))
            .all(|r| destinations(&r) == vec!["10.1.0.9".to_string()])
            .then_some(())
    })
    .await;
    assert_eq!(
        w.nsgs()
            .iter()
            .map(|n| owned_in(&w.arm, n).len())
            .sum::<usize>(),
        4
    );

    // No address at all: nothing new is written, and the policy says why.
    w.arm.set_nic_ips(&w.vm.nic_id, &[]);
    let c = eventually("a condition about the missing address", MINUTE, || async {
        let p = w.policies.get("jit").await.ok()?;
        let c = p
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Unsupported" && c.status == "True")?
            .clone();
        Some(c)
    })
    .await;
    assert!(c.message.contains("no private address"), "{}", c.message);
    for nsg in w.nsgs() {
        for r in owned_in(&w.arm, &nsg) {
            assert!(
                r["properties"]["destinationAddressPrefix"] != "*",
                "a rule names the whole subnet: {r}"
            );
        }
    }
}

/// Issue 8, item 9: an IPv6 source for a VM without an IPv6 address is refused at
/// admission, naming the field (not left Pending).
#[tokio::test]
async fn azure_an_ipv6_source_for_an_ipv4_vm_is_refused_at_admission() {
    let w = AzWorld::new("az-ipv6", ArmOptions::default(), true).await;
    w.policies
        .create(
            &PostParams::default(),
            &policy(
                &[("vm1", &w.vm.vm_id)],
                "[\"203.0.113.0/24\", \"2001:db8::/32\"]",
            ),
        )
        .await
        .unwrap();
    w.ready().await;
    let err = request(&w, "v6", "vm1", "2001:db8::7/128")
        .await
        .unwrap_err();
    let message = match err {
        kube::Error::Api(s) => s.message,
        other => panic!("{other}"),
    };
    assert!(message.contains("spec.ports[0].sourcePrefix"), "{message}");
    assert!(message.contains("no IPv6 address"), "{message}");
    request(&w, "v4", "vm1", "203.0.113.7/32").await.unwrap();
    w.phase("v4", Phase::Active).await;
}

/// Issue 8, item 9: one grant that ARM refuses does not keep the other grants of the
/// same NSGs closed.
#[tokio::test]
async fn azure_one_failing_grant_does_not_block_the_others() {
    let w = AzWorld::new("az-one-fails", ArmOptions::default(), true).await;
    w.create_policy().await;
    w.ready().await;
    let bad = portcullis::domain::stamp::short_hash("203.0.113.7/32");
    w.arm
        .refuse_writes_to(&format!("-22tcp-{bad}"), "InvalidRequestFormat");
    w.create_request("refused", "203.0.113.7/32", "10m").await;
    w.create_request("fine", "203.0.113.8/32", "10m").await;
    w.phase("fine", Phase::Active).await;
    let r = w.requests.get("refused").await.unwrap();
    assert_ne!(r.status.unwrap().phase, Some(Phase::Active));
}

/// Issue 8, item 6: two installations (two namespace-scoped operators with their own
/// names) protect two VMs under one subnet NSG: neither removes the other's rules, and
/// neither sweeps a rule of a third installation.
#[tokio::test]
async fn two_installations_share_a_subnet_nsg_without_undoing_each_other() {
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let arm = ArmEmulator::start().await;
    let vm1 = arm.seed_vm_with_network(RG, "vm1", "10.1.0.4");
    let (vm2, _, _) = neighbour(&arm, &vm1.subnet_id, "vm2", "10.1.0.5");
    // A rule of a third installation whose owner is gone and whose stamp expired: only
    // that installation may sweep it.
    let third = portcullis::domain::stamp::format(
        "somebody-else",
        &portcullis::domain::Stamp {
            owner: "x/gone".into(),
            expires_at: Some(jiff::Timestamp::from_second(1_700_000_000).unwrap()),
        },
    );
    arm.seed_rule(
        &vm1.subnet_nsg_id,
        "portcullis-allow-00000000-22tcp-00000000",
        json!({"protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "22",
               "sourceAddressPrefix": "198.51.100.7/32", "destinationAddressPrefixes": ["10.1.0.6"],
               "access": "Allow", "priority": 3500, "direction": "Inbound", "description": third}),
    );
    let ca = tb.dir.join("arm-ca-two-installations.pem");
    std::fs::write(&ca, &arm.ca_pem).unwrap();
    let ca = ca.display().to_string();
    let env = [
        ("PORTCULLIS_ARM_ENDPOINT", arm.url.as_str()),
        ("PORTCULLIS_ARM_CA_FILE", ca.as_str()),
        ("PORTCULLIS_ARM_TOKEN", arm.token.as_str()),
    ];
    let mut installs = Vec::new();
    for (prefix, vm) in [
        ("az-install-a", vm1.vm_id.clone()),
        ("az-install-b", vm2.clone()),
    ] {
        let ns = namespace(&client, prefix).await;
        let op = Operator::start_env(tb, &ns, &tb.moto_url, "2s", &env);
        wait_for_webhook(&client, &ns).await;
        let policies: Api<JitPolicy> = Api::namespaced(client.clone(), &ns);
        policies
            .create(
                &PostParams::default(),
                &policy(&[("vm", &vm)], "[\"203.0.113.0/24\"]"),
            )
            .await
            .unwrap();
        installs.push((ns, op, policies));
    }
    for (ns, _, policies) in &installs {
        eventually(&format!("{ns} Ready"), MINUTE, || async {
            let p = policies.get("jit").await.ok()?;
            portcullis::api::conditions::is_true(&p.status.as_ref()?.conditions, "Ready")
                .then_some(())
        })
        .await;
    }
    let denies = |arm: &ArmEmulator| -> Vec<String> {
        owned_in(arm, &vm1.subnet_nsg_id)
            .iter()
            .filter(|r| r["properties"]["access"] == "Deny")
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(
        denies(&arm).len(),
        2,
        "each installation's deny in the shared NSG"
    );
    arm.clear_calls();
    // Several resyncs and sweeps of both.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let deletes: Vec<String> = arm
        .writes()
        .into_iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.path)
        .collect();
    assert!(
        deletes.is_empty(),
        "one installation deleted rules: {deletes:?}"
    );
    assert_eq!(denies(&arm).len(), 2);
    assert!(
        arm.rule(
            &vm1.subnet_nsg_id,
            "portcullis-allow-00000000-22tcp-00000000"
        )
        .is_some(),
        "the third installation's rule was swept by someone else"
    );
    drop(installs);
}
