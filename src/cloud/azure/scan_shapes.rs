//! ARM bodies read into what the scan needs: ids, NSG rules, power states, firewalls.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::domain::Access;
use crate::domain::exposure::azure::{Nsg, NsgRule, default_rules};

/// ARM ids are case-insensitive: maps are keyed by the lower-cased id.
pub(super) fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// The string at a JSON pointer.
pub(super) fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// The array at a JSON pointer (empty when absent).
pub(super) fn array<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The last segment of an ARM id: the resource's name.
pub(super) fn name_of(id: &str) -> String {
    id.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(id)
        .to_string()
}

/// The segment after `resourceGroups` in an ARM id.
pub(super) fn resource_group_of(id: &str) -> Option<String> {
    let mut segs = id.split('/');
    while let Some(s) = segs.next() {
        if s.eq_ignore_ascii_case("resourceGroups") {
            return segs.next().map(str::to_string);
        }
    }
    None
}

/// The virtual network of a subnet id.
pub(super) fn vnet_of(subnet_id: &str) -> String {
    let l = lower(subnet_id);
    match l.find("/subnets/") {
        Some(i) => l[..i].to_string(),
        None => l,
    }
}

/// `subscription` or `subscription/resource group`, for progress lines.
pub(super) fn path_scope(path: &str) -> String {
    let segs: Vec<&str> = path.split('/').collect();
    match (segs.get(2), segs.get(3), segs.get(4)) {
        (Some(sub), Some(rg), Some(name)) if rg.eq_ignore_ascii_case("resourceGroups") => {
            format!("{sub}/{name}")
        }
        (Some(sub), _, _) => sub.to_string(),
        _ => path.to_string(),
    }
}

/// An Azure Firewall as the scan needs it.
pub(super) struct Firewall {
    pub(super) name: String,
    /// The Firewall Manager policy's name, when one governs it.
    pub(super) policy: Option<String>,
    /// Virtual networks it sits in (lower case).
    pub(super) vnets: BTreeSet<String>,
    /// Addresses its classic DNAT rules translate to.
    pub(super) dnat_targets: BTreeSet<String>,
}

pub(super) fn firewall(v: &Value) -> Firewall {
    let vnets = array(v, "/properties/ipConfigurations")
        .iter()
        .filter_map(|c| text(c, "/properties/subnet/id"))
        .map(vnet_of)
        .collect();
    let dnat_targets = array(v, "/properties/natRuleCollections")
        .iter()
        .flat_map(|c| array(c, "/properties/rules"))
        .filter_map(|r| text(r, "/translatedAddress"))
        .map(str::to_string)
        .collect();
    Firewall {
        name: text(v, "/name").unwrap_or_default().to_string(),
        policy: text(v, "/properties/firewallPolicy/id").map(name_of),
        vnets,
        dnat_targets,
    }
}

/// Strings under `single` and `plural` (ARM writes a prefix or a list of them).
fn one_or_many(props: &Value, single: &str, plural: &str) -> Vec<String> {
    let mut out: Vec<String> = props
        .get(single)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .into_iter()
        .collect();
    out.extend(
        props
            .get(plural)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    );
    out
}

pub(super) fn ids(props: &Value, key: &str) -> Vec<String> {
    props
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|g| g.get("id").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

fn nsg_rule(rule: &Value) -> Option<NsgRule> {
    let props = rule.get("properties")?;
    if !props
        .get("direction")?
        .as_str()?
        .eq_ignore_ascii_case("Inbound")
    {
        return None;
    }
    let access = match props.get("access")?.as_str()? {
        a if a.eq_ignore_ascii_case("Allow") => Access::Allow,
        _ => Access::Deny,
    };
    Some(NsgRule {
        name: rule.get("name")?.as_str()?.to_string(),
        priority: u32::try_from(props.get("priority")?.as_u64()?).ok()?,
        access,
        protocol: props
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("*")
            .to_string(),
        sources: one_or_many(props, "sourceAddressPrefix", "sourceAddressPrefixes"),
        source_groups: ids(props, "sourceApplicationSecurityGroups"),
        destinations: one_or_many(
            props,
            "destinationAddressPrefix",
            "destinationAddressPrefixes",
        ),
        destination_groups: ids(props, "destinationApplicationSecurityGroups"),
        ports: one_or_many(props, "destinationPortRange", "destinationPortRanges"),
    })
}

/// An NSG's inbound rules, its default rules included (the standard ones when the answer
/// omits them).
pub(super) fn nsg(v: &Value) -> Nsg {
    let mut rules: Vec<NsgRule> = array(v, "/properties/securityRules")
        .iter()
        .filter_map(nsg_rule)
        .collect();
    let defaults: Vec<NsgRule> = array(v, "/properties/defaultSecurityRules")
        .iter()
        .filter_map(nsg_rule)
        .collect();
    rules.extend(if defaults.is_empty() {
        default_rules()
    } else {
        defaults
    });
    Nsg {
        name: text(v, "/name").unwrap_or_default().to_string(),
        rules,
    }
}

/// The power state of a VM from its instance view: `running`, `deallocated`, ….
pub(super) fn power_state(v: &Value) -> Option<String> {
    array(v, "/properties/instanceView/statuses")
        .iter()
        .filter_map(|s| text(s, "/code"))
        .find_map(|c| c.strip_prefix("PowerState/"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_and_scopes() {
        let id =
            "/subscriptions/s/resourceGroups/RG-1/providers/Microsoft.Compute/virtualMachines/vm1";
        assert_eq!(resource_group_of(id).as_deref(), Some("RG-1"));
        assert_eq!(name_of(id), "vm1");
        assert_eq!(
            vnet_of(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/V/subnets/default"
            ),
            "/subscriptions/s/resourcegroups/rg/providers/microsoft.network/virtualnetworks/v"
        );
        assert_eq!(
            path_scope("/subscriptions/s/resourceGroups/rg/providers/x"),
            "s/rg"
        );
        assert_eq!(path_scope("/subscriptions/s/providers/x"), "s");
    }

    #[test]
    fn rules_read_as_arm_writes_them() {
        let r = json!({"name": "r", "properties": {
            "protocol": "Tcp", "access": "Allow", "priority": 200, "direction": "Inbound",
            "sourceAddressPrefix": "", "sourceAddressPrefixes": ["1.2.3.4", "Internet"],
            "destinationAddressPrefix": "*", "destinationPortRanges": ["22", "3389-3390"],
            "sourceApplicationSecurityGroups": [{"id": "/a/asg"}]}});
        let rule = nsg_rule(&r).unwrap();
        assert_eq!(rule.sources, vec!["1.2.3.4", "Internet"]);
        assert_eq!(rule.source_groups, vec!["/a/asg"]);
        assert_eq!(rule.ports, vec!["22", "3389-3390"]);
        assert_eq!(rule.priority, 200);
        let out = json!({"name": "o", "properties": {"access": "Allow", "priority": 100, "direction": "Outbound"}});
        assert!(nsg_rule(&out).is_none());
        // No default rules in the answer: the standard ones are assumed.
        let n = nsg(&json!({"name": "n", "properties": {"securityRules": [r]}}));
        assert_eq!(n.rules.len(), 1 + default_rules().len());
    }

    #[test]
    fn power_states() {
        let vm = json!({"properties": {"instanceView": {"statuses": [
            {"code": "ProvisioningState/succeeded"}, {"code": "PowerState/deallocated"}]}}});
        assert_eq!(power_state(&vm).as_deref(), Some("deallocated"));
        assert_eq!(power_state(&json!({})), None);
    }
}
