//! The `jit.portcullis.dev/v1alpha1` resources: `JitPolicy` and `AccessRequest`.
//!
//! Types and schema only; no logic beyond condition helpers. The OpenAPI constraints here
//! are what the API server enforces without CEL, so the CRDs apply on Kubernetes 1.20+.

pub mod conditions;
pub mod crds;
pub mod patterns;
pub mod policy;
pub mod request;

pub use policy::{
    AwsOptions, AwsTarget, AzureFirewall, AzureTarget, BaselineState, FirewallPriorityBand,
    JitPolicy, JitPolicySpec, JitPolicyStatus, PolicyPort, PriorityBand, PriorityBands, Protocol,
    SharedGroupsMode, Target, TargetCloud, TargetRecord,
};
pub use request::{
    AccessRequest, AccessRequestSpec, AccessRequestStatus, ConnectionDetails, Phase, PolicyRef,
    PortReason, PortStatus, RequestPort, Requester,
};

/// The API group of Portcullis's resources.
pub const GROUP: &str = "jit.portcullis.dev";
/// The API version of Portcullis's resources.
pub const VERSION: &str = "v1alpha1";
