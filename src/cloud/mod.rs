//! Cloud backends behind one trait. Never imports `kube`.
//!
//! A backend resolves a target (VM → interfaces → security groups / NSGs), reports the
//! rules it sees in the domain model, makes the changes of a plan, and sweeps owned rules
//! whose time is up or whose owner is gone.

pub mod aws;
pub mod azure;
pub mod error;

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use jiff::Timestamp;

pub use error::CloudError;

use crate::domain::{Locator, Observed, Plan, TargetKey};

/// One network interface of a target, as resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// The interface id (AWS ENI id, Azure NIC id).
    pub id: String,
    /// The security groups attached to it that the operator does not own (AWS).
    pub groups: Vec<String>,
    /// Every group attached to it, in order, owned ones included (AWS).
    pub attached: Vec<String>,
    /// The operator's group for this interface and target, when it exists (AWS).
    pub owned_group: Option<String>,
    /// Its private addresses.
    pub private_ips: Vec<String>,
}

/// What a backend resolved for a target: recorded in the policy's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The network the VM is in (AWS VPC id).
    pub network: Option<String>,
    /// The VM's network interfaces.
    pub interfaces: Vec<Interface>,
    /// The NSGs that guard the VM (Azure).
    pub nsg_ids: Vec<String>,
    /// The firewall in front of the VM (Azure).
    pub firewall_id: Option<String>,
    /// The VM's public addresses (where people connect to), when it has any.
    pub public_ips: Vec<String>,
    /// The VM no longer exists: only what the record names is looked at (to clean up).
    pub vanished: bool,
}

impl Resolved {
    /// Every private address of the VM.
    pub fn private_ips(&self) -> Vec<String> {
        self.interfaces
            .iter()
            .flat_map(|i| i.private_ips.iter().cloned())
            .collect()
    }

    /// A VM that is gone: nothing to resolve, only records to clean up after.
    pub fn vanished() -> Self {
        Resolved {
            vanished: true,
            ..Resolved::default()
        }
    }
}

/// A target as a backend saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// The rules, in the domain model.
    pub observed: Observed,
    /// What was resolved.
    pub resolved: Resolved,
    /// The operator's own containers for this target, by the location they serve (AWS:
    /// ENI id → owned security group), also those of interfaces that left the VM.
    pub owned_containers: BTreeMap<String, String>,
    /// Owned containers need tidying (an empty or stray owned group) even when the plan
    /// is empty: call `apply` anyway.
    pub housekeeping: bool,
}

/// What a sweep may keep.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// Owner ids ([`crate::domain::stamp::owner_id`]) of requests that may hold rules.
    pub requests: BTreeSet<String>,
    /// Targets of existing policies ([`target_id`]), including removed targets that are
    /// still being cleaned up.
    pub targets: BTreeSet<String>,
    /// AWS regions to look in.
    pub aws_regions: BTreeSet<String>,
    /// Owner ids of existing policies (whose baseline rules stay).
    pub policies: BTreeSet<String>,
    /// Azure NSGs to look in (those the policies' statuses name).
    pub azure_nsgs: BTreeSet<String>,
    /// Azure Firewalls to look in (those the policies' specs and records name).
    pub azure_firewalls: BTreeSet<String>,
    /// Azure subscriptions whose NSGs are all looked through (those of the policies'
    /// VMs), for rules of this installation left in NSGs nobody names any more.
    pub azure_subscriptions: BTreeSet<String>,
}

/// What a sweep removed, and what it could not look at.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Owned rules removed because their stamp expired.
    pub expired: usize,
    /// Owned rules removed because their owner is gone.
    pub orphaned: usize,
    /// Owned groups deleted.
    pub groups_deleted: usize,
    /// What failed (a forbidden region, an NSG that cannot be read), one entry each: the
    /// sweep goes on past them.
    pub errors: Vec<(String, CloudError)>,
}

impl SweepReport {
    /// Adds another report's counts and errors.
    pub fn absorb(&mut self, other: SweepReport) {
        self.expired += other.expired;
        self.orphaned += other.orphaned;
        self.groups_deleted += other.groups_deleted;
        self.errors.extend(other.errors);
    }

    /// Whether it removed anything.
    pub fn removed_anything(&self) -> bool {
        self.expired + self.orphaned + self.groups_deleted > 0
    }
}

/// The id that names a policy target in cloud tags: `namespace/policy/target`, shortened
/// with a hash when long.
pub fn target_id(target: &TargetKey) -> String {
    let full = format!(
        "{}/{}/{}",
        target.policy.namespace, target.policy.name, target.target
    );
    if full.len() <= 200 {
        full
    } else {
        format!(
            "{}#{}",
            &full[..180],
            crate::domain::stamp::short_hash(&full)
        )
    }
}

/// A cloud backend.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Resolves a target: the VM, its interfaces and addresses, and the containers that
    /// guard it (security groups, NSGs). Reads only. A VM that does not exist is
    /// `CloudError::NotFound`.
    async fn resolve(&self, target: &TargetKey, locator: &Locator) -> Result<Resolved, CloudError>;

    /// Reads the rules that concern the target in the containers `resolved` names, and in
    /// `recorded` (containers the operator's record names: revoked rules' groups, NSGs it
    /// wrote to), which may be gone. Reads only.
    async fn observe(
        &self,
        target: &TargetKey,
        locator: &Locator,
        resolved: &Resolved,
        recorded: &[String],
    ) -> Result<Observation, CloudError>;

    /// Makes a plan's changes in order. Idempotent: a change already made (a duplicate
    /// rule, a rule already gone) counts as done. A failing grant does not keep the other
    /// grants of a container from being made; the first error is returned at the end.
    async fn apply(
        &self,
        target: &TargetKey,
        locator: &Locator,
        observation: &Observation,
        plan: &Plan,
    ) -> Result<(), CloudError>;

    /// Removes owned rules of this installation whose stamp expired at `now` or whose
    /// owner is not live, and owned groups of targets that are gone. Goes on past
    /// failures (reported in the report).
    async fn sweep(&self, now: Timestamp, live: &Live) -> SweepReport;
}
