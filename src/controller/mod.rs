//! The controllers: the only place that sees both Kubernetes and the clouds.
//!
//! One reconcile per `JitPolicy` does the work for all its targets and requests:
//! gather → validate → desire → per target observe/plan/apply → record status. A light
//! `AccessRequest` controller forwards request changes to their policy and settles
//! requests whose policy does not exist. A sweeper removes owned rules whose stamp has
//! expired or whose owner is gone, first thing at start and then on every resync.

mod convert;
mod kube_ops;
mod locks;
mod policy;
mod policy_status;
mod records;
mod request;
mod request_status;
mod sweeper;
pub mod target;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, Predicate, PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::{AccessRequest, JitPolicy};
use crate::cloud::{Backend, CloudError};
use crate::domain::{Locator, TargetKey};

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
    /// Azure Firewall (classic rules), beside the NSGs of VMs behind a firewall.
    pub firewall: Option<Arc<crate::cloud::azure::firewall::FirewallBackend>>,
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
    /// How many targets may do cloud work at the same time.
    pub concurrency: usize,
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
    /// All requests, as the policy controller's request watch saw them (see `run`).
    pub requests: Store<AccessRequest>,
    /// Publishes Kubernetes events.
    pub recorder: Recorder,
    /// Asks the policy controller to reconcile a policy (a target's outcome changed).
    pub policy_trigger: mpsc::UnboundedSender<ObjectRef<JitPolicy>>,
    /// Verifies requester stamps and signs records (shared with the admission webhook).
    pub stamp_key: Vec<u8>,
    /// The target actors.
    pub runner: target::Runner,
    /// The last outcome of every target.
    pub outcomes: Mutex<HashMap<TargetKey, target::Outcome>>,
    /// Locks on shared cloud containers (NSGs).
    pub locks: locks::Locks,
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
        Error::Cloud(CloudError::Unauthorized { .. } | CloudError::InUse { .. }) => {
            Duration::from_secs(60)
        }
        Error::CleanupPending(_) => Duration::from_secs(1),
        _ => Duration::from_secs(2),
    };
    let jitter = rand::random::<f64>() * 0.5 + 0.75;
    base.mul_f64(jitter)
}

/// Runs the controllers, the target actors and the sweeper until the process is told to
/// stop.
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
    ready.set_ready();

    // Policies: reconciled when their spec, finalizers or deletion change (not on the
    // operator's own status writes), when a request of theirs changes, and when a
    // target's outcome changes.
    let (policy_writer, policies) = {
        let w = reflector::store::Writer::<JitPolicy>::default();
        let r = w.as_reader();
        (w, r)
    };
    let policy_changes = watcher(policies_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(policy_writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::finalizers)
                .combine(|p: &JitPolicy| Some(u64::from(p.metadata.deletion_timestamp.is_some()))),
            PredicateConfig::default(),
        );
    // The requests the policy reconciles and the target runs read are the store this
    // watch fills, before it passes the change on: a reconcile a request change triggers
    // sees that change. (Reading the request controller's own store, a deletion could
    // trigger a reconcile that did not see it yet, and the request was only closed at
    // the next resync: the benchmark's 20 s delete.)
    let (request_writer, request_view) = {
        let w = reflector::store::Writer::<AccessRequest>::default();
        let r = w.as_reader();
        (w, r)
    };
    let request_changes = watcher(
        requests_api.clone(),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(request_writer)
    .applied_objects()
    .predicate_filter(request_inputs, PredicateConfig::default());
    let policy_controller = Controller::for_stream(policy_changes, policies.clone())
        .watches_stream(request_changes, |r: AccessRequest| {
            Some(ObjectRef::<JitPolicy>::new(&r.spec.policy_ref.name).within(&r.namespace()?))
        });
    let request_controller =
        Controller::new(requests_api, watcher::Config::default().any_semantic());
    let (policy_trigger, triggered) = mpsc::unbounded_channel();
    let reporter = Reporter {
        controller: settings.reporter.clone(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        backends,
        runner: target::Runner::new(settings.concurrency),
        settings,
        clock,
        policies,
        requests: request_view,
        policy_trigger,
        stamp_key,
        outcomes: Mutex::new(HashMap::new()),
        locks: locks::Locks::default(),
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

/// The default name of this installation in the clouds: a hash of the cluster's
/// `kube-system` namespace uid (unique per cluster) and the watched namespace (unique per
/// namespace-scoped installation).
pub async fn default_cluster_name(
    client: &Client,
    namespace: Option<&str>,
) -> anyhow::Result<String> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let uid = namespaces
        .get("kube-system")
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read namespace kube-system to name this installation ({e}); pass --cluster-name"
            )
        })?
        .uid()
        .unwrap_or_default();
    Ok(format!(
        "k{}",
        crate::domain::stamp::short_hash(&format!("{uid}/{}", namespace.unwrap_or("*")))
    ))
}

/// What of a request the policy's targets read: its spec, deletion, finalizers and
/// stamp; status writes do not count.
fn request_inputs(r: &AccessRequest) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    r.metadata.generation.hash(&mut h);
    r.metadata.deletion_timestamp.is_some().hash(&mut h);
    r.finalizers().hash(&mut h);
    r.annotations()
        .get(crate::domain::requester::ANNOTATION)
        .hash(&mut h);
    Some(h.finish())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
