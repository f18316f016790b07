//! Test support: the local test bed (etcd, kube-apiserver, moto) and helpers for tests
//! that run against it.

#![allow(dead_code)] // each test binary uses a different part of the support code

pub mod kube_helpers;
pub mod process;
pub mod testbed;
