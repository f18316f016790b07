//! The Azure NSG slice end to end: a real kube-apiserver, the operator as a process, the
//! project's ARM emulator (HTTPS, long-running operations, ETags, conflicts, throttling).

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use portcullis::api::{AccessRequest, JitPolicy, Phase, PortReason};
use serde_json::{Value, json};

use crate::aws::{MINUTE, port_reason};
use crate::support::arm::{ArmEmulator, ArmOptions, Faults, SeededVm};
use crate::support::kube_helpers::{delete_and_wait_gone, eventually, namespace, wait_for_webhook};
use crate::support::operator::Operator;
use crate::support::testbed::{ADMIN, Testbed};

/// One test's world: its namespace, its emulator and VM, its operator.
pub(crate) struct AzWorld {
    pub(crate) ns: String,
    pub(crate) policies: Api<JitPolicy>,
    pub(crate) requests: Api<AccessRequest>,
    pub(crate) arm: ArmEmulator,
    pub(crate) vm: SeededVm,
    pub(crate) operator: Operator,
}

/// What an NSG's rules say, without what changes on every write (etag, state).
pub(crate) fn summary(rules: &[Value]) -> Vec<(String, u64, String, String, String, String)> {
    let mut v: Vec<_> = rules
        .iter()
        .map(|r| {
            let p = &r["properties"];
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                p["priority"].as_u64().unwrap_or_default(),
                p["access"].as_str().unwrap_or_default().to_string(),
                p["destinationPortRange"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["sourceAddressPrefix"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["description"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

impl AzWorld {
    pub(crate) async fn new(prefix: &str, options: ArmOptions, webhook: bool) -> AzWorld {
        Self::new_with_resync(prefix, options, webhook, "2s").await
    }

    /// A world whose operator resyncs every `resync`.
    pub(crate) async fn new_with_resync(
        prefix: &str,
        options: ArmOptions,
        webhook: bool,
        resync: &str,
    ) -> AzWorld {
        let tb = Testbed::shared();
        tb.install_crds().expect("CRDs install");
        let client = tb.client(ADMIN).await;
        let ns = namespace(&client, prefix).await;
        let arm = ArmEmulator::start_with(options).await;
        let vm = arm.seed_vm_with_network("rg-jit", "vm1", "10.1.0.4");
        // Someone's own rule: SSH from the office at 300. It must stay and keep winning.
        arm.seed_rule(
            &vm.nic_nsg_id,
            "allow-ssh-office",
            json!({"protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "22",
                   "sourceAddressPrefix": "198.51.100.0/24", "destinationAddressPrefix": "*",
                   "access": "Allow", "priority": 300, "direction": "Inbound",
                   "description": "office SSH (managed by the network team)"}),
        );
        let ca = tb.dir.join(format!("arm-ca-{ns}.pem"));
        std::fs::write(&ca, &arm.ca_pem).unwrap();
        let ca = ca.display().to_string();
        let env = [
            ("PORTCULLIS_ARM_ENDPOINT", arm.url.as_str()),
            ("PORTCULLIS_ARM_CA_FILE", ca.as_str()),
            ("PORTCULLIS_ARM_TOKEN", arm.token.as_str()),
        ];
        let operator = if webhook {
            let op = Operator::start_env(tb, &ns, &tb.moto_url, resync, &env);
            wait_for_webhook(&client, &ns).await;
            op
        } else {
            Operator::start_env_without_webhook(tb, &ns, &tb.moto_url, resync, &env)
        };
        AzWorld {
            policies: Api::namespaced(client.clone(), &ns),
            requests: Api::namespaced(client, &ns),
            ns,
            arm,
            vm,
            operator,
        }
    }

    pub(crate) async fn create_policy(&self) {
        let yaml = format!(
            "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: jit}}\nspec:\n  targets:\n    - name: vm1\n      azure: {{vmId: {}}}\n  ports:\n    - {{port: 22, protocol: TCP, allowedSourcePrefixes: [\"203.0.113.0/24\"], maxDuration: 1h}}\n",
            self.vm.vm_id
        );
        let p: JitPolicy = serde_saphyr::from_str(&yaml).unwrap();
        self.policies
            .create(&PostParams::default(), &p)
            .await
            .unwrap();
    }

    pub(crate) async fn ready(&self) -> JitPolicy {
        eventually("policy jit Ready", MINUTE, || async {
            let p = self.policies.get("jit").await.ok()?;
            let s = p.status.as_ref()?;
            (portcullis::api::conditions::is_true(&s.conditions, "Ready")
                && s.observed_generation == p.metadata.generation)
                .then_some(p)
        })
        .await
    }

    pub(crate) async fn create_request(&self, name: &str, source: &str, duration: &str) {
        let yaml = format!(
            "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {{name: {name}}}\nspec:\n  policyRef: {{name: jit}}\n  target: vm1\n  ports:\n    - {{port: 22, sourcePrefix: {source}, duration: {duration}}}\n  justification: azure end-to-end test\n"
        );
        let r: AccessRequest = serde_saphyr::from_str(&yaml).unwrap();
        self.requests
            .create(&PostParams::default(), &r)
            .await
            .unwrap();
    }

    pub(crate) async fn phase(&self, name: &str, phase: Phase) -> AccessRequest {
        eventually(&format!("request {name} {phase:?}"), MINUTE, || async {
            let r = self.requests.get(name).await.ok()?;
            (r.status.as_ref()?.phase == Some(phase)).then_some(r)
        })
        .await
    }

    /// Owned rules of one NSG, by access.
    pub(crate) fn owned(&self, nsg: &str, access: &str) -> Vec<Value> {
        self.arm
            .rules(nsg)
            .into_iter()
            .filter(|r| {
                r["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("portcullis-"))
                    && r["properties"]["access"] == access
            })
            .collect()
    }

    pub(crate) fn nsgs(&self) -> [String; 2] {
        [self.vm.nic_nsg_id.clone(), self.vm.subnet_nsg_id.clone()]
    }

    pub(crate) async fn wait_allows(&self, what: &str, n: usize) {
        eventually(what, MINUTE, || async {
            self.nsgs()
                .iter()
                .all(|nsg| self.owned(nsg, "Allow").len() == n)
                .then_some(())
        })
        .await
    }
}

#[tokio::test]
async fn azure_baseline_grant_expiry_in_both_nsgs() {
    let w = AzWorld::new("az-grant", ArmOptions::default(), true).await;
    let before: Vec<_> = w.nsgs().iter().map(|n| summary(&w.arm.rules(n))).collect();
    w.create_policy().await;
    let p = w.ready().await;

    // Baseline: a deny for 22 in both NSGs, at the top of the deny band, towards the VM
    // only; the foreign allow at 300 is untouched and still wins.
    for nsg in w.nsgs() {
        let denies = w.owned(&nsg, "Deny");
        assert_eq!(denies.len(), 1, "{nsg}: {denies:?}");
        let d = &denies[0]["properties"];
        assert_eq!(
            (d["priority"].as_u64(), d["destinationPortRange"].as_str()),
            (Some(3900), Some("22"))
        );
        assert_eq!(d["destinationAddressPrefixes"], json!(["10.1.0.4"]));
        assert_eq!(
            portcullis::domain::stamp::parse(d["description"].as_str().unwrap()),
            Some((
                portcullis::domain::stamp::cluster_id(&w.ns),
                portcullis::domain::Stamp {
                    owner: format!("{}/jit", w.ns),
                    expires_at: None
                }
            ))
        );
    }
    let office = w.arm.rule(&w.vm.nic_nsg_id, "allow-ssh-office").unwrap();
    assert_eq!(
        summary(&[office]),
        before[0]
            .iter()
            .filter(|r| r.0 == "allow-ssh-office")
            .cloned()
            .collect::<Vec<_>>()
    );
    let t = &p.status.unwrap().targets[0];
    let mut nsgs = t.nsg_ids.clone();
    nsgs.sort();
    let mut want = w.nsgs().to_vec();
    want.sort();
    assert_eq!(nsgs, want);
    assert_eq!(t.private_ips, vec!["10.1.0.4".to_string()]);

    // Grant: an allow rule in each NSG, in the allow band, from the requested source.
    let asked = Instant::now();
    w.create_request("ssh", "203.0.113.7/32", "20s").await;
    let r = w.phase("ssh", Phase::Active).await;
    eprintln!(
        "METRIC azure grant latency: {:.3}s (2 NSGs, long-running PUTs)",
        asked.elapsed().as_secs_f64()
    );
    for nsg in w.nsgs() {
        let allows = w.owned(&nsg, "Allow");
        assert_eq!(allows.len(), 1, "{nsg}: {allows:?}");
        let a = &allows[0]["properties"];
        assert_eq!(a["sourceAddressPrefix"], "203.0.113.7/32");
        let prio = a["priority"].as_u64().unwrap();
        assert!((3000..=3899).contains(&prio), "allow at {prio}");
    }
    assert_eq!(r.status.as_ref().unwrap().ports[0].rule_ids.len(), 2);

    // Expiry: gone from both NSGs.
    let expires = r.status.unwrap().expires_at.unwrap().0;
    w.wait_allows("the allow rules to go", 0).await;
    let lag = jiff::Timestamp::now().duration_since(expires);
    let r = w.phase("ssh", Phase::Expired).await;
    assert_eq!(port_reason(&r), Some(PortReason::Expired));
    eprintln!(
        "METRIC azure expiry lag: {:.3}s (expiresAt → allow rules gone from 2 NSGs; negative: closed early)",
        lag.as_secs_f64()
    );
}

#[tokio::test]
async fn azure_revoke_supersede_and_drift() {
    let w = AzWorld::new("az-life", ArmOptions::default(), true).await;
    w.create_policy().await;
    w.ready().await;

    w.create_request("first", "203.0.113.7/32", "10m").await;
    w.phase("first", Phase::Active).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.create_request("second", "203.0.113.7/32", "20m").await;
    w.phase("second", Phase::Active).await;
    let first = w.phase("first", Phase::Revoked).await;
    assert_eq!(port_reason(&first), Some(PortReason::NewerRequestInitiated));
    for nsg in w.nsgs() {
        let allows = w.owned(&nsg, "Allow");
        assert_eq!(allows.len(), 1);
        assert!(
            allows[0]["properties"]["description"]
                .as_str()
                .unwrap()
                .contains("/second ")
        );
    }

    // Drift: our deny and our allow removed by hand come back.
    let deny = w.owned(&w.vm.subnet_nsg_id, "Deny")[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let allow = w.owned(&w.vm.nic_nsg_id, "Allow")[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(w.arm.remove_rule(&w.vm.subnet_nsg_id, &deny));
    assert!(w.arm.remove_rule(&w.vm.nic_nsg_id, &allow));
    eventually("drift healed", MINUTE, || async {
        (w.owned(&w.vm.subnet_nsg_id, "Deny").len() == 1
            && w.owned(&w.vm.nic_nsg_id, "Allow").len() == 1)
            .then_some(())
    })
    .await;

    // Early revoke.
    w.requests
        .patch(
            "second",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revoke": true}})),
        )
        .await
        .unwrap();
    let r = w.phase("second", Phase::Revoked).await;
    assert_eq!(port_reason(&r), Some(PortReason::UserRequested));
    w.wait_allows("the revoked rules to go", 0).await;

    // Early revoke by deleting the request.
    w.create_request("third", "203.0.113.9/32", "10m").await;
    w.phase("third", Phase::Active).await;
    w.wait_allows("the third grant in both NSGs", 1).await;
    delete_and_wait_gone(&w.requests, "third").await;
    w.wait_allows("the deleted request's rules to go", 0).await;
    let p = w.ready().await;
    // The deny and the allow put back, each counted once.
    assert_eq!(p.status.unwrap().targets[0].drift_corrections, 2);
}

#[tokio::test]
async fn azure_deleting_the_policy_leaves_every_nsg_as_it_was() {
    let w = AzWorld::new("az-delete", ArmOptions::default(), true).await;
    let before: Vec<_> = w.nsgs().iter().map(|n| summary(&w.arm.rules(n))).collect();
    w.create_policy().await;
    w.ready().await;
    w.create_request("ssh", "203.0.113.7/32", "10m").await;
    w.phase("ssh", Phase::Active).await;
    delete_and_wait_gone(&w.policies, "jit").await;
    let after: Vec<_> = w.nsgs().iter().map(|n| summary(&w.arm.rules(n))).collect();
    assert_eq!(after, before);
    let r = w.phase("ssh", Phase::Revoked).await;
    assert_eq!(port_reason(&r), Some(PortReason::PolicyChanged));
}

#[tokio::test]
async fn azure_invalid_requests_cause_no_arm_write() {
    let w = AzWorld::new("az-deny", ArmOptions::default(), false).await;
    w.create_policy().await;
    w.ready().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.arm.clear_calls();
    w.create_request("outside", "198.51.100.7/32", "10m").await;
    w.create_request("too-long", "203.0.113.7/32", "2h").await;
    for name in ["outside", "too-long"] {
        w.phase(name, Phase::Denied).await;
    }
    w.operator.wait_for_runs(2).await; // a resync run after the denials
    assert!(
        w.arm.writes().is_empty(),
        "ARM writes for denied requests: {:?}",
        w.arm.writes()
    );
    assert!(
        !w.arm.calls().is_empty(),
        "the emulator saw no call: is it in the path?"
    );
}

#[tokio::test]
async fn azure_converges_through_a_429_storm() {
    let w = AzWorld::new("az-throttle", ArmOptions::default(), true).await;
    w.arm.set_faults(Faults::ThrottleEvery {
        every: 3,
        retry_after_secs: 1,
    });
    let start = Instant::now();
    w.create_policy().await;
    w.ready().await;
    w.create_request("ssh", "203.0.113.7/32", "10m").await;
    w.phase("ssh", Phase::Active).await;
    w.wait_allows("grants in both NSGs", 1).await;
    let waited = w
        .arm
        .min_wait_after_429()
        .expect("a 429 was answered and followed by a retry");
    assert!(w.arm.injected() > 0);
    assert!(
        waited >= Duration::from_millis(950),
        "the client retried after {waited:?}, before Retry-After (1s)"
    );
    eprintln!(
        "METRIC azure 429 storm: converged in {:.1}s, {} 429s injected, shortest wait after a 429 {:.2}s",
        start.elapsed().as_secs_f64(),
        w.arm.injected(),
        waited.as_secs_f64()
    );
}

#[tokio::test]
async fn azure_sigkill_restarts_converge() {
    let mut w = AzWorld::new("az-crash", ArmOptions::default(), true).await;
    let before: Vec<_> = w.nsgs().iter().map(|n| summary(&w.arm.rules(n))).collect();
    w.create_policy().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    w.operator.kill();
    w.operator.restart();
    w.ready().await;
    wait_for_webhook(&w.requests.clone().into_client(), &w.ns).await;
    w.create_request("long", "203.0.113.7/32", "10m").await;
    w.create_request("short", "203.0.113.8/32", "15s").await;
    let mut kills = 1;
    for pause in [80u64, 400, 900] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        w.operator.kill();
        w.operator.restart();
        kills += 1;
    }
    let short = w.phase("short", Phase::Active).await;
    let expires = short.status.unwrap().expires_at.unwrap().0;
    let d = Duration::try_from(expires.duration_since(jiff::Timestamp::now())).unwrap_or_default();
    tokio::time::sleep(d.saturating_sub(Duration::from_millis(100))).await;
    w.operator.kill();
    kills += 1;
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.operator.restart();
    assert!(kills >= 5);
    w.phase("short", Phase::Expired).await;
    w.phase("long", Phase::Active).await;
    eventually("exactly the desired rules", MINUTE, || async {
        w.nsgs()
            .iter()
            .all(|nsg| w.owned(nsg, "Allow").len() == 1 && w.owned(nsg, "Deny").len() == 1)
            .then_some(())
    })
    .await;
    for nsg in w.nsgs() {
        assert!(w.owned(&nsg, "Allow")[0]["properties"]["sourceAddressPrefix"] == "203.0.113.7/32");
    }
    eprintln!("METRIC azure crash test: {kills} SIGKILLs, converged");
    delete_and_wait_gone(&w.policies, "jit").await;
    let after: Vec<_> = w.nsgs().iter().map(|n| summary(&w.arm.rules(n))).collect();
    assert_eq!(after, before);
}

#[tokio::test]
async fn azure_limits_are_reported_as_conflicts() {
    // The subnet NSG may hold two rules; the NIC NSG has a foreign rule at the very
    // bottom of the range that covers 22, so no deny fits below it.
    let options = ArmOptions {
        rule_limit: 2,
        ..ArmOptions::default()
    };
    let w = AzWorld::new("az-limits", options, true).await;
    w.arm.seed_rule(
        &w.vm.nic_nsg_id,
        "allow-all-last",
        json!({"protocol": "*", "sourcePortRange": "*", "destinationPortRange": "*",
               "sourceAddressPrefix": "10.0.0.0/8", "destinationAddressPrefix": "*",
               "access": "Allow", "priority": 4096, "direction": "Inbound"}),
    );
    w.arm.seed_rule(
        &w.vm.subnet_nsg_id,
        "allow-https",
        json!({"protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "443",
               "sourceAddressPrefix": "*", "destinationAddressPrefix": "*",
               "access": "Allow", "priority": 200, "direction": "Inbound"}),
    );
    let before = summary(&w.arm.rules(&w.vm.nic_nsg_id));
    w.create_policy().await;
    let p = eventually("the Conflict condition", MINUTE, || async {
        let p = w.policies.get("jit").await.ok()?;
        let s = p.status.as_ref()?;
        s.conditions
            .iter()
            .any(|c| c.type_ == "Conflict" && c.status == "True")
            .then_some(p)
    })
    .await;
    let message = p
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Conflict")
        .unwrap()
        .message;
    assert!(message.contains("no free priority"), "{message}");
    // The foreign rules were not touched to make room.
    assert_eq!(summary(&w.arm.rules(&w.vm.nic_nsg_id)), before);

    // A grant into the full subnet NSG fails with ARM's count limit: a clear condition.
    w.create_request("ssh", "203.0.113.7/32", "10m").await;
    let p = eventually("the rule-count limit in the conditions", MINUTE, || async {
        let p = w.policies.get("jit").await.ok()?;
        let s = p.status.as_ref()?;
        s.conditions
            .iter()
            .any(|c| c.type_ == "Conflict" && c.message.contains("SecurityRuleCountLimitReached"))
            .then_some(p)
    })
    .await;
    eprintln!(
        "Conflict: {}",
        p.status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Conflict")
            .unwrap()
            .message
    );
}
