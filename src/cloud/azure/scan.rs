//! Reading a subscription for `portcullis scan`: VMs with their power state, network
//! interfaces, NSGs (whose `subnets` say which subnets they guard), public IPs, Azure
//! Firewalls and classic VMs, each as one paged list, so the number of calls grows with
//! pages and never with VMs. Reads only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value;

use super::arm::ArmClient;
use super::nsg::{COMPUTE_API, NETWORK_API};
use super::scan_shapes::{
    Firewall, array, firewall, ids, lower, name_of, nsg, path_scope, power_state,
    resource_group_of, text, vnet_of,
};
use crate::cloud::CloudError;
use crate::domain::PortSpec;
use crate::domain::exposure::azure::{Hop, Nsg, open_ports};
use crate::domain::exposure::{Cloud, NotApplicable, ScannedVm};

/// The Microsoft.ClassicCompute API version used to find classic VMs.
pub const CLASSIC_API: &str = "2017-04-01";

/// Error codes that mean "this subscription has no classic compute at all".
const NO_CLASSIC: &[&str] = &[
    "MissingSubscriptionRegistration",
    "NoRegisteredProviderFound",
    "InvalidResourceNamespace",
    "InvalidResourceType",
    "SubscriptionNotRegistered",
];

/// Told how far a read has got.
pub type Progress<'a> = &'a (dyn Fn(String) + Send + Sync);

/// Reads Azure subscriptions for the scan through the operator's ARM client (its
/// credentials, retries, `Retry-After` handling and client-wide hold after a 429).
pub struct AzureScanner {
    arm: ArmClient,
}

/// One page-able list of a subscription, by provider path.
struct Lists<'a> {
    arm: &'a ArmClient,
    progress: Progress<'a>,
}

impl Lists<'_> {
    async fn get(
        &self,
        op: &'static str,
        path: String,
        api: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Vec<Value>, CloudError> {
        let progress = self.progress;
        let label = format!("azure {}: {what}", path_scope(&path));
        self.arm
            .list(op, &path, api, query, &|n| {
                progress(format!("{label}: {n}"))
            })
            .await
    }
}

/// What a subscription's lists say, indexed.
struct Inventory {
    nics: BTreeMap<String, Value>,
    nsgs: BTreeMap<String, Nsg>,
    subnet_nsg: BTreeMap<String, String>,
    public_ips: BTreeMap<String, String>,
    firewalls: Vec<Firewall>,
    power: BTreeMap<String, String>,
}

impl AzureScanner {
    /// A scanner on an ARM client.
    pub fn new(arm: ArmClient) -> AzureScanner {
        AzureScanner { arm }
    }

    /// A scanner on the ARM client [`ArmClient::from_env`] makes.
    pub fn from_env() -> Result<AzureScanner, CloudError> {
        Ok(AzureScanner::new(ArmClient::from_env()?))
    }

    /// Every VM of `subscription` (or of one of its resource groups), with the management
    /// ports in `ports` its NSGs leave open.
    pub async fn subscription(
        &self,
        subscription: &str,
        resource_group: Option<&str>,
        ports: &[PortSpec],
        progress: Progress<'_>,
    ) -> Result<Vec<ScannedVm>, CloudError> {
        let lists = Lists {
            arm: &self.arm,
            progress,
        };
        let sub = format!("/subscriptions/{subscription}");
        // VMs are listed where asked; what guards them may sit anywhere in the subscription.
        let scope = match resource_group {
            Some(rg) => format!("{sub}/resourceGroups/{rg}"),
            None => sub.clone(),
        };
        let network = |kind: &str| format!("{sub}/providers/Microsoft.Network/{kind}");
        let vms_path = format!("{scope}/providers/Microsoft.Compute/virtualMachines");
        let vms = async {
            match resource_group {
                // A resource group's list can carry each VM's instance view itself.
                Some(_) => {
                    let vms = lists
                        .get(
                            "ListVirtualMachines",
                            vms_path.clone(),
                            COMPUTE_API,
                            &[("$expand", "instanceView")],
                            "VMs",
                        )
                        .await?;
                    Ok::<_, CloudError>((vms.clone(), vms))
                }
                // A subscription's list gives the status of all its VMs with statusOnly.
                None => {
                    tokio::try_join!(
                        lists.get(
                            "ListVirtualMachines",
                            vms_path.clone(),
                            COMPUTE_API,
                            &[],
                            "VMs"
                        ),
                        lists.get(
                            "ListVirtualMachineStatuses",
                            vms_path.clone(),
                            COMPUTE_API,
                            &[("statusOnly", "true")],
                            "VM statuses"
                        ),
                    )
                }
            }
        };
        let classic = async {
            let path = format!("{scope}/providers/Microsoft.ClassicCompute/virtualMachines");
            match lists
                .get(
                    "ListClassicVirtualMachines",
                    path,
                    CLASSIC_API,
                    &[],
                    "classic VMs",
                )
                .await
            {
                Ok(v) => Ok(v),
                Err(CloudError::NotFound { .. }) => Ok(Vec::new()),
                Err(CloudError::Fatal { code, .. }) if NO_CLASSIC.contains(&code.as_str()) => {
                    Ok(Vec::new())
                }
                Err(e) => Err(e),
            }
        };
        let ((vms, statuses), nics, nsgs, public_ips, firewalls, classic) = tokio::try_join!(
            vms,
            lists.get(
                "ListNetworkInterfaces",
                network("networkInterfaces"),
                NETWORK_API,
                &[],
                "network interfaces"
            ),
            lists.get(
                "ListNetworkSecurityGroups",
                network("networkSecurityGroups"),
                NETWORK_API,
                &[],
                "NSGs"
            ),
            lists.get(
                "ListPublicIpAddresses",
                network("publicIPAddresses"),
                NETWORK_API,
                &[],
                "public IPs"
            ),
            lists.get(
                "ListAzureFirewalls",
                network("azureFirewalls"),
                NETWORK_API,
                &[],
                "firewalls"
            ),
            classic,
        )?;

        let mut inv = Inventory {
            nics: nics
                .into_iter()
                .filter_map(|n| Some((lower(text(&n, "/id")?), n)))
                .collect(),
            nsgs: BTreeMap::new(),
            subnet_nsg: BTreeMap::new(),
            public_ips: public_ips
                .iter()
                .filter_map(|p| {
                    Some((
                        lower(text(p, "/id")?),
                        text(p, "/properties/ipAddress")?.to_string(),
                    ))
                })
                .collect(),
            firewalls: firewalls.iter().map(firewall).collect(),
            power: statuses
                .iter()
                .filter_map(|v| Some((lower(text(v, "/id")?), power_state(v)?)))
                .collect(),
        };
        for n in &nsgs {
            let Some(id) = text(n, "/id") else { continue };
            for subnet in ids(n.get("properties").unwrap_or(&Value::Null), "subnets") {
                inv.subnet_nsg.insert(lower(&subnet), lower(id));
            }
            inv.nsgs.insert(lower(id), nsg(n));
        }
        self.fetch_missing(&vms, &mut inv).await?;

        let mut out: Vec<ScannedVm> = vms
            .iter()
            .filter_map(|vm| scanned(vm, &inv, ports))
            .collect();
        out.extend(classic.iter().filter_map(classic_vm));
        Ok(out)
    }

    /// NICs and NSGs that VMs name but the subscription's lists did not hold (another
    /// subscription's, or created between two lists) are read one by one.
    async fn fetch_missing(&self, vms: &[Value], inv: &mut Inventory) -> Result<(), CloudError> {
        for vm in vms {
            for nic_ref in array(vm, "/properties/networkProfile/networkInterfaces") {
                let Some(id) = text(nic_ref, "/id") else {
                    continue;
                };
                if inv.nics.contains_key(&lower(id)) {
                    continue;
                }
                if let Some(r) = self.arm.get("GetNetworkInterface", id, NETWORK_API).await? {
                    inv.nics.insert(lower(id), r.body);
                }
            }
        }
        let named: BTreeSet<String> = inv
            .nics
            .values()
            .filter_map(|n| text(n, "/properties/networkSecurityGroup/id"))
            .map(str::to_string)
            .collect();
        for id in named {
            if inv.nsgs.contains_key(&lower(&id)) {
                continue;
            }
            if let Some(r) = self
                .arm
                .get("GetNetworkSecurityGroup", &id, NETWORK_API)
                .await?
            {
                inv.nsgs.insert(lower(&id), nsg(&r.body));
            }
        }
        Ok(())
    }
}

fn classic_vm(v: &Value) -> Option<ScannedVm> {
    let id = text(v, "/id")?.to_string();
    Some(ScannedVm {
        cloud: Cloud::Azure,
        name: text(v, "/name")
            .map(str::to_string)
            .unwrap_or_else(|| name_of(&id)),
        region: text(v, "/location").unwrap_or_default().to_string(),
        resource_group: resource_group_of(&id),
        public_ips: Vec::new(),
        open_ports: Vec::new(),
        not_applicable: Some(NotApplicable::Classic),
        note: None,
        id,
    })
}

/// One IP configuration of a NIC, resolved.
struct IpConfig {
    address: IpAddr,
    groups: Vec<String>,
    subnet_nsg: Option<String>,
    nic_nsg: Option<String>,
    vnet: Option<String>,
}

fn scanned(vm: &Value, inv: &Inventory, ports: &[PortSpec]) -> Option<ScannedVm> {
    let id = text(vm, "/id")?.to_string();
    let mut public_ips = Vec::new();
    let mut configs = Vec::new();
    for nic_ref in array(vm, "/properties/networkProfile/networkInterfaces") {
        let Some(nic) = text(nic_ref, "/id").and_then(|n| inv.nics.get(&lower(n))) else {
            continue;
        };
        let nic_nsg = text(nic, "/properties/networkSecurityGroup/id").map(lower);
        for c in array(nic, "/properties/ipConfigurations") {
            let props = c.get("properties").unwrap_or(&Value::Null);
            if let Some(ip) =
                text(props, "/publicIPAddress/id").and_then(|p| inv.public_ips.get(&lower(p)))
            {
                public_ips.push(ip.clone());
            }
            let Some(address) = text(props, "/privateIPAddress").and_then(|a| a.parse().ok())
            else {
                continue;
            };
            let subnet = text(props, "/subnet/id");
            configs.push(IpConfig {
                address,
                groups: ids(props, "applicationSecurityGroups"),
                subnet_nsg: subnet.and_then(|s| inv.subnet_nsg.get(&lower(s)).cloned()),
                nic_nsg: nic_nsg.clone(),
                vnet: subnet.map(vnet_of),
            });
        }
    }
    public_ips.sort();
    public_ips.dedup();
    let hops: Vec<Hop> = configs
        .iter()
        .map(|c| Hop {
            address: c.address,
            groups: &c.groups,
            subnet_nsg: c.subnet_nsg.as_ref().and_then(|n| inv.nsgs.get(n)),
            nic_nsg: c.nic_nsg.as_ref().and_then(|n| inv.nsgs.get(n)),
        })
        .collect();

    let vnets: BTreeSet<&str> = configs.iter().filter_map(|c| c.vnet.as_deref()).collect();
    let addresses: BTreeSet<String> = configs.iter().map(|c| c.address.to_string()).collect();
    let in_front: Vec<&Firewall> = inv
        .firewalls
        .iter()
        .filter(|f| {
            f.vnets.iter().any(|v| vnets.contains(v.as_str()))
                || f.dnat_targets.iter().any(|t| addresses.contains(t))
        })
        .collect();
    let state = inv
        .power
        .get(&lower(&id))
        .cloned()
        .or_else(|| power_state(vm));
    let not_applicable =
        if let Some(s) = state.filter(|s| !matches!(s.as_str(), "running" | "starting")) {
            Some(NotApplicable::NotRunning { state: s })
        } else if let Some((f, p)) = in_front.iter().find_map(|f| Some((f, f.policy.clone()?))) {
            Some(NotApplicable::FirewallManager {
                firewall: f.name.clone(),
                policy: p,
            })
        } else if hops
            .iter()
            .all(|h| h.subnet_nsg.is_none() && h.nic_nsg.is_none())
        {
            Some(NotApplicable::NoNsg)
        } else {
            None
        };
    let note = (!in_front.is_empty()).then(|| {
        let names: Vec<&str> = in_front.iter().map(|f| f.name.as_str()).collect();
        format!(
            "behind Azure Firewall {} (classic rules; its DNAT rules are not evaluated here)",
            names.join(", ")
        )
    });
    Some(ScannedVm {
        cloud: Cloud::Azure,
        name: text(vm, "/name")
            .map(str::to_string)
            .unwrap_or_else(|| name_of(&id)),
        region: text(vm, "/location").unwrap_or_default().to_string(),
        resource_group: resource_group_of(&id),
        public_ips,
        open_ports: open_ports(&hops, ports),
        note: note
            .filter(|_| !matches!(not_applicable, Some(NotApplicable::FirewallManager { .. }))),
        not_applicable,
        id,
    })
}
