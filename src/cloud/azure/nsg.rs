//! The Azure NSG backend: deny rules as the baseline, allow rules for grants, in the NIC's
//! NSG and the subnet's NSG of every interface of the VM.
//!
//! Owned rules are named `portcullis-{allow|deny}-<target hash>-…` and stamped in their
//! description; rules of other targets in a shared NSG are left alone but their priorities
//! are reserved; every other rule is foreign and never edited.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU16;

use async_trait::async_trait;
use ipnet::IpNet;
use jiff::Timestamp;
use serde_json::{Value, json};

use super::arm::ArmClient;
use crate::cloud::{
    Backend, CloudError, Interface, Live, Observation, Resolved, SweepReport, target_id,
};
use crate::domain::stamp::{self, short_hash};
use crate::domain::{
    Access, Change, ForeignRule, ForeignRuleSpec, ForeignSource, Grant, Locator, Observed,
    OwnedRule, Plan, PortSpec, Proto, Stamp, TargetKey,
};

/// The Microsoft.Network API version used.
pub const NETWORK_API: &str = "2024-05-01";
/// The Microsoft.Compute API version used.
pub const COMPUTE_API: &str = "2025-11-01";
/// The name prefix of every owned rule.
pub const PREFIX: &str = "portcullis-";

/// The Azure NSG backend.
pub struct AzureNsgBackend {
    arm: ArmClient,
}

impl AzureNsgBackend {
    /// A backend on an ARM client.
    pub fn new(arm: ArmClient) -> Self {
        AzureNsgBackend { arm }
    }
}

fn target_tag(target: &TargetKey) -> String {
    short_hash(&target_id(target))
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "Tcp",
        Proto::Udp => "Udp",
        Proto::Any => "*",
    }
}

fn proto_short(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Any => "any",
    }
}

/// The deterministic name of a grant's allow rule.
pub fn allow_name(target: &TargetKey, grant: &Grant) -> String {
    format!(
        "{PREFIX}allow-{}-{}{}-{}",
        target_tag(target),
        grant.port.port,
        proto_short(grant.port.protocol),
        short_hash(&grant.source.to_string())
    )
}

/// The deterministic name of a governed port's deny rule.
pub fn deny_name(target: &TargetKey, port: PortSpec) -> String {
    format!(
        "{PREFIX}deny-{}-{}{}",
        target_tag(target),
        port.port,
        proto_short(port.protocol)
    )
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn dedup(v: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    v.into_iter()
        .filter(|s| seen.insert(s.to_ascii_lowercase()))
        .collect()
}

/// A list of strings under `key` (ARM's plural fields).
fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn rule_path(nsg: &str, name: &str) -> String {
    format!("{nsg}/securityRules/{name}")
}

/// A port range as ARM writes it: `22`, `20-30` or `*`.
fn port_range(text: &str) -> Option<Option<(u16, u16)>> {
    if text == "*" {
        return Some(None);
    }
    match text.split_once('-') {
        Some((a, b)) => Some(Some((a.trim().parse().ok()?, b.trim().parse().ok()?))),
        None => {
            let p = text.trim().parse().ok()?;
            Some(Some((p, p)))
        }
    }
}

/// One inbound rule of an NSG, in the domain model.
enum Seen {
    Mine(OwnedRule),
    OtherTargets(u16),
    Foreign(Vec<ForeignRule>),
}

fn classify_rule(nsg: &str, tag: &str, rule: &Value) -> Option<Seen> {
    let name = rule.get("name")?.as_str()?;
    let props = rule.get("properties")?;
    if str_at(props, &["direction"]) != Some("Inbound") {
        return None;
    }
    let priority = props
        .get("priority")
        .and_then(Value::as_u64)
        .map(|p| p as u16);
    let access = match str_at(props, &["access"]) {
        Some("Deny") => Access::Deny,
        _ => Access::Allow,
    };
    let protocol = str_at(props, &["protocol"]).unwrap_or("*").to_string();
    if let Some(rest) = name.strip_prefix(PREFIX) {
        let mine = rest
            .strip_prefix("allow-")
            .or_else(|| rest.strip_prefix("deny-"))
            .is_some_and(|r| r.starts_with(&format!("{tag}-")));
        if !mine {
            return priority.map(Seen::OtherTargets);
        }
        let stamp = str_at(props, &["description"])
            .and_then(stamp::parse)
            .unwrap_or(Stamp {
                owner: String::new(),
                expires_at: None,
            });
        let range = str_at(props, &["destinationPortRange"])
            .and_then(port_range)
            .flatten();
        let single = range
            .filter(|(a, b)| a == b)
            .and_then(|(a, _)| NonZeroU16::new(a));
        let proto = match protocol.as_str() {
            "Tcp" => Proto::Tcp,
            "Udp" => Proto::Udp,
            _ => Proto::Any,
        };
        let source: Option<IpNet> = match access {
            Access::Allow => str_at(props, &["sourceAddressPrefix"])
                .and_then(|s| s.parse().ok())
                .filter(|_| single.is_some()),
            Access::Deny => None,
        };
        return Some(Seen::Mine(OwnedRule {
            location: nsg.to_string(),
            cloud_id: name.to_string(),
            access,
            port: PortSpec {
                port: single.unwrap_or(NonZeroU16::MIN),
                protocol: proto,
            },
            source,
            stamp,
            priority,
        }));
    }
    let mut ranges = strings(props, "destinationPortRanges");
    if let Some(r) = str_at(props, &["destinationPortRange"]) {
        ranges.push(r.to_string());
    }
    let mut sources = strings(props, "sourceAddressPrefixes");
    if let Some(s) = str_at(props, &["sourceAddressPrefix"]) {
        sources.push(s.to_string());
    }
    let source = sources.first().cloned().unwrap_or_else(|| "*".into());
    let source = if source.parse::<IpNet>().is_ok() {
        ForeignSource::Cidr(source)
    } else {
        ForeignSource::Tag(source)
    };
    let rules = ranges
        .iter()
        .filter_map(|r| port_range(r))
        .map(|ports| ForeignRule {
            cloud_id: name.to_string(),
            spec: ForeignRuleSpec {
                container: nsg.to_string(),
                protocol: protocol.clone(),
                ports,
                source: source.clone(),
                description: str_at(props, &["description"]).map(str::to_string),
            },
            access,
            priority,
        })
        .collect();
    Some(Seen::Foreign(rules))
}

fn azure_locator(locator: &Locator) -> Result<&str, CloudError> {
    match locator {
        Locator::Azure { vm_id, .. } => Ok(vm_id),
        Locator::Aws { .. } => Err(CloudError::Fatal {
            op: "observe",
            code: "WrongCloud".into(),
            message: "an AWS target was sent to the Azure backend".into(),
        }),
    }
}

impl AzureNsgBackend {
    async fn get_required(
        &self,
        op: &'static str,
        id: &str,
        api: &str,
        what: &str,
    ) -> Result<Value, CloudError> {
        self.arm
            .get(op, id, api)
            .await?
            .map(|r| r.body)
            .ok_or_else(|| CloudError::NotFound {
                what: format!("{what} {id}"),
                code: "ResourceNotFound".into(),
                message: format!("the {what} does not exist"),
            })
    }

    fn rule_body(
        &self,
        access: Access,
        port: PortSpec,
        source: Option<IpNet>,
        destinations: &[String],
        priority: u16,
        description: String,
    ) -> Value {
        let mut props = json!({
            "protocol": proto_name(port.protocol),
            "sourcePortRange": "*",
            "destinationPortRange": port.port.to_string(),
            "sourceAddressPrefix": source.map(|s| s.to_string()).unwrap_or_else(|| "*".into()),
            "access": if access == Access::Allow { "Allow" } else { "Deny" },
            "priority": priority,
            "direction": "Inbound",
            "description": description,
        });
        // Only this VM's addresses: a subnet NSG is shared with other VMs.
        if destinations.is_empty() {
            props["destinationAddressPrefix"] = json!("*");
        } else {
            props["destinationAddressPrefixes"] = json!(destinations);
        }
        json!({ "properties": props })
    }

    /// PUTs the allow rule that carries a grant.
    async fn put_grant(
        &self,
        nsg: &str,
        name: &str,
        grant: &Grant,
        priority: u16,
        destinations: &[String],
    ) -> Result<(), CloudError> {
        let description = stamp::format(&grant.stamp());
        let body = self.rule_body(
            Access::Allow,
            grant.port,
            Some(grant.source),
            destinations,
            priority,
            description,
        );
        self.put_rule("PutSecurityRule", nsg, name, &body).await
    }

    /// PUTs a rule; a priority taken meanwhile is a passing conflict: the next reconcile
    /// observes again and plans another free slot, never touching the other rule.
    async fn put_rule(
        &self,
        op: &'static str,
        nsg: &str,
        name: &str,
        body: &Value,
    ) -> Result<(), CloudError> {
        match self
            .arm
            .put(op, &rule_path(nsg, name), NETWORK_API, body, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(CloudError::Fatal { code, message, .. }) if code == "SecurityRuleConflict" => {
                Err(CloudError::Retryable {
                    op,
                    code,
                    message: format!(
                        "{message} (another rule took the priority; a free one is chosen next time)"
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Backend for AzureNsgBackend {
    async fn observe(
        &self,
        target: &TargetKey,
        locator: &Locator,
    ) -> Result<Observation, CloudError> {
        let vm_id = azure_locator(locator)?;
        let vm = self
            .get_required("GetVirtualMachine", vm_id, COMPUTE_API, "virtual machine")
            .await?;
        let nic_ids: Vec<String> = vm
            .pointer("/properties/networkProfile/networkInterfaces")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.get("id").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut interfaces = Vec::new();
        let mut nsgs = Vec::new();
        let mut subnets = Vec::new();
        for nic_id in &nic_ids {
            let nic = self
                .get_required(
                    "GetNetworkInterface",
                    nic_id,
                    NETWORK_API,
                    "network interface",
                )
                .await?;
            if let Some(nsg) = str_at(&nic, &["properties", "networkSecurityGroup", "id"]) {
                nsgs.push(nsg.to_string());
            }
            let mut ips = Vec::new();
            for ipc in nic
                .pointer("/properties/ipConfigurations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(ip) = str_at(ipc, &["properties", "privateIPAddress"]) {
                    ips.push(ip.to_string());
                }
                if let Some(subnet) = str_at(ipc, &["properties", "subnet", "id"]) {
                    subnets.push(subnet.to_string());
                }
            }
            interfaces.push(Interface {
                id: nic_id.clone(),
                private_ips: ips,
                ..Interface::default()
            });
        }
        for subnet in dedup(subnets) {
            let s = self
                .get_required("GetSubnet", &subnet, NETWORK_API, "subnet")
                .await?;
            if let Some(nsg) = str_at(&s, &["properties", "networkSecurityGroup", "id"]) {
                nsgs.push(nsg.to_string());
            }
        }
        let nsgs = dedup(nsgs);
        let tag = target_tag(target);
        let mut observed = Observed {
            locations: nsgs.clone(),
            ..Observed::default()
        };
        for nsg in &nsgs {
            let body = self
                .get_required(
                    "GetNetworkSecurityGroup",
                    nsg,
                    NETWORK_API,
                    "network security group",
                )
                .await?;
            for rule in body
                .pointer("/properties/securityRules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match classify_rule(nsg, &tag, rule) {
                    Some(Seen::Mine(r)) => observed.owned.push(r),
                    Some(Seen::OtherTargets(p)) => observed.reserved.push((nsg.clone(), p)),
                    Some(Seen::Foreign(f)) => observed.foreign.extend(f),
                    None => {}
                }
            }
        }
        let firewall_id = match locator {
            Locator::Azure { firewall, .. } => firewall.as_ref().map(|(id, _)| id.clone()),
            Locator::Aws { .. } => None,
        };
        Ok(Observation {
            observed,
            resolved: Resolved {
                network: None,
                interfaces,
                nsg_ids: nsgs,
                firewall_id,
            },
            housekeeping: false,
        })
    }

    async fn apply(
        &self,
        target: &TargetKey,
        _locator: &Locator,
        obs: &Observation,
        plan: &Plan,
    ) -> Result<(), CloudError> {
        // NSGs are independent: their changes run side by side (each NSG's in plan order,
        // one write at a time, so no write meets another's long-running operation).
        let mut by_nsg: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
        for change in &plan.changes {
            let location = match change {
                Change::DeleteOwned(r) | Change::Restamp { rule: r, .. } => r.location.as_str(),
                Change::PutDeny { location, .. } | Change::CreateGrant { location, .. } => {
                    location.as_str()
                }
                Change::RevokeForeign(_) | Change::RestoreForeign(_) | Change::Unrecord(_) => {
                    continue;
                }
            };
            by_nsg.entry(location).or_default().push(change);
        }
        let runs = by_nsg
            .into_values()
            .map(|changes| self.apply_in_nsg(target, obs, changes));
        futures::future::try_join_all(runs).await?;
        Ok(())
    }

    async fn sweep(&self, now: Timestamp, live: &Live) -> Result<SweepReport, CloudError> {
        let mut report = SweepReport::default();
        for nsg in &live.azure_nsgs {
            let Some(body) = self
                .arm
                .get("GetNetworkSecurityGroup", nsg, NETWORK_API)
                .await?
                .map(|r| r.body)
            else {
                continue;
            };
            let mut gone: BTreeMap<String, bool> = BTreeMap::new();
            for rule in body
                .pointer("/properties/securityRules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(name) = rule.get("name").and_then(Value::as_str) else {
                    continue;
                };
                if !name.starts_with(PREFIX) {
                    continue;
                }
                let stamp = str_at(rule, &["properties", "description"]).and_then(stamp::parse);
                let expired = stamp
                    .as_ref()
                    .and_then(|s| s.expires_at)
                    .is_some_and(|t| t <= now);
                let owner_live = stamp.as_ref().is_some_and(|s| match s.expires_at {
                    Some(_) => live.requests.contains(&s.owner),
                    None => live.policies.contains(&s.owner),
                });
                if expired || !owner_live {
                    gone.insert(name.to_string(), expired);
                }
            }
            for (name, expired) in gone {
                self.arm
                    .delete("DeleteSecurityRule", &rule_path(nsg, &name), NETWORK_API)
                    .await?;
                if expired {
                    report.expired += 1;
                } else {
                    report.orphaned += 1;
                }
            }
        }
        Ok(report)
    }
}

impl AzureNsgBackend {
    async fn apply_in_nsg(
        &self,
        target: &TargetKey,
        obs: &Observation,
        changes: Vec<&Change>,
    ) -> Result<(), CloudError> {
        let destinations = obs.resolved.private_ips();
        for change in changes {
            match change {
                Change::DeleteOwned(rule) => {
                    self.arm
                        .delete(
                            "DeleteSecurityRule",
                            &rule_path(&rule.location, &rule.cloud_id),
                            NETWORK_API,
                        )
                        .await?;
                }
                Change::Restamp { rule, grant } => {
                    let priority = rule.priority.unwrap_or_default();
                    self.put_grant(
                        &rule.location,
                        &rule.cloud_id,
                        grant,
                        priority,
                        &destinations,
                    )
                    .await?;
                }
                Change::PutDeny {
                    location,
                    port,
                    priority,
                    replaces,
                } => {
                    let name = replaces
                        .as_ref()
                        .map(|r| r.cloud_id.clone())
                        .unwrap_or_else(|| deny_name(target, *port));
                    let description = stamp::format(&Stamp::baseline(&target.policy));
                    let body = self.rule_body(
                        Access::Deny,
                        *port,
                        None,
                        &destinations,
                        *priority,
                        description,
                    );
                    self.put_rule("PutSecurityRule", location, &name, &body)
                        .await?;
                }
                Change::CreateGrant {
                    location,
                    grant,
                    priority,
                } => {
                    let priority = priority.ok_or_else(|| CloudError::Fatal {
                        op: "PutSecurityRule",
                        code: "NoPriority".into(),
                        message: "an NSG grant needs a priority".into(),
                    })?;
                    let name = allow_name(target, grant);
                    self.put_grant(location, &name, grant, priority, &destinations)
                        .await?;
                }
                // The AWS baseline's changes never reach an NSG plan.
                Change::RevokeForeign(_) | Change::RestoreForeign(_) | Change::Unrecord(_) => {}
            }
        }
        Ok(())
    }
}
