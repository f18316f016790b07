//! `scripts/bench` (`cargo bench --bench scale`): the operator's release binary against
//! the real kube-apiserver, moto behind the counting proxy and the ARM emulator, at the
//! sizes issue 11 names. Each scenario prints a table; everything measured goes to one
//! JSON file. It asserts nothing: the numbers and the goals are compared in BENCH.md.
//!
//! Scenarios (`--scenarios a,b,…`, default all, in this order):
//! - `single`: requests one after another; created → rule in the cloud, and → Active.
//! - `burst`: `--grants` requests over `--policies` × `--targets` instances at once.
//! - `converged`: idle with all burst grants active for `--idle-resyncs` resyncs.
//! - `drift`: a revoked rule re-opened by hand → healed.
//! - `expiry`: the burst's grants all expire within a couple of seconds: lag per rule.
//! - `azure`: `--az-grants` grants over `--az-vms` VMs in two policies whose subnet NSG
//!   is shared by all of them, with the emulator's long-running operations.
//!
//! The operator's peak RSS and CPU seconds are read from /proc after each scenario.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use portcullis::api::{AccessRequest, JitPolicy, Phase};
use portcullis::domain::stamp;
use serde_json::{Value, json};
use support::arm::{ArmEmulator, ArmOptions};
use support::aws::{self, Instance};
use support::ec2_proxy::Ec2Proxy;
use support::kube_helpers::{namespace_named, wait_for_webhook};
use support::operator::Operator;
use support::testbed::{ADMIN, Testbed};

const NS: &str = "bench";

/// Command-line settings.
#[derive(Clone, Debug)]
struct Args {
    scenarios: Vec<String>,
    single: usize,
    policies: usize,
    targets: usize,
    grants: usize,
    duration_secs: u64,
    resync_secs: u64,
    idle_resyncs: u32,
    az_vms: usize,
    az_grants: usize,
    az_duration_secs: u64,
    out: PathBuf,
}

impl Args {
    fn parse() -> Args {
        let mut a = Args {
            scenarios: ["single", "burst", "converged", "drift", "expiry", "azure"]
                .map(String::from)
                .to_vec(),
            single: 100,
            policies: 10,
            targets: 10,
            grants: 1000,
            duration_secs: 240,
            resync_secs: 20,
            idle_resyncs: 3,
            az_vms: 20,
            az_grants: 200,
            az_duration_secs: 150,
            out: PathBuf::from("bench-results.json"),
        };
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < argv.len() {
            let (k, v) = (
                argv[i].as_str(),
                argv.get(i + 1).cloned().unwrap_or_default(),
            );
            let num = || {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{k} wants a number, not {v:?}"))
            };
            match k {
                "--scenarios" => a.scenarios = v.split(',').map(String::from).collect(),
                "--single" => a.single = num() as usize,
                "--policies" => a.policies = num() as usize,
                "--targets" => a.targets = num() as usize,
                "--grants" => a.grants = num() as usize,
                "--duration" => a.duration_secs = num(),
                "--resync" => a.resync_secs = num(),
                "--idle-resyncs" => a.idle_resyncs = num() as u32,
                "--az-vms" => a.az_vms = num() as usize,
                "--az-grants" => a.az_grants = num() as usize,
                "--az-duration" => a.az_duration_secs = num(),
                "--out" => a.out = PathBuf::from(&v),
                // `cargo bench` passes `--bench`; anything else unknown is refused.
                "--bench" => {
                    i += 1;
                    continue;
                }
                other => panic!("unknown argument {other}"),
            }
            i += 2;
        }
        a
    }

    fn wants(&self, s: &str) -> bool {
        self.scenarios.iter().any(|x| x == s)
    }
}

// ----- statistics and output -----

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// p50, p99 and max of `v` (seconds), as JSON and as text.
fn dist(mut v: Vec<f64>) -> (Value, String) {
    v.sort_by(f64::total_cmp);
    let (p50, p99, max) = (pct(&v, 0.5), pct(&v, 0.99), pct(&v, 1.0));
    (
        json!({"n": v.len(), "p50": p50, "p99": p99, "max": max}),
        format!(
            "p50 {p50:.3} s, p99 {p99:.3} s, max {max:.3} s (n={})",
            v.len()
        ),
    )
}

fn table(title: &str, rows: &[(String, String)]) {
    println!("\n## {title}\n");
    println!("| figure | measured |");
    println!("|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn instant_of(t: Timestamp) -> Instant {
    let left = t.duration_since(Timestamp::now());
    let now = Instant::now();
    match Duration::try_from(left) {
        Ok(d) => now + d,
        Err(_) => now - Duration::try_from(-left).unwrap_or_default(),
    }
}

/// Signed seconds from `b` to `a`.
fn diff(a: Instant, b: Instant) -> f64 {
    if a >= b { secs(a - b) } else { -secs(b - a) }
}

// ----- the operator process -----

/// Peak and current RSS (MB) and CPU seconds (user + system) of process `pid`.
fn proc_stats(pid: u32) -> (f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3.
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state (field 3).
    let cpu = (ticks(11) + ticks(12)) / tick;
    (kb("VmHWM:") / 1024.0, kb("VmRSS:") / 1024.0, cpu)
}

// ----- what the bench watches -----

/// When each request was first seen in each phase (the bench's own watch).
#[derive(Default)]
struct Seen {
    phases: HashMap<String, HashMap<Phase, Instant>>,
    expires: HashMap<String, Timestamp>,
}

impl Seen {
    fn at(&self, name: &str, phase: Phase) -> Option<Instant> {
        self.phases.get(name)?.get(&phase).copied()
    }
    fn count(&self, names: &[String], phase: Phase) -> usize {
        names.iter().filter(|n| self.at(n, phase).is_some()).count()
    }
}

fn watch_requests(api: Api<AccessRequest>) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).applied_objects();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let Ok(r) = item else { continue };
            let now = Instant::now();
            let name = r.metadata.name.clone().unwrap_or_default();
            let Some(st) = r.status else { continue };
            let mut seen = s.lock().unwrap();
            if let Some(t) = st.expires_at {
                seen.expires.insert(name.clone(), t.0);
            }
            if let Some(p) = st.phase {
                seen.phases.entry(name).or_default().entry(p).or_insert(now);
            }
        }
    });
    seen
}

// ----- AWS fixtures -----

async fn seed_instances(ec2: &aws_sdk_ec2::Client, n: usize) -> Vec<Instance> {
    // moto is a single Python process: seed a few at a time.
    futures::stream::iter(0..n)
        .map(|_| aws::instance(ec2))
        .buffer_unordered(4)
        .collect()
        .await
}

fn aws_policy(name: &str, instances: &[Instance]) -> JitPolicy {
    let targets: String = instances
        .iter()
        .enumerate()
        .map(|(i, vm)| {
            format!(
                "    - name: t{i}\n      aws: {{region: {}, instanceId: {}}}\n",
                aws::REGION,
                vm.instance_id
            )
        })
        .collect();
    let yaml = format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: {name}}}\nspec:\n  targets:\n{targets}  ports:\n    - {{port: 22, protocol: TCP, allowedSourcePrefixes: [\"10.0.0.0/8\"], maxDuration: 2h}}\n"
    );
    serde_saphyr::from_str(&yaml).expect("policy YAML")
}

fn azure_policy(name: &str, vm_ids: &[String]) -> JitPolicy {
    let targets: String = vm_ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("    - name: t{i}\n      azure: {{vmId: {id}}}\n"))
        .collect();
    let yaml = format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: {name}}}\nspec:\n  targets:\n{targets}  ports:\n    - {{port: 22, protocol: TCP, allowedSourcePrefixes: [\"10.0.0.0/8\"], maxDuration: 2h}}\n"
    );
    serde_saphyr::from_str(&yaml).expect("policy YAML")
}

/// A unique /32 in 10.0.0.0/8 for request number `j`.
fn source(j: usize) -> String {
    format!("10.{}.{}.{}/32", (j >> 16) & 255, (j >> 8) & 255, j & 255)
}

fn request(name: &str, policy: &str, target: &str, src: &str, secs: u64) -> AccessRequest {
    let yaml = format!(
        "apiVersion: jit.portcullis.dev/v1alpha1\nkind: AccessRequest\nmetadata: {{name: {name}}}\nspec:\n  policyRef: {{name: {policy}}}\n  target: {target}\n  ports:\n    - {{port: 22, sourcePrefix: \"{src}\", duration: {secs}s}}\n  justification: benchmark\n"
    );
    serde_saphyr::from_str(&yaml).expect("request YAML")
}

/// Creates `reqs` with 32 calls in flight; how long it took.
async fn create_all(api: &Api<AccessRequest>, reqs: Vec<AccessRequest>) -> Duration {
    let start = Instant::now();
    let results: Vec<Result<AccessRequest, kube::Error>> = futures::stream::iter(reqs)
        .map(|r| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &r).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        if let Err(e) = r {
            panic!("cannot create a request: {e}");
        }
    }
    start.elapsed()
}

async fn wait_ready(api: &Api<JitPolicy>, names: &[String], timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let ready = api
            .list(&Default::default())
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|p| names.contains(p.metadata.name.as_ref().unwrap()))
                    .filter(|p| {
                        p.status.as_ref().is_some_and(|s| {
                            portcullis::api::conditions::is_true(&s.conditions, "Ready")
                                && s.observed_generation == p.metadata.generation
                        })
                    })
                    .count()
            })
            .unwrap_or(0);
        if ready == names.len() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "only {ready} of {} policies Ready after {timeout:?}",
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An owned grant rule in EC2: rule id, owner request name, expiry.
#[derive(Clone, Debug)]
struct Ec2Rule {
    id: String,
    group: String,
    request: String,
    expires: Option<Timestamp>,
}

async fn owned_ec2_rules(ec2: &aws_sdk_ec2::Client, groups: &[String]) -> Vec<Ec2Rule> {
    if groups.is_empty() {
        return Vec::new();
    }
    let cluster = stamp::cluster_id(NS);
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let Ok(page) = ec2
            .describe_security_group_rules()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("group-id")
                    .set_values(Some(groups.to_vec()))
                    .build(),
            )
            .set_next_token(token)
            .send()
            .await
        else {
            return out;
        };
        for r in page.security_group_rules() {
            if r.is_egress() == Some(true) {
                continue;
            }
            let Some(s) = r.description().and_then(|d| stamp::parse_own(&cluster, d)) else {
                continue;
            };
            out.push(Ec2Rule {
                id: r.security_group_rule_id().unwrap_or_default().to_string(),
                group: r.group_id().unwrap_or_default().to_string(),
                request: s.owner.rsplit('/').next().unwrap_or_default().to_string(),
                expires: s.expires_at,
            });
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return out;
        }
    }
}

fn by_action(calls: &[support::ec2_proxy::TimedCall]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in calls {
        *m.entry(c.action.clone()).or_default() += 1;
    }
    m
}

/// Most calls answered in any one second of `times`.
fn peak_per_second(times: &[Instant]) -> usize {
    let mut t: Vec<Instant> = times.to_vec();
    t.sort();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= Duration::from_secs(1) {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// The API server's request counter (all clients), from its /metrics.
fn apiserver_requests(tb: &Testbed) -> f64 {
    let out = tb
        .kubectl(ADMIN)
        .args(["get", "--raw", "/metrics"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Bench {
    args: Args,
    tb: Testbed,
    ec2: aws_sdk_ec2::Client,
    proxy: Ec2Proxy,
    arm: ArmEmulator,
    operator: Operator,
    requests: Api<AccessRequest>,
    policies: Api<JitPolicy>,
    seen: Arc<Mutex<Seen>>,
    results: serde_json::Map<String, Value>,
    /// The burst's instances and request names.
    burst_vms: Vec<Instance>,
    burst_names: Vec<String>,
    /// Azure: the VMs (NIC NSG ids) and the shared subnet NSG.
    az_vm_ids: Vec<String>,
    az_nsgs: Vec<String>,
}

impl Bench {
    fn pid(&self) -> u32 {
        self.operator.pid().expect("the operator runs")
    }

    fn record(&mut self, scenario: &str, v: Value) {
        let (hwm, rss, cpu) = proc_stats(self.pid());
        let mut v = v;
        v["operator"] = json!({"peak_rss_mb": hwm, "rss_mb": rss, "cpu_seconds": cpu});
        println!(
            "\noperator after {scenario}: peak RSS {hwm:.1} MB, RSS {rss:.1} MB, CPU {cpu:.1} s"
        );
        self.results.insert(scenario.to_string(), v);
        self.save();
    }

    fn save(&self) {
        let doc = json!({
            "args": format!("{:?}", self.args),
            "machine": machine(),
            "results": self.results,
        });
        std::fs::write(&self.args.out, serde_json::to_string_pretty(&doc).unwrap())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.args.out.display()));
    }

    async fn owned_groups(&self) -> Vec<String> {
        aws::owned_groups(&self.ec2, NS).await
    }

    async fn single(&mut self) {
        let n = self.args.single;
        let vm = aws::instance(&self.ec2).await;
        self.policies
            .create(
                &PostParams::default(),
                &aws_policy("single", std::slice::from_ref(&vm)),
            )
            .await
            .unwrap();
        wait_ready(&self.policies, &["single".into()], Duration::from_secs(120)).await;
        let mut to_cloud = Vec::new();
        let mut to_active = Vec::new();
        let mut to_closed = Vec::new();
        for i in 0..n {
            let name = format!("single-{i}");
            let r = request(&name, "single", "t0", &source(200_000 + i), 600);
            let t0 = Instant::now();
            self.requests
                .create(&PostParams::default(), &r)
                .await
                .unwrap();
            let (mut cloud, mut active) = (None, None);
            while cloud.is_none() || active.is_none() {
                assert!(
                    t0.elapsed() < Duration::from_secs(120),
                    "{name}: not open after 120 s"
                );
                if active.is_none() {
                    active = self.seen.lock().unwrap().at(&name, Phase::Active);
                }
                if cloud.is_none() {
                    // The group is made with the first grant and deleted with the last:
                    // look it up each time.
                    let groups = aws::owned_groups(&self.ec2, NS).await;
                    if owned_ec2_rules(&self.ec2, &groups)
                        .await
                        .iter()
                        .any(|r| r.request == name)
                    {
                        cloud = Some(Instant::now());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            to_cloud.push(secs(cloud.unwrap() - t0));
            to_active.push(secs(active.unwrap() - t0));
            // Revoke by deleting it; the next request starts from an empty group.
            let t1 = Instant::now();
            self.requests
                .delete(&name, &DeleteParams::default())
                .await
                .unwrap();
            loop {
                let groups = aws::owned_groups(&self.ec2, NS).await;
                let gone = !owned_ec2_rules(&self.ec2, &groups)
                    .await
                    .iter()
                    .any(|r| r.request == name);
                if gone {
                    to_closed.push(secs(t1.elapsed()));
                    break;
                }
                assert!(
                    t1.elapsed() < Duration::from_secs(120),
                    "{name} never closed"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let (c_json, c_text) = dist(to_cloud);
        let (a_json, a_text) = dist(to_active);
        let (d_json, d_text) = dist(to_closed);
        table(
            &format!("single: {n} requests one after another (one target)"),
            &[
                ("created → rule in EC2".into(), c_text),
                ("created → Active".into(), a_text),
                ("deleted → rule gone".into(), d_text),
            ],
        );
        self.policies
            .delete("single", &DeleteParams::default())
            .await
            .ok();
        self.record(
            "single",
            json!({"requests": n, "to_cloud": c_json, "to_active": a_json, "delete_to_gone": d_json}),
        );
    }

    async fn burst(&mut self) {
        let (p, t, g) = (self.args.policies, self.args.targets, self.args.grants);
        println!("\nseeding {} instances in moto …", p * t);
        let seeded = Instant::now();
        self.burst_vms = seed_instances(&self.ec2, p * t).await;
        println!("seeded in {:.1} s", secs(seeded.elapsed()));
        let names: Vec<String> = (0..p).map(|i| format!("p{i}")).collect();
        let t_policies = Instant::now();
        for (i, name) in names.iter().enumerate() {
            let vms = &self.burst_vms[i * t..(i + 1) * t];
            self.policies
                .create(&PostParams::default(), &aws_policy(name, vms))
                .await
                .unwrap();
        }
        let baseline = wait_ready(&self.policies, &names, Duration::from_secs(600)).await;
        let baseline_calls = by_action(&self.proxy.timed_calls());
        println!(
            "baseline enforced on {} instances in {:.1} s",
            p * t,
            secs(t_policies.elapsed())
        );
        self.proxy.clear_timed();
        let cpu0 = proc_stats(self.pid()).2;

        let reqs: Vec<AccessRequest> = (0..g)
            .map(|j| {
                let k = j % (p * t);
                request(
                    &format!("b-{j}"),
                    &format!("p{}", k / t),
                    &format!("t{}", k % t),
                    &source(j),
                    self.args.duration_secs,
                )
            })
            .collect();
        self.burst_names = (0..g).map(|j| format!("b-{j}")).collect();
        let t0 = Instant::now();
        let created = create_all(&self.requests, reqs).await;
        let t_created = Instant::now();
        println!("{g} requests created in {:.1} s", secs(created));
        let deadline = Duration::from_secs(self.args.duration_secs.saturating_sub(10).max(60));
        let mut all_rules_at = None;
        let mut last_rule_poll = Instant::now() - Duration::from_secs(5);
        let mut rules_n = 0;
        loop {
            let active = self
                .seen
                .lock()
                .unwrap()
                .count(&self.burst_names, Phase::Active);
            if all_rules_at.is_none() && last_rule_poll.elapsed() >= Duration::from_millis(500) {
                last_rule_poll = Instant::now();
                let groups = self.owned_groups().await;
                rules_n = owned_ec2_rules(&self.ec2, &groups).await.len();
                if rules_n >= g {
                    all_rules_at = Some(Instant::now());
                }
            }
            if active == g && all_rules_at.is_some() {
                break;
            }
            if t0.elapsed() > deadline {
                println!("burst: gave up after {deadline:?}: {active} Active, {rules_n} rules");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let actives: Vec<Instant> = {
            let seen = self.seen.lock().unwrap();
            self.burst_names
                .iter()
                .filter_map(|n| seen.at(n, Phase::Active))
                .collect()
        };
        let n_active = actives.len();
        let from_start: Vec<f64> = actives.iter().map(|a| diff(*a, t0)).collect();
        let last_active = actives.iter().max().copied();
        let calls = self.proxy.timed_calls();
        let cpu = proc_stats(self.pid()).2 - cpu0;
        let writes: Vec<Instant> = calls
            .iter()
            .filter(|c| support::ec2_proxy::WRITES.contains(&c.action.as_str()))
            .map(|c| c.at)
            .collect();
        let reads: Vec<Instant> = calls
            .iter()
            .filter(|c| !support::ec2_proxy::WRITES.contains(&c.action.as_str()))
            .map(|c| c.at)
            .collect();
        let (d_json, d_text) = dist(from_start);
        let all_active = last_active.map(|l| diff(l, t0));
        let after_apply = last_active.map(|l| diff(l, t_created));
        let rules_at = all_rules_at.map(|r| diff(r, t0));
        table(
            &format!(
                "burst: {g} requests over {} instances ({p} policies × {t} targets), created at once",
                p * t
            ),
            &[
                (
                    "baseline enforced on all instances (policies Ready)".into(),
                    format!("{:.1} s", secs(baseline)),
                ),
                (
                    "creating the requests (32 in flight, through the webhook)".into(),
                    format!("{:.1} s", secs(created)),
                ),
                (
                    "all Active, from the first create".into(),
                    format!(
                        "{} ({n_active} of {g})",
                        all_active.map_or("not reached".into(), |s| format!("{s:.1} s"))
                    ),
                ),
                (
                    "all Active, after the last create returned".into(),
                    after_apply.map_or("not reached".into(), |s| format!("{s:.1} s")),
                ),
                (
                    "all rules in EC2, from the first create".into(),
                    rules_at.map_or(format!("not reached ({rules_n} of {g})"), |s| {
                        format!("{s:.1} s")
                    }),
                ),
                ("per request: first create → Active".into(), d_text),
                (
                    "EC2 calls during the burst".into(),
                    format!(
                        "{} ({} writes, {} reads)",
                        calls.len(),
                        writes.len(),
                        reads.len()
                    ),
                ),
                (
                    "EC2 calls by action".into(),
                    format!("{:?}", by_action(&calls)),
                ),
                (
                    "peak EC2 writes / s; reads / s".into(),
                    format!("{} ; {}", peak_per_second(&writes), peak_per_second(&reads)),
                ),
                (
                    "operator CPU seconds for the burst".into(),
                    format!(
                        "{cpu:.1} s ({:.1} per 1,000 grants)",
                        cpu * 1000.0 / g as f64
                    ),
                ),
            ],
        );
        self.record(
            "burst",
            json!({
                "instances": p * t, "policies": p, "targets_per_policy": t, "grants": g,
                "baseline_ready_s": secs(baseline), "baseline_calls": baseline_calls,
                "create_s": secs(created), "active": n_active,
                "all_active_s": all_active, "all_active_after_apply_s": after_apply,
                "all_rules_s": rules_at, "per_request_active": d_json,
                "calls": by_action(&calls), "writes": writes.len(), "reads": reads.len(),
                "peak_writes_per_s": peak_per_second(&writes), "peak_reads_per_s": peak_per_second(&reads),
                "cpu_s": cpu,
            }),
        );
    }

    async fn converged(&mut self) {
        let resync = self.args.resync_secs;
        let window = Duration::from_secs(resync * u64::from(self.args.idle_resyncs));
        // Let the burst's last runs and status writes settle first.
        tokio::time::sleep(Duration::from_secs(resync)).await;
        self.proxy.clear_timed();
        let api0 = apiserver_requests(&self.tb);
        let cpu0 = proc_stats(self.pid()).2;
        println!(
            "\nidle for {window:?} ({} resyncs of {resync} s) …",
            self.args.idle_resyncs
        );
        tokio::time::sleep(window).await;
        let calls = self.proxy.timed_calls();
        let api = apiserver_requests(&self.tb) - api0;
        let cpu = proc_stats(self.pid()).2 - cpu0;
        let writes = calls
            .iter()
            .filter(|c| support::ec2_proxy::WRITES.contains(&c.action.as_str()))
            .count();
        let reads = calls.len() - writes;
        let targets = self.burst_vms.len().max(1);
        let per = reads as f64 / targets as f64 / f64::from(self.args.idle_resyncs);
        let active = self
            .seen
            .lock()
            .unwrap()
            .count(&self.burst_names, Phase::Active);
        table(
            &format!(
                "converged: {targets} targets, {active} active grants, idle {} s (--resync {resync}s)",
                window.as_secs()
            ),
            &[
                ("EC2 writes".into(), writes.to_string()),
                (
                    "EC2 reads".into(),
                    format!("{reads} ({per:.2} per target per resync)"),
                ),
                (
                    "EC2 reads by action".into(),
                    format!("{:?}", by_action(&calls)),
                ),
                (
                    "API server requests / min (all clients)".into(),
                    format!("{:.0}", api * 60.0 / secs(window)),
                ),
                (
                    "operator CPU".into(),
                    format!("{cpu:.2} s in {} s", window.as_secs()),
                ),
            ],
        );
        self.record(
            "converged",
            json!({
                "targets": targets, "active_grants": active, "idle_s": window.as_secs(), "resync_s": resync,
                "writes": writes, "reads": reads, "reads_per_target_per_resync": per,
                "calls": by_action(&calls), "apiserver_requests_per_min": api * 60.0 / secs(window),
                "cpu_s": cpu,
            }),
        );
    }

    async fn drift(&mut self) {
        let vm = match self.burst_vms.first() {
            Some(vm) => vm,
            None => panic!("drift needs the burst's instances (run burst first)"),
        };
        let group = vm.group_id.clone();
        aws::reopen_ssh(&self.ec2, &group).await;
        let t0 = Instant::now();
        let healed = loop {
            let open = aws::ingress_summary(&self.ec2, &group)
                .await
                .iter()
                .any(|r| r.1 == 22);
            if !open {
                break Some(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(self.args.resync_secs * 3 + 30) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        table(
            "drift: 22/tcp from 0.0.0.0/0 re-added by hand to a governed group",
            &[(
                format!("healed (--resync {}s)", self.args.resync_secs),
                healed.map_or("not healed".into(), |d| format!("{:.1} s", secs(d))),
            )],
        );
        self.record(
            "drift",
            json!({"healed_s": healed.map(secs), "resync_s": self.args.resync_secs}),
        );
    }

    async fn expiry(&mut self) {
        let groups = self.owned_groups().await;
        let rules = owned_ec2_rules(&self.ec2, &groups).await;
        let burst: std::collections::HashSet<&str> =
            self.burst_names.iter().map(String::as_str).collect();
        let rules: Vec<Ec2Rule> = rules
            .into_iter()
            .filter(|r| burst.contains(r.request.as_str()))
            .collect();
        let Some(last) = rules.iter().filter_map(|r| r.expires).max() else {
            println!("expiry: no burst grants open");
            return;
        };
        let first = rules.iter().filter_map(|r| r.expires).min().unwrap();
        println!(
            "\n{} grant rules expire between {first} and {last} ({:.0} s spread); waiting …",
            rules.len(),
            last.duration_since(first).as_secs_f64()
        );
        let wait = Duration::try_from(last.duration_since(Timestamp::now())).unwrap_or_default()
            + Duration::from_secs(12);
        self.proxy.clear_timed();
        let cpu0 = proc_stats(self.pid()).2;
        tokio::time::sleep(wait).await;
        let cpu = proc_stats(self.pid()).2 - cpu0;
        let calls = self.proxy.timed_calls();
        let mut revoked: HashMap<String, Instant> = HashMap::new();
        for c in calls
            .iter()
            .filter(|c| c.action == "RevokeSecurityGroupIngress" && c.status == 200)
        {
            for id in c.param_values("SecurityGroupRuleId") {
                revoked.entry(id).or_insert(c.at);
            }
        }
        // A group whose grants are all due is detached and deleted whole: its rules close
        // with the DeleteSecurityGroup call.
        let mut deleted: HashMap<String, Instant> = HashMap::new();
        for c in calls
            .iter()
            .filter(|c| c.action == "DeleteSecurityGroup" && c.status == 200)
        {
            for g in c
                .params
                .split('&')
                .filter_map(|kv| kv.strip_prefix("GroupId="))
            {
                deleted.entry(g.to_string()).or_insert(c.at);
            }
        }
        let left = owned_ec2_rules(&self.ec2, &self.owned_groups().await).await;
        let mut lags = Vec::new();
        let mut late = 0;
        let mut never = 0;
        for r in &rules {
            let exp = instant_of(r.expires.unwrap());
            let closed = match (revoked.get(&r.id), deleted.get(&r.group)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match closed {
                Some(at) => {
                    let lag = diff(*at, exp);
                    if lag > 2.0 {
                        late += 1;
                    }
                    lags.push(lag);
                }
                None if left.iter().any(|l| l.id == r.id) => never += 1,
                // Gone without a call the proxy saw closing it: count as late.
                None => late += 1,
            }
        }
        let phase_lags: Vec<f64> = {
            let seen = self.seen.lock().unwrap();
            self.burst_names
                .iter()
                .filter_map(|n| {
                    let exp = *seen.expires.get(n)?;
                    let at = seen.at(n, Phase::Expired)?;
                    Some(diff(at, instant_of(exp)))
                })
                .collect()
        };
        let n_expired = phase_lags.len();
        let (l_json, l_text) = dist(lags);
        let (p_json, p_text) = dist(phase_lags);
        let writes: Vec<Instant> = calls
            .iter()
            .filter(|c| support::ec2_proxy::WRITES.contains(&c.action.as_str()))
            .map(|c| c.at)
            .collect();
        table(
            &format!(
                "expiry: {} grants expiring within {:.0} s of each other",
                rules.len(),
                last.duration_since(first).as_secs_f64()
            ),
            &[
                (
                    "lag expiresAt → rule revoked or its group deleted (proxy)".into(),
                    l_text,
                ),
                (
                    "alive past expiresAt + 2 s (still open included)".into(),
                    format!("{}", late + never),
                ),
                ("still open at the end".into(), format!("{never}")),
                (
                    "lag expiresAt → phase Expired".into(),
                    format!("{p_text} ({n_expired} Expired)"),
                ),
                (
                    "EC2 calls while expiring".into(),
                    format!("{:?}", by_action(&calls)),
                ),
                (
                    "peak EC2 writes / s".into(),
                    peak_per_second(&writes).to_string(),
                ),
                (
                    "operator CPU".into(),
                    format!(
                        "{cpu:.1} s ({:.1} per 1,000 grants)",
                        cpu * 1000.0 / rules.len() as f64
                    ),
                ),
            ],
        );
        self.record(
            "expiry",
            json!({
                "grants": rules.len(), "spread_s": last.duration_since(first).as_secs_f64(),
                "revoke_lag": l_json, "alive_past_2s": late + never, "never_closed": never,
                "expired_phase_lag": p_json, "calls": by_action(&calls),
                "peak_writes_per_s": peak_per_second(&writes), "cpu_s": cpu,
            }),
        );
    }

    async fn azure(&mut self) {
        let (vms, g, d) = (
            self.args.az_vms,
            self.args.az_grants,
            self.args.az_duration_secs,
        );
        let half = vms / 2;
        let names = vec!["az-a".to_string(), "az-b".to_string()];
        self.policies
            .create(
                &PostParams::default(),
                &azure_policy("az-a", &self.az_vm_ids[..half]),
            )
            .await
            .unwrap();
        self.policies
            .create(
                &PostParams::default(),
                &azure_policy("az-b", &self.az_vm_ids[half..]),
            )
            .await
            .unwrap();
        let baseline = wait_ready(&self.policies, &names, Duration::from_secs(300)).await;
        let baseline_writes = self.arm.writes().len();
        self.arm.clear_calls();
        let cpu0 = proc_stats(self.pid()).2;
        let reqs: Vec<AccessRequest> = (0..g)
            .map(|j| {
                let k = j % vms;
                let (policy, target) = if k < half {
                    ("az-a", k)
                } else {
                    ("az-b", k - half)
                };
                request(
                    &format!("az-{j}"),
                    policy,
                    &format!("t{target}"),
                    &source(100_000 + j),
                    d,
                )
            })
            .collect();
        let req_names: Vec<String> = (0..g).map(|j| format!("az-{j}")).collect();
        let t0 = Instant::now();
        let created = create_all(&self.requests, reqs).await;
        let t_created = Instant::now();
        let cluster = stamp::cluster_id(NS);
        // Allow rules by (NSG, name) → expiry, polled in process (no HTTP).
        let owned_allows = |arm: &ArmEmulator, nsgs: &[String]| {
            let mut m: HashMap<(String, String), Option<Timestamp>> = HashMap::new();
            for nsg in nsgs {
                for r in arm.rules(nsg) {
                    let p = &r["properties"];
                    if p["access"] != "Allow" {
                        continue;
                    }
                    let Some(s) = p["description"]
                        .as_str()
                        .and_then(|d| stamp::parse_own(&cluster, d))
                    else {
                        continue;
                    };
                    m.insert(
                        (
                            nsg.clone(),
                            r["name"].as_str().unwrap_or_default().to_string(),
                        ),
                        s.expires_at,
                    );
                }
            }
            m
        };
        let mut all_rules_at = None;
        let want_rules = 2 * g; // one in the VM's NIC NSG and one in the shared subnet NSG
        let mut n_rules = 0;
        loop {
            let active = self.seen.lock().unwrap().count(&req_names, Phase::Active);
            if all_rules_at.is_none() {
                n_rules = owned_allows(&self.arm, &self.az_nsgs).len();
                if n_rules >= want_rules {
                    all_rules_at = Some(Instant::now());
                }
            }
            if active == g && all_rules_at.is_some() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(d.saturating_sub(10)) {
                println!("azure: gave up: {active} Active, {n_rules} rules");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let burst_calls = self.arm.calls();
        let actives: Vec<Instant> = {
            let seen = self.seen.lock().unwrap();
            req_names
                .iter()
                .filter_map(|n| seen.at(n, Phase::Active))
                .collect()
        };
        let n_active = actives.len();
        let last_active = actives.iter().max().copied();
        let (a_json, a_text) = dist(actives.iter().map(|a| diff(*a, t0)).collect());
        let status_count =
            |calls: &[support::arm::Call], s: u16| calls.iter().filter(|c| c.status == s).count();
        let w: Vec<Instant> = burst_calls
            .iter()
            .filter(|c| c.is_write())
            .map(|c| c.at)
            .collect();
        let r: Vec<Instant> = burst_calls
            .iter()
            .filter(|c| !c.is_write())
            .map(|c| c.at)
            .collect();

        // Expiry: poll the NSGs every 50 ms until every grant rule is gone.
        let snapshot = owned_allows(&self.arm, &self.az_nsgs);
        self.arm.clear_calls();
        let mut gone_at: HashMap<(String, String), Instant> = HashMap::new();
        let last_exp = snapshot.values().flatten().max().copied();
        let end = last_exp.map(|t| instant_of(t) + Duration::from_secs(15));
        while let Some(end) = end {
            let now_rules = owned_allows(&self.arm, &self.az_nsgs);
            let now = Instant::now();
            for k in snapshot.keys() {
                if !now_rules.contains_key(k) {
                    gone_at.entry(k.clone()).or_insert(now);
                }
            }
            if gone_at.len() == snapshot.len() || now > end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cpu = proc_stats(self.pid()).2 - cpu0;
        let mut lags = Vec::new();
        let mut late = 0;
        for (k, exp) in &snapshot {
            let Some(exp) = exp else { continue };
            match gone_at.get(k) {
                Some(at) => {
                    let lag = diff(*at, instant_of(*exp));
                    if lag > 2.0 {
                        late += 1;
                    }
                    lags.push(lag);
                }
                None => late += 1,
            }
        }
        let expiry_calls = self.arm.calls();
        let ew: Vec<Instant> = expiry_calls
            .iter()
            .filter(|c| c.is_write())
            .map(|c| c.at)
            .collect();
        let (l_json, l_text) = dist(lags);
        let writes = w.len();
        table(
            &format!(
                "azure: {g} grants over {vms} VMs in 2 policies; every VM its own NIC NSG, one subnet NSG shared by all"
            ),
            &[
                (
                    "baseline (both policies Ready)".into(),
                    format!("{:.1} s, {baseline_writes} ARM writes", secs(baseline)),
                ),
                (
                    "creating the requests".into(),
                    format!("{:.1} s", secs(created)),
                ),
                (
                    "all Active, from the first create".into(),
                    last_active.map_or(format!("not reached ({n_active} of {g})"), |l| {
                        format!("{:.1} s", diff(l, t0))
                    }),
                ),
                (
                    "all Active, after the last create returned".into(),
                    last_active.map_or("not reached".into(), |l| {
                        format!("{:.1} s", diff(l, t_created))
                    }),
                ),
                (
                    "all rules in the NSGs (NIC + subnet)".into(),
                    all_rules_at.map_or(format!("not reached ({n_rules} of {want_rules})"), |a| {
                        format!("{:.1} s", diff(a, t0))
                    }),
                ),
                ("per request: first create → Active".into(), a_text),
                (
                    "ARM writes for the burst".into(),
                    format!(
                        "{writes} ({:.2} per grant), {} reads",
                        writes as f64 / g as f64,
                        r.len()
                    ),
                ),
                (
                    "peak ARM writes / s; reads / s".into(),
                    format!("{} ; {}", peak_per_second(&w), peak_per_second(&r)),
                ),
                (
                    "400 (SecurityRuleConflict) / 409 / 429 answers in the burst".into(),
                    format!(
                        "{} / {} / {}",
                        status_count(&burst_calls, 400),
                        status_count(&burst_calls, 409),
                        status_count(&burst_calls, 429)
                    ),
                ),
                (
                    "expiry lag expiresAt → rule gone (close lead 3 s)".into(),
                    l_text,
                ),
                ("rules alive past expiresAt + 2 s".into(), late.to_string()),
                (
                    "ARM writes while expiring; peak / s".into(),
                    format!("{} ; {}", ew.len(), peak_per_second(&ew)),
                ),
                (
                    "400 / 409 / 429 answers while expiring".into(),
                    format!(
                        "{} / {} / {}",
                        status_count(&expiry_calls, 400),
                        status_count(&expiry_calls, 409),
                        status_count(&expiry_calls, 429)
                    ),
                ),
                (
                    "operator CPU (burst + expiry)".into(),
                    format!("{cpu:.1} s"),
                ),
            ],
        );
        self.record(
            "azure",
            json!({
                "vms": vms, "grants": g, "baseline_s": secs(baseline), "baseline_writes": baseline_writes,
                "create_s": secs(created), "active": n_active,
                "all_active_s": last_active.map(|l| diff(l, t0)),
                "all_active_after_apply_s": last_active.map(|l| diff(l, t_created)),
                "all_rules_s": all_rules_at.map(|a| diff(a, t0)), "per_request_active": a_json,
                "writes": writes, "reads": r.len(), "writes_per_grant": writes as f64 / g as f64,
                "peak_writes_per_s": peak_per_second(&w), "peak_reads_per_s": peak_per_second(&r),
                "conflicts_400": status_count(&burst_calls, 400), "busy_409": status_count(&burst_calls, 409),
                "throttled_429": status_count(&burst_calls, 429),
                "expiry_lag": l_json, "alive_past_2s": late,
                "expiry_writes": ew.len(), "expiry_peak_writes_per_s": peak_per_second(&ew),
                "expiry_conflicts_400": status_count(&expiry_calls, 400),
                "cpu_s": cpu,
            }),
        );
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory": mem,
    })
}

/// Seeds the Azure VMs: one virtual network, one subnet whose NSG every VM shares, and
/// per VM a NIC with its own NSG.
fn seed_azure(arm: &ArmEmulator, n: usize) -> (Vec<String>, Vec<String>) {
    let subnet_nsg = arm.seed_nsg("rg-bench", "shared-subnet-nsg");
    let subnet = arm.seed_vnet_subnet(
        "rg-bench",
        "bench-vnet",
        "workloads",
        "10.50.0.0/16",
        Some(&subnet_nsg),
    );
    let mut vm_ids = Vec::new();
    let mut nsgs = vec![subnet_nsg];
    for i in 0..n {
        let nsg = arm.seed_nsg("rg-bench", &format!("vm{i}-nic-nsg"));
        let ip = format!("10.50.{}.{}", i / 200, 4 + i % 200);
        let nic = arm.seed_nic(
            "rg-bench",
            &format!("vm{i}-nic"),
            &subnet,
            &[&ip],
            Some(&nsg),
        );
        vm_ids.push(arm.seed_vm("rg-bench", &format!("vm{i}"), &[&nic]));
        nsgs.push(nsg);
    }
    (vm_ids, nsgs)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!("# Portcullis benchmark\n\n{args:?}\nmachine: {}", machine());
    let tb = Testbed::start().expect("the test bed starts");
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    namespace_named(&client, NS).await;
    let ec2 = aws::client(&tb.moto_url);
    let proxy = Ec2Proxy::start(&tb.moto_url).await;
    // The emulator's long-running operations as they are by default: one poll answers
    // InProgress (Retry-After 1 s), the next Succeeded.
    let arm = ArmEmulator::start_with(ArmOptions::default()).await;
    let (az_vm_ids, az_nsgs) = seed_azure(&arm, args.az_vms);
    let ca = tb.dir.join("arm-ca.pem");
    std::fs::write(&ca, &arm.ca_pem).unwrap();
    let ca = ca.display().to_string();
    let webhook = vec![
        "--webhook-listen".to_string(),
        "127.0.0.1:0".to_string(),
        "--webhook-url".into(),
        "https://127.0.0.1:0".to_string(),
        "--webhook-config-name".into(),
        format!("portcullis-{NS}"),
    ];
    let env = [
        ("PORTCULLIS_ARM_ENDPOINT", arm.url.as_str()),
        ("PORTCULLIS_ARM_CA_FILE", ca.as_str()),
        ("PORTCULLIS_ARM_TOKEN", arm.token.as_str()),
        // Production logging: the test harness's debug level costs CPU at this scale.
        ("RUST_LOG", "info"),
    ];
    let operator = Operator::start_with(
        &tb,
        NS,
        &proxy.url,
        &format!("{}s", args.resync_secs),
        webhook,
        &env,
    );
    wait_for_webhook(&client, NS).await;
    println!(
        "operator {} (release build), logs in {}",
        support::operator::binary().display(),
        tb.dir.display()
    );
    let requests: Api<AccessRequest> = Api::namespaced(client.clone(), NS);
    let seen = watch_requests(requests.clone());
    let mut bench = Bench {
        policies: Api::namespaced(client.clone(), NS),
        requests,
        seen,
        args: args.clone(),
        tb,
        ec2,
        proxy,
        arm,
        operator,
        results: Default::default(),
        burst_vms: Vec::new(),
        burst_names: Vec::new(),
        az_vm_ids,
        az_nsgs,
    };
    let (hwm, _, _) = proc_stats(bench.pid());
    println!("operator idle: peak RSS {hwm:.1} MB");
    if args.wants("single") {
        bench.single().await;
    }
    if args.wants("burst") {
        bench.burst().await;
    }
    if args.wants("converged") {
        bench.converged().await;
    }
    if args.wants("drift") {
        bench.drift().await;
    }
    if args.wants("expiry") {
        bench.expiry().await;
    }
    if args.wants("azure") {
        bench.azure().await;
    }
    bench.save();
    println!("\nresults written to {}", bench.args.out.display());
    bench.operator.kill();
    bench.tb.stop();
}
