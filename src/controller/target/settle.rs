//! A target's requests after a run: their statuses from what the cloud shows, events,
//! and letting go of deleted requests once nothing of theirs is open.

use std::sync::Arc;

use kube::ResourceExt;

use super::decide::{Decision, RequestInput};
use super::firewall::FirewallRun;
use super::run::Memory;
use crate::api::{AccessRequest, AccessRequestStatus, Phase, PortStatus, Requester};
use crate::controller::convert::{self, time};
use crate::controller::kube_ops::{remove_finalizer, write_request_status};
use crate::controller::request_status::{announce, phase_of, refused_ports, request_conditions};
use crate::controller::{Context, FINALIZER};
use crate::domain::{
    BlockKind, Blocked, Observed, PortState, Request, RequestOutcome, RuleKey, TargetKey, stamp,
    validate,
};

/// A request of the target as the run read it.
pub struct Gathered {
    /// The object (from the cache).
    pub object: Arc<AccessRequest>,
    /// Parsed, or why not.
    pub input: RequestInput,
    /// Who asked, when the stamp verifies.
    pub requester: Option<Requester>,
}

/// What the run found, for the requests' statuses.
pub struct Findings<'a> {
    /// What the cloud shows after the run (`None`: it could not be read).
    pub observed: Option<&'a Observed>,
    /// Why something did not happen, for ports still pending.
    pub trouble: Option<&'a str>,
    /// What cannot be placed.
    pub blocked: &'a [Blocked],
    /// The target's Azure Firewall, when it has one: a port is open only once the
    /// firewall forwards it too, and the status says where to connect.
    pub firewall: Option<&'a FirewallRun>,
    /// Why nothing of this target can open (its firewall is managed by Azure Firewall
    /// Manager): the ports are denied with this reason.
    pub denied: Option<&'a str>,
}

impl<'a> Findings<'a> {
    /// A run that could not read the cloud, because of `trouble`.
    pub fn unobserved(trouble: &'a str) -> Self {
        Findings {
            observed: None,
            trouble: Some(trouble),
            blocked: &[],
            firewall: None,
            denied: None,
        }
    }
}

/// How many of one run's API writes (statuses, finalizers) are in flight at once: one
/// after another, a run of many requests spent most of its time waiting on the API server
/// (the benchmark's burst).
const WRITES_IN_FLIGHT: usize = 16;

/// Writes the statuses of the target's requests (only what changed) and removes the
/// finalizer of deleted requests once nothing of theirs is open. The writes of different
/// requests go out together, up to [`WRITES_IN_FLIGHT`] at a time.
pub async fn settle(
    ctx: &Context,
    key: &TargetKey,
    decision: &Decision,
    gathered: &[Gathered],
    found: &Findings<'_>,
    mem: &mut Memory,
) {
    use futures::StreamExt;
    let now = time(ctx.now());
    let work: Vec<(&Gathered, AccessRequestStatus, bool)> = gathered
        .iter()
        .map(|g| {
            let s = next_status(ctx, decision, g, found, &now);
            let release = lets_go(g, &s, found);
            (g, s, release)
        })
        .collect();
    // A Vec of named futures, not a lazy map over closures: the latter's higher-ranked
    // lifetimes keep the actor's future from being `Send`.
    let mut writes = Vec::with_capacity(work.len());
    for (g, s, release) in &work {
        let old = g.object.status.clone().unwrap_or_default();
        let last = mem.written.get(&g.input.key).cloned().unwrap_or(old);
        writes.push(write_one(ctx, g, last, s, *release));
    }
    let done: Vec<_> = futures::stream::iter(writes)
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect()
        .await;
    mem.written.extend(done.into_iter().flatten());
    tracing::debug!(target = %key, requests = gathered.len(), "requests settled");
}

/// Writes one request's status if it differs from the last written (and announces the
/// change), then removes its finalizer when it may go; the status written.
async fn write_one(
    ctx: &Context,
    g: &Gathered,
    last: AccessRequestStatus,
    s: &AccessRequestStatus,
    release: bool,
) -> Option<(crate::domain::ObjectKey, AccessRequestStatus)> {
    let req = &g.object;
    let mut wrote = None;
    if last != *s {
        match write_request_status(ctx, req, s).await {
            Ok(()) => {
                announce(ctx, req, &last, s).await;
                wrote = Some((g.input.key.clone(), s.clone()));
            }
            Err(e) => {
                tracing::warn!(request = %g.input.key, error = %e, "cannot write the request's status")
            }
        }
    }
    if release && let Err(e) = remove_finalizer(ctx, req).await {
        tracing::warn!(request = %g.input.key, error = %e, "cannot remove the finalizer");
    }
    wrote
}

/// A request's next status: from the decision and what the cloud shows, with its phase,
/// times and conditions.
fn next_status(
    ctx: &Context,
    decision: &Decision,
    g: &Gathered,
    found: &Findings<'_>,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> AccessRequestStatus {
    let req = &g.object;
    let old = req.status.clone().unwrap_or_default();
    let mut s = status(decision, g, found, &old);
    s.observed_generation = req.metadata.generation;
    s.requester = g.requester.clone();
    s.phase = Some(phase_of(&s.ports));
    if s.phase == Some(Phase::Active) && s.granted_at.is_none() {
        s.granted_at = Some(now.clone());
    }
    let finished = matches!(
        s.phase,
        Some(Phase::Expired | Phase::Revoked | Phase::Denied | Phase::Failed)
    );
    s.finished_at = if finished {
        old.finished_at.clone().or(Some(now.clone()))
    } else {
        None
    };
    request_conditions(&mut s, req.metadata.generation, ctx);
    s
}

/// A deleted request lets go (its finalizer is removed) once nothing of it is open.
fn lets_go(g: &Gathered, s: &AccessRequestStatus, found: &Findings<'_>) -> bool {
    let req = &g.object;
    let deleting = req.metadata.deletion_timestamp.is_some();
    let holds_rules = found.observed.is_none_or(|o| {
        let owner = stamp::owner_id(&g.input.key);
        o.owned.iter().any(|r| r.stamp.owner == owner)
    });
    let open = s
        .ports
        .iter()
        .any(|p| p.state == Phase::Active || p.state == Phase::Pending);
    let never_opened = g.input.parsed.is_err();
    deleting
        && req.finalizers().iter().any(|f| f == FINALIZER)
        && (never_opened || (!open && !holds_rules))
}

/// A request's status from the decision and what the cloud shows.
fn status(
    decision: &Decision,
    g: &Gathered,
    found: &Findings<'_>,
    old: &AccessRequestStatus,
) -> AccessRequestStatus {
    let mut s = old.clone();
    let r = match &g.input.parsed {
        Err(errors) => {
            s.ports = refused_ports(&g.object, old);
            s.message = Some(validate::join(errors));
            return s;
        }
        Ok(r) => r,
    };
    let Some(outcome) = decision.outcomes.get(&r.key) else {
        return s;
    };
    s.expires_at = outcome.expires_at().map(time);
    let mut pending_why: Option<String> = None;
    s.ports = r
        .ports
        .iter()
        .zip(&outcome.ports)
        .map(|(p, o)| {
            let key = RuleKey {
                port: p.spec,
                source: p.source,
            };
            let (state, rule_ids, why) = match o.state {
                PortState::Active | PortState::Pending if found.denied.is_some() => (
                    PortState::Denied,
                    Vec::new(),
                    found.denied.map(str::to_string),
                ),
                PortState::Active => match open_in_the_nsgs(found, r, key) {
                    Some(ids) => at_the_firewall(found.firewall, &r.key, p.spec, ids),
                    None => match unsupported(found.blocked, p.spec) {
                        Some(reason) => (PortState::Failed, Vec::new(), Some(reason)),
                        None => (PortState::Pending, Vec::new(), None),
                    },
                },
                other => (other, Vec::new(), None),
            };
            let connection = match (state, found.firewall) {
                (PortState::Active, Some(fw)) => {
                    fw.connections.get(&(r.key.clone(), p.spec)).cloned()
                }
                _ => None,
            };
            if let Some(why) = why {
                pending_why = Some(why);
            }
            let (phase, reason) = convert::port_state_to_api(state);
            PortStatus {
                port: i32::from(p.spec.port.get()),
                state: phase,
                reason,
                expires_at: Some(time(o.expires_at)),
                rule_ids,
                connection,
            }
        })
        .collect();
    s.message = Some(message(decision, outcome, &s.ports, found, pending_why));
    s
}

/// The rule ids of the grant when it is open in every location the target has.
fn open_in_every_location(
    observed: Option<&Observed>,
    r: &Request,
    key: RuleKey,
) -> Option<Vec<String>> {
    let o = observed?;
    if o.locations.is_empty() {
        return None;
    }
    let owner = stamp::owner_id(&r.key);
    let mut ids = Vec::new();
    for location in &o.locations {
        let rule = o.owned.iter().find(|x| {
            &x.location == location && x.stamp.owner == owner && x.grant() == Some(key)
        })?;
        ids.extend(rule.cloud_id.split(',').map(str::to_string));
    }
    Some(ids)
}

/// The NSG rule ids of a grant when the NSGs let it in: behind a firewall, the rule for
/// the port from the firewall's addresses (whichever request holds it), else the
/// request's own rule.
fn open_in_the_nsgs(found: &Findings<'_>, r: &Request, key: RuleKey) -> Option<Vec<String>> {
    let sources = found
        .firewall
        .map(|fw| fw.nsg_sources.as_slice())
        .unwrap_or_default();
    if sources.is_empty() {
        return open_in_every_location(found.observed, r, key);
    }
    let o = found.observed?;
    if o.locations.is_empty() {
        return None;
    }
    let mut ids = Vec::new();
    for location in &o.locations {
        let rule = o.owned.iter().find(|x| {
            &x.location == location
                && x.grant()
                    .is_some_and(|g| g.port == key.port && sources.contains(&g.source))
        })?;
        ids.extend(rule.cloud_id.split(',').map(str::to_string));
    }
    Some(ids)
}

/// A port open in the NSGs, as the target's firewall (if any) carries it: open once it
/// forwards it, failed when it never can, pending while it cannot yet.
fn at_the_firewall(
    fw: Option<&FirewallRun>,
    request: &crate::domain::ObjectKey,
    port: crate::domain::PortSpec,
    ids: Vec<String>,
) -> (PortState, Vec<String>, Option<String>) {
    let Some(fw) = fw else {
        return (PortState::Active, ids, None);
    };
    let key = (request.clone(), port);
    if fw.connections.contains_key(&key) {
        return (PortState::Active, ids, None);
    }
    match fw.grants_blocked.get(&key) {
        Some((BlockKind::Unsupported, why)) => (PortState::Failed, Vec::new(), Some(why.clone())),
        _ => (PortState::Pending, Vec::new(), None),
    }
}

fn unsupported(blocked: &[Blocked], port: crate::domain::PortSpec) -> Option<String> {
    blocked
        .iter()
        .find(|b| b.kind == BlockKind::Unsupported && b.port == port)
        .map(|b| b.reason.clone())
}

fn message(
    decision: &Decision,
    outcome: &RequestOutcome,
    ports: &[PortStatus],
    found: &Findings<'_>,
    failed_why: Option<String>,
) -> String {
    match phase_of(ports) {
        Phase::Active => format!(
            "open until {}",
            outcome
                .expires_at()
                .map(|t| t.to_string())
                .unwrap_or_default()
        ),
        Phase::Pending => match (&decision.held, found.trouble) {
            (Some(why), _) => format!(
                "the policy's spec does not validate, so nothing new opens until it is fixed: {why}"
            ),
            (None, Some(t)) => format!("opening: {t}"),
            (None, None) => "opening".to_string(),
        },
        Phase::Expired => "closed: the grant expired".to_string(),
        Phase::Revoked => "closed before its time".to_string(),
        Phase::Failed => failed_why.unwrap_or_else(|| "the cloud refused the grant".into()),
        Phase::Denied => found.denied.map(str::to_string).unwrap_or_default(),
    }
}
