//! The six default rules every NSG carries, as ARM lists them in `defaultSecurityRules`.

use serde_json::{Value, json};

use super::ids::DEFAULT_RULE_TYPE;

/// `(name, description, source, destination, access, priority, direction)`, in ARM's order.
const DEFAULT_RULES: [(&str, &str, &str, &str, &str, u16, &str); 6] = [
    (
        "AllowVnetInBound",
        "Allow inbound traffic from all VMs in VNET",
        "VirtualNetwork",
        "VirtualNetwork",
        "Allow",
        65000,
        "Inbound",
    ),
    (
        "AllowAzureLoadBalancerInBound",
        "Allow inbound traffic from azure load balancer",
        "AzureLoadBalancer",
        "*",
        "Allow",
        65001,
        "Inbound",
    ),
    (
        "DenyAllInBound",
        "Deny all inbound traffic",
        "*",
        "*",
        "Deny",
        65500,
        "Inbound",
    ),
    (
        "AllowVnetOutBound",
        "Allow outbound traffic from all VMs to all VMs in VNET",
        "VirtualNetwork",
        "VirtualNetwork",
        "Allow",
        65000,
        "Outbound",
    ),
    (
        "AllowInternetOutBound",
        "Allow outbound traffic from all VMs to Internet",
        "*",
        "Internet",
        "Allow",
        65001,
        "Outbound",
    ),
    (
        "DenyAllOutBound",
        "Deny all outbound traffic",
        "*",
        "*",
        "Deny",
        65500,
        "Outbound",
    ),
];

/// The default rules of the NSG `nsg_id`, whose etag they share.
pub(crate) fn default_rules(nsg_id: &str, etag: &str) -> Vec<Value> {
    DEFAULT_RULES
        .iter()
        .map(
            |(name, description, source, destination, access, priority, direction)| {
                json!({
                    "name": name,
                    "id": format!("{nsg_id}/defaultSecurityRules/{name}"),
                    "etag": etag,
                    "type": DEFAULT_RULE_TYPE,
                    "properties": {
                        "provisioningState": "Succeeded",
                        "description": description,
                        "protocol": "*",
                        "sourcePortRange": "*",
                        "destinationPortRange": "*",
                        "sourceAddressPrefix": source,
                        "destinationAddressPrefix": destination,
                        "access": access,
                        "priority": priority,
                        "direction": direction,
                    }
                })
            },
        )
        .collect()
}
