//! `--emit-policies`: JitPolicies that would govern what the scan found open, ready for
//! `kubectl apply` or a GitOps repository.
//!
//! One policy per AWS region or Azure resource group, its ports the union of what was
//! found open there. A VM that some policy already names on one of those ports gets a
//! policy of its own with only its own ports, so that no port of a VM is governed twice.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::ObjectMeta;

use super::report::Finding;
use crate::api::{
    AwsTarget, AzureTarget, JitPolicy, JitPolicySpec, PolicyPort, Protocol, Target, TargetCloud,
};
use crate::domain::exposure::{Category, Cloud};
use crate::domain::stamp::short_hash;
use crate::domain::{PortSpec, Proto};

/// Most targets a policy may hold (the CRD's limit).
pub const MAX_TARGETS: usize = 64;
/// Most ports a policy may hold (the CRD's limit).
pub const MAX_PORTS: usize = 16;
/// The label every emitted policy carries.
pub const CREATED_BY: (&str, &str) = ("app.kubernetes.io/created-by", "portcullis-scan");

/// What every emitted policy port says besides its number.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `allowedSourcePrefixes`.
    pub allow: Vec<String>,
    /// `maxDuration`.
    pub max_duration: String,
    /// `metadata.namespace`, when given.
    pub namespace: Option<String>,
}

/// A DNS label from any text: lower case, `[a-z0-9-]`, at most `max` characters.
fn label(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.to_ascii_lowercase().chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    out.truncate(max);
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() { "vm".into() } else { out }
}

/// `name`, made unique among `taken` by a numeric suffix.
fn unique(name: String, taken: &mut BTreeSet<String>, max: usize) -> String {
    let mut n = 1;
    let mut candidate = name.clone();
    while !taken.insert(candidate.clone()) {
        n += 1;
        let suffix = format!("-{n}");
        let mut base = name.clone();
        base.truncate(max - suffix.len());
        candidate = format!("{}{suffix}", base.trim_end_matches('-'));
    }
    candidate
}

/// Where a VM's policy goes: `(cloud, region or subscription/resource group)`.
fn group_of(f: &Finding) -> (Cloud, String, String) {
    match f.vm.cloud {
        Cloud::Aws => (
            Cloud::Aws,
            f.vm.region.clone(),
            format!("jit-aws-{}", f.vm.region),
        ),
        Cloud::Azure => {
            let rg = f.vm.resource_group.clone().unwrap_or_default();
            let sub =
                f.vm.id
                    .split('/')
                    .nth(2)
                    .unwrap_or_default()
                    .to_ascii_lowercase();
            (
                Cloud::Azure,
                format!("{sub}/{}", rg.to_ascii_lowercase()),
                format!("jit-azure-{rg}"),
            )
        }
    }
}

fn policy_port(p: PortSpec, s: &Settings) -> PolicyPort {
    PolicyPort {
        port: i32::from(p.port.get()),
        protocol: match p.protocol {
            Proto::Tcp => Protocol::Tcp,
            Proto::Udp => Protocol::Udp,
            Proto::Any => Protocol::Any,
        },
        allowed_source_prefixes: s.allow.clone(),
        max_duration: s.max_duration.clone(),
    }
}

fn target(f: &Finding, name: String) -> Target {
    let cloud = match f.vm.cloud {
        Cloud::Aws => TargetCloud::Aws(AwsTarget {
            region: f.vm.region.clone(),
            instance_id: f.vm.id.clone(),
        }),
        Cloud::Azure => TargetCloud::Azure(AzureTarget {
            vm_id: f.vm.id.clone(),
            firewall: None,
        }),
    };
    Target { name, cloud }
}

/// The policies for the unhealthy VMs among `findings`, in a stable order.
pub fn policies(findings: &[Finding], s: &Settings) -> Vec<JitPolicy> {
    // Group → (base name, VMs).
    let mut groups: BTreeMap<(Cloud, String), (String, Vec<&Finding>)> = BTreeMap::new();
    for f in findings {
        if f.verdict.category != Category::Unhealthy || f.verdict.to_govern.is_empty() {
            continue;
        }
        let (cloud, key, name) = group_of(f);
        groups
            .entry((cloud, key))
            .or_insert_with(|| (name, Vec::new()))
            .1
            .push(f);
    }
    // Two groups with the same base name (one resource group name in two subscriptions)
    // are told apart by a hash of their key.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (name, _) in groups.values() {
        *seen.entry(label(name, 200)).or_default() += 1;
    }
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for ((_, key), (name, vms)) in &groups {
        let base = match label(name, 200) {
            n if seen[&n] > 1 => format!("{n}-{}", short_hash(key)),
            n => n,
        };
        // VMs already named on a port of the group's union go alone.
        let mut shared: Vec<&Finding> = vms.clone();
        let mut alone: Vec<&Finding> = Vec::new();
        loop {
            let union: BTreeSet<PortSpec> = shared
                .iter()
                .flat_map(|f| f.verdict.to_govern.iter().copied())
                .collect();
            let (clash, fine): (Vec<&Finding>, Vec<&Finding>) = shared
                .iter()
                .partition(|f| f.named_ports.iter().any(|p| union.contains(p)));
            if clash.is_empty() {
                break;
            }
            alone.extend(clash);
            shared = fine;
        }
        let mut batches: Vec<(String, Vec<&Finding>)> = shared
            .chunks(MAX_TARGETS)
            .enumerate()
            .map(|(i, chunk)| {
                let name = if i == 0 {
                    base.clone()
                } else {
                    format!("{base}-{}", i + 1)
                };
                (name, chunk.to_vec())
            })
            .collect();
        for f in alone {
            batches.push((format!("{base}-{}", label(&f.vm.name, 50)), vec![f]));
        }
        for (name, batch) in batches {
            let ports: BTreeSet<PortSpec> = batch
                .iter()
                .flat_map(|f| f.verdict.to_govern.iter().copied())
                .collect();
            let mut taken = BTreeSet::new();
            let targets = batch
                .iter()
                .map(|f| target(f, unique(label(&f.vm.name, 63), &mut taken, 63)))
                .collect();
            let spec = JitPolicySpec {
                targets,
                ports: ports.into_iter().map(|p| policy_port(p, s)).collect(),
                priority_bands: None,
                aws: None,
            };
            let mut policy = JitPolicy::new(&unique(name, &mut names, 253), spec);
            policy.metadata = ObjectMeta {
                namespace: s.namespace.clone(),
                labels: Some([(CREATED_BY.0.into(), CREATED_BY.1.into())].into()),
                ..policy.metadata
            };
            out.push(policy);
        }
    }
    out
}

/// The policies as one YAML stream, with a comment saying what they cover.
pub fn yaml(policies: &[JitPolicy]) -> Result<String, serde_saphyr::SerializeError> {
    let targets: usize = policies.iter().map(|p| p.spec.targets.len()).sum();
    let mut out = format!(
        "# portcullis scan: {} JitPolicies for {targets} unhealthy VMs\n",
        policies.len()
    );
    for p in policies {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(p)?);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "emit_tests.rs"]
mod tests;
