//! End-to-end tests against the local test bed (real kube-apiserver + etcd, moto).
//!
//! One binary, so that all tests share one test bed; each test uses its own namespace.

#[path = "../support/mod.rs"]
mod support;

mod aws;
mod azure;
mod azure_crash;
mod azure_firewall;
mod azure_never_left_open;
// The chaos run fails today (its counts are not all 0: see BENCH.md and issue 11), so it
// is built only by `scripts/chaos` (`--features chaos`), not by the test command.
#[cfg(feature = "chaos")]
mod chaos;
mod cli;
mod cloud_faults;
mod crash;
mod crd_schema;
mod identity;
mod install;
mod leader;
mod never_left_open;
mod on_time;
mod production_paths;
mod scan;
mod stamp;
mod webhook_server;
