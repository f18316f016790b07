//! End-to-end tests against the local test bed (real kube-apiserver + etcd, moto).
//!
//! One binary, so that all tests share one test bed; each test uses its own namespace.

#[path = "../support/mod.rs"]
mod support;

mod aws;
mod azure;
mod azure_firewall;
mod azure_never_left_open;
mod chaos;
mod cli;
mod crd_schema;
mod identity;
mod leader;
mod never_left_open;
mod on_time;
mod production_paths;
mod scan;
mod stamp;
mod webhook_server;
