//! Which JitPolicies in the cluster name which VMs (needs a client).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use kube::{Resource, ResourceExt};

use crate::api::JitPolicy;
use crate::api::conditions;
use crate::domain::exposure::{Cloud, Governing, ScannedVm};
use crate::domain::{Locator, ObjectKey, validate};

/// How long the cluster may take to answer before the scan goes on without it.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(15);

/// A VM as policies name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum VmKey {
    Aws { region: String, instance: String },
    Azure { vm_id: String },
}

fn key_of_locator(locator: &Locator) -> VmKey {
    match locator {
        Locator::Aws {
            region,
            instance_id,
        } => VmKey::Aws {
            region: region.clone(),
            instance: instance_id.clone(),
        },
        // ARM ids are case-insensitive.
        Locator::Azure { vm_id, .. } => VmKey::Azure {
            vm_id: vm_id.to_ascii_lowercase(),
        },
    }
}

fn key_of_vm(vm: &ScannedVm) -> VmKey {
    match vm.cloud {
        Cloud::Aws => VmKey::Aws {
            region: vm.region.clone(),
            instance: vm.id.clone(),
        },
        Cloud::Azure => VmKey::Azure {
            vm_id: vm.id.to_ascii_lowercase(),
        },
    }
}

/// The policies that name each VM.
#[derive(Clone, Debug, Default)]
pub struct Governance {
    by_vm: BTreeMap<VmKey, Vec<Governing>>,
    /// How many policies were read.
    pub policies: usize,
}

impl Governance {
    /// Indexes policies by the VMs they name. A policy that does not parse governs
    /// nothing (the operator reports it Stalled); its name and problem are returned.
    pub fn new(policies: &[JitPolicy]) -> (Governance, Vec<String>) {
        let mut g = Governance {
            policies: policies.len(),
            ..Governance::default()
        };
        let mut problems = Vec::new();
        for p in policies {
            let key = ObjectKey::new(p.namespace().unwrap_or_default(), p.name_any());
            let parsed = match validate::policy(key.clone(), &p.spec, false) {
                Ok(parsed) => parsed,
                Err(errors) => {
                    problems.push(format!(
                        "JitPolicy {key} governs nothing: {}",
                        validate::join(&errors)
                    ));
                    continue;
                }
            };
            // Only the operator writes status, and only a status for the current
            // generation says the operator has enforced this spec.
            let ready = p.status.as_ref().is_some_and(|s| {
                conditions::is_true(&s.conditions, conditions::READY)
                    && s.observed_generation.is_some()
                    && s.observed_generation == p.meta().generation
            });
            let ports: Vec<_> = parsed.ports.iter().map(|port| port.spec).collect();
            for t in &parsed.targets {
                let entry = g.by_vm.entry(key_of_locator(&t.locator)).or_default();
                if !entry.iter().any(|e| e.policy == key.to_string()) {
                    entry.push(Governing {
                        policy: key.to_string(),
                        ports: ports.clone(),
                        ready,
                    });
                }
            }
        }
        (g, problems)
    }

    /// The policies that name `vm`.
    pub fn of(&self, vm: &ScannedVm) -> &[Governing] {
        self.by_vm
            .get(&key_of_vm(vm))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// A client from `kubeconfig`, or from `$KUBECONFIG`, `~/.kube/config` or the pod's
/// service account, as kubectl finds one; `context` picks a kubeconfig context.
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Client, String> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("kubeconfig: {e}"))?,
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| format!("no kubeconfig or in-cluster configuration: {e}"))?,
    };
    kube::Client::try_from(config).map_err(|e| format!("cannot make a Kubernetes client: {e}"))
}

/// Why no JitPolicy could be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// No API server answered (no configuration, connection refused, timeout).
    Unreachable(String),
    /// The API server answered with an error (forbidden, no such resource, …).
    Refused(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Unreachable(e) => write!(f, "no cluster reachable ({e})"),
            ReadError::Refused(e) => write!(f, "the cluster refused to list JitPolicies ({e})"),
        }
    }
}

/// Lists the JitPolicies of `namespace` (all namespaces when `None`). Each is parsed on
/// its own, so one the client cannot read does not hide the others.
pub async fn read(
    client: kube::Client,
    namespace: Option<&str>,
) -> Result<(Vec<JitPolicy>, Vec<String>), ReadError> {
    let resource = ApiResource::erase::<JitPolicy>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    let listed = tokio::time::timeout(CLUSTER_TIMEOUT, api.list(&ListParams::default()))
        .await
        .map_err(|_| ReadError::Unreachable(format!("no answer within {CLUSTER_TIMEOUT:?}")))?
        .map_err(|e| match e {
            kube::Error::Api(s) => {
                ReadError::Refused(format!("{} {}: {}", s.code, s.reason, s.message))
            }
            other => ReadError::Unreachable(other.to_string()),
        })?;
    let mut policies = Vec::new();
    let mut problems = Vec::new();
    for obj in listed.items {
        let name = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
        match serde_json::to_value(&obj).and_then(serde_json::from_value::<JitPolicy>) {
            Ok(p) => policies.push(p),
            Err(e) => problems.push(format!("JitPolicy {name} cannot be read: {e}")),
        }
    }
    Ok((policies, problems))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::exposure::parse_port;

    fn policy(yaml: &str) -> JitPolicy {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn vm(cloud: Cloud, id: &str, region: &str) -> ScannedVm {
        ScannedVm {
            cloud,
            id: id.into(),
            name: "n".into(),
            region: region.into(),
            resource_group: None,
            public_ips: Vec::new(),
            open_ports: Vec::new(),
            not_applicable: None,
            note: None,
        }
    }

    const VM_ID: &str =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";

    #[test]
    fn policies_are_indexed_by_the_vms_they_name() {
        let ready = policy(&format!(
            "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {{name: a, namespace: team, generation: 2}}\nspec:\n  targets:\n    - {{name: web, aws: {{region: eu-west-1, instanceId: i-0123456789abcdef0}}}}\n    - {{name: az, azure: {{vmId: {VM_ID}}}}}\n  ports: [{{port: 22, allowedSourcePrefixes: [\"10.0.0.0/8\"], maxDuration: 1h}}]\nstatus:\n  observedGeneration: 2\n  conditions: [{{type: Ready, status: \"True\", reason: Ready, message: ok, lastTransitionTime: \"2026-01-01T00:00:00Z\"}}]\n"
        ));
        let stale = policy(
            "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {name: b, namespace: team, generation: 3}\nspec:\n  targets: [{name: web, aws: {region: eu-west-1, instanceId: i-0123456789abcdef0}}]\n  ports: [{port: 3389, allowedSourcePrefixes: [\"10.0.0.0/8\"], maxDuration: 1h}]\nstatus:\n  observedGeneration: 2\n  conditions: [{type: Ready, status: \"True\", reason: Ready, message: ok, lastTransitionTime: \"2026-01-01T00:00:00Z\"}]\n",
        );
        let broken = policy(
            "apiVersion: jit.portcullis.dev/v1alpha1\nkind: JitPolicy\nmetadata: {name: c, namespace: team}\nspec:\n  targets: [{name: web, aws: {region: eu-west-1, instanceId: i-0123456789abcdef0}}]\n  ports: [{port: 22, allowedSourcePrefixes: [\"10.0.0.1/8\"], maxDuration: 1h}]\n",
        );
        let (g, problems) = Governance::new(&[ready, stale, broken]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("JitPolicy team/c governs nothing"));
        let aws = g.of(&vm(Cloud::Aws, "i-0123456789abcdef0", "eu-west-1"));
        assert_eq!(
            aws,
            &[
                Governing {
                    policy: "team/a".into(),
                    ports: vec![parse_port("22").unwrap()],
                    ready: true
                },
                Governing {
                    policy: "team/b".into(),
                    ports: vec![parse_port("3389").unwrap()],
                    ready: false
                },
            ]
        );
        assert!(
            g.of(&vm(Cloud::Aws, "i-0123456789abcdef0", "us-east-1"))
                .is_empty()
        );
        let az = g.of(&vm(Cloud::Azure, &VM_ID.to_uppercase(), "westus"));
        assert_eq!(az.len(), 1);
        assert_eq!(az[0].policy, "team/a");
    }
}
