//! Leader election on a `coordination.k8s.io/v1` Lease: only the leader reconciles and
//! writes to the clouds; every replica serves admission.
//!
//! Hand-written (about a hundred lines): kube-rs has no leader election, and the crates
//! that add one lag behind kube's releases. The protocol is client-go's: take the Lease
//! when it is free or its holder stopped renewing for a lease duration, renew it every
//! third of one, and stop leading (the process exits) when a renewal cannot be made in
//! time, so two replicas never write at once.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use tracing::{info, warn};

/// Where the Lease is and who we are.
#[derive(Clone, Debug)]
pub struct Election {
    /// The Lease's namespace (the operator's).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (pod name, or host and process id).
    pub identity: String,
    /// How long a holder that stops renewing keeps the Lease.
    pub lease_duration: Duration,
}

enum Attempt {
    Held,
    Taken,
}

impl Election {
    fn api(&self, client: &kube::Client) -> Api<Lease> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self, client: &kube::Client) {
        loop {
            match self.try_hold(client).await {
                Ok(Attempt::Held) => {
                    info!(lease = %self.name, identity = %self.identity, "leading");
                    return;
                }
                Ok(Attempt::Taken) => {}
                Err(e) => warn!(error = %e, "cannot read or take the Lease"),
            }
            tokio::time::sleep(self.lease_duration / 3).await;
        }
    }

    /// Renews the Lease until it cannot; returns when leadership is lost.
    pub async fn keep(&self, client: &kube::Client) {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.lease_duration / 3).await;
            match self.try_hold(client).await {
                Ok(Attempt::Held) => last = tokio::time::Instant::now(),
                Ok(Attempt::Taken) => {
                    warn!(lease = %self.name, "another replica holds the Lease");
                    return;
                }
                Err(e) => warn!(error = %e, "cannot renew the Lease"),
            }
            // Give up before the others may take it: never two leaders.
            if last.elapsed() > self.lease_duration * 2 / 3 {
                warn!(lease = %self.name, "the Lease could not be renewed in time");
                return;
            }
        }
    }

    /// Takes or renews the Lease when it is ours or free; `Taken` when someone else
    /// holds it.
    async fn try_hold(&self, client: &kube::Client) -> Result<Attempt, kube::Error> {
        let api = self.api(client);
        let now = Timestamp::now();
        let seconds = self.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let mut lease = Lease::default();
            lease.metadata.name = Some(self.name.clone());
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            });
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Taken),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(t), Some(d)) => t.0 + jiff::SignedDuration::from_secs(i64::from(d)) < now,
            _ => true,
        };
        if !ours
            && !expired
            && spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty())
        {
            return Ok(Attempt::Taken);
        }
        if !ours {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        // The resourceVersion makes this a compare-and-swap: of two replicas taking an
        // expired Lease at once, one gets 409.
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Taken),
            Err(e) => Err(e),
        }
    }
}
