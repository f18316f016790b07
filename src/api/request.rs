//! `AccessRequest`: one person asking for one target's ports for a while.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::patterns;
use super::policy::Protocol;

/// A request to open some of a policy target's ports, from one source, for a while.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "jit.portcullis.dev",
    version = "v1alpha1",
    kind = "AccessRequest",
    doc = "An AccessRequest opens ports of one JitPolicy target from one source for a bounded time.",
    plural = "accessrequests",
    singular = "accessrequest",
    shortname = "jitreq",
    namespaced,
    status = "AccessRequestStatus",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target"}"#,
    printcolumn = r#"{"name":"Ports","type":"string","jsonPath":".spec.ports[*].port"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Requester","type":"string","jsonPath":".status.requester.username"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Connect","type":"string","priority":1,"description":"Where to connect when it is not the VM's own address (e.g. the firewall's public IP)","jsonPath":".status.ports[*].connection.address"}"#,
    printcolumn = r#"{"name":"Mapped","type":"string","priority":1,"description":"The port to connect to there (e.g. the firewall's mapped port)","jsonPath":".status.ports[*].connection.port"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AccessRequestSpec {
    /// The policy, in the request's namespace, that governs the target.
    pub policy_ref: PolicyRef,
    /// The name of one of the policy's targets.
    #[schemars(length(min = 1, max = 63), pattern(patterns::DNS_LABEL))]
    pub target: String,
    /// The ports to open.
    #[schemars(length(min = 1, max = 8))]
    pub ports: Vec<RequestPort>,
    /// Why access is needed; kept in the audit trail.
    #[schemars(length(min = 1, max = 1024))]
    pub justification: String,
    /// Set to true to close the grant now (deleting the request does the same).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoke: bool,
}

/// A reference to a `JitPolicy` in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRef {
    /// The policy's name.
    #[schemars(length(min = 1, max = 253), pattern(patterns::DNS_SUBDOMAIN))]
    pub name: String,
}

/// One port to open, from one source, for a while.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestPort {
    /// A port the policy governs.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The protocol; defaults to the policy port's protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The source address range, as a CIDR inside one of the policy's allowed prefixes
    /// (`203.0.113.7/32` for one address).
    #[schemars(length(max = 64), pattern(patterns::CIDR))]
    pub source_prefix: String,
    /// How long the port stays open: 10s up to the policy's `maxDuration`.
    #[schemars(length(max = 32), pattern(patterns::DURATION))]
    pub duration: String,
}

/// Where a request (or one of its ports) stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Accepted, not yet open.
    Pending,
    /// Open until `expiresAt`.
    Active,
    /// Closed because its time ran out.
    Expired,
    /// Closed early: revoked, deleted, superseded or its policy changed.
    Revoked,
    /// Refused: it does not fit its policy or its requester may not ask.
    Denied,
    /// The cloud refused a change that retrying cannot fix.
    Failed,
}

/// Why a port was closed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PortReason {
    /// Its time ran out.
    Expired,
    /// The request was revoked or deleted.
    UserRequested,
    /// A newer request for the same target, port and source took over.
    NewerRequestInitiated,
    /// The policy no longer allows it (port removed, target removed, policy deleted).
    PolicyChanged,
}

/// Who asked: stamped from the API server's `userInfo` at admission.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Requester {
    /// The user name.
    pub username: String,
    /// The user's uid, when the authenticator gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The user's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// What the operator did for a request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessRequestStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the request stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Who asked, as the API server authenticated them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<Requester>,
    /// When the ports were first seen open (for people; expiry counts from creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Time>,
    /// When the last port closes: each port's duration after the request was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the request reached a final phase (Expired, Revoked, Denied, Failed); finished
    /// requests are deleted a while after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Per requested port: its state, why it closed, the cloud rules that carry it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortStatus>,
    /// `Ready`, `Reconciling`, `Stalled` (kstatus) and specific ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// A sentence for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The state of one requested port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortStatus {
    /// The port.
    pub port: i32,
    /// Where this port stands.
    pub state: Phase,
    /// Why it closed, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<PortReason>,
    /// When this port closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// The cloud rules that carry the grant (NSG rule ids, security group rule ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_ids: Vec<String>,
    /// How to connect, when it differs from the VM's own address (e.g. through a firewall).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionDetails>,
}

/// Where to connect for a granted port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionDetails {
    /// The address to connect to (e.g. the firewall's public IP).
    pub address: String,
    /// The port to connect to (e.g. the firewall's mapped port).
    pub port: i32,
}
