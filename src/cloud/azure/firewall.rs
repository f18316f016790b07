//! Azure Firewall (classic rules) through ARM: read a firewall into the domain model,
//! write the owned collections the plan asks for in one guarded PUT of the whole
//! firewall, and sweep owned rules whose owner is gone.
//!
//! Rule collections are properties of the firewall resource, so every change is GET →
//! plan → edit owned collections only → PUT with `If-Match` → wait for the long-running
//! operation. A 412 means someone else wrote in between: read again and plan again. A
//! firewall governed by Azure Firewall Manager is refused before anything is written.

use std::collections::BTreeSet;

use ipnet::IpNet;
use jiff::Timestamp;

use super::arm::{ArmClient, Resource};
use super::firewall_json::{managed_by, merge, parse};
use super::nsg::NETWORK_API;
use crate::cloud::{CloudError, Live, SweepReport};
use crate::domain::firewall::{
    self, Connection, FirewallBlocked, FirewallDesired, FirewallObserved, SweepScope,
};
use crate::domain::stamp::short_hash;

/// How many times a write that lost a race (412) is planned again before giving up.
pub const MAX_RACES: usize = 5;

const GET: &str = "GetAzureFirewall";
const PUT: &str = "PutAzureFirewall";

/// A firewall as read: the resource (for the PUT) and its collections in the model.
#[derive(Clone, Debug)]
pub struct FirewallRead {
    /// The resource as ARM showed it, with its ETag.
    pub resource: Resource,
    /// Its NAT and network collections.
    pub observed: FirewallObserved,
    /// The private addresses of its IP configurations.
    pub private_ips: Vec<String>,
    /// The subnets of its IP configurations (`AzureFirewallSubnet`): traffic it
    /// forwards reaches VMs from there, so an NSG in front of a VM sees these sources.
    pub subnet_ids: Vec<String>,
}

/// What a reconcile of one firewall did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FirewallOutcome {
    /// Where to connect, per grant that is open.
    pub connections: Vec<Connection>,
    /// What could not be placed, and why.
    pub blocked: Vec<FirewallBlocked>,
    /// PUTs sent (a converged firewall: 0; a lost race adds one).
    pub writes: usize,
    /// The private addresses of the firewall's IP configurations.
    pub private_ips: Vec<String>,
    /// The subnets the firewall forwards traffic from.
    pub subnet_ids: Vec<String>,
}

fn unsupported(id: &str, manager: &str) -> CloudError {
    CloudError::Unsupported {
        what: format!("Azure Firewall {id}"),
        code: "FirewallManager".into(),
        message: format!(
            "Azure Firewall {id} is managed by Azure Firewall Manager ({manager}): only classic rules are supported"
        ),
    }
}

fn config_values(body: &serde_json::Value, pointer: &str) -> Vec<String> {
    body.pointer("/properties/ipConfigurations")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.pointer(pointer).and_then(serde_json::Value::as_str))
        .map(str::to_string)
        .collect()
}

/// Reads firewall `id`. A firewall governed by Azure Firewall Manager is
/// [`CloudError::Unsupported`]; a missing one [`CloudError::NotFound`].
pub async fn read_firewall(arm: &ArmClient, id: &str) -> Result<FirewallRead, CloudError> {
    let resource = arm
        .get(GET, id, NETWORK_API)
        .await?
        .ok_or_else(|| CloudError::NotFound {
            what: format!("Azure Firewall {id}"),
            code: "ResourceNotFound".into(),
            message: "the firewall does not exist".into(),
        })?;
    if let Some(manager) = managed_by(&resource.body) {
        return Err(unsupported(id, &manager));
    }
    Ok(FirewallRead {
        observed: parse(&resource.body),
        private_ips: config_values(&resource.body, "/properties/privateIPAddress"),
        subnet_ids: config_values(&resource.body, "/properties/subnet/id"),
        resource,
    })
}

/// Writes `body` over the firewall read as `read`, guarded by its ETag; `Ok(false)` when
/// someone else wrote first (412).
async fn put_guarded(
    arm: &ArmClient,
    id: &str,
    read: &FirewallRead,
    body: &serde_json::Value,
) -> Result<bool, CloudError> {
    // Without an ETag the write could undo someone else's: never write unguarded.
    let etag = read
        .resource
        .etag
        .as_deref()
        .ok_or_else(|| CloudError::Fatal {
            op: PUT,
            code: "MissingETag".into(),
            message: format!(
                "ARM showed Azure Firewall {id} without an ETag; refusing an unguarded write"
            ),
        })?;
    match arm.put(PUT, id, NETWORK_API, body, Some(etag)).await {
        Ok(_) => Ok(true),
        Err(CloudError::Retryable { code, .. }) if code == "PreconditionFailed" => {
            tracing::info!(
                firewall = id,
                "the firewall changed since it was read; planning again"
            );
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn lost_too_often(id: &str) -> CloudError {
    CloudError::Retryable {
        op: PUT,
        code: "PreconditionFailed".into(),
        message: format!(
            "Azure Firewall {id} changed between every read and write ({MAX_RACES} times); trying again later"
        ),
    }
}

/// Brings firewall `desired.firewall` to the desired state of the targets behind it:
/// GET → plan → one PUT of the whole firewall with only the owned collections changed
/// (none when it is converged). A lost race (412) reads and plans again, up to
/// [`MAX_RACES`] times.
pub async fn reconcile_firewall(
    arm: &ArmClient,
    desired: &FirewallDesired,
) -> Result<FirewallOutcome, CloudError> {
    let id = desired.firewall.as_str();
    let mut writes = 0;
    for _ in 0..MAX_RACES {
        let read = read_firewall(arm, id).await?;
        let plan = firewall::plan(desired, &read.observed);
        let done = |writes| FirewallOutcome {
            connections: plan.connections.clone(),
            blocked: plan.blocked.clone(),
            writes,
            private_ips: read.private_ips.clone(),
            subnet_ids: read.subnet_ids.clone(),
        };
        if !plan.changed {
            return Ok(done(writes));
        }
        let body = merge(&read.resource.body, &desired.cluster, &plan.owned);
        writes += 1;
        if put_guarded(arm, id, &read, &body).await? {
            return Ok(done(writes));
        }
    }
    Err(lost_too_often(id))
}

/// The tag ([`firewall::target_tag`]) of a target named by its id
/// ([`crate::cloud::target_id`]): a long id ends in the hash the tag is; a short one is
/// the text the tag hashes.
pub fn tag_of_target_id(id: &str) -> String {
    match id.rsplit_once('#') {
        Some((_, hash)) => hash.to_string(),
        None => short_hash(id),
    }
}

/// Removes, from firewall `id`, the rules installation `cluster` owns whose stamp expired
/// at `now` or whose owner (request, policy or target) is not in `live`; collections
/// left empty go too. One guarded PUT when anything goes; nothing when the firewall is
/// gone or managed by Firewall Manager (it cannot hold classic rules then).
pub async fn sweep_firewall(
    arm: &ArmClient,
    id: &str,
    cluster: &str,
    now: Timestamp,
    live: &Live,
) -> Result<SweepReport, CloudError> {
    let targets: BTreeSet<String> = live.targets.iter().map(|t| tag_of_target_id(t)).collect();
    let scope = SweepScope {
        now,
        requests: &live.requests,
        policies: &live.policies,
        targets: &targets,
    };
    for _ in 0..MAX_RACES {
        let read = match read_firewall(arm, id).await {
            Ok(read) => read,
            Err(CloudError::NotFound { .. } | CloudError::Unsupported { .. }) => {
                return Ok(SweepReport::default());
            }
            Err(e) => return Err(e),
        };
        let swept = firewall::sweep(&read.observed, cluster, scope);
        if !swept.changed() {
            return Ok(SweepReport::default());
        }
        let body = merge(&read.resource.body, cluster, &swept.owned);
        if put_guarded(arm, id, &read, &body).await? {
            return Ok(SweepReport {
                expired: swept.expired,
                orphaned: swept.orphaned,
                ..SweepReport::default()
            });
        }
    }
    Err(lost_too_often(id))
}

/// Azure Firewall for one installation: the ARM client and the installation's name.
#[derive(Clone, Debug)]
pub struct FirewallBackend {
    arm: ArmClient,
    cluster: String,
}

impl FirewallBackend {
    /// A backend on `arm` for installation `cluster` (`--cluster-name`).
    pub fn new(arm: ArmClient, cluster: &str) -> Self {
        FirewallBackend {
            arm,
            cluster: cluster.to_string(),
        }
    }

    /// The installation's name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Whether firewall `id` can be governed (`Unsupported` when Azure Firewall Manager
    /// governs it, `NotFound` when it does not exist), and the address ranges its DNAT
    /// traffic reaches VMs from: Azure Firewall translates the source of DNAT'ed traffic
    /// to an address of its subnet (`AzureFirewallSubnet`), so that is what an NSG in
    /// front of the VM sees. Reads only.
    pub async fn check(&self, id: &str) -> Result<Vec<IpNet>, CloudError> {
        let read = read_firewall(&self.arm, id).await?;
        let mut sources = Vec::new();
        for subnet in &read.subnet_ids {
            let body = self
                .arm
                .get("GetSubnet", subnet, NETWORK_API)
                .await?
                .map(|r| r.body)
                .ok_or_else(|| CloudError::NotFound {
                    what: format!("subnet {subnet} of Azure Firewall {id}"),
                    code: "ResourceNotFound".into(),
                    message: "the firewall's subnet does not exist".into(),
                })?;
            let single = body.pointer("/properties/addressPrefix").into_iter();
            let many = body
                .pointer("/properties/addressPrefixes")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten();
            sources.extend(
                single
                    .chain(many)
                    .filter_map(serde_json::Value::as_str)
                    .filter_map(|p| p.parse::<IpNet>().ok())
                    .map(|p| p.trunc()),
            );
        }
        sources.sort();
        sources.dedup();
        if sources.is_empty() {
            return Err(CloudError::Fatal {
                op: GET,
                code: "NoFirewallSubnet".into(),
                message: format!(
                    "Azure Firewall {id} names no subnet with an address prefix: where its DNAT traffic comes from is unknown"
                ),
            });
        }
        Ok(sources)
    }

    /// Reconciles firewall `firewall` for `targets` (the others behind it keep their
    /// rules): see [`reconcile_firewall`].
    pub async fn reconcile(
        &self,
        firewall: &str,
        targets: Vec<firewall::FirewallTarget>,
        now: Timestamp,
    ) -> Result<FirewallOutcome, CloudError> {
        let desired = FirewallDesired {
            firewall: firewall.to_string(),
            cluster: self.cluster.clone(),
            now,
            targets,
        };
        reconcile_firewall(&self.arm, &desired).await
    }

    /// Sweeps every firewall `live` names; a failure on one is reported and the others
    /// are still swept.
    pub async fn sweep(&self, now: Timestamp, live: &Live) -> SweepReport {
        let mut total = SweepReport::default();
        for id in &live.azure_firewalls {
            match sweep_firewall(&self.arm, id, &self.cluster, now, live).await {
                Ok(report) => total.absorb(report),
                Err(e) => total.errors.push((format!("Azure Firewall {id}"), e)),
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::target_id;
    use crate::domain::{ObjectKey, TargetKey};

    #[test]
    fn target_ids_give_the_tags_of_the_plan() {
        for policy in ["p", &"long-policy-name.".repeat(14)] {
            let key = TargetKey {
                policy: ObjectKey::new("team-a", policy.trim_end_matches('.')),
                target: "web".into(),
            };
            let id = target_id(&key);
            assert_eq!(tag_of_target_id(&id), firewall::target_tag(&key), "{id}");
        }
    }
}
