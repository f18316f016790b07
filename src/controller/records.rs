//! The operator's signed records of targets, kept in the policy's status.
//!
//! Each target's record is written by a field manager of its own
//! (`portcullis-record-<hash>`), so targets record independently and the policy's other
//! status fields (field manager `portcullis`) never overwrite a record. A target's actor
//! keeps the last record it wrote and reads the server (not the cache) when it starts, so a
//! record is never overwritten from a stale copy.

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::convert;
use crate::api::JitPolicy;
use crate::api::policy::TargetRecord as ApiRecord;
use crate::domain::record::{self, TargetRecord};
use crate::domain::stamp::short_hash;
use crate::domain::{ObjectKey, validate};

/// The field manager that writes the record of `target`.
pub fn manager(target: &str) -> String {
    format!("portcullis-record-{}", short_hash(target))
}

/// What a policy's status says about a target's record.
#[derive(Clone, Debug, PartialEq)]
pub enum Read {
    /// No record.
    None,
    /// A record the operator wrote.
    Valid(TargetRecord),
    /// A record that does not verify: ignored, reported.
    Rejected(String),
}

/// Reads and verifies the record of `target` in `policy`'s status.
pub fn read(key: &[u8], policy: &JitPolicy, target: &str) -> Read {
    let Some(entry) = policy
        .status
        .as_ref()
        .and_then(|s| s.targets.iter().find(|t| t.name == target))
        .and_then(|t| t.record.as_ref())
    else {
        return Read::None;
    };
    let r = from_api(target, entry);
    let uid = policy.uid().unwrap_or_default();
    if record::verify(key, &uid, &policy_key(policy), &r, &entry.signature) {
        Read::Valid(r)
    } else {
        Read::Rejected(format!(
            "the record of target {target:?} in the status does not carry this operator's signature: it was written or changed by someone else and is ignored"
        ))
    }
}

/// The names of targets with a record in the status (verified or not).
pub fn recorded_targets(policy: &JitPolicy) -> Vec<String> {
    policy
        .status
        .iter()
        .flat_map(|s| s.targets.iter())
        .filter(|t| t.record.is_some())
        .map(|t| t.name.clone())
        .collect()
}

/// Writes the record of `target` (signed), or drops it (`None`).
pub async fn write(
    api: &Api<JitPolicy>,
    key: &[u8],
    policy: &JitPolicy,
    target: &str,
    record: Option<&TargetRecord>,
) -> Result<(), kube::Error> {
    let uid = policy.uid().unwrap_or_default();
    let status = match record {
        Some(r) => {
            let r = r.clone().normalized();
            let signature = record::sign(key, &uid, &policy_key(policy), &r);
            json!({"targets": [{"name": target, "record": to_api(&r, signature)}]})
        }
        // Applying nothing releases (and so removes) what this manager wrote.
        None => json!({}),
    };
    let patch = json!({
        "apiVersion": "jit.portcullis.dev/v1alpha1",
        "kind": "JitPolicy",
        // The uid makes the write fail on a policy re-created with the same name.
        "metadata": {"name": policy.name_any(), "uid": uid},
        "status": status,
    });
    api.patch_status(
        &policy.name_any(),
        &PatchParams::apply(&manager(target)).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn policy_key(policy: &JitPolicy) -> ObjectKey {
    ObjectKey::new(policy.namespace().unwrap_or_default(), policy.name_any())
}

fn from_api(target: &str, r: &ApiRecord) -> TargetRecord {
    TargetRecord {
        target: target.to_string(),
        locator: validate::locator(&r.cloud),
        containers: r.nsg_ids.clone(),
        revoked: r.revoked_rules.iter().map(convert::revoked_from_api).collect(),
    }
}

fn to_api(r: &TargetRecord, signature: String) -> ApiRecord {
    ApiRecord {
        cloud: convert::cloud_of(&r.locator),
        nsg_ids: r.containers.clone(),
        revoked_rules: r.revoked.iter().map(convert::revoked_to_api).collect(),
        signature,
    }
}
