//! Portcullis: just-in-time access to the management ports of cloud VMs, as a
//! Kubernetes operator.

pub mod api;
pub mod certs;
pub mod domain;
