//! Azure Firewall (classic rules) end to end: a real kube-apiserver, the operator as a
//! process, and the ARM emulator holding a VM (NIC and subnet NSGs) behind a firewall
//! with other teams' rule collections.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use portcullis::api::{AccessRequest, JitPolicy, Phase, PortReason};
use serde_json::{Value, json};

use crate::aws::{MINUTE, port_reason};
use crate::support::arm::{ArmEmulator, ArmOptions, SeededVm};
use crate::support::kube_helpers::{eventually, namespace, wait_for_webhook};
use crate::support::operator::Operator;
use crate::support::testbed::{ADMIN, Testbed};

const PUBLIC: &str = "198.51.100.4";
/// The emulator's `AzureFirewallSubnet` of a seeded firewall.
const FIREWALL_SUBNET: &str = "10.250.0.0/26";
const VM_IP: &str = "10.1.0.4";
const NAT: &str = "natRuleCollections";
const NET: &str = "networkRuleCollections";

/// One test's world: its namespace, its emulator, VM and firewall, its operator.
struct FwWorld {
    policies: Api<JitPolicy>,
    requests: Api<AccessRequest>,
    arm: ArmEmulator,
    vm: SeededVm,
    firewall: String,
    _operator: Operator,
}

/// Two foreign NAT collections (one listening on 50000 of our address) and a foreign
/// network collection that lets the bastion subnet reach SSH on the VM, at 61000, inside
/// the default band.
fn classic_collections() -> Value {
    json!({
        NAT: [
            {
                "name": "web-publish",
                "properties": {
                    "priority": 100,
                    "action": { "type": "Dnat" },
                    "rules": [{
                        "name": "https",
                        "protocols": ["TCP"],
                        "sourceAddresses": ["*"],
                        "destinationAddresses": [PUBLIC],
                        "destinationPorts": ["50000"],
                        "translatedAddress": "10.1.9.9",
                        "translatedPort": "443",
                    }]
                }
            },
            {
                "name": "mail",
                "properties": {
                    "priority": 110,
                    "action": { "type": "Dnat" },
                    "rules": [{
                        "name": "smtp",
                        "description": "inbound mail (network team)",
                        "protocols": ["TCP"],
                        "sourceAddresses": ["*"],
                        "destinationAddresses": ["198.51.100.5"],
                        "destinationPorts": ["25"],
                        "translatedAddress": "10.1.9.10",
                        "translatedPort": "25",
                    }]
                }
            }
        ],
        NET: [{
            "name": "bastion-ssh",
            "properties": {
                "priority": 61000,
                "action": { "type": "Allow" },
                "rules": [{
                    "name": "bastion",
                    "protocols": ["TCP"],
                    "sourceAddresses": ["10.9.0.0/24"],
                    "destinationAddresses": ["10.1.0.0/24"],
                    "destinationPorts": ["22"],
                }]
            }
        }],
    })
}

impl FwWorld {
    async fn new(prefix: &str, firewall_properties: Value) -> FwWorld {
        let tb = Testbed::shared();
        tb.install_crds().expect("CRDs install");
        let client = tb.client(ADMIN).await;
        let ns = namespace(&client, prefix).await;
        let arm = ArmEmulator::start_with(ArmOptions::default()).await;
        let vm = arm.seed_vm_with_network("rg-jit", "vm1", VM_IP);
        let firewall = arm
            .seed_firewall("rg-hub", "hub-fw", firewall_properties)
            .id;
        let ca = tb.dir.join(format!("arm-ca-{ns}.pem"));
        std::fs::write(&ca, &arm.ca_pem).unwrap();
        let ca = ca.display().to_string();
        let env = [
            ("PORTCULLIS_ARM_ENDPOINT", arm.url.as_str()),
            ("PORTCULLIS_ARM_CA_FILE", ca.as_str()),
            ("PORTCULLIS_ARM_TOKEN", arm.token.as_str()),
        ];
        let operator = Operator::start_env(tb, &ns, &tb.moto_url, "2s", &env);
        wait_for_webhook(&client, &ns).await;
        FwWorld {
            policies: Api::namespaced(client.clone(), &ns),
            requests: Api::namespaced(client, &ns),
            arm,
            vm,
            firewall,
            _operator: operator,
        }
    }

    async fn create_policy(&self) {
        let yaml = format!(
            "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: jit}}\nspec:\n  targets:\n    - name: vm1\n      azure:\n        vmId: {}\n        firewall: {{id: {}, publicIp: {PUBLIC}, mappedPorts: 50000-50099}}\n  ports:\n    - {{port: 22, protocol: TCP, allowedSourcePrefixes: [\"203.0.113.0/24\"], maxDuration: 1h}}\n",
            self.vm.vm_id, self.firewall
        );
        let p: JitPolicy = serde_saphyr::from_str(&yaml).unwrap();
        self.policies
            .create(&PostParams::default(), &p)
            .await
            .unwrap();
    }

    async fn condition(&self, kind: &str) -> JitPolicy {
        eventually(&format!("policy jit {kind}"), MINUTE, || async {
            let p = self.policies.get("jit").await.ok()?;
            let s = p.status.as_ref()?;
            (portcullis::api::conditions::is_true(&s.conditions, kind)
                && s.observed_generation == p.metadata.generation)
                .then_some(p)
        })
        .await
    }

    async fn create_request(&self, name: &str, source: &str, duration: &str) {
        let yaml = format!(
            "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {{name: {name}}}\nspec:\n  policyRef: {{name: jit}}\n  target: vm1\n  ports:\n    - {{port: 22, sourcePrefix: {source}, duration: {duration}}}\n  justification: firewall end-to-end test\n"
        );
        let r: AccessRequest = serde_saphyr::from_str(&yaml).unwrap();
        self.requests
            .create(&PostParams::default(), &r)
            .await
            .unwrap();
    }

    async fn phase(&self, name: &str, phase: Phase) -> AccessRequest {
        eventually(&format!("request {name} {phase:?}"), MINUTE, || async {
            let r = self.requests.get(name).await.ok()?;
            (r.status.as_ref()?.phase == Some(phase)).then_some(r)
        })
        .await
    }

    fn collections(&self, kind: &str) -> Vec<Value> {
        self.arm.firewall(&self.firewall).unwrap()["properties"][kind]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every collection that is not the operator's, as GET shows it.
    fn foreign(&self) -> Vec<Value> {
        [NAT, NET, "applicationRuleCollections"]
            .iter()
            .flat_map(|k| self.collections(k))
            .filter(|c| !c["name"].as_str().unwrap().starts_with("portcullis-"))
            .collect()
    }

    fn owned(&self, kind: &str, suffix: &str) -> Option<Value> {
        self.collections(kind).into_iter().find(|c| {
            let name = c["name"].as_str().unwrap();
            name.starts_with("portcullis-") && name.contains(suffix)
        })
    }

    /// The operator's DNAT rules.
    fn dnat_rules(&self) -> Vec<Value> {
        self.owned(NAT, "-dnat")
            .and_then(|c| c["properties"]["rules"].as_array().cloned())
            .unwrap_or_default()
    }

    fn nsgs(&self) -> [String; 2] {
        [self.vm.nic_nsg_id.clone(), self.vm.subnet_nsg_id.clone()]
    }

    /// The operator's allow rules in an NSG.
    fn nsg_allows(&self, nsg: &str) -> Vec<Value> {
        self.arm
            .rules(nsg)
            .into_iter()
            .filter(|r| {
                r["name"].as_str().unwrap().starts_with("portcullis-")
                    && r["properties"]["access"] == "Allow"
            })
            .collect()
    }

    /// PUTs that reached the firewall, by answer.
    fn firewall_puts(&self) -> Vec<u16> {
        self.arm
            .writes()
            .iter()
            .filter(|c| c.path.eq_ignore_ascii_case(&self.firewall))
            .map(|c| c.status)
            .collect()
    }
}

fn connection(r: &AccessRequest) -> (String, i32) {
    let c = r.status.as_ref().unwrap().ports[0]
        .connection
        .as_ref()
        .expect("the status says where to connect");
    (c.address.clone(), c.port)
}

/// Waits for every DNAT rule to go; how long after `deadline` that was (negative: before).
async fn dnat_gone_after(w: &FwWorld, deadline: jiff::Timestamp) -> f64 {
    eventually("the DNAT rules to go", MINUTE, || async {
        w.dnat_rules().is_empty().then_some(())
    })
    .await;
    jiff::Timestamp::now()
        .duration_since(deadline)
        .as_secs_f64()
}

#[tokio::test]
async fn azure_firewall_baseline_grant_connection_expiry_and_revoke() {
    let w = FwWorld::new("fw-grant", classic_collections()).await;
    let before = w.foreign();
    w.create_policy().await;
    w.condition("Ready").await;

    // Baseline: the deny collection is below the bastion's allow (61000), in the band.
    let deny = w.owned(NET, "-deny-").expect("a deny collection");
    let priority = deny["properties"]["priority"].as_u64().unwrap();
    assert!((61001..=64999).contains(&priority), "deny at {priority}");
    assert_eq!(deny["properties"]["action"]["type"], "Deny");
    let rule = &deny["properties"]["rules"][0];
    assert_eq!(rule["destinationAddresses"], json!([VM_IP]));
    assert_eq!(rule["destinationPorts"], json!(["22"]));
    assert_eq!(w.foreign(), before, "foreign collections changed");

    // A grant: a DNAT rule from the requested source to a mapped port (50000 is taken).
    let asked = Instant::now();
    w.create_request("ssh", "203.0.113.7/32", "20s").await;
    let r = w.phase("ssh", Phase::Active).await;
    eprintln!(
        "METRIC azure firewall grant latency: {:.3}s (2 NSGs and the firewall, long-running PUTs)",
        asked.elapsed().as_secs_f64()
    );
    assert_eq!(connection(&r), (PUBLIC.to_string(), 50001));
    let dnat = w.dnat_rules();
    assert_eq!(dnat.len(), 1, "{dnat:?}");
    assert_eq!(dnat[0]["sourceAddresses"], json!(["203.0.113.7/32"]));
    assert_eq!(dnat[0]["destinationAddresses"], json!([PUBLIC]));
    assert_eq!(dnat[0]["destinationPorts"], json!(["50001"]));
    assert_eq!(dnat[0]["translatedAddress"], VM_IP);
    assert_eq!(dnat[0]["translatedPort"], "22");
    assert!(
        w.owned(NET, "-allow").is_some(),
        "the translated traffic is allowed"
    );
    // The firewall translates the source of DNAT'ed traffic to its own subnet: that is
    // what the VM's NSGs must let in, not the requester's address.
    for nsg in w.nsgs() {
        let allows = w.nsg_allows(&nsg);
        assert_eq!(allows.len(), 1, "{nsg}: {allows:?}");
        assert_eq!(
            allows[0]["properties"]["sourceAddressPrefix"],
            FIREWALL_SUBNET
        );
    }
    assert_eq!(w.foreign(), before, "foreign collections changed");

    // Expiry: the DNAT rule goes within the bound, like NSG rules.
    let expires = r.status.unwrap().expires_at.unwrap().0;
    let lag = dnat_gone_after(&w, expires).await;
    eprintln!(
        "METRIC azure firewall expiry lag: {lag:.3}s (expiresAt → DNAT rule gone; negative: closed early)"
    );
    assert!(lag <= 2.0, "the DNAT rule outlived its grant by {lag:.3}s");
    let r = w.phase("ssh", Phase::Expired).await;
    assert_eq!(port_reason(&r), Some(PortReason::Expired));
    assert!(r.status.unwrap().ports[0].connection.is_none());

    // Early revoke.
    w.create_request("again", "203.0.113.8/32", "10m").await;
    w.phase("again", Phase::Active).await;
    w.requests
        .patch(
            "again",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revoke": true}})),
        )
        .await
        .unwrap();
    let revoked_at = jiff::Timestamp::now();
    let lag = dnat_gone_after(&w, revoked_at).await;
    eprintln!("METRIC azure firewall revoke latency: {lag:.3}s (revoke → DNAT rule gone)");
    let r = w.phase("again", Phase::Revoked).await;
    assert_eq!(port_reason(&r), Some(PortReason::UserRequested));
    assert_eq!(w.foreign(), before, "foreign collections changed");
}

#[tokio::test]
async fn azure_firewall_ten_requests_at_once_take_a_handful_of_puts() {
    let w = FwWorld::new("fw-ten", classic_collections()).await;
    w.create_policy().await;
    w.condition("Ready").await;
    let puts_before = w.firewall_puts().len();

    for i in 0..10 {
        w.create_request(&format!("r{i}"), &format!("203.0.113.{}/32", 10 + i), "10m")
            .await;
    }
    let mut ports = BTreeSet::new();
    for i in 0..10 {
        let r = w.phase(&format!("r{i}"), Phase::Active).await;
        let (address, port) = connection(&r);
        assert_eq!(address, PUBLIC);
        ports.insert(port);
    }
    let puts = w.firewall_puts().len() - puts_before;
    eprintln!("METRIC azure firewall PUTs for 10 requests at once: {puts}");
    assert_eq!(
        ports.len(),
        10,
        "each grant has its own mapped port: {ports:?}"
    );
    assert!(!ports.contains(&50000), "50000 belongs to web-publish");
    assert!(puts <= 5, "{puts} PUTs for 10 requests");
    assert_eq!(w.dnat_rules().len(), 10);
    for nsg in w.nsgs() {
        assert_eq!(
            w.nsg_allows(&nsg).len(),
            1,
            "one rule for the firewall's subnet"
        );
    }
}

#[tokio::test]
async fn azure_firewall_a_lost_race_keeps_the_other_writers_change() {
    let w = FwWorld::new("fw-race", classic_collections()).await;
    w.create_policy().await;
    w.condition("Ready").await;
    // Another team's collection lands just before the operator's next write.
    w.arm.on_next_firewall_write(&w.firewall, |props| {
        props[NET].as_array_mut().unwrap().push(json!({
            "name": "late-arrival",
            "properties": {
                "priority": 300,
                "action": { "type": "Deny" },
                "rules": [{
                    "name": "no-telnet",
                    "protocols": ["TCP"],
                    "sourceAddresses": ["*"],
                    "destinationAddresses": ["*"],
                    "destinationPorts": ["23"],
                }]
            }
        }));
    });

    w.create_request("ssh", "203.0.113.7/32", "10m").await;
    let r = w.phase("ssh", Phase::Active).await;

    let puts = w.firewall_puts();
    assert!(
        puts.contains(&412),
        "the write lost the race first: {puts:?}"
    );
    assert!(
        w.collections(NET)
            .iter()
            .any(|c| c["name"] == "late-arrival"),
        "the other writer's collection survived"
    );
    assert_eq!(w.dnat_rules().len(), 1);
    assert_eq!(connection(&r).0, PUBLIC);
}

#[tokio::test]
async fn azure_firewall_manager_is_unsupported_and_nothing_is_written() {
    let policy_id = "/subscriptions/6b1f0c3e-0000-4000-8000-00000000a7e1/resourceGroups/rg-hub/providers/Microsoft.Network/firewallPolicies/central";
    let w = FwWorld::new(
        "fw-managed",
        json!({ "firewallPolicy": { "id": policy_id } }),
    )
    .await;
    w.create_policy().await;

    let p = w.condition("Unsupported").await;
    let message = p
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Unsupported")
        .unwrap()
        .message
        .clone();
    assert!(message.contains(&w.firewall), "{message}");
    assert!(
        message.contains(&format!(
            "managed by Azure Firewall Manager (firewall policy {policy_id}): only classic rules are supported"
        )),
        "{message}"
    );

    w.create_request("ssh", "203.0.113.7/32", "10m").await;
    let r = w.phase("ssh", Phase::Denied).await;
    let status = r.status.unwrap();
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("Azure Firewall Manager"),
        "{status:?}"
    );
    // Two more resyncs: still nothing written anywhere, NSGs included.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        w.arm.writes(),
        vec![],
        "nothing is written to the firewall or the NSGs"
    );
    for nsg in [&w.vm.nic_nsg_id, &w.vm.subnet_nsg_id] {
        assert!(w.arm.rules(nsg).is_empty(), "{nsg}");
    }
}
