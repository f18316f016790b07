//! Resources as ARM shows them: the JSON bodies of GET, PUT and list answers, shaped
//! like Microsoft's examples (`tests/fixtures/azure/`).

use serde_json::{Map, Value, json};

use super::defaults::default_rules;
use super::ids::{NIC_TYPE, NSG_TYPE, RULE_TYPE, SUBNET_TYPE, VM_TYPE};
use super::state::{Model, Nic, Nsg, Rule, Subnet, Vm};

pub(crate) fn rule(rule: &Rule) -> Value {
    let mut properties = Map::new();
    properties.insert("provisioningState".into(), rule.state.as_str().into());
    properties.extend(rule.props.clone());
    json!({
        "name": rule.name,
        "id": rule.id,
        "etag": rule.etag,
        "type": RULE_TYPE,
        "properties": properties,
    })
}

pub(crate) fn nsg(model: &Model, nsg: &Nsg) -> Value {
    let (nics, subnets) = model.nsg_users(&nsg.id);
    let refs = |ids: Vec<String>| -> Vec<Value> {
        ids.into_iter().map(|id| json!({ "id": id })).collect()
    };
    let mut properties = json!({
        "provisioningState": nsg.state.as_str(),
        "resourceGuid": nsg.guid,
        "flushConnection": nsg.flush_connection,
        "securityRules": nsg.rules.iter().map(rule).collect::<Vec<_>>(),
        "defaultSecurityRules": default_rules(&nsg.id, &nsg.etag),
    });
    // ARM lists the users of an NSG only when there are some.
    if !nics.is_empty() {
        properties["networkInterfaces"] = Value::Array(refs(nics));
    }
    if !subnets.is_empty() {
        properties["subnets"] = Value::Array(refs(subnets));
    }
    let mut body = json!({
        "name": nsg.name,
        "id": nsg.id,
        "etag": nsg.etag,
        "type": NSG_TYPE,
        "location": nsg.location,
        "properties": properties,
    });
    if let Some(tags) = &nsg.tags {
        body["tags"] = tags.clone();
    }
    body
}

pub(crate) fn subnet(model: &Model, subnet: &Subnet) -> Value {
    let mut properties = json!({
        "provisioningState": "Succeeded",
        "addressPrefix": subnet.address_prefix,
    });
    if let Some(nsg) = &subnet.nsg {
        properties["networkSecurityGroup"] = json!({ "id": nsg });
    }
    let ip_configurations: Vec<Value> = model
        .nics
        .values()
        .flat_map(|nic| {
            nic.ip_configs
                .iter()
                .filter(|c| c.subnet.eq_ignore_ascii_case(&subnet.id))
                .map(move |c| json!({ "id": format!("{}/ipConfigurations/{}", nic.id, c.name) }))
        })
        .collect();
    if !ip_configurations.is_empty() {
        properties["ipConfigurations"] = Value::Array(ip_configurations);
    }
    json!({
        "name": subnet.name,
        "id": subnet.id,
        "etag": subnet.etag,
        "type": SUBNET_TYPE,
        "properties": properties,
    })
}

pub(crate) fn nic(nic: &Nic) -> Value {
    let ip_configurations: Vec<Value> = nic
        .ip_configs
        .iter()
        .map(|c| {
            let version = if c.private_ip.contains(':') {
                "IPv6"
            } else {
                "IPv4"
            };
            json!({
                "name": c.name,
                "id": format!("{}/ipConfigurations/{}", nic.id, c.name),
                "etag": nic.etag,
                "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
                "properties": {
                    "provisioningState": "Succeeded",
                    "privateIPAddress": c.private_ip,
                    "privateIPAllocationMethod": "Dynamic",
                    "subnet": { "id": c.subnet },
                    "primary": c.primary,
                    "privateIPAddressVersion": version,
                }
            })
        })
        .collect();
    let mut properties = json!({
        "provisioningState": "Succeeded",
        "resourceGuid": nic.guid,
        "ipConfigurations": ip_configurations,
        "dnsSettings": {
            "dnsServers": [],
            "appliedDnsServers": [],
            "internalDomainNameSuffix": "emulator.internal.cloudapp.net",
        },
        "macAddress": nic.mac,
        "enableAcceleratedNetworking": false,
        "disableTcpStateTracking": false,
        "enableIPForwarding": false,
        "primary": true,
        "vnetEncryptionSupported": false,
        "nicType": "Standard",
    });
    if let Some(nsg) = &nic.nsg {
        properties["networkSecurityGroup"] = json!({ "id": nsg });
    }
    if let Some(vm) = &nic.vm {
        properties["virtualMachine"] = json!({ "id": vm });
    }
    json!({
        "name": nic.name,
        "id": nic.id,
        "etag": nic.etag,
        "type": NIC_TYPE,
        "location": nic.location,
        "properties": properties,
    })
}

pub(crate) fn vm(vm: &Vm) -> Value {
    let multi = vm.nics.len() > 1;
    let nics: Vec<Value> = vm
        .nics
        .iter()
        .enumerate()
        .map(|(i, id)| {
            // ARM shows `primary` only where the VM was created with several NICs.
            if multi {
                json!({ "id": id, "properties": { "primary": i == 0 } })
            } else {
                json!({ "id": id })
            }
        })
        .collect();
    let disk = format!("{}_OsDisk", vm.name);
    let disk_id = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/disks/{disk}",
        vm.subscription, vm.resource_group
    );
    json!({
        "name": vm.name,
        "id": vm.id,
        "type": VM_TYPE,
        "location": vm.location,
        "tags": {},
        "etag": "\"1\"",
        "properties": {
            "vmId": vm.vm_uuid,
            "hardwareProfile": { "vmSize": "Standard_B2s" },
            "storageProfile": {
                "imageReference": {
                    "publisher": "Canonical",
                    "offer": "ubuntu-24_04-lts",
                    "sku": "server",
                    "version": "latest",
                },
                "osDisk": {
                    "osType": "Linux",
                    "name": disk,
                    "createOption": "FromImage",
                    "caching": "ReadWrite",
                    "managedDisk": { "storageAccountType": "Premium_LRS", "id": disk_id },
                    "diskSizeGB": 30,
                },
                "dataDisks": [],
            },
            "osProfile": {
                "computerName": vm.name,
                "adminUsername": "azureuser",
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "provisionVMAgent": true,
                },
                "secrets": [],
            },
            "securityProfile": { "securityType": "Standard" },
            "networkProfile": { "networkInterfaces": nics },
            "diagnosticsProfile": { "bootDiagnostics": { "enabled": true } },
            "extensionsTimeBudget": "PT1H30M",
            "provisioningState": "Succeeded",
            "timeCreated": "2025-01-01T00:00:00+00:00",
        }
    })
}
