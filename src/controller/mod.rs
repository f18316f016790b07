//! The controllers: the only place that sees both Kubernetes and the clouds.
//!
//! One reconcile per `JitPolicy` does the work for all its targets and requests:
//! gather → validate → desire → per target observe/plan/apply → record status. A light
//! `AccessRequest` controller forwards request changes to their policy and settles
//! requests whose policy does not exist. A sweeper removes owned rules whose stamp has
//! expired or whose owner is gone, first thing at start and then on every resync.

mod convert;
mod kube_ops;
mod policy;
mod request;
mod request_status;
mod sweeper;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::{AccessRequest, JitPolicy};
use crate::cloud::{Backend, CloudError};
use crate::domain::Locator;

/// The finalizer on policies and requests.
pub const FINALIZER: &str = "jit.portcullis.dev/cleanup";
/// The field manager for status written by server-side apply.
pub const MANAGER: &str = "portcullis";

/// The clock: time is an input.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The cloud backends in use.
#[derive(Clone, Default)]
pub struct Backends {
    /// EC2.
    pub aws: Option<Arc<dyn Backend>>,
    /// Azure.
    pub azure: Option<Arc<dyn Backend>>,
}

impl Backends {
    /// The backend for a target, or why there is none.
    pub fn for_locator(&self, locator: &Locator) -> Result<&Arc<dyn Backend>, String> {
        match locator {
            Locator::Aws { .. } => self
                .aws
                .as_ref()
                .ok_or_else(|| "the AWS backend is not enabled".to_string()),
            Locator::Azure { .. } => self
                .azure
                .as_ref()
                .ok_or_else(|| "the Azure backend is not enabled".to_string()),
        }
    }
}

/// Settings of the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often everything is reconciled even when nothing changed (drift healing).
    pub resync: Duration,
    /// Watch only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// AWS regions the sweeper always looks in, besides those of current policies.
    pub aws_regions: Vec<String>,
    /// The name events are reported under.
    pub reporter: String,
    /// Finished requests are deleted this long after they finished (`None`: kept).
    pub finished_ttl: Option<Duration>,
}

/// What every reconcile gets.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The clouds.
    pub backends: Backends,
    /// Settings.
    pub settings: Settings,
    /// The time.
    pub clock: Clock,
    /// All policies (the policy controller's cache).
    pub policies: Store<JitPolicy>,
    /// All requests (the request controller's cache).
    pub requests: Store<AccessRequest>,
    /// Publishes Kubernetes events.
    pub recorder: Recorder,
    /// Asks the policy controller to reconcile a policy.
    pub trigger: mpsc::UnboundedSender<ObjectRef<JitPolicy>>,
    /// Verifies requester stamps (shared with the admission webhook).
    pub stamp_key: Vec<u8>,
}

impl Context {
    /// The current time.
    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), namespace)
    }
}

/// A reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A cloud call failed.
    #[error("cloud: {0}")]
    Cloud(#[from] CloudError),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// Cleanup of a deleted object is not finished yet.
    #[error("cleanup not finished: {0}")]
    CleanupPending(String),
}

impl Error {
    /// A static label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Cloud(e) => e.category(),
            Error::Finalizer(_) => "finalizer",
            Error::CleanupPending(_) => "cleanup_pending",
        }
    }
}

/// Backoff with jitter: throttling waits longer than other faults.
fn retry_after(err: &Error) -> Duration {
    let base = match err {
        Error::Cloud(CloudError::Throttled {
            retry_after: Some(d),
            ..
        }) => *d,
        Error::Cloud(CloudError::Throttled { .. }) => Duration::from_secs(5),
        Error::CleanupPending(_) => Duration::from_secs(1),
        _ => Duration::from_secs(2),
    };
    let jitter = rand::random::<f64>() * 0.5 + 0.75;
    base.mul_f64(jitter)
}

/// Runs the controllers and the sweeper until the process is told to stop.
pub async fn run(
    client: Client,
    backends: Backends,
    settings: Settings,
    clock: Clock,
    stamp_key: Vec<u8>,
    ready: crate::http::Readiness,
) -> anyhow::Result<()> {
    let (policies_api, requests_api): (Api<JitPolicy>, Api<AccessRequest>) =
        match &settings.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    // Expired stamped rules go first, before any reconcile, even when their request is gone.
    match sweeper::startup_sweep(&policies_api, &requests_api, &backends, &settings, clock()).await
    {
        Ok(report) => info!(?report, "startup sweep done"),
        Err(e) => warn!(error = %e, "startup sweep failed; the periodic sweeper will retry"),
    }
    // Ready once the API server answered the startup lists and the sweep ran.
    // (The caches' own readiness signal never fired for the request cache here; see the
    // session notes.)
    ready.set_ready();

    let policy_controller =
        Controller::new(policies_api, watcher::Config::default().any_semantic());
    let request_controller =
        Controller::new(requests_api, watcher::Config::default().any_semantic());
    let (trigger, triggered) = mpsc::unbounded_channel();
    let reporter = Reporter {
        controller: settings.reporter.clone(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        backends,
        settings,
        clock,
        policies: policy_controller.store(),
        requests: request_controller.store(),
        trigger,
        stamp_key,
    });

    let policies = policy_controller
        .reconcile_on(tokio_stream_from(triggered))
        .shutdown_on_signal()
        .run(policy::reconcile, policy::error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "policy reconcile failed");
            }
        });
    let requests = request_controller
        .shutdown_on_signal()
        .run(request::reconcile, request::error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "request reconcile failed");
            }
        });
    let sweeper = sweeper::run(ctx.clone());
    tokio::select! {
        _ = futures::future::join(policies, requests) => {}
        _ = sweeper => {}
    }
    Ok(())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
