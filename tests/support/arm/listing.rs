//! List operations, paged with `nextLink`, and the resources only lists need.
//!
//! Served: VMs per subscription (with `statusOnly=true` for power states) and per
//! resource group (with `$expand=instanceView`), NICs, NSGs, public IPs, Azure Firewalls
//! and classic VMs, per subscription or resource group. Public IPs, firewalls (with
//! `firewallPolicy` for Firewall Manager), firewall policies and classic VMs are stored
//! as plain documents, shaped like Microsoft's examples and served as seeded; a GET of
//! one by id answers it. VM power states live beside the VMs (running unless set).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::dispatch::Incoming;
use super::emulator::ArmEmulator;
use super::errors::ArmError;
use super::ids;
use super::render;
use super::reply::Reply;
use super::state::{Model, Shared, State, new_etag, uuid};

const PUBLIC_IP_TYPE: &str = "Microsoft.Network/publicIPAddresses";
const FIREWALL_TYPE: &str = "Microsoft.Network/azureFirewalls";
const FIREWALL_POLICY_TYPE: &str = "Microsoft.Network/firewallPolicies";
const CLASSIC_VM_TYPE: &str = "Microsoft.ClassicCompute/virtualMachines";

/// What the listing adds to the model.
#[derive(Default)]
pub(crate) struct Extra {
    /// Stored documents by [`ids::key`]: public IPs, firewalls, firewall policies,
    /// classic VMs.
    pub docs: BTreeMap<String, Value>,
    /// Power states of VMs by [`ids::key`] (`running` when absent).
    pub power: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Vms,
    Nics,
    Nsgs,
    Docs(&'static str),
}

/// A list request: what, in which subscription and resource group.
struct ListRoute {
    kind: Kind,
    sub: String,
    rg: Option<String>,
}

fn list_route(path: &str) -> Option<ListRoute> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let is = |i: usize, lit: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(lit));
    if !is(0, "subscriptions") {
        return None;
    }
    let (rg, at) = match segs.len() {
        5 if is(2, "providers") => (None, 3),
        7 if is(2, "resourceGroups") && is(4, "providers") => (Some(segs[3].to_string()), 5),
        _ => return None,
    };
    let kind = match (
        segs[at].to_ascii_lowercase().as_str(),
        segs[at + 1].to_ascii_lowercase().as_str(),
    ) {
        ("microsoft.compute", "virtualmachines") => Kind::Vms,
        ("microsoft.network", "networkinterfaces") => Kind::Nics,
        ("microsoft.network", "networksecuritygroups") => Kind::Nsgs,
        ("microsoft.network", "publicipaddresses") => Kind::Docs(PUBLIC_IP_TYPE),
        ("microsoft.network", "azurefirewalls") => Kind::Docs(FIREWALL_TYPE),
        ("microsoft.network", "firewallpolicies") => Kind::Docs(FIREWALL_POLICY_TYPE),
        ("microsoft.classiccompute", "virtualmachines") => Kind::Docs(CLASSIC_VM_TYPE),
        _ => return None,
    };
    Some(ListRoute {
        kind,
        sub: segs[1].to_string(),
        rg,
    })
}

/// Decodes `%XX` escapes (and `+`) of a query component.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query's pairs, decoded, keys in lower case.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k).to_ascii_lowercase(), decode(v))
        })
        .collect()
}

/// Answers a GET the listing serves (a list, or a stored document by id); `None` for
/// the rest of the emulator.
pub(crate) fn get(
    shared: &Shared,
    state: &State,
    request: &Incoming,
) -> Option<Result<Reply, ArmError>> {
    if let Some(route) = list_route(&request.path) {
        return Some(list(shared, &state.model, &route, request));
    }
    state
        .model
        .extra
        .docs
        .get(&ids::key(&request.path))
        .map(|doc| Ok(Reply::json(200, doc.clone())))
}

fn in_scope(key: &str, route: &ListRoute) -> bool {
    let scope = match &route.rg {
        Some(rg) => format!("/subscriptions/{}/resourcegroups/{}/", route.sub, rg),
        None => format!("/subscriptions/{}/", route.sub),
    };
    key.starts_with(&scope.to_ascii_lowercase())
}

/// Whether anything is stored in the resource group (the emulator has no resource
/// group objects: a group exists while it holds something).
fn group_exists(model: &Model, route: &ListRoute) -> bool {
    let keys = model
        .vms
        .keys()
        .chain(model.nics.keys())
        .chain(model.nsgs.keys())
        .chain(model.vnets.keys())
        .chain(model.extra.docs.keys());
    keys.into_iter().any(|k| in_scope(k, route))
}

fn instance_view(power: &str) -> Value {
    let display = match power {
        "running" => "VM running",
        "deallocated" => "VM deallocated",
        "stopped" => "VM stopped",
        other => other,
    };
    json!({
        "statuses": [
            {
                "code": "ProvisioningState/succeeded",
                "level": "Info",
                "displayStatus": "Provisioning succeeded",
                "time": "2025-01-01T00:00:00+00:00",
            },
            { "code": format!("PowerState/{power}"), "level": "Info", "displayStatus": display },
        ]
    })
}

fn list(
    shared: &Shared,
    model: &Model,
    route: &ListRoute,
    request: &Incoming,
) -> Result<Reply, ArmError> {
    if let Some(rg) = &route.rg
        && !group_exists(model, route)
    {
        return Err(ArmError::front_door(
            404,
            "ResourceGroupNotFound",
            format!("Resource group '{rg}' could not be found."),
        ));
    }
    let pairs = query_pairs(request.query.as_deref());
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let status_only = param("statusonly").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let expand = param("$expand").is_some_and(|v| v.eq_ignore_ascii_case("instanceView"));
    let items: Vec<Value> = match route.kind {
        Kind::Vms => model
            .vms
            .iter()
            .filter(|(k, _)| in_scope(k, route))
            .map(|(k, vm)| {
                let power = model.extra.power.get(k).map_or("running", String::as_str);
                if status_only {
                    json!({
                        "name": vm.name, "id": vm.id, "type": ids::VM_TYPE, "location": vm.location,
                        "properties": { "instanceView": instance_view(power) },
                    })
                } else {
                    let mut body = render::vm(vm);
                    if expand {
                        body["properties"]["instanceView"] = instance_view(power);
                    }
                    body
                }
            })
            .collect(),
        Kind::Nics => model
            .nics
            .iter()
            .filter(|(k, _)| in_scope(k, route))
            .map(|(_, nic)| decorate_nic(model, render::nic(nic)))
            .collect(),
        Kind::Nsgs => model
            .nsgs
            .iter()
            .filter(|(k, _)| in_scope(k, route))
            .map(|(_, nsg)| render::nsg(model, nsg))
            .collect(),
        Kind::Docs(kind) => model
            .extra
            .docs
            .iter()
            .filter(|(k, d)| {
                in_scope(k, route)
                    && d["type"]
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case(kind))
            })
            .map(|(_, d)| d.clone())
            .collect(),
    };
    let skip = match param("$skiptoken") {
        None => 0,
        Some(t) => t.parse::<usize>().map_err(|_| {
            ArmError::front_door(
                400,
                "InvalidSkipToken",
                format!("The skip token '{t}' is not valid."),
            )
        })?,
    };
    let size = shared.options.list_page_size.max(1);
    let page: Vec<Value> = items.iter().skip(skip).take(size).cloned().collect();
    let mut body = json!({ "value": page });
    if skip + size < items.len() {
        let kept: Vec<String> = request
            .query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty() && !decode(p).to_ascii_lowercase().starts_with("$skiptoken="))
            .map(str::to_string)
            .collect();
        body["nextLink"] = json!(format!(
            "{}{}?{}&%24skiptoken={}",
            shared.base_url,
            request.path,
            kept.join("&"),
            skip + size
        ));
    }
    Ok(Reply::json(200, body))
}

/// A NIC as GET shows it, with `publicIPAddress` on each IP configuration that a public
/// IP names.
pub(crate) fn decorate_nic(model: &Model, mut nic: Value) -> Value {
    let Some(configs) = nic["properties"]["ipConfigurations"].as_array_mut() else {
        return nic;
    };
    for config in configs {
        let Some(config_id) = config["id"].as_str().map(ids::key) else {
            continue;
        };
        let public = model.extra.docs.values().find(|d| {
            d["type"] == PUBLIC_IP_TYPE
                && d["properties"]["ipConfiguration"]["id"]
                    .as_str()
                    .is_some_and(|i| ids::key(i) == config_id)
        });
        if let Some(p) = public {
            config["properties"]["publicIPAddress"] = json!({ "id": p["id"] });
        }
    }
    nic
}

// ----- seeding -----

impl ArmEmulator {
    fn store(&self, id: &str, doc: Value) {
        let mut state = self.state();
        let key = ids::key(id);
        assert!(
            !state.model.extra.docs.contains_key(&key),
            "{id} is already seeded"
        );
        state.model.extra.docs.insert(key, doc);
    }

    /// Sets the power state of VM `vm_id` (`running`, `deallocated`, `stopped`, …).
    pub fn set_power_state(&self, vm_id: &str, power: &str) {
        let mut state = self.state();
        let key = ids::key(vm_id);
        assert!(
            state.model.vms.contains_key(&key),
            "set_power_state: no VM {vm_id}"
        );
        state.model.extra.power.insert(key, power.to_string());
    }

    /// Creates public IP `name` with `address`, on the first IP configuration of NIC
    /// `nic_id` when given; returns its id.
    pub fn seed_public_ip(
        &self,
        resource_group: &str,
        name: &str,
        address: &str,
        nic_id: Option<&str>,
    ) -> String {
        let id = self.scope(resource_group).id(PUBLIC_IP_TYPE, name);
        let mut properties = json!({
            "provisioningState": "Succeeded",
            "resourceGuid": uuid(),
            "ipAddress": address,
            "publicIPAddressVersion": if address.contains(':') { "IPv6" } else { "IPv4" },
            "publicIPAllocationMethod": "Static",
            "idleTimeoutInMinutes": 4,
            "ddosSettings": { "protectionMode": "VirtualNetworkInherited" },
            "ipTags": [],
        });
        if let Some(nic) = nic_id {
            let state = self.state();
            let stored = state
                .model
                .nics
                .get(&ids::key(nic))
                .unwrap_or_else(|| panic!("seed_public_ip: no NIC {nic}"));
            let config = stored
                .ip_configs
                .first()
                .expect("a NIC has an IP configuration");
            properties["ipConfiguration"] =
                json!({ "id": format!("{}/ipConfigurations/{}", stored.id, config.name) });
        }
        self.store(
            &id,
            json!({
                "name": name,
                "id": id,
                "etag": new_etag(),
                "location": self.options().location,
                "sku": { "name": "Standard", "tier": "Regional" },
                "properties": properties,
                "type": PUBLIC_IP_TYPE,
            }),
        );
        id
    }

    /// Stores Azure Firewall `name` for list operations only (see [`ArmEmulator::seed_firewall`]
    /// for one that takes writes), in subnet `AzureFirewallSubnet` (`subnet_prefix`) of
    /// virtual network `vnet`, at `private_ip`, governed by a new Firewall Manager policy
    /// named `policy` when given (classic rules otherwise); returns its id.
    pub fn seed_listed_firewall(
        &self,
        resource_group: &str,
        name: &str,
        vnet: &str,
        subnet_prefix: &str,
        private_ip: &str,
        policy: Option<&str>,
    ) -> String {
        let subnet = self.seed_vnet_subnet(
            resource_group,
            vnet,
            "AzureFirewallSubnet",
            subnet_prefix,
            None,
        );
        let id = self.scope(resource_group).id(FIREWALL_TYPE, name);
        let mut properties = json!({
            "provisioningState": "Succeeded",
            "sku": { "name": "AZFW_VNet", "tier": "Standard" },
            "threatIntelMode": "Alert",
            "ipConfigurations": [{
                "name": "azureFirewallIpConfiguration",
                "id": format!("{id}/ipConfigurations/azureFirewallIpConfiguration"),
                "etag": new_etag(),
                "properties": {
                    "provisioningState": "Succeeded",
                    "privateIPAddress": private_ip,
                    "subnet": { "id": subnet },
                },
            }],
            "applicationRuleCollections": [],
            "natRuleCollections": [],
            "networkRuleCollections": [],
            "ipGroups": [],
            "additionalProperties": {},
        });
        if let Some(policy) = policy {
            let policy_id = self.scope(resource_group).id(FIREWALL_POLICY_TYPE, policy);
            self.store(
                &policy_id,
                json!({
                    "name": policy,
                    "id": policy_id,
                    "type": FIREWALL_POLICY_TYPE,
                    "etag": new_etag(),
                    "location": self.options().location,
                    "properties": {
                        "provisioningState": "Succeeded",
                        "threatIntelMode": "Alert",
                        "firewalls": [{ "id": id }],
                        "ruleCollectionGroups": [],
                    },
                }),
            );
            properties["firewallPolicy"] = json!({ "id": policy_id });
        }
        self.store(
            &id,
            json!({
                "name": name,
                "id": id,
                "type": FIREWALL_TYPE,
                "etag": new_etag(),
                "location": self.options().location,
                "zones": [],
                "tags": {},
                "properties": properties,
            }),
        );
        id
    }

    /// Creates classic (Azure Service Manager) VM `name`; returns its id.
    pub fn seed_classic_vm(&self, resource_group: &str, name: &str) -> String {
        let id = self.scope(resource_group).id(CLASSIC_VM_TYPE, name);
        self.store(
            &id,
            json!({
                "name": name,
                "id": id,
                "type": CLASSIC_VM_TYPE,
                "location": self.options().location,
                "properties": {
                    "provisioningState": "Succeeded",
                    "instanceView": { "status": "ReadyRole", "powerState": "Started" },
                },
            }),
        );
        id
    }
}
