//! The Azure NSG backend: deny rules as the baseline, allow rules for grants, in the NIC's
//! NSG and the subnet's NSG of every interface of the VM.
//!
//! Owned rules are named `portcullis-{allow|deny}-<tag>-…`, where the tag is a hash of the
//! installation and the target, and stamped in their description with the installation;
//! rules of other targets or installations in a shared NSG are left alone but their
//! priorities are reserved; every other rule is foreign and never edited. Rules name the
//! VM's own addresses as destinations, one address family per rule, never `*`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::num::NonZeroU16;

use async_trait::async_trait;
use ipnet::IpNet;
use jiff::Timestamp;
use serde_json::{Value, json};
use tracing::warn;

use super::arm::ArmClient;
use crate::cloud::{
    Backend, CloudError, Interface, Live, Observation, Resolved, SweepReport, target_id,
};
use crate::domain::stamp::{self, short_hash};
use crate::domain::{
    Access, Change, Family, ForeignRule, ForeignRuleSpec, ForeignSource, Grant, Locator,
    Observed, OwnedKind, OwnedRule, Plan, PortSpec, Proto, Stamp, TargetKey,
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
    /// This installation ([`stamp::cluster_id`]).
    cluster: String,
}

impl AzureNsgBackend {
    /// A backend on an ARM client for installation `cluster` (`--cluster-name`).
    pub fn new(arm: ArmClient, cluster: &str) -> Self {
        AzureNsgBackend {
            arm,
            cluster: stamp::cluster_id(cluster),
        }
    }

    /// The tag in this installation's rule names for `target`.
    fn target_tag(&self, target: &TargetKey) -> String {
        short_hash(&format!("{}/{}", self.cluster, target_id(target)))
    }

    /// The deterministic name of a grant's allow rule.
    pub fn allow_name(&self, target: &TargetKey, grant: &Grant) -> String {
        format!(
            "{PREFIX}allow-{}-{}{}-{}",
            self.target_tag(target),
            grant.port.port,
            proto_short(grant.port.protocol),
            short_hash(&grant.source.to_string())
        )
    }

    /// The deterministic name of a governed port's deny rule for one address family.
    pub fn deny_name(&self, target: &TargetKey, port: PortSpec, family: Family) -> String {
        format!(
            "{PREFIX}deny-{}-{}{}{}",
            self.target_tag(target),
            port.port,
            proto_short(port.protocol),
            match family {
                Family::V4 => "",
                Family::V6 => "-v6",
            }
        )
    }
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

/// A field that ARM writes either singular or plural (`sourceAddressPrefix(es)`).
fn one_or_many(props: &Value, one: &str, many: &str) -> Vec<String> {
    let mut v = strings(props, many);
    if let Some(s) = str_at(props, &[one]) {
        v.push(s.to_string());
    }
    v
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

/// An address as ARM writes a destination: `10.0.0.4`, `10.0.0.4/32`.
fn address(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>().ok().or_else(|| {
        text.parse::<IpNet>()
            .ok()
            .filter(|n| n.prefix_len() == n.max_prefix_len())
            .map(|n| n.addr())
    })
}

/// One inbound rule of an NSG, in the domain model.
enum Seen {
    Mine(OwnedRule),
    /// Another target's or installation's rule: its priority is taken.
    Reserved(u16),
    Foreign(Vec<ForeignRule>),
}

impl AzureNsgBackend {
    fn classify_rule(&self, nsg: &str, tag: &str, rule: &Value) -> Option<Seen> {
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
                return priority.map(Seen::Reserved);
            }
            return Some(Seen::Mine(self.owned_rule(nsg, name, props, access, &protocol, priority)));
        }
        let ranges = one_or_many(props, "destinationPortRange", "destinationPortRanges");
        let sources = one_or_many(props, "sourceAddressPrefix", "sourceAddressPrefixes");
        let description = str_at(props, &["description"]).map(str::to_string);
        let mut out = Vec::new();
        for source in if sources.is_empty() { vec!["*".to_string()] } else { sources } {
            let source = if source.parse::<IpNet>().is_ok() {
                ForeignSource::Cidr(source)
            } else {
                ForeignSource::Tag(source)
            };
            for ports in ranges.iter().filter_map(|r| port_range(r)) {
                out.push(ForeignRule {
                    cloud_id: name.to_string(),
                    spec: ForeignRuleSpec {
                        container: nsg.to_string(),
                        protocol: protocol.clone(),
                        ports,
                        source: source.clone(),
                        description: description.clone(),
                    },
                    access,
                    priority,
                });
            }
        }
        Some(Seen::Foreign(out))
    }

    /// One of this target's rules: a grant, a deny, or a stray (edited by someone).
    fn owned_rule(
        &self,
        nsg: &str,
        name: &str,
        props: &Value,
        access: Access,
        protocol: &str,
        priority: Option<u16>,
    ) -> OwnedRule {
        let stamp = str_at(props, &["description"]).and_then(|d| stamp::parse_own(&self.cluster, d));
        let single = str_at(props, &["destinationPortRange"])
            .and_then(port_range)
            .flatten()
            .filter(|(a, b)| a == b)
            .and_then(|(a, _)| NonZeroU16::new(a));
        let proto = match protocol {
            "Tcp" => Proto::Tcp,
            "Udp" => Proto::Udp,
            _ => Proto::Any,
        };
        let destinations: Vec<Option<IpAddr>> =
            one_or_many(props, "destinationAddressPrefix", "destinationAddressPrefixes")
                .iter()
                .map(|d| address(d))
                .collect();
        let all_addresses = destinations.iter().all(Option::is_some) && !destinations.is_empty();
        let destinations: Vec<IpAddr> = destinations.into_iter().flatten().collect();
        let families: BTreeSet<Family> = destinations.iter().map(Family::of).collect();
        let one_family = families.len() == 1 && all_addresses;
        let sources = one_or_many(props, "sourceAddressPrefix", "sourceAddressPrefixes");
        let kind = match (access, single, &stamp) {
            (Access::Allow, Some(port), Some(s)) if s.expires_at.is_some() && one_family => {
                match sources.as_slice() {
                    [one] => match one.parse::<IpNet>() {
                        Ok(source) if Family::of_net(&source) == *families.first().expect("one") => {
                            OwnedKind::Grant {
                                port: PortSpec { port, protocol: proto },
                                source,
                            }
                        }
                        _ => OwnedKind::Stray,
                    },
                    _ => OwnedKind::Stray,
                }
            }
            (Access::Deny, Some(port), Some(s))
                if s.expires_at.is_none() && one_family && sources == ["*"] =>
            {
                OwnedKind::Deny {
                    port: PortSpec { port, protocol: proto },
                    family: *families.first().expect("one"),
                }
            }
            _ => OwnedKind::Stray,
        };
        OwnedRule {
            location: nsg.to_string(),
            cloud_id: name.to_string(),
            kind,
            stamp: stamp.unwrap_or(Stamp {
                owner: String::new(),
                expires_at: None,
            }),
            priority,
            destinations,
        }
    }

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
        destinations: &[IpAddr],
        priority: u16,
        description: String,
    ) -> Result<Value, CloudError> {
        // Only this VM's addresses: a subnet NSG is shared with other VMs. The plan never
        // asks for a rule without destinations; refuse rather than write `*`.
        if destinations.is_empty() {
            return Err(CloudError::Fatal {
                op: "PutSecurityRule",
                code: "NoDestination".into(),
                message: "a rule without destination addresses would apply to the whole subnet"
                    .into(),
            });
        }
        let destinations: Vec<String> = destinations.iter().map(IpAddr::to_string).collect();
        Ok(json!({ "properties": {
            "protocol": proto_name(port.protocol),
            "sourcePortRange": "*",
            "destinationPortRange": port.port.to_string(),
            "sourceAddressPrefix": source.map(|s| s.to_string()).unwrap_or_else(|| "*".into()),
            "destinationAddressPrefixes": destinations,
            "access": if access == Access::Allow { "Allow" } else { "Deny" },
            "priority": priority,
            "direction": "Inbound",
            "description": description,
        }}))
    }

    /// PUTs the allow rule that carries a grant.
    async fn put_grant(
        &self,
        nsg: &str,
        name: &str,
        grant: &Grant,
        priority: u16,
        destinations: &[IpAddr],
    ) -> Result<(), CloudError> {
        let description = stamp::format(&self.cluster, &grant.stamp());
        let body = self.rule_body(
            Access::Allow,
            grant.port,
            Some(grant.source),
            destinations,
            priority,
            description,
        )?;
        self.put_rule(nsg, name, &body).await
    }

    /// PUTs a rule; a priority taken meanwhile is a passing conflict: the next reconcile
    /// observes again and plans another free slot, never touching the other rule.
    async fn put_rule(&self, nsg: &str, name: &str, body: &Value) -> Result<(), CloudError> {
        const OP: &str = "PutSecurityRule";
        match self
            .arm
            .put(OP, &rule_path(nsg, name), NETWORK_API, body, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(CloudError::Fatal { code, message, .. }) if code == "SecurityRuleConflict" => {
                Err(CloudError::Retryable {
                    op: OP,
                    code,
                    message: format!(
                        "{message} (another rule took the priority; a free one is chosen next time)"
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Reads an NSG's inbound rules into `observed`.
    fn read_nsg(&self, nsg: &str, tag: &str, body: &Value, observed: &mut Observed) {
        for rule in body
            .pointer("/properties/securityRules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match self.classify_rule(nsg, tag, rule) {
                Some(Seen::Mine(r)) => observed.owned.push(r),
                Some(Seen::Reserved(p)) => observed.reserved.push((nsg.to_string(), p)),
                Some(Seen::Foreign(f)) => observed.foreign.extend(f),
                None => {}
            }
        }
    }
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

#[async_trait]
impl Backend for AzureNsgBackend {
    async fn resolve(
        &self,
        _target: &TargetKey,
        locator: &Locator,
    ) -> Result<Resolved, CloudError> {
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
        let mut public_ip_ids = Vec::new();
        for nic_id in &nic_ids {
            let nic = self
                .get_required("GetNetworkInterface", nic_id, NETWORK_API, "network interface")
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
                if let Some(pip) = str_at(ipc, &["properties", "publicIPAddress", "id"]) {
                    public_ip_ids.push(pip.to_string());
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
        let mut public_ips = Vec::new();
        for id in dedup(public_ip_ids) {
            if let Some(pip) = self.arm.get("GetPublicIPAddress", &id, NETWORK_API).await? {
                if let Some(ip) = str_at(&pip.body, &["properties", "ipAddress"]) {
                    public_ips.push(ip.to_string());
                }
            }
        }
        let firewall_id = match locator {
            Locator::Azure { firewall, .. } => firewall.as_ref().map(|(id, _)| id.clone()),
            Locator::Aws { .. } => None,
        };
        Ok(Resolved {
            interfaces,
            nsg_ids: dedup(nsgs),
            firewall_id,
            public_ips,
            ..Resolved::default()
        })
    }

    async fn observe(
        &self,
        target: &TargetKey,
        _locator: &Locator,
        resolved: &Resolved,
        recorded: &[String],
    ) -> Result<Observation, CloudError> {
        let tag = self.target_tag(target);
        let mut observed = Observed {
            locations: if resolved.vanished {
                Vec::new()
            } else {
                resolved.nsg_ids.clone()
            },
            addresses: resolved
                .private_ips()
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            ..Observed::default()
        };
        for nsg in &resolved.nsg_ids {
            let body = self
                .get_required("GetNetworkSecurityGroup", nsg, NETWORK_API, "network security group")
                .await?;
            self.read_nsg(nsg, &tag, &body, &mut observed);
        }
        // NSGs the operator wrote to before (the VM moved, or is gone): its rules there
        // are found and removed.
        for nsg in dedup(recorded.iter().cloned()) {
            if resolved.nsg_ids.iter().any(|n| n.eq_ignore_ascii_case(&nsg)) {
                continue;
            }
            match self.arm.get("GetNetworkSecurityGroup", &nsg, NETWORK_API).await? {
                Some(r) => self.read_nsg(&nsg, &tag, &r.body, &mut observed),
                None => {
                    observed.gone_containers.insert(nsg);
                }
            }
        }
        Ok(Observation {
            observed,
            resolved: resolved.clone(),
            ..Observation::default()
        })
    }

    async fn apply(
        &self,
        target: &TargetKey,
        _locator: &Locator,
        _obs: &Observation,
        plan: &Plan,
    ) -> Result<(), CloudError> {
        // NSGs are independent: their changes run side by side (each NSG's in plan order,
        // one write at a time, so no write meets another's long-running operation).
        let mut by_nsg: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
        for change in plan.changes.iter().filter(|c| c.writes()) {
            by_nsg.entry(change.location()).or_default().push(change);
        }
        let runs = by_nsg
            .into_values()
            .map(|changes| self.apply_in_nsg(target, changes));
        let results = futures::future::join_all(runs).await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }

    async fn sweep(&self, now: Timestamp, live: &Live) -> SweepReport {
        let mut report = SweepReport::default();
        for nsg in &live.azure_nsgs {
            if let Err(e) = self.sweep_nsg(nsg, now, live, &mut report).await {
                warn!(nsg, error = %e, "cannot sweep the NSG; the others go on");
                report.errors.push((format!("NSG {nsg}"), e));
            }
        }
        report
    }
}

impl AzureNsgBackend {
    /// Makes one NSG's changes in order. A failing change does not stop the others (one
    /// grant that cannot be written must not keep the rest closed); the first error is
    /// returned once all were tried.
    async fn apply_in_nsg(
        &self,
        target: &TargetKey,
        changes: Vec<&Change>,
    ) -> Result<(), CloudError> {
        let mut first_error = None;
        for change in changes {
            let result = match change {
                Change::DeleteOwned(rule) => {
                    self.arm
                        .delete(
                            "DeleteSecurityRule",
                            &rule_path(&rule.location, &rule.cloud_id),
                            NETWORK_API,
                        )
                        .await
                }
                Change::Restamp {
                    rule,
                    grant,
                    destinations,
                } => {
                    let priority = rule.priority.unwrap_or_default();
                    self.put_grant(&rule.location, &rule.cloud_id, grant, priority, destinations)
                        .await
                }
                Change::PutDeny {
                    location,
                    port,
                    family,
                    destinations,
                    priority,
                    replaces,
                } => {
                    let name = replaces
                        .as_ref()
                        .map(|r| r.cloud_id.clone())
                        .unwrap_or_else(|| self.deny_name(target, *port, *family));
                    let description = stamp::format(&self.cluster, &Stamp::baseline(&target.policy));
                    match self.rule_body(Access::Deny, *port, None, destinations, *priority, description) {
                        Ok(body) => self.put_rule(location, &name, &body).await,
                        Err(e) => Err(e),
                    }
                }
                Change::CreateGrant {
                    location,
                    grant,
                    priority,
                    destinations,
                } => match priority {
                    Some(priority) => {
                        let name = self.allow_name(target, grant);
                        self.put_grant(location, &name, grant, *priority, destinations)
                            .await
                    }
                    None => Err(CloudError::Fatal {
                        op: "PutSecurityRule",
                        code: "NoPriority".into(),
                        message: "an NSG grant needs a priority".into(),
                    }),
                },
                // The AWS baseline's changes never reach an NSG plan.
                Change::CreateCarveOut { .. }
                | Change::RevokeForeign(_)
                | Change::RestoreForeign(_)
                | Change::Unrecord(_)
                | Change::Forget(_) => Ok(()),
            };
            if let Err(e) = result {
                warn!(change = ?change, error = %e, "NSG change failed; going on with the others");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn sweep_nsg(
        &self,
        nsg: &str,
        now: Timestamp,
        live: &Live,
        report: &mut SweepReport,
    ) -> Result<(), CloudError> {
        let Some(body) = self
            .arm
            .get("GetNetworkSecurityGroup", nsg, NETWORK_API)
            .await?
            .map(|r| r.body)
        else {
            return Ok(());
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
            // Another installation's rules are that installation's business.
            let Some(stamp) = str_at(rule, &["properties", "description"])
                .and_then(|d| stamp::parse_own(&self.cluster, d))
            else {
                continue;
            };
            let expired = stamp.expires_at.is_some_and(|t| t <= now);
            let owner_live = match stamp.expires_at {
                Some(_) => live.requests.contains(&stamp.owner),
                None => live.policies.contains(&stamp.owner),
            };
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
        Ok(())
    }
}
