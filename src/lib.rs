//! Portcullis: just-in-time access to the management ports of cloud VMs, as a
//! Kubernetes operator.

pub mod api;
pub mod certs;
pub mod cli;
pub mod cloud;
pub mod controller;
pub mod domain;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod scan;
pub mod telemetry;
pub mod webhook;
