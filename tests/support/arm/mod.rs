//! A test-only, in-process emulator of the part of Azure Resource Manager that
//! Portcullis uses: VMs, NICs, subnets, and network security groups with their rules.
//!
//! No ARM emulator runs without Docker, and `azure_core`'s bearer-token policy refuses
//! plain-http endpoints, so this one serves HTTPS with a self-made CA
//! ([`ArmEmulator::ca_pem`]). It reproduces the ARM behaviours a client must cope with
//! — long-running PUT and DELETE, ETags, the network resource provider's validation
//! errors, busy NSGs, throttling — and `tests/arm_emulator.rs` checks its answers
//! against Microsoft's published examples (`tests/fixtures/azure/`).
//!
//! ```ignore
//! let arm = ArmEmulator::start().await;
//! let vm = arm.seed_vm_with_network("rg1", "vm1", "10.0.0.4");
//! // point the client at arm.url, trusting arm.ca_pem, with token arm.token …
//! let rules = arm.rules(&vm.nic_nsg_id);
//! ```

// Each test binary uses a different part of what is re-exported below.
#![allow(unused_imports)]

mod client;
mod defaults;
mod dispatch;
mod emulator;
mod errors;
mod firewall;
mod firewall_rules;
mod firewall_seed;
mod ids;
mod listing;
mod lro;
mod options;
mod preconditions;
mod reads;
mod record;
mod render;
mod reply;
mod rules;
mod server;
mod state;
mod writes;

pub use client::{ArmClient, ArmResponse, NETWORK_API_VERSION};
pub use emulator::{ArmEmulator, SeededVm};
pub use firewall_seed::SeededFirewall;
pub use options::{ArmOptions, BusyAnswer, DEFAULT_SUBSCRIPTION, Faults};
pub use record::{Call, ThrottleWait};
