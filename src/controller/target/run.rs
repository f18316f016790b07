//! One run of one target: gather → decide → resolve → lock → observe → plan → record →
//! apply → verify → settle. Each step is a function below; only `decide` and `plan` are
//! pure, everything else needs a client.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::decide::{self, Cleanup, Decision, PolicyInput, RequestInput};
use super::firewall;
use super::settle::{self, Gathered};
use super::{Next, Outcome, Trouble};
use crate::api::policy::BaselineState;
use crate::api::{AccessRequestStatus, JitPolicy};
use crate::cloud::{CloudError, Observation, Resolved};
use crate::controller::kube_ops::{add_finalizer, publish};
use crate::controller::{Context, Error, FINALIZER, convert, records};
use crate::domain::carve::lost_protocols;
use crate::domain::record::TargetRecord;
use crate::domain::{
    BlockKind, Change, Locator, ObjectKey, Plan, PortSpec, TargetKey, plan, requester, validate,
};
use crate::metrics;

/// What a target's actor keeps between runs.
#[derive(Default)]
pub struct Memory {
    /// The record as this actor last wrote or read it from the server: fresher than the
    /// cache (`None`: not read yet).
    record: Option<Option<TargetRecord>>,
    /// A rejected record was reported already.
    rejection_reported: bool,
    /// The last status this actor wrote per request.
    pub(super) written: HashMap<ObjectKey, AccessRequestStatus>,
    /// What the cloud showed at the end of the last run. Only this actor writes this
    /// target's owned rules, so their ids here are current: a grant that must close is
    /// deleted by these ids at once, before anything is read.
    last_seen: Option<Observation>,
    /// Where the target the last run looked at lives.
    last_locator: Option<Locator>,
    /// What the last run saw open, to tell drift from new work.
    active_before: BTreeSet<(ObjectKey, PortSpec)>,
    baseline_enforced_before: bool,
    drift_total: Option<i64>,
    last_converge_time: Option<Timestamp>,
}

impl Memory {
    /// What the last run saw, for closing grants on time while the next run is busy.
    pub(super) fn snapshot(&self) -> Option<(Locator, Observation)> {
        Some((self.last_locator.clone()?, self.last_seen.clone()?))
    }
}

/// Runs the target once; the outcome for the policy's status and when to run next.
/// `permit` is the run's share of `--concurrency`: it is let go once the cloud work is
/// done, so that the request statuses it writes hold no other target back.
pub(super) async fn run(
    ctx: &Arc<Context>,
    key: &TargetKey,
    mem: &mut Memory,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(Outcome, Next), Error> {
    let started = std::time::Instant::now();
    let result = run_steps(ctx, key, mem, permit).await;
    metrics::reconcile(
        "target",
        match &result {
            Ok((o, _)) if o.trouble.is_some() => "trouble",
            Ok(_) => "ok",
            Err(e) => e.category(),
        },
    );
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "target run done"
    );
    result
}

async fn run_steps(
    ctx: &Arc<Context>,
    key: &TargetKey,
    mem: &mut Memory,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(Outcome, Next), Error> {
    let now = ctx.now();
    let policy_ref = ObjectRef::<JitPolicy>::new(&key.policy.name).within(&key.policy.namespace);
    let Some(policy) = ctx.policies.get(&policy_ref) else {
        // The policy is gone (its cleanup finished, or its finalizer was removed by
        // hand): what is left in the cloud is the sweeper's.
        return Ok((Outcome::gone(), Next::Retire));
    };
    let api: Api<JitPolicy> = ctx.api(&key.policy.namespace);
    let record = load_record(ctx, &api, &policy, key, mem).await?;
    let input = policy_input(&policy, key);
    let gathered = gather_requests(ctx, key, &input);
    let inputs: Vec<RequestInput> = gathered.iter().map(|g| g.input.clone()).collect();

    let Some(decision) = decide::decide(&input, &key.target, &inputs, record.as_ref(), now) else {
        return Ok((Outcome::gone(), Next::Retire));
    };
    let locator = decision.desired.locator.clone();
    let resync = Instant::now()
        + ctx
            .settings
            .resync
            .mul_f64(0.9 + 0.1 * rand::random::<f64>());
    let next_expiry = decision.next_expiry.map(|at| {
        // Wake just after the instant: desired() treats `expires_at - lead <= now` as over.
        let until = Duration::try_from(at.duration_since(ctx.now())).unwrap_or(Duration::ZERO);
        Instant::now() + until + Duration::from_millis(5)
    });
    let next = Next::At(next_expiry.map_or(resync, |e| e.min(resync)));

    let backend = match ctx.backends.for_locator(&locator) {
        Ok(b) => b.clone(),
        Err(message) => {
            let outcome = trouble(mem, Trouble::Unsupported, message.clone(), None);
            settle_unobserved(ctx, key, &decision, &gathered, &message, mem).await;
            return Ok((outcome, next));
        }
    };
    close_first(backend.as_ref(), key, &decision, record.as_ref(), mem).await;
    let resolved = match backend.resolve(key, &locator).await {
        Ok(r) => r,
        Err(CloudError::NotFound { what, .. }) if decision.cleanup.is_some() => {
            publish(
                ctx,
                policy.as_ref(),
                EventType::Normal,
                "TargetGone",
                format!(
                    "target {}: {what} no longer exists; only what the record names is cleaned up",
                    key.target
                ),
            )
            .await;
            Resolved::vanished()
        }
        Err(e) => {
            let message = format!("target {}: {e}", key.target);
            let outcome = trouble(mem, Trouble::of(&e), message.clone(), None);
            settle_unobserved(ctx, key, &decision, &gathered, &message, mem).await;
            return Ok((outcome, next));
        }
    };

    // A firewall that cannot be governed stops the target before anything is written.
    let snat = match decision.cleanup {
        Some(_) => None,
        None => match firewall::check(ctx, &locator).await {
            Ok(sources) => sources,
            Err(e) => {
                let message = format!("target {}: {e}", key.target);
                let outcome = trouble(mem, Trouble::of(&e), message.clone(), Some(resolved));
                let denied =
                    matches!(e, CloudError::Unsupported { .. }).then_some(message.as_str());
                let found = settle::Findings {
                    denied,
                    ..settle::Findings::unobserved(&message)
                };
                settle::settle(ctx, key, &decision, &gathered, &found, mem).await;
                return Ok((outcome, next));
            }
        },
    };
    // The NSGs of a VM behind a firewall see the firewall's addresses, not the requester's.
    let for_nsgs = firewall::nsg_view(&decision, snat.as_deref());

    // Writes to one NSG are coordinated across every target and policy that shares it.
    let _guards = ctx
        .locks
        .lock(lock_ids(&locator, &resolved, record.as_ref()))
        .await;
    let containers = recorded_containers(&locator, record.as_ref());
    let obs = match backend.observe(key, &locator, &resolved, &containers).await {
        Ok(o) => o,
        Err(e) => {
            let message = format!("target {}: {e}", key.target);
            let outcome = trouble(mem, Trouble::of(&e), message.clone(), Some(resolved));
            settle_unobserved(ctx, key, &decision, &gathered, &message, mem).await;
            return Ok((outcome, next));
        }
    };
    let revoked = record
        .as_ref()
        .map(|r| r.revoked.clone())
        .unwrap_or_default();
    let mut plan = plan(&for_nsgs.desired, &obs.observed, &revoked);
    let held_back = hold_back_unfinalized(ctx, &mut plan, &gathered).await;

    let mut failure: Option<CloudError> = None;
    let mut drift = 0;
    let verified = if plan.changes.iter().any(Change::writes)
        || obs.housekeeping
        || plan
            .changes
            .iter()
            .any(|c| matches!(c, Change::Unrecord(_) | Change::Forget(_)))
    {
        // Record first: a crash after the cloud call must not lose what to undo.
        let before = record.clone();
        let recorded = next_record(before.as_ref(), key, &locator, &plan);
        if before.as_ref() != Some(&recorded) {
            records::write(&api, &ctx.stamp_key, &policy, &key.target, Some(&recorded)).await?;
            mem.record = Some(Some(recorded.clone()));
        }
        drop_expired_opens(&mut plan, &locator, ctx.now());
        announce_revocations(ctx, &policy, key, &plan).await;
        drift = count_drift(mem, &plan);
        info!(changes = plan.changes.len(), drift, "applying plan");
        if let Err(e) = backend.apply(key, &locator, &obs, &plan).await {
            warn!(error = %e, "apply failed");
            failure = Some(e);
        }
        // Verify from scratch: the changes may have moved the VM's groups.
        let again = match backend.resolve(key, &locator).await {
            Err(CloudError::NotFound { .. }) if resolved.vanished => Ok(Resolved::vanished()),
            other => other,
        };
        let after = match again {
            Ok(r) => backend.observe(key, &locator, &r, &containers).await,
            Err(e) => Err(e),
        };
        let after = match after {
            Ok(o) => Some(o),
            Err(e) => {
                failure.get_or_insert(e);
                None
            }
        };
        if let Some(after) = &after {
            let left =
                after_apply_record(&recorded, key, &locator, &plan, after, failure.is_none());
            forget_events(ctx, &policy, key, &plan).await;
            if left != recorded {
                records::write(&api, &ctx.stamp_key, &policy, &key.target, Some(&left)).await?;
                mem.record = Some(Some(left));
            }
        }
        after
    } else {
        Some(obs)
    };

    // Settle the requests from what the cloud shows now.
    let record_now = mem.record.clone().flatten();
    let again = verified
        .as_ref()
        .map(|v| plan_again(&for_nsgs, v, record_now.as_ref()));
    let fw = firewall::reconcile(ctx, key, &policy.spec, &decision.desired, &resolved, snat).await;
    let mut report = Report {
        converged: failure.is_none()
            && verified.as_ref().is_some_and(|v| !v.housekeeping)
            && again
                .as_ref()
                .is_some_and(|p| p.is_empty() && p.blocked.is_empty()),
        blocked: again.map(|p| p.blocked).unwrap_or_default(),
        error: failure
            .as_ref()
            .map(|e| format!("target {}: {e}", key.target)),
        trouble: failure.as_ref().map(Trouble::of),
        drift,
        verified,
    };
    if let Some(fw) = &fw {
        report.converged &= fw.converged();
        report.blocked.extend(fw.blocked.iter().cloned());
        if let (None, Some(e)) = (&report.error, &fw.error) {
            report.error = Some(format!("target {}: {e}", key.target));
            report.trouble = Some(Trouble::of(e));
        }
    }
    let found = settle::Findings {
        observed: report.verified.as_ref().map(|o| &o.observed),
        trouble: report.error.as_deref().or(held_back.as_deref()),
        blocked: &report.blocked,
        firewall: fw.as_ref(),
        denied: None,
    };
    // The cloud work is done: the statuses wait on the API server only.
    drop(permit);
    settle::settle(ctx, key, &decision, &gathered, &found, mem).await;

    mem.last_seen = report.verified.clone();
    mem.last_locator = Some(locator.clone());

    // Done with a cleanup: forget the target.
    let clean = report.verified.as_ref().is_some_and(|v| {
        v.observed.owned.is_empty()
            && v.owned_containers.is_empty()
            && record_now.as_ref().is_none_or(|r| r.revoked.is_empty())
    });
    if decision.cleanup.is_some() && clean && report.converged {
        records::write(&api, &ctx.stamp_key, &policy, &key.target, None).await?;
        mem.record = Some(None);
        info!(cleanup = ?decision.cleanup, "target cleaned up");
        let mut o = outcome(mem, &decision, report);
        o.clean = true;
        let next = match decision.cleanup {
            // Now the VM the spec names.
            Some(Cleanup::TargetMoved) => Next::At(Instant::now()),
            // The policy's cleanup waits for every target: stay until it is gone.
            Some(Cleanup::PolicyDeleted) => next,
            _ => Next::Retire,
        };
        return Ok((o, next));
    }
    let next = match next {
        // Not there yet: look again soon (backoff applies on failures).
        Next::At(at) if !report.converged => {
            Next::At(at.min(Instant::now() + Duration::from_secs(2)))
        }
        n => n,
    };
    Ok((outcome(mem, &decision, report), next))
}

/// What a run that reached the cloud found.
struct Report {
    /// What the cloud shows after the run.
    verified: Option<Observation>,
    /// The cloud matches (nothing failed, blocked or left to tidy).
    converged: bool,
    /// What cannot be placed.
    blocked: Vec<crate::domain::Blocked>,
    /// The cloud error that stopped a change, for people.
    error: Option<String>,
    /// Its kind.
    trouble: Option<Trouble>,
    /// Drifted rules corrected.
    drift: i64,
}

/// Statuses for a run that could not read the cloud: open ports stay as they were seen,
/// pending ones say why.
async fn settle_unobserved(
    ctx: &Context,
    key: &TargetKey,
    decision: &Decision,
    gathered: &[Gathered],
    message: &str,
    mem: &mut Memory,
) {
    let found = settle::Findings::unobserved(message);
    settle::settle(ctx, key, decision, gathered, &found, mem).await;
}

/// Drops creates and restamps of grants whose time ran out while the run was reading:
/// what was decided a moment ago must not open anything after its expiry.
fn drop_expired_opens(plan: &mut Plan, locator: &Locator, now: Timestamp) {
    let lead = crate::domain::desired::close_lead(locator);
    plan.changes.retain(|c| match c {
        Change::CreateGrant { grant, .. } | Change::Restamp { grant, .. } => {
            grant.expires_at - lead > now
        }
        _ => true,
    });
}

/// Closes the grants that must close by the rule ids the last run saw, before reading
/// anything: an expiry waits for no read. The full run that follows verifies.
async fn close_first(
    backend: &dyn crate::cloud::Backend,
    key: &TargetKey,
    decision: &Decision,
    record: Option<&TargetRecord>,
    mem: &Memory,
) {
    let Some(last) = &mem.last_seen else { return };
    // Behind a firewall the NSGs carry a view of the grants (see `firewall::nsg_view`)
    // that needs a read to build; its rules close by their stamps (the actor's closer).
    if matches!(
        &decision.desired.locator,
        Locator::Azure {
            firewall: Some(_),
            ..
        }
    ) {
        return;
    }
    let revoked = record.map(|r| r.revoked.clone()).unwrap_or_default();
    let closing: Vec<Change> = plan(&decision.desired, &last.observed, &revoked)
        .changes
        .into_iter()
        .filter(|c| matches!(c, Change::DeleteOwned(r) if r.grant().is_some()))
        .collect();
    if closing.is_empty() {
        return;
    }
    info!(closing = closing.len(), "closing grants");
    let p = Plan {
        changes: closing,
        blocked: Vec::new(),
    };
    if let Err(e) = backend
        .apply(key, &decision.desired.locator, last, &p)
        .await
    {
        warn!(error = %e, "closing failed; the full run retries");
    }
}

/// Reads the record from the server the first time, then keeps it in memory (this actor
/// is its only writer). A record that does not verify is reported once and ignored.
async fn load_record(
    ctx: &Context,
    api: &Api<JitPolicy>,
    cached: &JitPolicy,
    key: &TargetKey,
    mem: &mut Memory,
) -> Result<Option<TargetRecord>, Error> {
    if let Some(r) = &mem.record {
        return Ok(r.clone());
    }
    let fresh = api.get_opt(&key.policy.name).await?;
    let policy = fresh.as_ref().unwrap_or(cached);
    if mem.drift_total.is_none() {
        mem.drift_total = policy
            .status
            .as_ref()
            .and_then(|s| s.targets.iter().find(|t| t.name == key.target))
            .map(|t| t.drift_corrections);
    }
    let record = match records::read(&ctx.stamp_key, policy, &key.target) {
        records::Read::Valid(r, forged) => {
            if !forged.is_empty() {
                let message = format!(
                    "target {}: {} revoked-rule entr(y/ies) in the status do not carry this operator's signature and are ignored: {:?}",
                    key.target,
                    forged.len(),
                    forged
                );
                warn!(%message, "ignoring record entries that do not verify");
                publish(ctx, policy, EventType::Warning, "RecordRejected", message).await;
            }
            Some(r)
        }
        records::Read::None => None,
        records::Read::Rejected(message) => {
            if !mem.rejection_reported {
                warn!(%message, "ignoring a record that does not verify");
                publish(ctx, policy, EventType::Warning, "RecordRejected", message).await;
                mem.rejection_reported = true;
            }
            None
        }
    };
    mem.record = Some(record.clone());
    Ok(record)
}

fn policy_input(policy: &JitPolicy, key: &TargetKey) -> PolicyInput {
    let deleting = policy.metadata.deletion_timestamp.is_some();
    match validate::policy(key.policy.clone(), &policy.spec, deleting) {
        Ok(p) => PolicyInput::Valid(p),
        Err(errors) => PolicyInput::Held(
            validate::held_policy(key.policy.clone(), &policy.spec, deleting),
            validate::join(&errors),
        ),
    }
}

/// This target's requests from the cache, parsed, with their verified requesters.
fn gather_requests(ctx: &Context, key: &TargetKey, input: &PolicyInput) -> Vec<Gathered> {
    let now = ctx.now();
    ctx.requests
        .state()
        .into_iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(key.policy.namespace.as_str())
                && r.spec.policy_ref.name == key.policy.name
                && r.spec.target == key.target
        })
        .map(|r| {
            let rkey = ObjectKey::new(&key.policy.namespace, r.name_any());
            let ports: Vec<i32> = r.spec.ports.iter().map(|p| p.port).collect();
            let recorded = convert::recorded(r.status.as_ref(), &ports);
            let created = r
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(now);
            let stamp = r
                .annotations()
                .get(requester::ANNOTATION)
                .map(String::as_str);
            let name = r.name_any();
            let stamped = requester::Object {
                namespace: &key.policy.namespace,
                name: &name,
                created: r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            };
            let who = requester::verify(&ctx.stamp_key, stamped, stamp, &r.spec);
            let deleting = r.metadata.deletion_timestamp.is_some();
            let parsed =
                decide::parse_request(input, rkey.clone(), &r.spec, created, deleting, recorded)
                    .and_then(|p| match &who {
                        Ok(_) => Ok(p),
                        // Nothing opens for someone we cannot name.
                        Err(message) => Err(vec![validate::FieldError {
                            field: format!("metadata.annotations[{}]", requester::ANNOTATION),
                            message: message.clone(),
                        }]),
                    });
            Gathered {
                object: r,
                input: RequestInput { key: rkey, parsed },
                requester: who.ok(),
            }
        })
        .collect()
}

/// The NSGs to lock: every NSG this run may read or write (Azure only; EC2 writes to one
/// group are independent).
fn lock_ids(locator: &Locator, resolved: &Resolved, record: Option<&TargetRecord>) -> Vec<String> {
    match locator {
        Locator::Azure { .. } => resolved
            .nsg_ids
            .iter()
            .chain(record.iter().flat_map(|r| r.containers.iter()))
            .map(|s| s.to_ascii_lowercase())
            .collect(),
        Locator::Aws { .. } => Vec::new(),
    }
}

/// The containers the record names, for `observe` to look at even when the VM no longer
/// points at them: Azure NSGs written to, AWS groups of revoked rules.
fn recorded_containers(locator: &Locator, record: Option<&TargetRecord>) -> Vec<String> {
    let Some(r) = record else { return Vec::new() };
    let mut v: Vec<String> = match locator {
        Locator::Azure { .. } => r.containers.clone(),
        Locator::Aws { .. } => r.revoked.iter().map(|s| s.container.clone()).collect(),
    };
    v.sort();
    v.dedup();
    v
}

/// Adds our finalizer to requests about to get a rule, so that deleting one closes it
/// before it goes. A request whose finalizer cannot be added is held back this time (its
/// creates leave the plan); the other requests go on.
async fn hold_back_unfinalized(
    ctx: &Context,
    plan: &mut Plan,
    gathered: &[Gathered],
) -> Option<String> {
    let opening: BTreeSet<&ObjectKey> = plan
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::CreateGrant { grant, .. } => Some(&grant.request),
            _ => None,
        })
        .collect();
    // The admission webhook adds it to new requests; this is for those created without
    // it (the webhook was bypassed, or the request predates it). Together, not in turn.
    let mut lacking = Vec::new();
    let mut adds = Vec::new();
    for g in gathered.iter().filter(|g| opening.contains(&g.input.key)) {
        if !g.object.finalizers().iter().any(|f| f == FINALIZER)
            && g.object.metadata.deletion_timestamp.is_none()
        {
            lacking.push(g);
            adds.push(add_finalizer(ctx, &g.object));
        }
    }
    let results = futures::future::join_all(adds).await;
    let mut failed: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut message = None;
    for (g, result) in lacking.into_iter().zip(results) {
        if let Err(e) = result {
            warn!(request = %g.input.key, error = %e, "cannot add the finalizer; not opening this request now");
            message = Some(format!("waiting to add the finalizer: {e}"));
            failed.insert(g.input.key.clone());
        }
    }
    plan.changes.retain(|c| match c {
        Change::CreateGrant { grant, .. } => !failed.contains(&grant.request),
        _ => true,
    });
    message
}

/// The record to write before the plan's changes: the target's locator, the NSGs about
/// to be written (Azure), the rules about to be revoked (AWS).
fn next_record(
    current: Option<&TargetRecord>,
    key: &TargetKey,
    locator: &Locator,
    plan: &Plan,
) -> TargetRecord {
    let mut r = current
        .cloned()
        .unwrap_or_else(|| TargetRecord::new(&key.target, locator));
    for c in &plan.changes {
        match c {
            Change::RevokeForeign(rule) => r.revoked.push(rule.spec.clone()),
            c if c.writes() && matches!(locator, Locator::Azure { .. }) => {
                r.containers.push(c.location().to_string())
            }
            _ => {}
        }
    }
    r.normalized()
}

/// The record after the plan: restored and forgotten rules go (when the cloud took the
/// changes); Azure keeps only NSGs where owned rules remain.
fn after_apply_record(
    recorded: &TargetRecord,
    _key: &TargetKey,
    locator: &Locator,
    plan: &Plan,
    after: &Observation,
    applied: bool,
) -> TargetRecord {
    let mut r = recorded.clone();
    for c in &plan.changes {
        match c {
            Change::Unrecord(s) | Change::Forget(s) => r.revoked.retain(|x| x != s),
            Change::RestoreForeign(s) if applied => r.revoked.retain(|x| x != s),
            _ => {}
        }
    }
    if let Locator::Azure { .. } = locator {
        r.containers = after
            .observed
            .owned
            .iter()
            .map(|o| o.location.clone())
            .collect();
    }
    r.normalized()
}

/// Plans again on what the cloud shows after the changes: empty when converged.
fn plan_again(decision: &Decision, after: &Observation, record: Option<&TargetRecord>) -> Plan {
    let revoked = record.map(|r| r.revoked.clone()).unwrap_or_default();
    plan(&decision.desired, &after.observed, &revoked)
}

/// Events for what the baseline revokes that opens more than the governed ports.
async fn announce_revocations(ctx: &Context, policy: &JitPolicy, key: &TargetKey, plan: &Plan) {
    for c in &plan.changes {
        let Change::RevokeForeign(r) = c else {
            continue;
        };
        if lost_protocols(&r.spec) {
            publish(
                ctx,
                policy,
                EventType::Warning,
                "RevokedBroadRule",
                format!(
                    "target {}: rule {} in {} (all traffic from {:?}) opens the governed ports; it is revoked and TCP, UDP and ICMP stay open through owned carve-outs, other IP protocols are closed until the rule is restored",
                    key.target, r.cloud_id, r.spec.container, r.spec.source
                ),
            )
            .await;
        }
    }
}

/// Events for records dropped because their group is gone.
async fn forget_events(ctx: &Context, policy: &JitPolicy, key: &TargetKey, plan: &Plan) {
    for c in &plan.changes {
        if let Change::Forget(s) = c {
            publish(
                ctx,
                policy,
                EventType::Warning,
                "RecordDropped",
                format!(
                    "target {}: security group {} no longer exists; its revoked rule ({} {:?} from {:?}) cannot be restored and is forgotten",
                    key.target, s.container, s.protocol, s.ports, s.source
                ),
            )
            .await;
        }
    }
}

/// Changes that put back what was already in place before (drift), counted.
fn count_drift(mem: &Memory, plan: &Plan) -> i64 {
    let n = plan
        .changes
        .iter()
        .filter(|c| match c {
            Change::RevokeForeign(_) | Change::PutDeny { .. } => mem.baseline_enforced_before,
            Change::CreateGrant { grant, .. } => mem
                .active_before
                .contains(&(grant.request.clone(), grant.port)),
            _ => false,
        })
        .count() as i64;
    if n > 0 {
        metrics::drift(
            if mem.baseline_enforced_before {
                "baseline"
            } else {
                "grant"
            },
            n as u64,
        );
        warn!(drift = n, "correcting drift");
    }
    n
}

/// An outcome for a run that stopped at a cloud error or a missing backend.
fn trouble(mem: &Memory, kind: Trouble, message: String, resolved: Option<Resolved>) -> Outcome {
    Outcome {
        resolved,
        baseline: BaselineState::Failed,
        message: Some(message),
        trouble: Some(kind),
        converged: false,
        last_converge_time: mem.last_converge_time,
        drift_total: mem.drift_total.unwrap_or(0),
        clean: false,
        cleaning: false,
    }
}

fn outcome(mem: &mut Memory, decision: &Decision, report: Report) -> Outcome {
    let d = &decision.desired;
    mem.drift_total = Some(mem.drift_total.unwrap_or(0) + report.drift);
    let first = mem.last_converge_time.is_none() || !mem.baseline_enforced_before;
    if report.converged && (report.drift > 0 || first) {
        let now = Timestamp::now();
        mem.last_converge_time = Some(Timestamp::from_second(now.as_second()).unwrap_or(now));
    }
    let conflict = report.blocked.iter().any(|b| b.kind == BlockKind::Conflict);
    let lifting = decision.cleanup.is_some() || (d.baseline.is_empty() && !d.hold);
    let baseline = match () {
        _ if lifting && report.converged => BaselineState::Lifted,
        _ if lifting => BaselineState::Pending,
        _ if conflict => BaselineState::Conflict,
        _ if report.trouble.is_some() => BaselineState::Failed,
        _ if report.converged => BaselineState::Enforced,
        _ => BaselineState::Pending,
    };
    mem.baseline_enforced_before = baseline == BaselineState::Enforced;
    mem.active_before = d
        .grants
        .iter()
        .map(|g| (g.request.clone(), g.port))
        .collect();
    let blocked_message = (!report.blocked.is_empty()).then(|| {
        report
            .blocked
            .iter()
            .map(|b| format!("{}: {}", b.location, b.reason))
            .collect::<Vec<_>>()
            .join("; ")
    });
    let trouble = report.trouble.or_else(|| {
        if conflict {
            Some(Trouble::Conflict)
        } else if report
            .blocked
            .iter()
            .any(|b| b.kind == BlockKind::Unsupported)
        {
            Some(Trouble::Unsupported)
        } else {
            None
        }
    });
    Outcome {
        resolved: report.verified.map(|v| v.resolved),
        baseline,
        message: report.error.or(blocked_message).or(decision.held.clone()),
        trouble,
        converged: report.converged,
        last_converge_time: mem.last_converge_time,
        drift_total: mem.drift_total.unwrap_or(0),
        clean: false,
        cleaning: decision.cleanup.is_some(),
    }
}

impl Outcome {
    /// The outcome of a target with nothing left to do.
    pub(super) fn gone() -> Outcome {
        Outcome {
            resolved: None,
            baseline: BaselineState::Lifted,
            message: None,
            trouble: None,
            converged: true,
            last_converge_time: None,
            drift_total: 0,
            clean: true,
            cleaning: true,
        }
    }
}
