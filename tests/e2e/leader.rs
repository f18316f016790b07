//! Leader election on the test bed's real Lease API: a new replica waits out a Lease it
//! finds held, judges expiry on its own clock (so skewed clocks never steal a live Lease),
//! a leader that cannot renew in time stops before anyone else may lead, and a leader
//! stopped with SIGTERM hands over at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use portcullis::leader::Election;

use crate::support::kube_helpers::{eventually, namespace};
use crate::support::operator::Operator;
use crate::support::tcp_proxy::TcpProxy;
use crate::support::testbed::{ADMIN, Testbed};

const LEASE: &str = "portcullis-leader";
const MINUTE: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> (String, Api<Lease>) {
    let tb = Testbed::shared();
    tb.install_crds().expect("CRDs install");
    let client = tb.client(ADMIN).await;
    let ns = namespace(&client, prefix).await;
    (ns.clone(), Api::namespaced(client, &ns))
}

/// A replica without the webhook (admission plays no part here), named `pod`.
fn replica(ns: &str, pod: &str, extra: &[&str]) -> Operator {
    let tb = Testbed::shared();
    let mut args = vec!["--no-webhook".to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    Operator::start_with(tb, ns, &tb.moto_url, "2s", args, &[("POD_NAME", pod)])
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

async fn wait_holder(leases: &Api<Lease>, who: &str) -> Instant {
    eventually(&format!("{who} to hold the Lease"), MINUTE, || async {
        (holder(leases).await.as_deref() == Some(who)).then(Instant::now)
    })
    .await
}

#[tokio::test]
async fn leader_new_replica_waits_out_the_lease() {
    let (ns, leases) = setup("leader-wait").await;
    let mut a = replica(&ns, "replica-a", &[]);
    wait_holder(&leases, "replica-a").await;
    // The leader dies without handing over; its Lease's renewTime soon lies far in the past.
    a.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let started = Instant::now();
    let _b = replica(&ns, "replica-b", &[]);
    let took = wait_holder(&leases, "replica-b").await;
    let waited = took - started;
    eprintln!(
        "METRIC leader: a new replica took a dead leader's Lease {:.1}s after it started (Lease 3s)",
        waited.as_secs_f64()
    );
    // It cannot know that the holder's clock agrees with its own, so it waits a whole
    // lease duration, on its own clock, from the moment it first saw the Lease.
    assert!(
        waited >= Duration::from_secs(3),
        "replica-b took the Lease {waited:?} after starting, before it could have seen it unchanged for 3s"
    );
}

#[tokio::test]
async fn leader_sigterm_hands_over_at_once() {
    let (ns, leases) = setup("leader-term").await;
    let mut a = replica(&ns, "replica-a", &["--lease-duration", "15s"]);
    wait_holder(&leases, "replica-a").await;
    let _b = replica(&ns, "replica-b", &["--lease-duration", "15s"]);
    tokio::time::sleep(Duration::from_secs(3)).await; // b is following
    assert_eq!(holder(&leases).await.as_deref(), Some("replica-a"));

    let stopped = Instant::now();
    let status = a
        .terminate(Duration::from_secs(20))
        .expect("the leader exits on SIGTERM");
    assert!(
        status.success(),
        "the leader exited with {status:?}; log:\n{}",
        a.log()
    );
    assert!(a.log().contains("released the Lease"), "{}", a.log());
    let took = wait_holder(&leases, "replica-b").await - stopped;
    eprintln!(
        "METRIC leader: after SIGTERM of the leader the follower held the Lease in {:.1}s (Lease 15s, retry 2s)",
        took.as_secs_f64()
    );
    // Without the hand-over the follower would wait out the whole 15 s Lease.
    assert!(
        took < Duration::from_secs(10),
        "the follower took {took:?} to lead after SIGTERM"
    );
}

#[tokio::test]
async fn leader_skewed_clocks_do_not_steal_a_live_lease() {
    let (ns, leases) = setup("leader-skew").await;
    let hour = jiff::SignedDuration::from_hours(1);

    // 1. A live leader whose clock is an hour behind renews every half second; its
    //    renewTime always looks an hour old. A replica must not take the Lease.
    let skewed = move |at: jiff::Timestamp| LeaseSpec {
        holder_identity: Some("slow-clock-leader".into()),
        lease_duration_seconds: Some(3),
        renew_time: Some(MicroTime(at - hour)),
        acquire_time: Some(MicroTime(at - hour)),
        lease_transitions: Some(0),
        ..LeaseSpec::default()
    };
    let mut lease = Lease::default();
    lease.metadata.name = Some(LEASE.into());
    lease.spec = Some(skewed(jiff::Timestamp::now()));
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let renewing = {
        let leases = leases.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Ok(mut l) = leases.get(LEASE).await else {
                    continue;
                };
                if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                    != Some("slow-clock-leader")
                {
                    return; // stolen: the assertion below reports it
                }
                l.spec = Some(skewed(jiff::Timestamp::now()));
                leases.replace(LEASE, &PostParams::default(), &l).await.ok();
            }
        })
    };
    let _b = replica(&ns, "replica-b", &[]);

    // 2. Meanwhile, in this process: a live leader with a true clock, and a follower
    //    whose clock runs an hour ahead (to it, every renewTime is an hour old).
    let client = Testbed::shared().client(ADMIN).await;
    let leader = Election::new(&ns, "in-process", "true-clock", Duration::from_secs(3));
    let ahead = Election::new(&ns, "in-process", "fast-clock", Duration::from_secs(3))
        .with_clock(Arc::new(move || jiff::Timestamp::now() + hour));
    leader.acquire(&client).await;
    let keep = {
        let (leader, client) = (leader.clone(), client.clone());
        tokio::spawn(async move { leader.keep(&client).await })
    };
    let stolen = tokio::time::timeout(Duration::from_secs(10), ahead.acquire(&client)).await;
    assert!(
        stolen.is_err(),
        "the follower whose clock runs ahead took a live Lease"
    );
    assert!(!keep.is_finished(), "the true-clock leader lost its Lease");
    // The process replica had those 10 s (three lease durations) too.
    assert_eq!(
        holder(&leases).await.as_deref(),
        Some("slow-clock-leader"),
        "a replica took a live Lease whose holder's clock is behind"
    );

    // 3. Once the holders stop renewing, the followers do take over, each after a lease
    //    duration of silence on its own clock.
    renewing.abort();
    let stopped = Instant::now();
    keep.abort();
    let took = wait_holder(&leases, "replica-b").await - stopped;
    // It last saw a change at most one renewal (0.5 s) before the holder stopped.
    assert!(
        took >= Duration::from_secs(2),
        "took over after only {took:?}"
    );
    tokio::time::timeout(MINUTE, ahead.acquire(&client))
        .await
        .expect("the fast-clock follower takes the abandoned Lease");
}

#[tokio::test]
async fn leader_stops_when_the_renew_deadline_passes() {
    let (ns, leases) = setup("leader-deadline").await;
    let tb = Testbed::shared();
    // Replica a reaches the API server through a proxy the test can freeze.
    let kubeconfig = std::fs::read_to_string(tb.kubeconfig(ADMIN)).unwrap();
    let server = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("a server in the kubeconfig")
        .to_string();
    let proxy = TcpProxy::start(&server).await;
    let proxied = tb.dir.join(format!("kubeconfig-proxied-{ns}"));
    std::fs::write(
        &proxied,
        kubeconfig.replace(&server, &proxy.addr.to_string()),
    )
    .unwrap();
    let proxied = proxied.display().to_string();
    // A 6 s Lease (renew deadline 4 s): the stalled leader may take up to a second to
    // exit after it stops leading, and the margin must hold on a busy machine.
    let mut a = replica(
        &ns,
        "replica-a",
        &["--kubeconfig", &proxied, "--lease-duration", "6s"],
    );
    wait_holder(&leases, "replica-a").await;
    let _b = replica(&ns, "replica-b", &["--lease-duration", "6s"]);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The API server stops answering replica a (a stalled connection, not a refusal).
    proxy.freeze();
    let frozen = Instant::now();
    let (mut a_exited, mut b_leads) = (None, None);
    while frozen.elapsed() < MINUTE && (a_exited.is_none() || b_leads.is_none()) {
        if a_exited.is_none() && a.exited().is_some() {
            a_exited = Some(frozen.elapsed());
        }
        if b_leads.is_none() && holder(&leases).await.as_deref() == Some("replica-b") {
            b_leads = Some(frozen.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "METRIC leader: stalled leader exited {a_exited:?} after the stall, the follower led {b_leads:?} after (Lease 6s, renew deadline 4s)"
    );
    let a_exited =
        a_exited.unwrap_or_else(|| panic!("the stalled leader kept running; log:\n{}", a.log()));
    let b_leads = b_leads.expect("the follower takes over");
    assert!(
        a_exited < b_leads,
        "two leaders: the follower led {b_leads:?} after the stall, the stalled leader exited only {a_exited:?} after it"
    );
    assert!(
        a.log().contains("could not be renewed in time"),
        "{}",
        a.log()
    );
}
