//! The AWS EC2 backend: security groups on the instance's network interfaces.
//!
//! Baseline: revoke the foreign ingress rules that open a governed port (the controller
//! records them first, so they can be restored). Grants: one owned security group per
//! ENI and target, tagged, with one rule per grant, attached beside the ENI's groups;
//! detached and deleted when empty.
//!
//! The SDK's standard retry mode backs off with full jitter on `RequestLimitExceeded` and
//! 5xx, under one retry-token bucket shared by all clients of the process (one retry
//! partition), so a throttling storm drains the shared budget instead of multiplying
//! calls; what still fails is classified for the controller, which backs off again.
//! (The adaptive mode's client-side limiter was measured too: with every third call
//! throttled it slowed a first grant to 203 s, which is no use for just-in-time access.)

mod convert;
mod errors;
pub mod scan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::types::{
    Filter, IpPermission, ResourceType, SecurityGroup, SecurityGroupRule, SecurityGroupRuleUpdate,
    Tag, TagSpecification,
};
use jiff::Timestamp;

use tracing::warn;

use self::errors::{classify, code};
use super::{Backend, CloudError, Interface, Live, Observation, Resolved, SweepReport, target_id};
use crate::domain::stamp::{self, short_hash};
use crate::domain::{Change, Locator, Observed, OwnedKind, Plan, Stamp, TargetKey};
use crate::metrics;

/// Tag on every owned security group.
pub const TAG_MANAGED: &str = "portcullis.dev/managed";
/// Tag naming the policy target an owned group serves.
pub const TAG_TARGET: &str = "portcullis.dev/target";
/// Tag naming the ENI an owned group serves.
pub const TAG_ENI: &str = "portcullis.dev/eni";
/// Tag naming the Portcullis installation that owns a group: installations sharing an
/// account sweep only their own groups.
pub const TAG_CLUSTER: &str = "portcullis.dev/cluster";

/// The EC2 backend.
pub struct AwsBackend {
    base: aws_config::SdkConfig,
    cluster: String,
    clients: Mutex<BTreeMap<String, Client>>,
}

impl AwsBackend {
    /// A backend on aws-config's default chain (environment, profile, web identity for
    /// IRSA, instance metadata); `AWS_ENDPOINT_URL` points it at moto or LocalStack.
    /// `cluster` names this installation in the tags of the groups it creates.
    pub async fn from_env(cluster: &str) -> Self {
        Self::from_env_with_attempt_timeout(cluster, Duration::from_secs(20)).await
    }

    /// Like [`AwsBackend::from_env`], with a call attempt retried after `attempt_timeout`
    /// (the scan's whole-account listings want more than a target run's calls).
    pub async fn from_env_with_attempt_timeout(cluster: &str, attempt_timeout: Duration) -> Self {
        let cluster = stamp::cluster_id(cluster);
        let base = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(6)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            // Without an attempt timeout a connection the cloud (or a proxy) holds open
            // stalls the target's run, and its status, for as long as it is held (the
            // chaos run's held calls); an attempt that takes this long is retried.
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(attempt_timeout)
                    .build(),
            )
            .load()
            .await;
        AwsBackend {
            base,
            cluster,
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    fn client(&self, region: &str) -> Client {
        let mut clients = self.clients.lock().expect("client cache poisoned");
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let conf = aws_sdk_ec2::config::Builder::from(&self.base)
                    .region(Region::new(region.to_string()))
                    .build();
                Client::from_conf(conf)
            })
            .clone()
    }
}

/// Records a call's outcome and classifies its error.
async fn call<T, E>(
    op: &'static str,
    fut: impl std::future::Future<
        Output = Result<
            T,
            aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
        >,
    >,
) -> Result<T, CloudError>
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match fut.await {
        Ok(v) => {
            metrics::cloud_call("aws", op, "ok");
            Ok(v)
        }
        Err(e) => {
            let e = classify(op, e);
            metrics::cloud_call("aws", op, e.category());
            Err(e)
        }
    }
}

/// Like [`call`], but error codes in `benign` count as success (`None`).
async fn call_tolerant<T, E>(
    op: &'static str,
    benign: &[&str],
    fut: impl std::future::Future<
        Output = Result<
            T,
            aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
        >,
    >,
) -> Result<Option<T>, CloudError>
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match fut.await {
        Ok(v) => {
            metrics::cloud_call("aws", op, "ok");
            Ok(Some(v))
        }
        Err(e) if code(&e).is_some_and(|c| benign.contains(&c)) => {
            metrics::cloud_call("aws", op, "ok");
            Ok(None)
        }
        Err(e) => {
            let e = classify(op, e);
            metrics::cloud_call("aws", op, e.category());
            Err(e)
        }
    }
}

fn filter(name: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(Into::into).collect()))
        .build()
}

fn tag<'a>(g: &'a SecurityGroup, key: &str) -> Option<&'a str> {
    g.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn aws_locator(locator: &Locator) -> Result<(&str, &str), CloudError> {
    match locator {
        Locator::Aws {
            region,
            instance_id,
        } => Ok((region, instance_id)),
        Locator::Azure { .. } => Err(CloudError::Fatal {
            op: "observe",
            code: "WrongCloud".into(),
            message: "an Azure target was sent to the AWS backend".into(),
        }),
    }
}

/// The deterministic name of the owned group of an installation for an ENI and target.
pub fn owned_group_name(cluster: &str, eni: &str, target: &str) -> String {
    format!(
        "portcullis-{eni}-{}",
        short_hash(&format!("{cluster}/{target}"))
    )
}

/// Reads the ingress rules of some groups, all pages.
async fn ingress_rules(
    ec2: &Client,
    groups: &[String],
) -> Result<Vec<SecurityGroupRule>, CloudError> {
    let mut out = Vec::new();
    for chunk in groups.chunks(200) {
        let mut token = None;
        loop {
            let page = call(
                "DescribeSecurityGroupRules",
                ec2.describe_security_group_rules()
                    .filters(filter("group-id", chunk.iter().cloned()))
                    .set_next_token(token.take())
                    .max_results(1000)
                    .send(),
            )
            .await?;
            out.extend(
                page.security_group_rules()
                    .iter()
                    .filter(|r| r.is_egress() != Some(true))
                    .cloned(),
            );
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
    }
    Ok(out)
}

/// Describes security groups by id or filter, all pages.
async fn groups(
    ec2: &Client,
    ids: Vec<String>,
    filters: Vec<Filter>,
) -> Result<Vec<SecurityGroup>, CloudError> {
    if ids.is_empty() && filters.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let mut req = ec2.describe_security_groups().set_next_token(token.take());
        if ids.is_empty() {
            req = req.max_results(1000);
        } else {
            req = req.set_group_ids(Some(ids.clone()));
        }
        let page = call(
            "DescribeSecurityGroups",
            req.set_filters(Some(filters.clone())).send(),
        )
        .await?;
        out.extend(page.security_groups().iter().cloned());
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

/// An owned group of this installation and target, as observed.
struct OwnedGroup {
    id: String,
    /// The ENI it serves (its tag).
    eni: String,
    /// Where its rules count: the ENI when the group is attached there, else
    /// `detached:<eni>` (the plan then puts them back through an attached group).
    location: String,
}

/// Whether an observed group belongs to this installation (any of its targets).
fn ours(g: &SecurityGroup, cluster: &str) -> bool {
    tag(g, TAG_MANAGED).is_some() && tag(g, TAG_CLUSTER) == Some(cluster)
}

#[async_trait]
impl Backend for AwsBackend {
    async fn resolve(
        &self,
        _target: &TargetKey,
        locator: &Locator,
    ) -> Result<Resolved, CloudError> {
        let (region, instance_id) = aws_locator(locator)?;
        let ec2 = self.client(region);
        let out = call(
            "DescribeInstances",
            ec2.describe_instances().instance_ids(instance_id).send(),
        )
        .await;
        let out = match out {
            Err(CloudError::NotFound { .. }) => None,
            other => Some(other?),
        };
        let instance = out
            .iter()
            .flat_map(|o| o.reservations())
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id))
            .filter(|i| {
                !matches!(
                    i.state().and_then(|s| s.name()).map(|n| n.as_str()),
                    Some("terminated" | "shutting-down")
                )
            })
            .ok_or_else(|| CloudError::NotFound {
                what: format!("EC2 instance {instance_id} in {region}"),
                code: "InvalidInstanceID.NotFound".into(),
                message: "the instance does not exist or is terminated".into(),
            })?;
        let eni_ids: Vec<String> = instance
            .network_interfaces()
            .iter()
            .filter_map(|n| n.network_interface_id().map(str::to_string))
            .collect();
        // The ENIs themselves are the truth about their groups (DescribeInstances can lag).
        let enis = describe_enis(&ec2, eni_ids).await?;
        Ok(Resolved {
            network: instance.vpc_id().map(str::to_string),
            public_ips: enis
                .iter()
                .filter_map(|e| e.association().and_then(|a| a.public_ip()))
                .map(str::to_string)
                .collect(),
            interfaces: enis.iter().map(interface).collect(),
            ..Resolved::default()
        })
    }

    async fn observe(
        &self,
        target: &TargetKey,
        locator: &Locator,
        resolved: &Resolved,
        recorded: &[String],
    ) -> Result<Observation, CloudError> {
        let (region, instance_id) = aws_locator(locator)?;
        let ec2 = self.client(region);
        let tid = target_id(target);

        // Every group attached to the target, and those the record names (which may be
        // gone), with their tags: by filter, so that a missing group is no error.
        let attached: BTreeSet<String> = resolved
            .interfaces
            .iter()
            .flat_map(|i| i.attached.iter().cloned())
            .collect();
        let wanted: BTreeSet<String> = attached.iter().chain(recorded).cloned().collect();
        let described = groups(
            &ec2,
            Vec::new(),
            vec![filter("group-id", wanted.iter().cloned())],
        )
        .await?;
        let existing: BTreeSet<String> = described
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect();
        let installation_groups: BTreeSet<String> = described
            .iter()
            .filter(|g| ours(g, &self.cluster))
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect();
        // Another installation's groups are foreign here: touching them is that
        // installation's business, so they count as shared with someone else.
        let other_installations: BTreeMap<String, String> = described
            .iter()
            .filter(|g| tag(g, TAG_MANAGED).is_some() && !ours(g, &self.cluster))
            .filter_map(|g| {
                Some((
                    g.group_id()?.to_string(),
                    format!(
                        "Portcullis installation {:?}",
                        tag(g, TAG_CLUSTER).unwrap_or("?")
                    ),
                ))
            })
            .collect();

        // This target's owned groups, wherever they are.
        let owned_groups = groups(
            &ec2,
            Vec::new(),
            vec![
                filter(&format!("tag:{TAG_TARGET}"), [tid.clone()]),
                filter(&format!("tag:{TAG_CLUSTER}"), [self.cluster.clone()]),
            ],
        )
        .await?;
        let owned: Vec<OwnedGroup> = owned_groups
            .iter()
            .filter_map(|g| {
                let (id, eni) = (g.group_id()?, tag(g, TAG_ENI)?);
                let attached_here = resolved
                    .interfaces
                    .iter()
                    .any(|i| i.id == eni && i.attached.iter().any(|a| a == id));
                Some(OwnedGroup {
                    id: id.to_string(),
                    eni: eni.to_string(),
                    location: if attached_here {
                        eni.to_string()
                    } else {
                        format!("detached:{eni}")
                    },
                })
            })
            .collect();

        let foreign_groups: Vec<String> = existing
            .iter()
            .filter(|g| !installation_groups.contains(*g))
            .cloned()
            .collect();
        let mut all = foreign_groups.clone();
        all.extend(owned.iter().map(|g| g.id.clone()));
        let mut rules = ingress_rules(&ec2, &all).await?;
        fill_descriptions(&mut rules, &owned_groups);

        // Who else uses the foreign groups.
        let own_enis: BTreeSet<&str> = resolved.interfaces.iter().map(|i| i.id.as_str()).collect();
        let mut group_users: BTreeMap<String, BTreeSet<String>> = foreign_groups
            .iter()
            .map(|g| (g.clone(), BTreeSet::new()))
            .collect();
        for e in enis_with_groups(&ec2, &foreign_groups).await? {
            let Some(id) = e.network_interface_id() else {
                continue;
            };
            if own_enis.contains(id) {
                continue;
            }
            let user = e
                .attachment()
                .and_then(|a| a.instance_id())
                .filter(|i| *i != instance_id)
                .unwrap_or(id)
                .to_string();
            for g in e.groups().iter().filter_map(|g| g.group_id()) {
                if let Some(users) = group_users.get_mut(g) {
                    users.insert(user.clone());
                }
            }
        }
        for (g, who) in &other_installations {
            group_users
                .entry(g.clone())
                .or_default()
                .insert(who.clone());
        }

        let mut observed = Observed {
            locations: if resolved.vanished {
                Vec::new()
            } else {
                resolved.interfaces.iter().map(|i| i.id.clone()).collect()
            },
            addresses: resolved
                .private_ips()
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            group_users,
            gone_containers: recorded
                .iter()
                .filter(|g| !existing.contains(*g))
                .cloned()
                .collect(),
            ..Observed::default()
        };
        for i in &resolved.interfaces {
            observed.attached.insert(
                i.id.clone(),
                i.attached
                    .iter()
                    .filter(|g| !installation_groups.contains(*g))
                    .cloned()
                    .collect(),
            );
        }
        for g in &owned {
            let in_group: Vec<&SecurityGroupRule> = rules
                .iter()
                .filter(|r| r.group_id() == Some(g.id.as_str()))
                .collect();
            observed
                .owned
                .extend(convert::owned_rules(&self.cluster, &g.location, &in_group));
        }
        observed.foreign = rules
            .iter()
            .filter(|r| {
                r.group_id()
                    .is_some_and(|g| foreign_groups.iter().any(|f| f == g))
            })
            .filter_map(convert::foreign_rule)
            .collect();

        let mut resolved = resolved.clone();
        for i in &mut resolved.interfaces {
            i.groups = i
                .attached
                .iter()
                .filter(|g| !installation_groups.contains(*g))
                .cloned()
                .collect();
            i.owned_group = owned.iter().find(|g| g.eni == i.id).map(|g| g.id.clone());
        }
        let housekeeping = owned.iter().any(|g| {
            let empty = !rules.iter().any(|r| r.group_id() == Some(g.id.as_str()));
            let stray = !observed.locations.contains(&g.location);
            empty || stray
        });
        let mut owned_containers = BTreeMap::new();
        for g in &owned {
            owned_containers
                .entry(g.eni.clone())
                .or_insert_with(|| g.id.clone());
        }
        Ok(Observation {
            observed,
            resolved,
            owned_containers,
            housekeeping,
        })
    }

    async fn apply(
        &self,
        target: &TargetKey,
        locator: &Locator,
        obs: &Observation,
        plan: &Plan,
    ) -> Result<(), CloudError> {
        let (region, _) = aws_locator(locator)?;
        let ec2 = self.client(region);
        let tid = target_id(target);
        let mut batches = Batches::of(&self.cluster, target, obs, plan);

        // In plan order: owned rules out, carve-outs in, foreign rules revoked, stamps
        // rewritten, recorded rules restored, carve-outs of restored rules out.
        for (group, ids) in &batches.revoke_owned {
            revoke_rules(&ec2, group, ids).await?;
        }
        for (eni, perms) in std::mem::take(&mut batches.carve_outs) {
            let group = self.owned_group_attached(&ec2, &tid, obs, &eni).await?;
            authorize(&ec2, &group, perms).await?;
        }
        for (group, ids) in &batches.revoke_foreign {
            revoke_rules(&ec2, group, ids).await?;
        }
        for (group, updates) in std::mem::take(&mut batches.restamp) {
            call(
                "ModifySecurityGroupRules",
                ec2.modify_security_group_rules()
                    .group_id(&group)
                    .set_security_group_rules(Some(updates))
                    .send(),
            )
            .await?;
        }
        for (group, perm) in std::mem::take(&mut batches.restore) {
            authorize(&ec2, &group, vec![perm]).await?;
        }
        for (group, ids) in &batches.revoke_carve_outs {
            revoke_rules(&ec2, group, ids).await?;
        }

        // Owned groups that end up empty go (also those of ENIs that left the instance);
        // those that keep or get rules are attached.
        for g in owned_groups_of(obs) {
            let kept = batches.remaining_in(&g.location)
                + batches.remaining_in(&format!("detached:{}", g.eni));
            if kept <= 0 && !batches.create.contains_key(&g.eni) {
                self.remove_group(&ec2, &g.id).await?;
            }
        }
        for (eni, perms) in std::mem::take(&mut batches.create) {
            let group = self.owned_group_attached(&ec2, &tid, obs, &eni).await?;
            authorize(&ec2, &group, perms).await?;
        }
        // Owned groups that kept rules but were detached by someone: attach them again.
        for i in &obs.resolved.interfaces {
            if let Some(group) = &i.owned_group
                && batches.remaining_in(&i.id) > 0
            {
                attach(&ec2, &i.id, group).await?;
            }
        }
        Ok(())
    }

    async fn sweep(&self, now: Timestamp, live: &Live) -> SweepReport {
        let mut report = SweepReport::default();
        for region in &live.aws_regions {
            if let Err(e) = self.sweep_region(region, now, live, &mut report).await {
                warn!(region, error = %e, "cannot sweep the region; the others go on");
                report.errors.push((format!("AWS region {region}"), e));
            }
        }
        report
    }
}

/// A plan's changes as EC2 calls, batched per group.
#[derive(Default)]
struct Batches {
    revoke_owned: BTreeMap<String, Vec<String>>,
    carve_outs: BTreeMap<String, Vec<IpPermission>>,
    revoke_foreign: BTreeMap<String, Vec<String>>,
    restamp: BTreeMap<String, Vec<SecurityGroupRuleUpdate>>,
    restore: Vec<(String, IpPermission)>,
    revoke_carve_outs: BTreeMap<String, Vec<String>>,
    create: BTreeMap<String, Vec<IpPermission>>,
    /// How many owned rules each location keeps after the plan.
    remaining: BTreeMap<String, i64>,
}

impl Batches {
    fn of(cluster: &str, target: &TargetKey, obs: &Observation, plan: &Plan) -> Batches {
        let mut b = Batches::default();
        for r in &obs.observed.owned {
            *b.remaining.entry(r.location.clone()).or_default() += 1;
        }
        let group_of = |loc: &str| -> Option<String> {
            let eni = loc.strip_prefix("detached:").unwrap_or(loc);
            owned_group_for(obs, eni)
        };
        let baseline = Stamp::baseline(&target.policy);
        for change in &plan.changes {
            match change {
                Change::DeleteOwned(rule) => {
                    *b.remaining.entry(rule.location.clone()).or_default() -= 1;
                    let Some(g) = group_of(&rule.location) else {
                        continue;
                    };
                    let into = if matches!(rule.kind, OwnedKind::CarveOut(_)) {
                        &mut b.revoke_carve_outs
                    } else {
                        &mut b.revoke_owned
                    };
                    into.entry(g)
                        .or_default()
                        .extend(rule.cloud_id.split(',').map(str::to_string));
                }
                Change::CreateCarveOut { location, shape } => {
                    *b.remaining.entry(location.clone()).or_default() += 1;
                    b.carve_outs
                        .entry(location.clone())
                        .or_default()
                        .push(convert::carve_out_permission(cluster, &baseline, shape));
                }
                Change::RevokeForeign(rule) => b
                    .revoke_foreign
                    .entry(rule.spec.container.clone())
                    .or_default()
                    .push(rule.cloud_id.clone()),
                Change::Restamp { rule, grant, .. } => {
                    let (Some(g), Some(key)) = (group_of(&rule.location), rule.grant()) else {
                        continue;
                    };
                    let protos = convert::ec2_protocols(key.port.protocol);
                    for (id, proto) in rule.cloud_id.split(',').zip(protos.iter()) {
                        b.restamp.entry(g.clone()).or_default().push(
                            SecurityGroupRuleUpdate::builder()
                                .security_group_rule_id(id)
                                .security_group_rule(convert::restamp_request(
                                    cluster, grant, proto,
                                ))
                                .build(),
                        );
                    }
                }
                Change::Unrecord(_) | Change::Forget(_) => {}
                Change::RestoreForeign(spec) => b
                    .restore
                    .push((spec.container.clone(), convert::restore_permission(spec))),
                // The AWS baseline revokes instead of denying; the plan never asks.
                Change::PutDeny { .. } => {}
                Change::CreateGrant {
                    location, grant, ..
                } => {
                    *b.remaining.entry(location.clone()).or_default() += 1;
                    b.create
                        .entry(location.clone())
                        .or_default()
                        .extend(convert::grant_permissions(cluster, grant));
                }
            }
        }
        b
    }

    fn remaining_in(&self, location: &str) -> i64 {
        self.remaining.get(location).copied().unwrap_or(0)
    }
}

/// The owned groups an observation found (attached or not).
fn owned_groups_of(obs: &Observation) -> Vec<OwnedGroup> {
    obs.owned_containers
        .iter()
        .map(|(eni, id)| {
            let attached = obs
                .resolved
                .interfaces
                .iter()
                .any(|i| &i.id == eni && i.attached.contains(id));
            OwnedGroup {
                id: id.clone(),
                eni: eni.clone(),
                location: if attached {
                    eni.clone()
                } else {
                    format!("detached:{eni}")
                },
            }
        })
        .collect()
}

impl AwsBackend {
    /// The owned group of `eni` for this target, created (or found after a crash) and
    /// attached to the ENI.
    async fn owned_group_attached(
        &self,
        ec2: &Client,
        tid: &str,
        obs: &Observation,
        eni: &str,
    ) -> Result<String, CloudError> {
        let group = match owned_group_for(obs, eni) {
            Some(g) => g,
            None => {
                ensure_group(
                    ec2,
                    &self.cluster,
                    tid,
                    eni,
                    obs.resolved.network.as_deref(),
                )
                .await?
            }
        };
        attach(ec2, eni, &group).await?;
        Ok(group)
    }

    /// Detaches an owned group from every ENI it is on and deletes it.
    async fn remove_group(&self, ec2: &Client, group: &str) -> Result<(), CloudError> {
        for e in enis_with_groups(ec2, &[group.to_string()]).await? {
            if let Some(id) = e.network_interface_id() {
                detach(ec2, id, group).await?;
            }
        }
        delete_group(ec2, group).await
    }

    async fn sweep_region(
        &self,
        region: &str,
        now: Timestamp,
        live: &Live,
        report: &mut SweepReport,
    ) -> Result<(), CloudError> {
        let ec2 = self.client(region);
        let owned = groups(
            &ec2,
            Vec::new(),
            vec![filter(
                &format!("tag:{TAG_CLUSTER}"),
                [self.cluster.clone()],
            )],
        )
        .await?;
        let owned: Vec<&SecurityGroup> = owned.iter().filter(|g| ours(g, &self.cluster)).collect();
        if owned.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = owned
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect();
        let mut rules = ingress_rules(&ec2, &ids).await?;
        let described: Vec<SecurityGroup> = owned.iter().map(|g| (*g).clone()).collect();
        fill_descriptions(&mut rules, &described);
        for g in owned {
            let Some(id) = g.group_id() else { continue };
            let target_live = tag(g, TAG_TARGET).is_some_and(|t| live.targets.contains(t));
            let mut gone = Vec::new();
            for r in rules.iter().filter(|r| r.group_id() == Some(id)) {
                let stamp = r
                    .description()
                    .and_then(|d| stamp::parse_own(&self.cluster, d));
                let expired = stamp
                    .as_ref()
                    .and_then(|s| s.expires_at)
                    .is_some_and(|t| t <= now);
                let owner_live = stamp.as_ref().is_some_and(|s| match s.expires_at {
                    Some(_) => live.requests.contains(&s.owner),
                    // Carve-outs belong to the policy.
                    None => live.policies.contains(&s.owner),
                });
                let Some(rid) = r.security_group_rule_id() else {
                    continue;
                };
                if expired {
                    report.expired += 1;
                    gone.push(rid.to_string());
                } else if !target_live || !owner_live {
                    report.orphaned += 1;
                    gone.push(rid.to_string());
                }
            }
            if let Err(e) = revoke_rules(&ec2, id, &gone).await {
                report.errors.push((format!("security group {id}"), e));
                continue;
            }
            if !target_live {
                // Nobody reconciles this group any more: detach it wherever it is.
                match self.remove_group(&ec2, id).await {
                    Ok(()) => report.groups_deleted += 1,
                    Err(e) => report.errors.push((format!("security group {id}"), e)),
                }
            }
        }
        Ok(())
    }
}

/// Fills in the descriptions a rule listing left out, from the groups' permissions. EC2
/// lists them in both places; moto's DescribeSecurityGroupRules drops the description of
/// a rule whose source is a group, which would hide the operator's stamp on a carve-out.
fn fill_descriptions(rules: &mut [SecurityGroupRule], groups: &[SecurityGroup]) {
    for r in rules.iter_mut().filter(|r| r.description().is_none()) {
        let Some(source) = r.referenced_group_info().and_then(|g| g.group_id()) else {
            continue;
        };
        let found = groups
            .iter()
            .filter(|g| g.group_id() == r.group_id())
            .flat_map(|g| g.ip_permissions())
            .filter(|p| {
                p.ip_protocol() == r.ip_protocol()
                    && p.from_port() == r.from_port()
                    && p.to_port() == r.to_port()
            })
            .flat_map(|p| p.user_id_group_pairs())
            .find(|pair| pair.group_id() == Some(source))
            .and_then(|pair| pair.description())
            .map(str::to_string);
        if let Some(d) = found {
            *r = SecurityGroupRule::builder()
                .set_security_group_rule_id(r.security_group_rule_id().map(str::to_string))
                .set_group_id(r.group_id().map(str::to_string))
                .set_is_egress(r.is_egress())
                .set_ip_protocol(r.ip_protocol().map(str::to_string))
                .set_from_port(r.from_port())
                .set_to_port(r.to_port())
                .set_referenced_group_info(r.referenced_group_info().cloned())
                .description(d)
                .build();
        }
    }
}

/// The interface as resolved (groups split into owned and foreign by `observe`).
fn interface(e: &aws_sdk_ec2::types::NetworkInterface) -> Interface {
    Interface {
        id: e.network_interface_id().unwrap_or_default().to_string(),
        attached: e
            .groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect(),
        private_ips: e
            .private_ip_addresses()
            .iter()
            .filter_map(|a| a.private_ip_address().map(str::to_string))
            .chain(
                e.ipv6_addresses()
                    .iter()
                    .filter_map(|a| a.ipv6_address().map(str::to_string)),
            )
            .collect(),
        ..Interface::default()
    }
}

/// Describes ENIs by id (all of them, in one call).
async fn describe_enis(
    ec2: &Client,
    ids: Vec<String>,
) -> Result<Vec<aws_sdk_ec2::types::NetworkInterface>, CloudError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(call(
        "DescribeNetworkInterfaces",
        ec2.describe_network_interfaces()
            .set_network_interface_ids(Some(ids))
            .send(),
    )
    .await?
    .network_interfaces()
    .to_vec())
}

/// Every ENI that carries one of `groups`, all pages.
async fn enis_with_groups(
    ec2: &Client,
    groups: &[String],
) -> Result<Vec<aws_sdk_ec2::types::NetworkInterface>, CloudError> {
    let mut out = Vec::new();
    for chunk in groups.chunks(200) {
        let mut token = None;
        loop {
            let page = call(
                "DescribeNetworkInterfaces",
                ec2.describe_network_interfaces()
                    .filters(filter("group-id", chunk.iter().cloned()))
                    .set_next_token(token.take())
                    .max_results(1000)
                    .send(),
            )
            .await?;
            out.extend(page.network_interfaces().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
    }
    Ok(out)
}

fn owned_group_for(obs: &Observation, eni: &str) -> Option<String> {
    obs.owned_containers.get(eni).cloned()
}
/// Sends `items` in one call; when EC2 refuses the whole batch because of one benign item
/// (a rule already gone, a permission already there), sends them one by one.
/// `send` answers whether the call went through (`false`: refused as benign).
async fn batch_or_each<T, Fut>(
    items: Vec<T>,
    send: impl Fn(Vec<T>) -> Fut,
) -> Result<(), CloudError>
where
    T: Clone,
    Fut: std::future::Future<Output = Result<bool, CloudError>>,
{
    if items.is_empty() || send(items.clone()).await? || items.len() == 1 {
        return Ok(());
    }
    for item in items {
        send(vec![item]).await?;
    }
    Ok(())
}

async fn revoke_rules(ec2: &Client, group: &str, ids: &[String]) -> Result<(), CloudError> {
    const GONE: &[&str] = &[
        "InvalidSecurityGroupRuleId.NotFound",
        "InvalidPermission.NotFound",
        // The group itself is gone, and its rules with it.
        "InvalidGroup.NotFound",
    ];
    batch_or_each(ids.to_vec(), |batch| async move {
        let sent = ec2
            .revoke_security_group_ingress()
            .group_id(group)
            .set_security_group_rule_ids(Some(batch))
            .send();
        Ok(call_tolerant("RevokeSecurityGroupIngress", GONE, sent)
            .await?
            .is_some())
    })
    .await
}

async fn authorize(ec2: &Client, group: &str, perms: Vec<IpPermission>) -> Result<(), CloudError> {
    const DUP: &[&str] = &["InvalidPermission.Duplicate"];
    batch_or_each(perms, |batch| async move {
        let sent = ec2
            .authorize_security_group_ingress()
            .group_id(group)
            .set_ip_permissions(Some(batch))
            .send();
        Ok(call_tolerant("AuthorizeSecurityGroupIngress", DUP, sent)
            .await?
            .is_some())
    })
    .await
}

async fn ensure_group(
    ec2: &Client,
    cluster: &str,
    target: &str,
    eni: &str,
    vpc: Option<&str>,
) -> Result<String, CloudError> {
    let name = owned_group_name(cluster, eni, target);
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::SecurityGroup)
        .tags(Tag::builder().key(TAG_MANAGED).value("true").build())
        .tags(Tag::builder().key(TAG_CLUSTER).value(cluster).build())
        .tags(Tag::builder().key(TAG_TARGET).value(target).build())
        .tags(Tag::builder().key(TAG_ENI).value(eni).build())
        .tags(Tag::builder().key("Name").value(&name).build())
        .build();
    let created = call_tolerant(
        "CreateSecurityGroup",
        &["InvalidGroup.Duplicate"],
        ec2.create_security_group()
            .group_name(&name)
            .description("Portcullis just-in-time access grants (managed; do not edit)")
            .set_vpc_id(vpc.map(str::to_string))
            .tag_specifications(tags)
            .send(),
    )
    .await?;
    if let Some(id) = created.and_then(|c| c.group_id().map(str::to_string)) {
        return Ok(id);
    }
    // Created before a crash: find it by its deterministic name, and adopt it only when
    // its tags say it is this installation's group for this target and ENI (a group
    // someone else made with that name is not ours to fill with grants).
    let mut filters = vec![filter("group-name", [name.clone()])];
    if let Some(v) = vpc {
        filters.push(filter("vpc-id", [v]));
    }
    let found = groups(ec2, Vec::new(), filters).await?;
    let Some(g) = found.first() else {
        return Err(CloudError::Retryable {
            op: "CreateSecurityGroup",
            code: "InvalidGroup.Duplicate".into(),
            message: format!("group {name} exists but cannot be found yet"),
        });
    };
    let mine =
        ours(g, cluster) && tag(g, TAG_TARGET) == Some(target) && tag(g, TAG_ENI) == Some(eni);
    if !mine {
        return Err(CloudError::InUse {
            op: "CreateSecurityGroup",
            code: "InvalidGroup.Duplicate".into(),
            message: format!(
                "a security group named {name} ({}) exists without this installation's tags; Portcullis will not adopt it: delete or rename it",
                g.group_id().unwrap_or("?")
            ),
        });
    }
    Ok(g.group_id().unwrap_or_default().to_string())
}

/// The groups attached to an ENI right now: read just before the ENI's group list is
/// written, so a change someone made meanwhile is not reverted.
async fn current_groups(ec2: &Client, eni: &str) -> Result<Option<Vec<String>>, CloudError> {
    let found = call_tolerant(
        "DescribeNetworkInterfaces",
        &["InvalidNetworkInterfaceID.NotFound"],
        ec2.describe_network_interfaces()
            .network_interface_ids(eni)
            .send(),
    )
    .await?;
    Ok(found.and_then(|out| {
        out.network_interfaces().first().map(|e| {
            e.groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect()
        })
    }))
}

async fn set_groups(ec2: &Client, eni: &str, groups: Vec<String>) -> Result<(), CloudError> {
    call(
        "ModifyNetworkInterfaceAttribute",
        ec2.modify_network_interface_attribute()
            .network_interface_id(eni)
            .set_groups(Some(groups))
            .send(),
    )
    .await?;
    Ok(())
}

async fn attach(ec2: &Client, eni: &str, group: &str) -> Result<(), CloudError> {
    let Some(mut groups) = current_groups(ec2, eni).await? else {
        return Ok(());
    };
    if groups.iter().any(|g| g == group) {
        return Ok(());
    }
    groups.push(group.to_string());
    set_groups(ec2, eni, groups).await
}

async fn detach(ec2: &Client, eni: &str, group: &str) -> Result<(), CloudError> {
    let Some(groups) = current_groups(ec2, eni).await? else {
        return Ok(());
    };
    if !groups.iter().any(|g| g == group) {
        return Ok(());
    }
    let groups: Vec<String> = groups.into_iter().filter(|g| g != group).collect();
    if groups.is_empty() {
        // An ENI must keep one group; leaving ours (now empty) there opens nothing.
        return Ok(());
    }
    set_groups(ec2, eni, groups).await
}

async fn delete_group(ec2: &Client, group: &str) -> Result<(), CloudError> {
    call_tolerant(
        "DeleteSecurityGroup",
        &["InvalidGroup.NotFound"],
        ec2.delete_security_group().group_id(group).send(),
    )
    .await?;
    Ok(())
}
