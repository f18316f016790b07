//! `JitPolicy`: which VMs are protected, on which ports, for how long at most.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::patterns;

/// Which VMs are protected, on which ports, and for how long a grant may last.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "jit.portcullis.dev",
    version = "v1alpha1",
    kind = "JitPolicy",
    doc = "A JitPolicy keeps management ports of VMs closed and says who may open them, how and for how long.",
    plural = "jitpolicies",
    singular = "jitpolicy",
    shortname = "jitp",
    namespaced,
    status = "JitPolicyStatus",
    printcolumn = r#"{"name":"Targets","type":"string","jsonPath":".spec.targets[*].name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct JitPolicySpec {
    /// The VMs this policy protects; requests name one of them.
    #[schemars(length(min = 1, max = 64))]
    pub targets: Vec<Target>,
    /// The management ports kept closed and opened on request.
    #[schemars(length(min = 1, max = 16))]
    pub ports: Vec<PolicyPort>,
    /// Azure only: where owned allow and deny rules go. Defaults apply when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_bands: Option<PriorityBands>,
    /// AWS only: how the baseline treats security groups it shares with other instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsOptions>,
}

/// AWS options of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsOptions {
    /// What the baseline does in a security group that instances outside the policy also
    /// use: `Conflict` (the default) leaves the group alone and reports the condition
    /// `Conflict` naming the group and the other instances; `Revoke` revokes anyway, which
    /// closes the port on those instances too.
    #[serde(default)]
    pub shared_groups: SharedGroupsMode,
}

/// See [`AwsOptions::shared_groups`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SharedGroupsMode {
    /// Leave shared groups alone and report a conflict.
    #[default]
    Conflict,
    /// Revoke in shared groups too.
    Revoke,
}

/// One protected VM, named for requests, on exactly one cloud.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The name requests use for this VM (a DNS label, unique in the policy).
    #[schemars(length(min = 1, max = 63), pattern(patterns::DNS_LABEL))]
    pub name: String,
    /// The cloud the VM lives on.
    #[serde(flatten)]
    pub cloud: TargetCloud,
}

/// Where a target lives: exactly one of `azure` or `aws`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TargetCloud {
    /// An Azure VM; the operator resolves NIC → private IPs → the NIC's and subnet's NSG.
    Azure(AzureTarget),
    /// An AWS EC2 instance; the operator resolves its ENIs and their security groups.
    Aws(AwsTarget),
}

/// An Azure VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureTarget {
    /// The VM's ARM id: `/subscriptions/…/resourceGroups/…/providers/Microsoft.Compute/virtualMachines/…`.
    #[schemars(length(max = 1024), pattern(patterns::AZURE_VM_ID))]
    pub vm_id: String,
    /// Set when the VM is reached through an Azure Firewall (DNAT) rather than directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<AzureFirewall>,
}

/// An Azure Firewall (classic rules) in front of a VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureFirewall {
    /// The firewall's ARM id.
    #[schemars(length(max = 1024), pattern(patterns::AZURE_FIREWALL_ID))]
    pub id: String,
    /// The firewall's public IPv4 address that DNAT rules listen on.
    #[schemars(pattern(patterns::IPV4))]
    pub public_ip: String,
    /// The firewall ports grants are mapped to, one per grant while it lasts, as
    /// `first-last` (e.g. `50000-50999`, the default). People connect to
    /// `publicIp:<mapped port>`; the request's status says which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 11), pattern(patterns::PORT_RANGE))]
    pub mapped_ports: Option<String>,
}

/// An AWS EC2 instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsTarget {
    /// The instance's region, e.g. `eu-west-1`.
    #[schemars(length(max = 32), pattern(patterns::AWS_REGION))]
    pub region: String,
    /// The instance id, e.g. `i-0123456789abcdef0`.
    #[schemars(pattern(patterns::AWS_INSTANCE_ID))]
    pub instance_id: String,
}

/// A management port the policy governs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPort {
    /// The port number (1–65535).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The transport protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// CIDRs a request's source must lie inside. `0.0.0.0/0`, `::/0` or `*` allow any
    /// source and are honoured only when written here explicitly.
    #[schemars(
        length(min = 1, max = 32),
        inner(length(max = 64), pattern(patterns::SOURCE_PREFIX))
    )]
    pub allowed_source_prefixes: Vec<String>,
    /// The longest grant a request may ask for: a duration such as `3h` (5m to 24h).
    #[schemars(length(max = 32), pattern(patterns::DURATION))]
    pub max_duration: String,
}

/// A transport protocol.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Protocol {
    /// TCP (the default: SSH, RDP and WinRM are TCP).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// Both TCP and UDP.
    #[serde(rename = "Any")]
    Any,
}

/// Where owned NSG rules go (Azure). Priorities are 100–4096; a lower number wins.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PriorityBands {
    /// The band for allow rules (one per grant); it must lie above the deny band.
    pub allow: PriorityBand,
    /// The band for the baseline deny rules (one per policy port).
    pub deny: PriorityBand,
    /// Azure Firewall: where the owned rule collections go (default 60000–64999).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallPriorityBand>,
}

/// An inclusive range of Azure Firewall rule collection priorities (100–65000; a lower
/// number wins). Owned NAT and network collections go here, the baseline's deny
/// collections below every foreign network collection that allows a governed port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirewallPriorityBand {
    /// The first (highest-precedence) priority of the band.
    #[schemars(range(min = 100, max = 65000))]
    pub first: i32,
    /// The last (lowest-precedence) priority of the band.
    #[schemars(range(min = 100, max = 65000))]
    pub last: i32,
}

/// An inclusive range of NSG priorities.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PriorityBand {
    /// The first (highest-precedence) priority of the band.
    #[schemars(range(min = 100, max = 4096))]
    pub first: i32,
    /// The last (lowest-precedence) priority of the band.
    #[schemars(range(min = 100, max = 4096))]
    pub last: i32,
}

/// What the operator observed and did for a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JitPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled` (kstatus) and `Conflict`, `Unsupported`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per target: what was resolved and the state of its baseline. Targets removed from
    /// the spec stay here until what the operator did to them is undone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub targets: Vec<TargetStatus>,
}

/// Where a target's baseline stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BaselineState {
    /// Every governed port is closed.
    Enforced,
    /// Nothing is governed any more (the policy or the target is going): what the
    /// baseline changed is undone.
    Lifted,
    /// Not there yet.
    Pending,
    /// Foreign rules or limits keep part of it from being placed (see `message`).
    Conflict,
    /// The cloud refused; the operator retries (see `message`).
    Failed,
}

/// What was resolved for one target and the state of its baseline.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// The target's name.
    pub name: String,
    /// Azure: the NSGs (NIC and subnet) that guard the VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nsg_ids: Vec<String>,
    /// Azure: the firewall in front of the VM, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall_id: Option<String>,
    /// The VM's private addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_ips: Vec<String>,
    /// The VM's public addresses, when it has any (where people connect to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_ips: Vec<String>,
    /// AWS: the instance's network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_interface_ids: Vec<String>,
    /// AWS: the security groups attached to the instance that are not the operator's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
    /// AWS: the operator-owned security groups that carry grants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owned_security_group_ids: Vec<String>,
    /// Where the baseline stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineState>,
    /// What stands in the way, when something does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the operator last changed the cloud to match (and saw it match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_converge_time: Option<Time>,
    /// How many drifted rules were corrected since the operator started watching.
    #[serde(default)]
    pub drift_corrections: i64,
    /// The operator's own memory of the target, signed (written by the field manager
    /// `portcullis-records` before the operator first changes the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<TargetRecord>,
}

/// What the operator must remember about a target to undo what it did there, even after
/// the target left the spec or the policy is deleted. Signed with the operator's key: a
/// record someone else wrote or changed is ignored (and reported), never acted on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRecord {
    /// Where the target lives, as the operator first touched it.
    #[serde(flatten)]
    pub cloud: TargetCloud,
    /// Azure: the NSGs the operator has written to for this target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nsg_ids: Vec<String>,
    /// AWS: the ingress rules the baseline revoked, recorded exactly so they can be restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_rules: Vec<RevokedRule>,
    /// HMAC-SHA256 over the policy's uid, the target, where it lives and `nsgIds`,
    /// base64url (each revoked rule carries its own).
    pub signature: String,
}

/// An AWS ingress rule the baseline revoked: enough to restore it exactly.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct RevokedRule {
    /// The security group the rule was in.
    pub group_id: String,
    /// `tcp`, `udp`, `-1`, or a protocol number, as EC2 names it.
    pub ip_protocol: String,
    /// The first port of the rule's range.
    pub from_port: i32,
    /// The last port of the rule's range.
    pub to_port: i32,
    /// The source IPv4 CIDR, when the rule had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_ipv4: Option<String>,
    /// The source IPv6 CIDR, when the rule had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_ipv6: Option<String>,
    /// The source security group, when the rule referenced one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referenced_group_id: Option<String>,
    /// The source prefix list, when the rule referenced one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_list_id: Option<String>,
    /// The rule's description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The operator's signature over this entry (HMAC-SHA256, base64url): an entry
    /// without a good one is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}
