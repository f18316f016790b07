//! Leader election on a `coordination.k8s.io/v1` Lease: only the leader reconciles and
//! writes to the clouds; every replica serves admission.
//!
//! Hand-written (a couple of hundred lines): kube-rs has no leader election, and the
//! crates that add one lag behind kube's releases. The protocol is client-go's:
//!
//! - A Lease is free when it has no holder, or when *this* replica has seen no change of
//!   its record for a lease duration, timed on this process's monotonic clock. The times
//!   written in the Lease are never compared with the local clock, so replicas whose
//!   clocks disagree never take a live Lease from each other; the cost is that a new
//!   replica always waits out a full lease duration before taking a Lease it finds held.
//! - The leader renews every retry period. Each renewal is time-boxed to the renew
//!   deadline, counted from the start of the last successful renewal; once that passes
//!   the leader stops leading (the process exits) — before any other replica can see the
//!   Lease expire, since that takes a full lease duration from the same renewal.
//! - On shutdown the leader releases the Lease (holder cleared, duration one second, as
//!   client-go's `ReleaseOnCancel`), so a rolling update hands over at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tracing::{info, warn};

/// The wall clock the election writes into the Lease (an input, so tests can skew it).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Where the Lease is, who we are, and the protocol's timings.
#[derive(Clone)]
pub struct Election {
    /// The Lease's namespace (the operator's).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (pod name, or host and process id).
    pub identity: String,
    /// How long other replicas wait, from the last change of the Lease they saw, before
    /// taking it.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew, from its last successful renewal,
    /// before it stops leading; shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often replicas try to take, and the leader to renew, the Lease.
    pub retry_period: Duration,
    /// The times written into the Lease (`acquireTime`, `renewTime`), for people and
    /// other tools; never used to judge expiry.
    pub clock: Clock,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("lease_duration", &self.lease_duration)
            .field("renew_deadline", &self.renew_deadline)
            .field("retry_period", &self.retry_period)
            .finish_non_exhaustive()
    }
}

/// What this replica last saw of the Lease, and when (on its own monotonic clock).
#[derive(Default)]
struct State {
    observed: Option<(LeaseSpec, Instant)>,
    /// When the last successful take or renewal started.
    renewed: Option<Instant>,
}

impl State {
    /// Records `spec` as seen at `now`; the time moves only when the record changed.
    fn observe(&mut self, spec: &LeaseSpec, now: Instant) {
        if self.observed.as_ref().is_none_or(|(seen, _)| seen != spec) {
            self.observed = Some((spec.clone(), now));
        }
    }

    /// Whether `identity` may take the Lease now: it has no holder, we hold it, or its
    /// record has not changed for its lease duration as we measured it.
    fn may_take(&self, identity: &str, now: Instant) -> bool {
        let Some((spec, seen)) = &self.observed else {
            return true;
        };
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        if holder.is_empty() || holder == identity {
            return true;
        }
        let duration = spec.lease_duration_seconds.unwrap_or(0).max(0) as u64;
        now >= *seen + Duration::from_secs(duration)
    }
}

enum Attempt {
    Held,
    Taken,
}

impl Election {
    /// An election with client-go's proportions: renew deadline two thirds of the lease
    /// duration, retry period two fifteenths (10 s and 2 s for 15 s), and the system clock.
    pub fn new(namespace: &str, name: &str, identity: &str, lease_duration: Duration) -> Self {
        Election {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration * 2 / 15,
            clock: Arc::new(Timestamp::now),
            state: Arc::default(),
        }
    }

    /// The same election writing times from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn api(&self, client: &kube::Client) -> Api<Lease> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("the lock is never poisoned")
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self, client: &kube::Client) {
        loop {
            let started = Instant::now();
            match tokio::time::timeout(self.renew_deadline, self.try_hold(client)).await {
                Ok(Ok(Attempt::Held)) => {
                    self.state().renewed = Some(started);
                    info!(lease = %self.name, identity = %self.identity, "leading");
                    return;
                }
                Ok(Ok(Attempt::Taken)) => {}
                Ok(Err(e)) => warn!(error = %e, "cannot read or take the Lease"),
                Err(_) => warn!(lease = %self.name, "taking the Lease timed out"),
            }
            tokio::time::sleep(self.retry_period).await;
        }
    }

    /// Renews the Lease until it cannot; returns when leadership is lost: another replica
    /// holds it, or no renewal succeeded within the renew deadline. The caller must stop
    /// writing at once.
    pub async fn keep(&self, client: &kube::Client) {
        loop {
            let renewed = self.state().renewed.unwrap_or_else(Instant::now);
            let deadline = renewed + self.renew_deadline;
            tokio::time::sleep_until((Instant::now() + self.retry_period).min(deadline)).await;
            if Instant::now() >= deadline {
                warn!(lease = %self.name, deadline = ?self.renew_deadline, "the Lease could not be renewed in time");
                return;
            }
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, self.try_hold(client)).await {
                Ok(Ok(Attempt::Held)) => self.state().renewed = Some(started),
                Ok(Ok(Attempt::Taken)) => {
                    warn!(lease = %self.name, "another replica holds the Lease");
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "cannot renew the Lease"),
                Err(_) => warn!(lease = %self.name, "renewing the Lease timed out"),
            }
        }
    }

    /// Hands the Lease over if this replica holds it: clears the holder so that another
    /// replica takes it at its next try. Call it only once nothing writes any more.
    pub async fn release(&self, client: &kube::Client) {
        let release = async {
            let api = self.api(client);
            let Some(mut lease) = api.get_opt(&self.name).await? else {
                return Ok::<bool, kube::Error>(false);
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(false);
            }
            let now = MicroTime((self.clock)());
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.acquire_time = Some(now.clone());
            spec.renew_time = Some(now);
            api.replace(&self.name, &PostParams::default(), &lease)
                .await?;
            Ok(true)
        };
        match tokio::time::timeout(self.renew_deadline, release).await {
            Ok(Ok(true)) => info!(lease = %self.name, "released the Lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot release the Lease"),
            Err(_) => warn!(lease = %self.name, "releasing the Lease timed out"),
        }
    }

    /// Takes or renews the Lease when it is ours or free; `Taken` when someone else
    /// holds it.
    async fn try_hold(&self, client: &kube::Client) -> Result<Attempt, kube::Error> {
        let api = self.api(client);
        let seconds = self.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let now = MicroTime((self.clock)());
            let mut lease = Lease::default();
            lease.metadata.name = Some(self.name.clone());
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            });
            return match api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.state()
                        .observe(&created.spec.unwrap_or_default(), Instant::now());
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Taken),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        {
            let mut state = self.state();
            state.observe(spec, Instant::now());
            if !state.may_take(&self.identity, Instant::now()) {
                return Ok(Attempt::Taken);
            }
        }
        let now = MicroTime((self.clock)());
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        // The resourceVersion makes this a compare-and-swap: of two replicas taking a
        // free Lease at once, one gets 409.
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.state()
                    .observe(&written.spec.unwrap_or_default(), Instant::now());
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Taken),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn expiry_is_judged_by_how_long_this_replica_saw_no_change() {
        let mut s = State::default();
        let t0 = Instant::now();
        // A renewTime an hour old means nothing: we have only just seen the record.
        s.observe(&held_by("a", "2020-01-01T00:00:00Z"), t0);
        assert!(!s.may_take("b", t0));
        assert!(!s.may_take("b", t0 + Duration::from_secs(14)));
        // The holder renews (the record changes): the wait starts again.
        s.observe(
            &held_by("a", "2020-01-01T00:00:05Z"),
            t0 + Duration::from_secs(10),
        );
        assert!(!s.may_take("b", t0 + Duration::from_secs(20)));
        assert!(s.may_take("b", t0 + Duration::from_secs(25)));
        // The same record seen again later does not restart the wait.
        s.observe(
            &held_by("a", "2020-01-01T00:00:05Z"),
            t0 + Duration::from_secs(24),
        );
        assert!(s.may_take("b", t0 + Duration::from_secs(25)));
        // Our own Lease, or one without a holder, may be taken at once.
        assert!(s.may_take("a", t0 + Duration::from_secs(11)));
        let mut released = held_by("a", "2020-01-01T00:00:06Z");
        released.holder_identity = None;
        released.lease_duration_seconds = Some(1);
        s.observe(&released, t0 + Duration::from_secs(12));
        assert!(s.may_take("b", t0 + Duration::from_secs(12)));
    }

    #[test]
    fn timings_follow_client_go() {
        let e = Election::new("ns", "l", "me", Duration::from_secs(15));
        assert_eq!(e.renew_deadline, Duration::from_secs(10));
        assert_eq!(e.retry_period, Duration::from_secs(2));
    }
}
