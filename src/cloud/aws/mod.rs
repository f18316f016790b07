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

use self::errors::{classify, code};
use super::{Backend, CloudError, Interface, Live, Observation, Resolved, SweepReport, target_id};
use crate::domain::stamp::{self, short_hash};
use crate::domain::{Change, Locator, Observed, Plan, TargetKey};
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
        let base = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(6)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .load()
            .await;
        AwsBackend {
            base,
            cluster: cluster.to_string(),
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

/// The deterministic name of the owned group for an ENI and target.
fn owned_group_name(eni: &str, target: &str) -> String {
    format!("portcullis-{eni}-{}", short_hash(target))
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

#[async_trait]
impl Backend for AwsBackend {
    async fn observe(
        &self,
        target: &TargetKey,
        locator: &Locator,
    ) -> Result<Observation, CloudError> {
        let (region, instance_id) = aws_locator(locator)?;
        let ec2 = self.client(region);
        let tid = target_id(target);

        let out = call(
            "DescribeInstances",
            ec2.describe_instances().instance_ids(instance_id).send(),
        )
        .await?;
        let instance = out
            .reservations()
            .iter()
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
        let vpc = instance.vpc_id().map(str::to_string);
        let eni_ids: Vec<String> = instance
            .network_interfaces()
            .iter()
            .filter_map(|n| n.network_interface_id().map(str::to_string))
            .collect();

        // The ENIs themselves are the truth about their groups (DescribeInstances can lag).
        let enis = if eni_ids.is_empty() {
            Vec::new()
        } else {
            call(
                "DescribeNetworkInterfaces",
                ec2.describe_network_interfaces()
                    .set_network_interface_ids(Some(eni_ids.clone()))
                    .send(),
            )
            .await?
            .network_interfaces()
            .to_vec()
        };
        let attached: BTreeSet<String> = enis
            .iter()
            .flat_map(|e| {
                e.groups()
                    .iter()
                    .filter_map(|g| g.group_id().map(str::to_string))
            })
            .collect();
        let attached_groups = groups(&ec2, attached.iter().cloned().collect(), Vec::new()).await?;
        let managed: BTreeSet<String> = attached_groups
            .iter()
            .filter(|g| tag(g, TAG_MANAGED).is_some())
            .filter_map(|g| g.group_id().map(str::to_string))
            .collect();
        let owned_groups = groups(
            &ec2,
            Vec::new(),
            vec![filter(&format!("tag:{TAG_TARGET}"), [tid.clone()])],
        )
        .await?;
        // ENI → owned group; a group whose ENI tag is missing serves no ENI.
        let mut owned_by_eni: BTreeMap<String, String> = BTreeMap::new();
        let mut owned_location: BTreeMap<String, String> = BTreeMap::new();
        for g in &owned_groups {
            let (Some(id), Some(eni)) = (g.group_id(), tag(g, TAG_ENI)) else {
                continue;
            };
            let attached_here = enis.iter().any(|e| {
                e.network_interface_id() == Some(eni)
                    && e.groups().iter().any(|x| x.group_id() == Some(id))
            });
            // Rules in an owned group that is not attached where it should be do not
            // count as present: the plan puts them back through an attached group.
            let location = if attached_here {
                eni.to_string()
            } else {
                format!("detached:{eni}")
            };
            owned_by_eni
                .entry(eni.to_string())
                .or_insert_with(|| id.to_string());
            owned_location.insert(id.to_string(), location);
        }

        let foreign_groups: Vec<String> = attached
            .iter()
            .filter(|g| !managed.contains(*g))
            .cloned()
            .collect();
        let mut all: Vec<String> = foreign_groups.clone();
        all.extend(owned_location.keys().cloned());
        let rules = if all.is_empty() {
            Vec::new()
        } else {
            ingress_rules(&ec2, &all).await?
        };

        let mut observed = Observed {
            locations: eni_ids.clone(),
            ..Observed::default()
        };
        for (group, location) in &owned_location {
            let in_group: Vec<&SecurityGroupRule> = rules
                .iter()
                .filter(|r| r.group_id() == Some(group))
                .collect();
            observed
                .owned
                .extend(convert::owned_rules(location, &in_group));
        }
        observed.foreign = rules
            .iter()
            .filter(|r| {
                r.group_id()
                    .is_some_and(|g| foreign_groups.iter().any(|f| f == g))
            })
            .filter_map(convert::foreign_rule)
            .collect();

        let interfaces = enis
            .iter()
            .map(|e| {
                let id = e.network_interface_id().unwrap_or_default().to_string();
                let attached: Vec<String> = e
                    .groups()
                    .iter()
                    .filter_map(|g| g.group_id().map(str::to_string))
                    .collect();
                Interface {
                    groups: attached
                        .iter()
                        .filter(|g| !managed.contains(*g))
                        .cloned()
                        .collect(),
                    owned_group: owned_by_eni.get(&id).cloned(),
                    private_ips: e
                        .private_ip_addresses()
                        .iter()
                        .filter_map(|a| a.private_ip_address().map(str::to_string))
                        .collect(),
                    attached,
                    id,
                }
            })
            .collect();
        Ok(Observation {
            observed,
            resolved: Resolved {
                network: vpc,
                interfaces,
                ..Resolved::default()
            },
            housekeeping: owned_groups_needing_cleanup(
                &owned_groups,
                &owned_location,
                &rules,
                &eni_ids,
            ),
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
        let iface = |eni: &str| obs.resolved.interfaces.iter().find(|i| i.id == eni);
        // Which owned group each owned rule is in: the location names the ENI.
        let group_of_location = |loc: &str| -> Option<String> {
            let eni = loc.strip_prefix("detached:").unwrap_or(loc);
            owned_group_for(obs, eni)
        };

        // How many owned rules each location keeps after the plan: decides which groups
        // must be attached and which are emptied.
        let mut remaining: BTreeMap<String, i64> = BTreeMap::new();
        for r in &obs.observed.owned {
            *remaining.entry(r.location.clone()).or_default() += 1;
        }

        // 1. Owned rules out, batched per group.
        let mut revoke: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut revoke_foreign: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut restamp: BTreeMap<String, Vec<SecurityGroupRuleUpdate>> = BTreeMap::new();
        let mut restore: Vec<IpPermission> = Vec::new();
        let mut restore_groups: Vec<String> = Vec::new();
        let mut create: BTreeMap<String, Vec<IpPermission>> = BTreeMap::new();
        for change in &plan.changes {
            match change {
                Change::DeleteOwned(rule) => {
                    *remaining.entry(rule.location.clone()).or_default() -= 1;
                    if let Some(g) = group_of_location(&rule.location) {
                        revoke
                            .entry(g)
                            .or_default()
                            .extend(rule.cloud_id.split(',').map(str::to_string));
                    }
                }
                Change::RevokeForeign(rule) => {
                    revoke_foreign
                        .entry(rule.spec.container.clone())
                        .or_default()
                        .push(rule.cloud_id.clone());
                }
                Change::Restamp { rule, grant } => {
                    if let Some(g) = group_of_location(&rule.location) {
                        let protos = convert::ec2_protocols(rule.port.protocol);
                        for (id, proto) in rule.cloud_id.split(',').zip(protos.iter()) {
                            restamp.entry(g.clone()).or_default().push(
                                SecurityGroupRuleUpdate::builder()
                                    .security_group_rule_id(id)
                                    .security_group_rule(convert::restamp_request(grant, proto))
                                    .build(),
                            );
                        }
                    }
                }
                Change::Unrecord(_) => {}
                Change::RestoreForeign(spec) => {
                    restore.push(convert::restore_permission(spec));
                    restore_groups.push(spec.container.clone());
                }
                // The AWS baseline revokes instead of denying; the plan never asks.
                Change::PutDeny { .. } => {}
                Change::CreateGrant {
                    location, grant, ..
                } => {
                    *remaining.entry(location.clone()).or_default() += 1;
                    create
                        .entry(location.clone())
                        .or_default()
                        .extend(convert::grant_permissions(grant));
                }
            }
        }

        for (group, ids) in revoke.iter().chain(revoke_foreign.iter()) {
            revoke_rules(&ec2, group, ids).await?;
        }
        for (group, updates) in restamp {
            call(
                "ModifySecurityGroupRules",
                ec2.modify_security_group_rules()
                    .group_id(&group)
                    .set_security_group_rules(Some(updates))
                    .send(),
            )
            .await?;
        }
        for (group, perm) in restore_groups.iter().zip(restore) {
            authorize(&ec2, group, vec![perm]).await?;
        }

        // 2. Owned groups: emptied ones go; needed ones exist and are attached.
        for i in &obs.resolved.interfaces {
            let Some(group) = &i.owned_group else {
                continue;
            };
            let kept = remaining.get(&i.id).copied().unwrap_or(0)
                + remaining
                    .get(&format!("detached:{}", i.id))
                    .copied()
                    .unwrap_or(0);
            if kept <= 0 && !create.contains_key(&i.id) {
                detach(&ec2, i, group).await?;
                delete_group(&ec2, group).await?;
            }
        }
        for (eni, perms) in create {
            let Some(i) = iface(&eni) else { continue };
            let group = match &i.owned_group {
                Some(g) => g.clone(),
                None => {
                    ensure_group(
                        &ec2,
                        &self.cluster,
                        &tid,
                        &eni,
                        obs.resolved.network.as_deref(),
                    )
                    .await?
                }
            };
            attach(&ec2, i, &group).await?;
            authorize(&ec2, &group, perms).await?;
        }
        // Owned groups that kept rules but were detached by someone: attach them again.
        for i in &obs.resolved.interfaces {
            if let Some(group) = &i.owned_group
                && remaining.get(&i.id).copied().unwrap_or(0) > 0
            {
                attach(&ec2, i, group).await?;
            }
        }
        Ok(())
    }

    async fn sweep(&self, now: Timestamp, live: &Live) -> Result<SweepReport, CloudError> {
        let mut report = SweepReport::default();
        for region in &live.aws_regions {
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
            if owned.is_empty() {
                continue;
            }
            let ids: Vec<String> = owned
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect();
            let rules = ingress_rules(&ec2, &ids).await?;
            for g in &owned {
                let Some(id) = g.group_id() else { continue };
                let target_live = tag(g, TAG_TARGET).is_some_and(|t| live.targets.contains(t));
                let mut gone = Vec::new();
                for r in rules.iter().filter(|r| r.group_id() == Some(id)) {
                    let stamp = r.description().and_then(stamp::parse);
                    let expired = stamp
                        .as_ref()
                        .and_then(|s| s.expires_at)
                        .is_some_and(|t| t <= now);
                    let orphan = !target_live
                        || stamp
                            .as_ref()
                            .is_none_or(|s| !live.requests.contains(&s.owner));
                    if let Some(rid) = r.security_group_rule_id() {
                        if expired {
                            report.expired += 1;
                            gone.push(rid.to_string());
                        } else if orphan {
                            report.orphaned += 1;
                            gone.push(rid.to_string());
                        }
                    }
                }
                revoke_rules(&ec2, id, &gone).await?;
                if !target_live {
                    // Nobody reconciles this group any more: detach it wherever it is.
                    let enis = call(
                        "DescribeNetworkInterfaces",
                        ec2.describe_network_interfaces()
                            .filters(filter("group-id", [id]))
                            .send(),
                    )
                    .await?;
                    for e in enis.network_interfaces() {
                        let i = Interface {
                            id: e.network_interface_id().unwrap_or_default().to_string(),
                            attached: e
                                .groups()
                                .iter()
                                .filter_map(|g| g.group_id().map(str::to_string))
                                .collect(),
                            ..Interface::default()
                        };
                        detach(&ec2, &i, id).await?;
                    }
                    delete_group(&ec2, id).await?;
                    report.groups_deleted += 1;
                }
            }
        }
        Ok(report)
    }
}

fn owned_group_for(obs: &Observation, eni: &str) -> Option<String> {
    obs.resolved
        .interfaces
        .iter()
        .find(|i| i.id == eni)
        .and_then(|i| i.owned_group.clone())
}

/// Whether an owned group of this target is empty (to be deleted) although the plan may
/// have nothing to do.
fn owned_groups_needing_cleanup(
    owned: &[SecurityGroup],
    locations: &BTreeMap<String, String>,
    rules: &[SecurityGroupRule],
    enis: &[String],
) -> bool {
    owned.iter().filter_map(|g| g.group_id()).any(|id| {
        let empty = !rules.iter().any(|r| r.group_id() == Some(id));
        let stray = locations.get(id).is_none_or(|l| !enis.contains(l));
        empty || stray
    })
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
    let name = owned_group_name(eni, target);
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
    // Created before a crash: find it by its deterministic name.
    let mut filters = vec![filter("group-name", [name.clone()])];
    if let Some(v) = vpc {
        filters.push(filter("vpc-id", [v]));
    }
    groups(ec2, Vec::new(), filters)
        .await?
        .first()
        .and_then(|g| g.group_id().map(str::to_string))
        .ok_or_else(|| CloudError::Retryable {
            op: "CreateSecurityGroup",
            code: "InvalidGroup.Duplicate".into(),
            message: format!("group {name} exists but cannot be found yet"),
        })
}

async fn attach(ec2: &Client, iface: &Interface, group: &str) -> Result<(), CloudError> {
    if iface.attached.iter().any(|g| g == group) {
        return Ok(());
    }
    let mut groups = iface.attached.clone();
    groups.push(group.to_string());
    call(
        "ModifyNetworkInterfaceAttribute",
        ec2.modify_network_interface_attribute()
            .network_interface_id(&iface.id)
            .set_groups(Some(groups))
            .send(),
    )
    .await?;
    Ok(())
}

async fn detach(ec2: &Client, iface: &Interface, group: &str) -> Result<(), CloudError> {
    if !iface.attached.iter().any(|g| g == group) {
        return Ok(());
    }
    let groups: Vec<String> = iface
        .attached
        .iter()
        .filter(|g| *g != group)
        .cloned()
        .collect();
    if groups.is_empty() {
        // An ENI must keep one group; leaving ours (now empty) there opens nothing.
        return Ok(());
    }
    call(
        "ModifyNetworkInterfaceAttribute",
        ec2.modify_network_interface_attribute()
            .network_interface_id(&iface.id)
            .set_groups(Some(groups))
            .send(),
    )
    .await?;
    Ok(())
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
