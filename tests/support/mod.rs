//! Test support: the local test bed (etcd, kube-apiserver, moto) and helpers for tests
//! that run against it.

#![allow(dead_code)] // each test binary uses a different part of the support code

pub mod arm;
pub mod aws;
pub mod ec2_proxy;
pub mod entra;
pub mod helm;
pub mod ip_echo;
pub mod kube_helpers;
pub mod kubectl_jit;
pub mod moto;
pub mod operator;
pub mod process;
pub mod tcp_proxy;
pub mod testbed;
