//! The Azure backend: ARM, spoken through a small REST client of our own.

pub mod arm;
mod arm_error;
pub mod firewall;
pub mod firewall_json;
pub mod list;
pub mod nsg;
pub mod scan;
mod scan_shapes;
