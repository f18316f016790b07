//! Long-running operations: every PUT and DELETE of an NSG or a rule is accepted at
//! once and finishes only after the client has polled it a set number of times.
//!
//! Completion is driven by polls rather than by a clock so that tests are
//! deterministic: a client that writes again without polling finds the NSG still busy,
//! as it would on ARM when it does not wait. Only operations nobody polls for
//! [`ArmOptions::complete_after`](super::options::ArmOptions) complete on their own.

use std::time::Instant;

use super::ids;
use super::state::{Model, Provisioning, Shared, State, uuid};

/// What an operation does when it completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    PutNsg,
    DeleteNsg,
    PutRule(String),
    DeleteRule(String),
    PutFirewall,
    DeleteFirewall,
}

impl OpKind {
    /// The name ARM gives the operation in `ReferencedResourceNotProvisioned` messages.
    pub fn arm_name(&self) -> &'static str {
        match self {
            OpKind::PutNsg => "PutNetworkSecurityGroupOperation",
            OpKind::DeleteNsg => "DeleteNetworkSecurityGroupOperation",
            OpKind::PutRule(_) => "PutSecurityRuleOperation",
            OpKind::DeleteRule(_) => "DeleteSecurityRuleOperation",
            OpKind::PutFirewall => "PutAzureFirewallOperation",
            OpKind::DeleteFirewall => "DeleteAzureFirewallOperation",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Operation {
    pub id: String,
    pub subscription: String,
    pub location: String,
    pub api_version: String,
    /// Id of the resource the operation holds (an NSG or a firewall).
    pub nsg: String,
    pub kind: OpKind,
    pub polls_left: u32,
    pub done: bool,
    pub started: Instant,
}

impl Operation {
    /// The `Azure-AsyncOperation` URL.
    pub fn async_url(&self, base: &str) -> String {
        self.url(base, "operations")
    }

    /// The `Location` URL.
    pub fn location_url(&self, base: &str) -> String {
        self.url(base, "operationResults")
    }

    fn url(&self, base: &str, collection: &str) -> String {
        format!(
            "{base}/subscriptions/{}/providers/Microsoft.Network/locations/{}/{collection}/{}?api-version={}",
            self.subscription, self.location, self.id, self.api_version
        )
    }
}

/// Starts an operation on the NSG `nsg_id` and marks the NSG busy; returns it.
pub(crate) fn begin(
    shared: &Shared,
    state: &mut State,
    nsg_id: &str,
    kind: OpKind,
    api_version: &str,
) -> Operation {
    let nsg = state
        .model
        .nsg_mut(nsg_id)
        .expect("operations start on existing NSGs");
    let op = Operation {
        id: uuid(),
        subscription: subscription_of(&nsg.id),
        location: nsg.location.clone(),
        api_version: api_version.to_string(),
        nsg: nsg.id.clone(),
        kind,
        polls_left: shared.options.in_progress_polls,
        done: false,
        started: Instant::now(),
    };
    nsg.busy = Some(op.id.clone());
    state.ops.insert(op.id.clone(), op.clone());
    op
}

/// A poll's outcome.
pub(crate) enum Poll {
    InProgress,
    Done,
}

/// Polls the operation `id` (either of its URLs); `None` when there is no such operation.
pub(crate) fn poll(state: &mut State, id: &str) -> Option<Poll> {
    let op = state.ops.get_mut(id)?;
    if op.done {
        return Some(Poll::Done);
    }
    if op.polls_left > 0 {
        op.polls_left -= 1;
        return Some(Poll::InProgress);
    }
    complete(state, id);
    Some(Poll::Done)
}

/// Completes the operations in flight for longer than `complete_after`.
pub(crate) fn complete_expired(shared: &Shared, state: &mut State) {
    let Some(after) = shared.options.complete_after else {
        return;
    };
    let expired: Vec<String> = state
        .ops
        .values()
        .filter(|op| !op.done && op.started.elapsed() >= after)
        .map(|op| op.id.clone())
        .collect();
    for id in expired {
        complete(state, &id);
    }
}

/// Completes every operation still in flight.
pub(crate) fn complete_all(state: &mut State) {
    let pending: Vec<String> = state
        .ops
        .values()
        .filter(|op| !op.done)
        .map(|op| op.id.clone())
        .collect();
    for id in pending {
        complete(state, &id);
    }
}

fn complete(state: &mut State, id: &str) {
    let Some(op) = state.ops.get_mut(id) else {
        return;
    };
    op.done = true;
    let op = op.clone();
    apply(&mut state.model, &op);
}

fn apply(model: &mut Model, op: &Operation) {
    if matches!(op.kind, OpKind::PutFirewall | OpKind::DeleteFirewall) {
        return super::firewall::complete(model, op);
    }
    if op.kind == OpKind::DeleteNsg {
        model.nsgs.remove(&ids::key(&op.nsg));
        return;
    }
    let Some(nsg) = model.nsg_mut(&op.nsg) else {
        return;
    };
    match &op.kind {
        OpKind::PutNsg => {
            for rule in &mut nsg.rules {
                rule.state = Provisioning::Succeeded;
            }
        }
        OpKind::PutRule(name) => {
            if let Some(rule) = nsg.rule_mut(name) {
                rule.state = Provisioning::Succeeded;
            }
        }
        OpKind::DeleteRule(name) => nsg.rules.retain(|r| !r.name.eq_ignore_ascii_case(name)),
        OpKind::DeleteNsg | OpKind::PutFirewall | OpKind::DeleteFirewall => {
            unreachable!("handled above")
        }
    }
    nsg.state = Provisioning::Succeeded;
    nsg.busy = None;
}

fn subscription_of(id: &str) -> String {
    id.split('/').nth(2).unwrap_or_default().to_string()
}
