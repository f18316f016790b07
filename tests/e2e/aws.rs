//! The AWS slice end to end: a real kube-apiserver, the operator as a process, moto
//! behind a recording, fault-injecting proxy.

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use portcullis::api::{AccessRequest, JitPolicy, Phase, PortReason};

use crate::support::aws::{self, Instance};
use crate::support::ec2_proxy::{Ec2Proxy, Faults};
use crate::support::kube_helpers::{delete_and_wait_gone, eventually, namespace, wait_for_webhook};
use crate::support::operator::{Operator, http_get};
use crate::support::testbed::{ADMIN, Testbed};

pub const MINUTE: Duration = Duration::from_secs(60);

/// One test's world: its namespace, its instance, its proxy and its operator.
pub struct World {
    pub ns: String,
    pub policies: Api<JitPolicy>,
    pub requests: Api<AccessRequest>,
    /// Straight to moto: what the test itself reads and changes.
    pub ec2: aws_sdk_ec2::Client,
    pub proxy: Ec2Proxy,
    pub vm: Instance,
    pub operator: Operator,
}

impl World {
    pub async fn new(prefix: &str, faults: Faults) -> World {
        Self::new_with(prefix, faults, true).await
    }

    /// A world whose operator serves its admission webhook, or not.
    pub async fn new_with(prefix: &str, faults: Faults, webhook: bool) -> World {
        Self::new_with_args(prefix, faults, webhook, "2s", &[]).await
    }

    /// A world whose operator resyncs every `resync` and gets `extra` arguments.
    pub async fn new_with_args(
        prefix: &str,
        faults: Faults,
        webhook: bool,
        resync: &str,
        extra: &[&str],
    ) -> World {
        let tb = Testbed::shared();
        tb.install_crds().expect("CRDs install");
        let client = tb.client(ADMIN).await;
        let ns = namespace(&client, prefix).await;
        let ec2 = aws::client(&tb.moto_url);
        let vm = aws::instance(&ec2).await;
        let proxy = Ec2Proxy::start(&tb.moto_url).await;
        proxy.set_faults(faults);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let operator = if webhook {
            let mut args = vec![
                "--webhook-listen".to_string(),
                "127.0.0.1:0".to_string(),
                "--webhook-url".into(),
                "https://127.0.0.1:0".to_string(),
                "--webhook-config-name".into(),
                format!("portcullis-{ns}"),
            ];
            args.extend(extra);
            let op = Operator::start_with(tb, &ns, &proxy.url, resync, args, &[]);
            wait_for_webhook(&client, &ns).await;
            op
        } else {
            let mut args = vec!["--no-webhook".to_string()];
            args.extend(extra);
            Operator::start_with(tb, &ns, &proxy.url, resync, args, &[])
        };
        World {
            policies: Api::namespaced(client.clone(), &ns),
            requests: Api::namespaced(client, &ns),
            ns,
            ec2,
            proxy,
            vm,
            operator,
        }
    }

    pub fn policy_yaml(&self, name: &str) -> String {
        format!(
            r#"
apiVersion: jit.portcullis.dev/v1alpha1
kind: JitPolicy
metadata: {{name: {name}}}
spec:
  targets:
    - name: web
      aws: {{region: {region}, instanceId: {id}}}
  ports:
    - {{port: 22, protocol: TCP, allowedSourcePrefixes: ["203.0.113.0/24"], maxDuration: 1h}}
"#,
            region = aws::REGION,
            id = self.vm.instance_id
        )
    }

    pub async fn create_policy(&self, name: &str) {
        let p: JitPolicy = serde_saphyr::from_str(&self.policy_yaml(name)).unwrap();
        self.policies
            .create(&PostParams::default(), &p)
            .await
            .unwrap();
    }

    pub async fn ready_policy(&self, name: &str) -> JitPolicy {
        self.ready_policy_within(name, MINUTE).await
    }

    pub async fn ready_policy_within(&self, name: &str, timeout: Duration) -> JitPolicy {
        let api = self.policies.clone();
        let name = name.to_string();
        eventually(&format!("policy {name} Ready"), timeout, || {
            let (api, name) = (api.clone(), name.clone());
            async move {
                let p = api.get(&name).await.ok()?;
                let s = p.status.as_ref()?;
                (portcullis::api::conditions::is_true(&s.conditions, "Ready")
                    && s.observed_generation == p.metadata.generation)
                    .then_some(p)
            }
        })
        .await
    }

    pub async fn create_request(&self, name: &str, port: u16, source: &str, duration: &str) {
        let yaml = format!(
            r#"
apiVersion: jit.portcullis.dev/v1alpha1
kind: AccessRequest
metadata: {{name: {name}}}
spec:
  policyRef: {{name: jit}}
  target: web
  ports:
    - {{port: {port}, sourcePrefix: {source}, duration: {duration}}}
  justification: end-to-end test
"#
        );
        let r: AccessRequest = serde_saphyr::from_str(&yaml).unwrap();
        self.requests
            .create(&PostParams::default(), &r)
            .await
            .unwrap();
    }

    pub async fn phase(&self, name: &str, phase: Phase, timeout: Duration) -> AccessRequest {
        let api = self.requests.clone();
        let name = name.to_string();
        eventually(&format!("request {name} {phase:?}"), timeout, || {
            let (api, name) = (api.clone(), name.clone());
            async move {
                let r = api.get(&name).await.ok()?;
                (r.status.as_ref()?.phase == Some(phase)).then_some(r)
            }
        })
        .await
    }

    /// The single owned group of this test (panics if there are several).
    pub async fn owned_group(&self) -> Option<String> {
        let groups = aws::owned_groups(&self.ec2, &self.ns).await;
        assert!(groups.len() <= 1, "more than one owned group: {groups:?}");
        groups.into_iter().next()
    }

    pub async fn owned_rules(&self) -> Vec<(String, i32, i32, String, String)> {
        match self.owned_group().await {
            Some(g) => aws::ingress_summary(&self.ec2, &g).await,
            None => Vec::new(),
        }
    }

    pub async fn wait_owned_rules(
        &self,
        what: &str,
        want: usize,
    ) -> Vec<(String, i32, i32, String, String)> {
        eventually(what, MINUTE, || async {
            let rules = self.owned_rules().await;
            (rules.len() == want).then_some(rules)
        })
        .await
    }

    pub async fn revoke(&self, name: &str) {
        self.requests
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"revoke": true}})),
            )
            .await
            .unwrap();
    }

    pub fn dump(&self) -> String {
        self.operator.log()
    }
}

/// The owner a rule's stamp names, checking that it is this test's installation's stamp
/// and that it carries an expiry.
pub fn stamp_owner(w: &World, description: &str) -> String {
    let (cluster, stamp) = portcullis::domain::stamp::parse(description)
        .unwrap_or_else(|| panic!("not a stamp: {description}"));
    assert_eq!(cluster, portcullis::domain::stamp::cluster_id(&w.ns));
    assert!(stamp.expires_at.is_some(), "{description}");
    stamp.owner
}

pub fn port_reason(r: &AccessRequest) -> Option<PortReason> {
    r.status.as_ref()?.ports.first()?.reason
}

#[tokio::test]
async fn aws_baseline_grant_and_expiry() {
    let w = World::new("aws-grant", Faults::None).await;
    let original = aws::ingress_summary(&w.ec2, &w.vm.group_id).await;
    w.create_policy("jit").await;
    let p = w.ready_policy("jit").await;

    // 1. 22 is revoked and recorded; 443 stays.
    let now = aws::ingress_summary(&w.ec2, &w.vm.group_id).await;
    assert_eq!(
        now,
        vec![("tcp".into(), 443, 443, "0.0.0.0/0".into(), "https".into())],
        "{}",
        w.dump()
    );
    let t = &p.status.as_ref().unwrap().targets[0];
    assert_eq!(t.baseline, Some(portcullis::api::BaselineState::Enforced));
    let record = t.record.as_ref().expect("the target is recorded");
    assert_eq!(record.revoked_rules.len(), 1);
    let rec = &record.revoked_rules[0];
    assert_eq!(
        (
            rec.group_id.as_str(),
            rec.ip_protocol.as_str(),
            rec.from_port,
            rec.to_port,
            rec.cidr_ipv4.as_deref(),
            rec.description.as_deref()
        ),
        (
            w.vm.group_id.as_str(),
            "tcp",
            22,
            22,
            Some("0.0.0.0/0"),
            Some("ssh from anywhere")
        )
    );
    assert_eq!(t.network_interface_ids, vec![w.vm.eni_id.clone()]);
    assert!(original.iter().any(|r| r.1 == 22));

    // 2. A request opens exactly that port from exactly that source.
    let asked = Instant::now();
    w.create_request("ssh", 22, "203.0.113.7/32", "30s").await;
    let r = w.phase("ssh", Phase::Active, MINUTE).await;
    let granted_in = asked.elapsed();
    let rules = w.owned_rules().await;
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        (
            rules[0].0.as_str(),
            rules[0].1,
            rules[0].2,
            rules[0].3.as_str()
        ),
        ("tcp", 22, 22, "203.0.113.7/32")
    );
    assert_eq!(
        stamp_owner(&w, &rules[0].4),
        format!("{}/ssh", w.ns),
        "{}",
        rules[0].4
    );
    let group = w.owned_group().await.unwrap();
    let mut attached = aws::eni_groups(&w.ec2, &w.vm.eni_id).await;
    attached.sort();
    let mut want = vec![w.vm.group_id.clone(), group.clone()];
    want.sort();
    assert_eq!(
        attached, want,
        "the owned group is attached beside the ENI's own group"
    );
    let s = r.status.as_ref().unwrap();
    let (created, expires_at) = (
        r.metadata.creation_timestamp.clone().unwrap().0,
        s.expires_at.clone().unwrap().0,
    );
    assert_eq!(
        expires_at.duration_since(created).as_secs(),
        30,
        "the grant counts from the request's creation"
    );
    assert_eq!(s.ports[0].rule_ids.len(), 1);
    eprintln!(
        "METRIC aws grant latency: {:.3}s (request created → status Active)",
        granted_in.as_secs_f64()
    );

    // 3. At expiry the rule goes and the request says Expired.
    let gone = eventually("the grant's rule to go", MINUTE, || async {
        w.owned_rules().await.is_empty().then(jiff::Timestamp::now)
    })
    .await;
    let lag = gone.duration_since(expires_at);
    let r = w.phase("ssh", Phase::Expired, MINUTE).await;
    assert_eq!(port_reason(&r), Some(PortReason::Expired));
    eprintln!(
        "METRIC aws expiry lag: {:.3}s (expiresAt → rule gone, polled every 100ms)",
        lag.as_secs_f64()
    );
    // The emptied owned group is detached and deleted.
    // The trail: Events for the grant and the expiry.
    let events = crate::support::testbed::run(
        Testbed::shared()
            .kubectl(ADMIN)
            .args(["get", "events", "-n", &w.ns]),
    )
    .unwrap();
    for reason in ["Granted", "Expired"] {
        assert!(events.contains(reason), "no {reason} event:\n{events}");
    }

    // The operator's own endpoints: health, readiness, and a metric per cloud call.
    let base = w.operator.metrics_url.clone();
    assert_eq!(http_get(&format!("{base}/healthz")).await.unwrap().0, 200);
    assert_eq!(http_get(&format!("{base}/readyz")).await.unwrap().0, 200);
    let (status, metrics) = http_get(&format!("{base}/metrics")).await.unwrap();
    assert_eq!(status, 200);
    for series in [
        r#"portcullis_cloud_api_calls_total{cloud="aws",op="AuthorizeSecurityGroupIngress",outcome="ok"}"#,
        r#"portcullis_cloud_api_calls_total{cloud="aws",op="RevokeSecurityGroupIngress",outcome="ok"}"#,
        r#"portcullis_reconciles_total{resource="jitpolicy",outcome="ok"}"#,
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from /metrics:\n{metrics}"
        );
    }
    eventually("the owned group to go", MINUTE, || async {
        w.owned_group().await.is_none().then_some(())
    })
    .await;
    assert_eq!(
        aws::eni_groups(&w.ec2, &w.vm.eni_id).await,
        vec![w.vm.group_id.clone()]
    );
}

#[tokio::test]
async fn aws_early_revoke_by_flag_and_by_delete() {
    let w = World::new("aws-revoke", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    w.create_request("by-flag", 22, "203.0.113.7/32", "10m")
        .await;
    w.create_request("by-delete", 22, "203.0.113.8/32", "10m")
        .await;
    w.phase("by-flag", Phase::Active, MINUTE).await;
    w.phase("by-delete", Phase::Active, MINUTE).await;
    assert_eq!(w.owned_rules().await.len(), 2);

    w.revoke("by-flag").await;
    let r = w.phase("by-flag", Phase::Revoked, MINUTE).await;
    assert_eq!(port_reason(&r), Some(PortReason::UserRequested));
    let rules = w.wait_owned_rules("one rule left", 1).await;
    assert_eq!(rules[0].3, "203.0.113.8/32");

    delete_and_wait_gone(&w.requests, "by-delete").await;
    assert!(w.owned_rules().await.is_empty());
}

#[tokio::test]
async fn aws_newer_request_supersedes() {
    let w = World::new("aws-supersede", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    w.create_request("first", 22, "203.0.113.7/32", "10m").await;
    w.phase("first", Phase::Active, MINUTE).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creation times have second precision
    w.create_request("second", 22, "203.0.113.7/32", "20m")
        .await;
    w.phase("second", Phase::Active, MINUTE).await;
    let first = w.phase("first", Phase::Revoked, MINUTE).await;
    assert_eq!(port_reason(&first), Some(PortReason::NewerRequestInitiated));
    let rules = w.owned_rules().await;
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        stamp_owner(&w, &rules[0].4),
        format!("{}/second", w.ns),
        "{}",
        rules[0].4
    );
}

#[tokio::test]
async fn aws_drift_is_healed_both_ways() {
    let w = World::new("aws-drift", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;

    // Someone re-opens 22 to the world: revoked again within a resync.
    aws::reopen_ssh(&w.ec2, &w.vm.group_id).await;
    let healed = Instant::now();
    eventually("22 revoked again", MINUTE, || async {
        let rules = aws::ingress_summary(&w.ec2, &w.vm.group_id).await;
        (!rules.iter().any(|r| r.1 == 22)).then_some(())
    })
    .await;
    eprintln!(
        "METRIC aws baseline drift healed in {:.3}s (resync 2s)",
        healed.elapsed().as_secs_f64()
    );

    // Someone removes the owned rule during a grant: put back.
    w.create_request("ssh", 22, "203.0.113.7/32", "10m").await;
    w.phase("ssh", Phase::Active, MINUTE).await;
    let group = w.owned_group().await.unwrap();
    let ids: Vec<String> = aws::ingress(&w.ec2, &group)
        .await
        .iter()
        .filter_map(|r| r.security_group_rule_id().map(str::to_string))
        .collect();
    w.ec2
        .revoke_security_group_ingress()
        .group_id(&group)
        .set_security_group_rule_ids(Some(ids))
        .send()
        .await
        .unwrap();
    w.wait_owned_rules("the owned rule put back", 1).await;

    eventually("drift counted", MINUTE, || async {
        let p = w.policies.get("jit").await.ok()?;
        (p.status.as_ref()?.targets.first()?.drift_corrections >= 2).then_some(p)
    })
    .await;
    // Exactly the two corrections (the reopened port, the deleted grant): more runs do
    // not count them again.
    w.operator.wait_for_runs(2).await;
    let p = w.policies.get("jit").await.unwrap();
    assert_eq!(p.status.unwrap().targets[0].drift_corrections, 2);
}

#[tokio::test]
async fn aws_deleting_the_policy_restores_everything() {
    let w = World::new("aws-delete", Faults::None).await;
    // Also a range rule that opens 22 among others: revoked, its other ports carved out.
    w.ec2
        .authorize_security_group_ingress()
        .group_id(&w.vm.group_id)
        .ip_permissions(
            aws_sdk_ec2::types::IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(20)
                .to_port(30)
                .ip_ranges(
                    aws_sdk_ec2::types::IpRange::builder()
                        .cidr_ip("10.0.0.0/8")
                        .description("legacy range")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let original = aws::ingress_summary(&w.ec2, &w.vm.group_id).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    assert!(
        !aws::ingress_summary(&w.ec2, &w.vm.group_id)
            .await
            .iter()
            .any(|r| r.1 <= 22 && 22 <= r.2)
    );
    // The rest of the range rule stays open through owned carve-outs, same source.
    let carved: Vec<(String, i32, i32, String)> = w
        .owned_rules()
        .await
        .into_iter()
        .map(|r| (r.0, r.1, r.2, r.3))
        .collect();
    assert_eq!(
        carved,
        vec![
            ("tcp".to_string(), 20, 21, "10.0.0.0/8".to_string()),
            ("tcp".to_string(), 23, 30, "10.0.0.0/8".to_string())
        ]
    );
    w.create_request("ssh", 22, "203.0.113.7/32", "10m").await;
    w.phase("ssh", Phase::Active, MINUTE).await;

    delete_and_wait_gone(&w.policies, "jit").await;
    assert_eq!(aws::ingress_summary(&w.ec2, &w.vm.group_id).await, original);
    assert!(w.owned_group().await.is_none());
    assert_eq!(
        aws::eni_groups(&w.ec2, &w.vm.eni_id).await,
        vec![w.vm.group_id.clone()]
    );
    let r = w.phase("ssh", Phase::Revoked, MINUTE).await;
    assert_eq!(port_reason(&r), Some(PortReason::PolicyChanged));
    // No stamped rule anywhere in the VPC.
    let all = w
        .ec2
        .describe_security_groups()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("vpc-id")
                .values(&w.vm.vpc_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    for g in all.security_groups() {
        for rule in aws::ingress(&w.ec2, g.group_id().unwrap()).await {
            assert!(
                !rule
                    .description()
                    .unwrap_or_default()
                    .starts_with("portcullis"),
                "{rule:?}"
            );
        }
    }
}

#[tokio::test]
async fn aws_invalid_requests_are_denied_without_cloud_writes() {
    // Without the webhook, so that the controller's own validation is what stops them.
    let w = World::new_with("aws-deny", Faults::None, false).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    // Let a run pass after Ready, then watch every call from now on.
    w.operator.wait_for_runs(1).await;
    w.proxy.clear();
    let cases = [
        (
            "wrong-port",
            23,
            "203.0.113.7/32",
            "10m",
            "spec.ports[0].port",
        ),
        (
            "too-long",
            22,
            "203.0.113.7/32",
            "2h",
            "spec.ports[0].duration",
        ),
        (
            "outside",
            22,
            "198.51.100.7/32",
            "10m",
            "spec.ports[0].sourcePrefix",
        ),
    ];
    for (name, port, source, duration, _) in cases {
        w.create_request(name, port, source, duration).await;
    }
    for (name, _, _, _, field) in cases {
        let r = w.phase(name, Phase::Denied, MINUTE).await;
        let msg = r.status.unwrap().message.unwrap_or_default();
        assert!(msg.contains(field), "{name}: {msg}");
    }
    w.operator.wait_for_runs(2).await; // a resync run after the denials
    assert_eq!(
        w.proxy.writes(),
        Vec::<String>::new(),
        "cloud writes for denied requests"
    );
    assert!(
        !w.proxy.calls().is_empty(),
        "the proxy saw no call at all: is it in the path?"
    );
}

#[tokio::test]
async fn aws_converges_under_throttling() {
    let w = World::new("aws-throttle", Faults::ThrottleEvery(3)).await;
    let start = Instant::now();
    w.create_policy("jit").await;
    w.ready_policy_within("jit", MINUTE).await;
    w.create_request("ssh", 22, "203.0.113.7/32", "10m").await;
    w.phase("ssh", Phase::Active, MINUTE).await;
    eprintln!(
        "METRIC aws throttling: baseline + grant converged in {:.1}s with every 3rd call throttled",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(w.owned_rules().await.len(), 1);
    assert!(w.proxy.injected() > 0, "no fault was injected");
    eprintln!(
        "METRIC aws throttling: converged with {} injected RequestLimitExceeded of {} calls",
        w.proxy.injected(),
        w.proxy.calls().len()
    );

    // Server errors (every 4th call a 500): revoking still converges.
    w.proxy.set_faults(Faults::ServerErrorEvery(4));
    let before = w.proxy.injected();
    let start = Instant::now();
    w.revoke("ssh").await;
    w.phase("ssh", Phase::Revoked, MINUTE).await;
    w.wait_owned_rules("the revoked rule gone", 0).await;
    assert!(w.proxy.injected() > before, "no 500 was injected");
    eprintln!(
        "METRIC aws 5xx: revoke converged in {:.1}s with every 4th call failing",
        start.elapsed().as_secs_f64()
    );
}

/// Sleeps until `t` (no-op when it is past).
async fn sleep_until(t: jiff::Timestamp) {
    let d = t.duration_since(jiff::Timestamp::now());
    if let Ok(d) = Duration::try_from(d) {
        tokio::time::sleep(d).await;
    }
}

#[tokio::test]
async fn aws_sigkill_at_any_point_converges() {
    let mut w = World::new("aws-crash", Faults::None).await;
    let original = aws::ingress_summary(&w.ec2, &w.vm.group_id).await;
    let mut kills = 0;
    let mut crash = |w: &mut World, downtime_ms: u64, when: &str| {
        w.operator.kill();
        kills += 1;
        eprintln!("SIGKILL #{kills} {when}");
        let op = &mut w.operator;
        std::thread::sleep(Duration::from_millis(downtime_ms));
        op.restart();
    };

    // While the baseline is being put in place.
    w.create_policy("jit").await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    crash(&mut w, 0, "while enforcing the baseline");
    w.ready_policy("jit").await;
    // Admission is down while the operator restarts (failurePolicy: Fail): wait for it.
    wait_for_webhook(&w.requests.clone().into_client(), &w.ns).await;

    // While grants are being opened.
    w.create_request("long", 22, "203.0.113.7/32", "10m").await;
    for (i, secs) in [12, 14, 16].iter().enumerate() {
        w.create_request(
            &format!("short-{i}"),
            22,
            &format!("203.0.113.{}/32", 20 + i),
            &format!("{secs}s"),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    crash(&mut w, 0, "60ms after four requests were filed");
    tokio::time::sleep(Duration::from_millis(400)).await;
    crash(&mut w, 100, "during the first reconciles after a restart");
    w.phase("long", Phase::Active, MINUTE).await;
    let expiries: Vec<jiff::Timestamp> = {
        let mut v = Vec::new();
        for i in 0..3 {
            let r = w.phase(&format!("short-{i}"), Phase::Active, MINUTE).await;
            v.push(r.status.unwrap().expires_at.unwrap().0);
        }
        v
    };

    // Around the expiries: just before one, just after one, and down across one.
    sleep_until(expiries[0] - jiff::SignedDuration::from_millis(150)).await;
    crash(&mut w, 0, "150ms before the first expiry");
    sleep_until(expiries[1] + jiff::SignedDuration::from_millis(30)).await;
    crash(&mut w, 0, "30ms after the second expiry");
    sleep_until(expiries[2] - jiff::SignedDuration::from_millis(500)).await;
    w.operator.kill();
    kills += 1;
    eprintln!("SIGKILL #{kills} 500ms before the third expiry, down for 2.5s");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The request of the third expiry is deleted while the operator is down: the startup
    // sweep must still remove its expired rule.
    w.requests
        .delete("short-2", &DeleteParams::default())
        .await
        .unwrap();
    let restarted = jiff::Timestamp::now();
    w.operator.restart();
    assert!(kills >= 5);

    for i in 0..2 {
        let r = w.phase(&format!("short-{i}"), Phase::Expired, MINUTE).await;
        assert_eq!(port_reason(&r), Some(PortReason::Expired));
    }
    // Exactly the desired state: one rule for `long`, nothing else, no duplicates.
    let rules = w.wait_owned_rules("only the long grant left", 1).await;
    let swept_in = jiff::Timestamp::now().duration_since(restarted);
    assert_eq!(
        (rules[0].1, rules[0].3.as_str()),
        (22, "203.0.113.7/32"),
        "{rules:?}"
    );
    assert_eq!(
        stamp_owner(&w, &rules[0].4),
        format!("{}/long", w.ns),
        "{}",
        rules[0].4
    );
    let group = w.owned_group().await.unwrap();
    let mut attached = aws::eni_groups(&w.ec2, &w.vm.eni_id).await;
    attached.sort();
    let mut want = vec![w.vm.group_id.clone(), group];
    want.sort();
    assert_eq!(attached, want);
    let foreign = aws::ingress_summary(&w.ec2, &w.vm.group_id).await;
    assert_eq!(
        foreign,
        original
            .iter()
            .filter(|r| r.1 != 22)
            .cloned()
            .collect::<Vec<_>>()
    );
    let p = w.ready_policy("jit").await;
    assert_eq!(
        p.status.unwrap().targets[0]
            .record
            .as_ref()
            .map_or(0, |r| r.revoked_rules.len()),
        1,
        "the revocation is recorded once"
    );
    eprintln!(
        "METRIC aws crash test: {kills} SIGKILLs; expired rules gone {:.2}s after the last restart",
        swept_in.as_secs_f64()
    );

    // And once the policy goes, the original rules come back exactly.
    delete_and_wait_gone(&w.policies, "jit").await;
    assert_eq!(aws::ingress_summary(&w.ec2, &w.vm.group_id).await, original);
    assert!(w.owned_group().await.is_none());
}

#[tokio::test]
async fn aws_two_replicas_only_the_leader_writes() {
    let mut w = World::new("aws-ha", Faults::None).await;
    // A second replica in the same namespace, with its own proxy to tell its calls apart.
    let tb = Testbed::shared();
    let proxy_b = Ec2Proxy::start(&tb.moto_url).await;
    let _b = Operator::start_env(tb, &w.ns, &proxy_b.url, "2s", &[("POD_NAME", "replica-b")]);
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    w.create_request("first", 22, "203.0.113.7/32", "10m").await;
    w.phase("first", Phase::Active, MINUTE).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a resync or two on both replicas
    assert!(!w.proxy.writes().is_empty(), "the leader made no write");
    assert_eq!(
        proxy_b.writes(),
        Vec::<String>::new(),
        "the follower wrote to the cloud"
    );

    // The leader dies: the follower takes the Lease, registers admission, and works.
    w.operator.kill();
    let killed = Instant::now();
    wait_for_webhook(&w.requests.clone().into_client(), &w.ns).await;
    w.create_request("second", 22, "203.0.113.8/32", "10m")
        .await;
    w.phase("second", Phase::Active, MINUTE).await;
    eprintln!(
        "METRIC failover: the second replica granted a request {:.1}s after the leader was killed (Lease 3s)",
        killed.elapsed().as_secs_f64()
    );
    assert!(!proxy_b.writes().is_empty(), "the new leader made no write");
    assert_eq!(w.owned_rules().await.len(), 2);
}
