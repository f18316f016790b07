//! The operator's signed records of targets, kept in the policy's status.
//!
//! A record is written with a JSON patch on a fresh read, guarded by the resourceVersion,
//! so targets record independently and nothing is overwritten from a stale copy; the
//! policy's other status fields (server-side apply, field manager `portcullis`) never
//! touch a record. A target's actor keeps the last record it wrote and reads the server
//! (not the cache) when it starts.

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::convert;
use crate::api::JitPolicy;
use crate::api::policy::TargetRecord as ApiRecord;
use crate::domain::record::{self, Signatures, TargetRecord};
use crate::domain::{ForeignRuleSpec, ObjectKey, validate};

/// What a policy's status says about a target's record.
#[derive(Clone, Debug, PartialEq)]
pub enum Read {
    /// No record.
    None,
    /// The operator's record, and entries someone slipped into it (ignored, reported).
    Valid(TargetRecord, Vec<ForeignRuleSpec>),
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
    let (r, signatures) = from_api(target, entry);
    let uid = policy.uid().unwrap_or_default();
    match record::verify(key, &uid, &policy_key(policy), &r, &signatures) {
        Some((good, bad)) => Read::Valid(good, bad),
        None => Read::Rejected(format!(
            "the record of target {target:?} in the status does not carry this operator's signature: it was written or changed by someone else and is ignored"
        )),
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

/// Writes the record of `target` (signed), or drops it (`None`; a target no longer in the
/// spec loses its whole status entry). A JSON patch on a fresh read, guarded by the
/// resourceVersion and the entry's name, so a concurrent change is never overwritten: on
/// a conflict it reads again and retries.
pub async fn write(
    api: &Api<JitPolicy>,
    key: &[u8],
    policy: &JitPolicy,
    target: &str,
    record: Option<&TargetRecord>,
) -> Result<(), kube::Error> {
    let uid = policy.uid().unwrap_or_default();
    let value = record.map(|r| {
        let (r, signatures) = record::sign(key, &uid, &policy_key(policy), r);
        serde_json::to_value(to_api(&r, signatures)).expect("a record serializes")
    });
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(fresh) = api.get_opt(&policy.name_any()).await? else {
            return Ok(());
        };
        if fresh.uid().as_deref() != Some(uid.as_str()) {
            // Re-created meanwhile: this record was not for it.
            return Ok(());
        }
        let in_spec = fresh.spec.targets.iter().any(|t| t.name == target);
        let ops = patch_ops(&fresh, target, value.as_ref(), in_spec);
        if ops.is_empty() {
            return Ok(());
        }
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::Value::Array(ops)).expect("a valid JSON patch");
        match api
            .patch_status(
                &policy.name_any(),
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await
        {
            Ok(_) => return Ok(()),
            // The object changed between the read and the patch: read again.
            Err(kube::Error::Api(e)) if (e.code == 409 || e.code == 422) && attempt < 5 => {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The JSON patch operations that put `value` as the record of `target` (or drop it).
fn patch_ops(
    fresh: &JitPolicy,
    target: &str,
    value: Option<&serde_json::Value>,
    in_spec: bool,
) -> Vec<serde_json::Value> {
    let rv = fresh.resource_version().unwrap_or_default();
    let guard = json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv});
    let targets = fresh.status.as_ref().map(|s| &s.targets);
    let index = targets.and_then(|t| t.iter().position(|x| x.name == target));
    match (index, value) {
        (Some(i), Some(v)) => vec![
            guard,
            json!({"op": "test", "path": format!("/status/targets/{i}/name"), "value": target}),
            json!({"op": "add", "path": format!("/status/targets/{i}/record"), "value": v}),
        ],
        (Some(i), None) => {
            let has_record = targets.is_some_and(|t| t[i].record.is_some());
            let path = if in_spec {
                format!("/status/targets/{i}/record")
            } else {
                format!("/status/targets/{i}")
            };
            if in_spec && !has_record {
                return Vec::new();
            }
            vec![
                guard,
                json!({"op": "test", "path": format!("/status/targets/{i}/name"), "value": target}),
                json!({"op": "remove", "path": path}),
            ]
        }
        (None, Some(v)) => {
            let entry = json!({"name": target, "record": v});
            match fresh.status.as_ref() {
                None => vec![
                    guard,
                    json!({"op": "add", "path": "/status", "value": {"targets": [entry]}}),
                ],
                Some(s) if s.targets.is_empty() => vec![
                    guard,
                    json!({"op": "add", "path": "/status/targets", "value": [entry]}),
                ],
                Some(_) => vec![
                    guard,
                    json!({"op": "add", "path": "/status/targets/-", "value": entry}),
                ],
            }
        }
        (None, None) => Vec::new(),
    }
}

fn policy_key(policy: &JitPolicy) -> ObjectKey {
    ObjectKey::new(policy.namespace().unwrap_or_default(), policy.name_any())
}

fn from_api(target: &str, r: &ApiRecord) -> (TargetRecord, Signatures) {
    (
        TargetRecord {
            target: target.to_string(),
            locator: validate::locator(&r.cloud),
            containers: r.nsg_ids.clone(),
            revoked: r
                .revoked_rules
                .iter()
                .map(convert::revoked_from_api)
                .collect(),
        },
        Signatures {
            record: r.signature.clone(),
            revoked: r
                .revoked_rules
                .iter()
                .map(|x| x.signature.clone().unwrap_or_default())
                .collect(),
        },
    )
}

fn to_api(r: &TargetRecord, signatures: Signatures) -> ApiRecord {
    ApiRecord {
        cloud: convert::cloud_of(&r.locator),
        nsg_ids: r.containers.clone(),
        revoked_rules: r
            .revoked
            .iter()
            .zip(signatures.revoked)
            .map(|(s, sig)| {
                let mut rule = convert::revoked_to_api(s);
                rule.signature = Some(sig);
                rule
            })
            .collect(),
        signature: signatures.record,
    }
}
