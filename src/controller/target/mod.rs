//! One actor per policy target: the unit of cloud work.
//!
//! Each target has a task of its own that runs its reconcile ([`run::run`]) when something
//! it depends on changes (its policy, its requests), when its next grant starts closing,
//! on the periodic resync, and after a failure with backoff. So a target never waits for
//! another: one slow, throttled or failing target delays nobody else's expiry. A semaphore
//! bounds how many targets talk to the clouds at once; a target's own runs never overlap.

pub mod decide;
pub mod firewall;
mod run;
mod settle;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tracing::{Instrument, info_span};

use super::Context;
use crate::api::JitPolicy;
use crate::api::policy::BaselineState;
use crate::cloud::{CloudError, Observation, Resolved};
use crate::domain::desired::close_lead;
use crate::domain::{Change, Locator, OwnedRule, Plan, TargetKey};

pub use run::Memory;

/// What the last run of a target found: what the policy's status reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// What was resolved (interfaces, addresses, NSGs, groups), when it could be.
    pub resolved: Option<Resolved>,
    /// Where the baseline stands.
    pub baseline: BaselineState,
    /// What stands in the way, for people.
    pub message: Option<String>,
    /// The kind of trouble, when there is some.
    pub trouble: Option<Trouble>,
    /// The cloud matches the desired state (nothing blocked, nothing failed).
    pub converged: bool,
    /// When the operator last changed the cloud to match and saw it match.
    pub last_converge_time: Option<Timestamp>,
    /// Drifted rules corrected since the operator started (plus what the status counted).
    pub drift_total: i64,
    /// Nothing of the operator's is left for this target (cleanup finished).
    pub clean: bool,
    /// The target is being cleaned up (its policy or itself is going).
    pub cleaning: bool,
}

/// What kind of trouble a target is in: decides the policy's conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trouble {
    /// Passing: throttling, a 5xx, a busy resource. Retried with backoff.
    Transient,
    /// The VM does not exist.
    NotFound,
    /// Foreign rules, shared groups or limits stand in the way.
    Conflict,
    /// The cloud backend is not enabled, or the VM cannot carry what is asked.
    Unsupported,
    /// The operator's cloud identity cannot do this.
    Unauthorized,
    /// Anything else the cloud refused.
    Failed,
}

impl Trouble {
    /// The trouble a cloud error means.
    pub fn of(e: &CloudError) -> Trouble {
        match e {
            CloudError::Throttled { .. } | CloudError::Retryable { .. } => Trouble::Transient,
            CloudError::NotFound { .. } => Trouble::NotFound,
            CloudError::Limit { .. } | CloudError::InUse { .. } => Trouble::Conflict,
            CloudError::Unauthorized { .. } => Trouble::Unauthorized,
            CloudError::Unsupported { .. } => Trouble::Unsupported,
            CloudError::Fatal { .. } => Trouble::Failed,
        }
    }

    /// Whether the trouble may pass by itself soon, so that a retry with backoff (sooner
    /// than the resync) is worth it. Conflicts, refused credentials and unsupported
    /// targets wait for the resync or a change of inputs: retrying them sooner would
    /// only hammer the cloud.
    fn may_pass_soon(self) -> bool {
        matches!(
            self,
            Trouble::Transient | Trouble::NotFound | Trouble::Failed
        )
    }
}

struct Actor {
    notify: Arc<Notify>,
    /// Set by [`Runner::trigger`], cleared when a run starts: an actor about to retire
    /// checks it so that no trigger is lost.
    triggered: Arc<AtomicBool>,
    /// The inputs the last trigger was for (see [`Runner::touch`]).
    fingerprint: u64,
}

/// The target actors.
pub struct Runner {
    actors: Mutex<HashMap<TargetKey, Actor>>,
    permits: Arc<Semaphore>,
}

impl Runner {
    /// A runner that lets at most `concurrency` targets do cloud work at once.
    pub fn new(concurrency: usize) -> Self {
        Runner {
            actors: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// Makes sure `key` has an actor, and has it run when `fingerprint` (a digest of the
    /// inputs its run reads) differs from the last one it was touched with.
    pub fn touch(&self, ctx: &Arc<Context>, key: &TargetKey, fingerprint: u64) {
        let mut actors = self.actors.lock().expect("runner poisoned");
        match actors.get_mut(key) {
            Some(a) if a.fingerprint == fingerprint => {}
            Some(a) => {
                a.fingerprint = fingerprint;
                a.triggered.store(true, Ordering::SeqCst);
                a.notify.notify_one();
            }
            None => {
                let actor = Actor {
                    notify: Arc::new(Notify::new()),
                    triggered: Arc::new(AtomicBool::new(true)),
                    fingerprint,
                };
                let (notify, triggered) = (actor.notify.clone(), actor.triggered.clone());
                actors.insert(key.clone(), actor);
                let span = info_span!("target", target = %key);
                tokio::spawn(
                    live(
                        ctx.clone(),
                        key.clone(),
                        notify,
                        triggered,
                        self.permits.clone(),
                    )
                    .instrument(span),
                );
            }
        }
    }

    /// Has `key` run now, whatever its inputs.
    pub fn trigger(&self, key: &TargetKey) {
        if let Some(a) = self.actors.lock().expect("runner poisoned").get(key) {
            a.triggered.store(true, Ordering::SeqCst);
            a.notify.notify_one();
        }
    }

    /// The targets that have actors.
    pub fn keys(&self) -> Vec<TargetKey> {
        self.actors
            .lock()
            .expect("runner poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Retires `key`'s actor unless a trigger arrived meanwhile; whether it retired.
    fn retire(&self, key: &TargetKey, triggered: &AtomicBool) -> bool {
        let mut actors = self.actors.lock().expect("runner poisoned");
        if triggered.load(Ordering::SeqCst) {
            return false;
        }
        actors.remove(key);
        true
    }
}

/// When a target runs next.
#[derive(Clone, Copy, Debug)]
pub(super) enum Next {
    /// At this time (a grant starts closing, the resync, a backoff).
    At(Instant),
    /// Never again unless triggered: the actor retires (nothing left to do for it).
    Retire,
}

/// A target's life: run, sleep until the next reason to run, run again.
async fn live(
    ctx: Arc<Context>,
    key: TargetKey,
    notify: Arc<Notify>,
    triggered: Arc<AtomicBool>,
    permits: Arc<Semaphore>,
) {
    let mut memory = Memory::default();
    let mut failures = 0u32;
    let mut snapshot: Option<(Locator, Observation)> = None;
    loop {
        triggered.store(false, Ordering::SeqCst);
        let result = {
            // Grants due when the run starts (or within the clocks' slack of it) are the
            // run's own first step (it closes before it reads anything else); closing
            // them here too would race it for the same rules. Until the run has its
            // permit, every due grant is the closer's.
            let started = AtomicI64::new(i64::MIN);
            let run = async {
                let permit = permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                started.store((ctx.now() + RUN_SLACK).as_millisecond(), Ordering::SeqCst);
                run::run(&ctx, &key, &mut memory, permit).await
            };
            tokio::pin!(run);
            // A grant that comes due while the run waits for a permit, reads or writes is
            // closed meanwhile, by the ids the last run saw: its expiry waits for nothing
            // (the benchmark's 1,000 expiries queued behind the permits without this).
            loop {
                let since = Timestamp::from_millisecond(started.load(Ordering::SeqCst))
                    .unwrap_or(Timestamp::MIN);
                let due = snapshot
                    .as_ref()
                    .and_then(|(l, o)| next_close(l, o, since, ctx.now()));
                tokio::select! {
                    r = &mut run => break r,
                    _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                        if let Some((locator, obs)) = snapshot.take() {
                            // The run may have got its permit since `due` was set.
                            let since = Timestamp::from_millisecond(started.load(Ordering::SeqCst))
                                .unwrap_or(Timestamp::MIN);
                            let left = close_due(&ctx, &key, &locator, obs, since).await;
                            snapshot = Some((locator, left));
                        }
                    }
                }
            }
        };
        snapshot = memory.snapshot();
        let next = match result {
            Ok((outcome, next)) => {
                failures = match outcome.trouble {
                    Some(t) if t.may_pass_soon() => failures + 1,
                    _ => 0,
                };
                publish(&ctx, &key, Some(outcome));
                match (next, failures) {
                    (Next::At(at), 0) => Next::At(at),
                    (Next::At(at), n) => Next::At(at.min(Instant::now() + backoff(&ctx, n))),
                    (Next::Retire, _) => Next::Retire,
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "target run failed");
                Next::At(Instant::now() + backoff(&ctx, failures))
            }
        };
        match next {
            Next::Retire => {
                if ctx.runner.retire(&key, &triggered) {
                    publish(&ctx, &key, None);
                    return;
                }
            }
            Next::At(at) => {
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
        }
    }
}

/// How far past a run's start a grant's close time still counts as the run's: the timer
/// that woke the run and the wall clock the stamps use differ by a few milliseconds.
const RUN_SLACK: jiff::SignedDuration = jiff::SignedDuration::from_millis(250);

/// When the next grant rule in `obs` must be gone (its stamp's expiry, less the cloud's
/// close lead), of those that come due after `since` (the start of the run under way).
fn next_close(
    locator: &Locator,
    obs: &Observation,
    since: Timestamp,
    now: Timestamp,
) -> Option<Instant> {
    let lead = close_lead(locator);
    let at = obs
        .observed
        .owned
        .iter()
        .filter(|r| r.grant().is_some())
        .filter_map(|r| r.stamp.expires_at)
        .map(|t| t - lead)
        .filter(|t| *t > since)
        .min()?;
    let until = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
    Some(Instant::now() + until)
}

/// Deletes the grant rules of `obs` whose time came up after `since` (the start of the
/// run under way, which closes those due before); `obs` without them.
async fn close_due(
    ctx: &Context,
    key: &TargetKey,
    locator: &Locator,
    obs: Observation,
    since: Timestamp,
) -> Observation {
    let lead = close_lead(locator);
    let now = ctx.now();
    let (due, kept): (Vec<OwnedRule>, Vec<OwnedRule>) =
        obs.observed.owned.iter().cloned().partition(|r| {
            r.grant().is_some()
                && r.stamp
                    .expires_at
                    .is_some_and(|t| t - lead <= now && t - lead > since)
        });
    if due.is_empty() {
        return obs;
    }
    if let Ok(backend) = ctx.backends.for_locator(locator) {
        tracing::info!(closing = due.len(), "closing grants on time");
        let plan = Plan {
            changes: due.into_iter().map(Change::DeleteOwned).collect(),
            blocked: Vec::new(),
        };
        if let Err(e) = backend.apply(key, locator, &obs, &plan).await {
            tracing::warn!(error = %e, "closing on time failed; the run retries");
        }
    }
    let mut obs = obs;
    obs.observed.owned = kept;
    obs
}

/// Exponential backoff with jitter, from one second up to the resync.
fn backoff(ctx: &Context, failures: u32) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(ctx.settings.resync);
    base.mul_f64(rand::random::<f64>() * 0.5 + 0.75)
}

/// Keeps the outcome for the policy's status and asks the policy's reconcile to report
/// it when it changed.
fn publish(ctx: &Context, key: &TargetKey, outcome: Option<Outcome>) {
    let changed = {
        let mut outcomes = ctx.outcomes.lock().expect("outcomes poisoned");
        match outcome {
            Some(o) => outcomes.insert(key.clone(), o.clone()) != Some(o),
            None => outcomes.remove(key).is_some(),
        }
    };
    if changed {
        let policy = ObjectRef::<JitPolicy>::new(&key.policy.name).within(&key.policy.namespace);
        ctx.policy_trigger.send(policy).ok();
    }
}
