//! The pure core: the rule model, validation, `desired()` and `plan()`.
//!
//! Nothing here does I/O or knows Kubernetes or a cloud SDK; time is an argument. The
//! controller parses resources into these types, asks for the desired state and a plan,
//! and hands the plan to a cloud backend.

pub mod carve;
pub mod desired;
pub mod duration;
pub mod exposure;
pub mod firewall;
pub mod model;
pub mod plan;
pub mod record;
pub mod requester;
pub mod stamp;
pub mod validate;

pub use desired::{Desired, PortOutcome, RequestOutcome, TargetDesired, desired};
pub use model::*;
pub use plan::{BlockKind, Blocked, Change, Plan, plan};
