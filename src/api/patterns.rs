//! Regular expressions the API server checks (Go RE2 syntax: no look-around).
//!
//! They reject what is malformed on its face; the domain layer parses every value again
//! and checks what a pattern cannot express (host bits, duration limits).

/// One IPv4 octet, 0–255 without leading zeros.
macro_rules! octet {
    () => {
        "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    };
}

/// An IPv4 address.
macro_rules! ipv4 {
    () => {
        concat!(octet!(), "\\.", octet!(), "\\.", octet!(), "\\.", octet!())
    };
}

/// An IPv6 address in any of its textual forms (checked exactly by the domain layer).
macro_rules! ipv6 {
    () => {
        "[0-9a-fA-F]{0,4}(:[0-9a-fA-F]{0,4}){2,7}"
    };
}

/// An IPv4 or IPv6 CIDR (`203.0.113.7/32`, `2001:db8::/48`), or `*` for any source.
pub const SOURCE_PREFIX: &str = concat!(
    "^(\\*|",
    ipv4!(),
    "/(3[0-2]|[12]?[0-9])|",
    ipv6!(),
    "/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$"
);

/// A CIDR without the `*` wildcard (what a request names as its source).
pub const CIDR: &str = concat!(
    "^(",
    ipv4!(),
    "/(3[0-2]|[12]?[0-9])|",
    ipv6!(),
    "/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$"
);

/// An IPv4 address.
pub const IPV4: &str = concat!("^", ipv4!(), "$");

/// A Kubernetes-style duration: `30s`, `5m`, `1h30m`, `24h`.
pub const DURATION: &str = "^([0-9]+(h|m|s))+$";

/// A DNS-1123 label (target and policy names).
pub const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A DNS-1123 subdomain (Kubernetes object names).
pub const DNS_SUBDOMAIN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// An Azure VM's ARM id.
pub const AZURE_VM_ID: &str = "^/(?i)subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\\.Compute/virtualMachines/[^/]+$";

/// An Azure Firewall's ARM id.
pub const AZURE_FIREWALL_ID: &str = "^/(?i)subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\\.Network/azureFirewalls/[^/]+$";

/// A port range `first-last` such as `50000-50999` (the domain layer checks the bounds).
pub const PORT_RANGE: &str = "^[1-9][0-9]{0,4}-[1-9][0-9]{0,4}$";

/// An AWS region such as `eu-west-1` or `us-gov-west-1`.
pub const AWS_REGION: &str = "^[a-z]{2}(-[a-z]+)+-[0-9]+$";

/// An EC2 instance id: `i-` and 8 or 17 hex digits.
pub const AWS_INSTANCE_ID: &str = "^i-([0-9a-f]{8}|[0-9a-f]{17})$";
