//! The admission decisions for AccessRequest and JitPolicy.

use std::collections::BTreeMap;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use tracing::{info, warn};

use crate::api::{AccessRequestSpec, GROUP, JitPolicy, JitPolicySpec, Requester};
use crate::domain::requester::{self, ANNOTATION};
use crate::domain::{ObjectKey, validate};

/// What the handlers need.
pub struct Admission {
    /// For SubjectAccessReviews and policy lookups.
    pub client: kube::Client,
    /// Signs requester stamps.
    pub stamp_key: Vec<u8>,
}

/// The RBAC verb that lets a user request access through a policy.
pub const VERB: &str = "request";

fn spec_of<T: serde::de::DeserializeOwned>(obj: &DynamicObject) -> Result<T, String> {
    let spec = obj.data.get("spec").cloned().unwrap_or_default();
    serde_json::from_value(spec).map_err(|e| format!("spec: {e}"))
}

impl Admission {
    /// Mutating: stamps the requester from `userInfo`; on update keeps the original stamp.
    pub fn stamp(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let resp = AdmissionResponse::from(req);
        let Some(obj) = &req.object else {
            return resp;
        };
        let ns = req.namespace.clone().unwrap_or_default();
        let value = match req.operation {
            Operation::Create => {
                // A spec that does not parse gets no stamp: the schema check after this
                // webhook refuses it with a message naming the field.
                let Ok(spec) = spec_of::<AccessRequestSpec>(obj) else {
                    return resp;
                };
                if let Err(message) = sent_by_the_api_server(req, obj) {
                    return resp.deny(message);
                }
                let u = &req.user_info;
                let who = Requester {
                    username: u.username.clone().unwrap_or_default(),
                    uid: u.uid.clone().filter(|s| !s.is_empty()),
                    groups: u.groups.clone().unwrap_or_default(),
                };
                // The API server names a generateName'd object only after this webhook.
                let name = match (&obj.metadata.name, &obj.metadata.generate_name) {
                    (Some(n), _) if !n.is_empty() => requester::Name::Exact(n),
                    (_, Some(p)) if !p.is_empty() => requester::Name::Prefix(p),
                    _ => {
                        return resp.deny(
                            "metadata.name: an AccessRequest needs a name or a generateName",
                        );
                    }
                };
                // The time comes from this process, never from the review.
                let signed = requester::sign(
                    &self.stamp_key,
                    &ns,
                    name,
                    jiff::Timestamp::now(),
                    &who,
                    &spec,
                );
                serde_json::to_string(&signed).expect("a stamp serializes")
            }
            Operation::Update => {
                // The stamp cannot change: whatever the update says, the old one stays.
                match req
                    .old_object
                    .as_ref()
                    .and_then(|o| o.metadata.annotations.as_ref())
                    .and_then(|a| a.get(ANNOTATION))
                {
                    Some(v) => v.clone(),
                    None => return remove_stamp(resp, obj),
                }
            }
            _ => return resp,
        };
        let unchanged = obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
            == Some(&value);
        let mut ops = Vec::new();
        if !unchanged {
            ops.push(if obj.metadata.annotations.is_none() {
                serde_json::json!({"op": "add", "path": "/metadata/annotations", "value": {ANNOTATION: value}})
            } else {
                serde_json::json!({"op": "add", "path": format!("/metadata/annotations/{}", ANNOTATION.replace('~', "~0").replace('/', "~1")), "value": value})
            });
        }
        // The finalizer comes with the request, so that the run that opens its port
        // need not add it first (a write to the API server per opening request).
        if req.operation == Operation::Create {
            ops.extend(finalizer_op(obj));
        }
        if ops.is_empty() {
            return resp;
        }
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::Value::Array(ops)).expect("a valid JSON patch");
        match resp.clone().with_patch(patch) {
            Ok(r) => r,
            Err(e) => resp.deny(format!("cannot stamp the requester: {e}")),
        }
    }

    /// Validating: the user may `request` through the policy, and the request fits it.
    pub async fn validate_request(
        &self,
        req: &AdmissionRequest<DynamicObject>,
    ) -> AdmissionResponse {
        let resp = AdmissionResponse::from(req);
        let Some(obj) = &req.object else {
            return resp;
        };
        let ns = req.namespace.clone().unwrap_or_default();
        let spec: AccessRequestSpec = match spec_of(obj) {
            Ok(s) => s,
            Err(e) => return resp.deny(e),
        };
        if req.operation == Operation::Update {
            let Some(old) = &req.old_object else {
                return resp;
            };
            let Ok(mut old_spec) = spec_of::<AccessRequestSpec>(old) else {
                return resp;
            };
            old_spec.revoke = spec.revoke;
            if old_spec != spec {
                return resp.deny("spec: an AccessRequest cannot be changed once filed, except spec.revoke; file a new request");
            }
            if !spec.revoke && old_spec.revoke {
                return resp
                    .deny("spec.revoke: a revoked request cannot be reopened; file a new request");
            }
            return resp;
        }
        if req.operation != Operation::Create {
            return resp;
        }
        // The object now has the creationTimestamp the API server gave it: the stamp the
        // mutating webhook made must fit it, or the controller would refuse it later.
        let name = obj.metadata.name.clone().unwrap_or_default();
        let stamped = requester::Object {
            namespace: &ns,
            name: &name,
            created: obj.metadata.creation_timestamp.as_ref().map(|t| t.0),
        };
        let annotation = obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
            .map(String::as_str);
        if let Err(message) = requester::verify(&self.stamp_key, stamped, annotation, &spec) {
            return resp.deny(format!("metadata.annotations[{ANNOTATION}]: {message}"));
        }

        // Authorization first: who may not ask learns nothing about the policy.
        let u = &req.user_info;
        let username = u.username.clone().unwrap_or_default();
        let policy = spec.policy_ref.name.clone();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: u.username.clone(),
                uid: u.uid.clone(),
                groups: u.groups.clone(),
                extra: u
                    .extra
                    .clone()
                    .map(|e| e.into_iter().collect::<BTreeMap<_, _>>()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns.clone()),
                    verb: Some(VERB.into()),
                    group: Some(GROUP.into()),
                    resource: Some("jitpolicies".into()),
                    name: Some(policy.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let sars: Api<SubjectAccessReview> = Api::all(self.client.clone());
        match sars.create(&PostParams::default(), &sar).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => {
                info!(user = %username, %ns, %policy, "request denied: missing RBAC verb");
                return resp.deny(format!(
                    "spec.policyRef.name: user {username:?} may not request access through JitPolicy {policy:?}: \
                     it needs the RBAC verb {VERB:?} on resource jitpolicies (group {GROUP}), name {policy:?}, in namespace {ns:?}"
                ));
            }
            Err(e) => {
                warn!(error = %e, "SubjectAccessReview failed");
                return resp.deny(format!(
                    "cannot check authorization (SubjectAccessReview failed): {e}"
                ));
            }
        }

        let policies: Api<JitPolicy> = Api::namespaced(self.client.clone(), &ns);
        let mut addresses = Vec::new();
        let parsed_policy = match policies.get_opt(&policy).await {
            Ok(Some(p)) => match validate::policy(ObjectKey::new(&ns, &policy), &p.spec, false) {
                Ok(parsed) => {
                    addresses = azure_addresses(&p, &spec.target);
                    Some(parsed)
                }
                Err(e) => {
                    return resp.deny(format!(
                        "spec.policyRef.name: JitPolicy {policy:?} is invalid: {}",
                        validate::join(&e)
                    ));
                }
            },
            Ok(None) => None,
            Err(e) => return resp.deny(format!("cannot read JitPolicy {policy:?}: {e}")),
        };
        match validate::request(
            ObjectKey::new(&ns, name),
            &spec,
            parsed_policy.as_ref(),
            jiff::Timestamp::now(),
            false,
            Default::default(),
        ) {
            Ok(_) => match validate::sources_fit_addresses(&spec, &spec.target, &addresses) {
                Ok(()) => resp,
                Err(errors) => resp.deny(validate::join(&errors)),
            },
            Err(errors) => resp.deny(validate::join(&errors)),
        }
    }

    /// Validating: a policy is well formed beyond what the schema checks.
    pub fn validate_policy(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let resp = AdmissionResponse::from(req);
        let Some(obj) = &req.object else {
            return resp;
        };
        if !matches!(req.operation, Operation::Create | Operation::Update) {
            return resp;
        }
        let spec: JitPolicySpec = match spec_of(obj) {
            Ok(s) => s,
            Err(e) => return resp.deny(e),
        };
        let key = ObjectKey::new(
            req.namespace.clone().unwrap_or_default(),
            obj.metadata.name.clone().unwrap_or_default(),
        );
        match validate::policy(key, &spec, false) {
            Ok(_) => resp,
            Err(errors) => resp.deny(validate::join(&errors)),
        }
    }
}

/// The private addresses the operator resolved for an Azure target of `policy` (the
/// status is only a hint here: the controller checks again against what it resolves).
fn azure_addresses(policy: &JitPolicy, target: &str) -> Vec<std::net::IpAddr> {
    let azure = policy
        .spec
        .targets
        .iter()
        .any(|t| t.name == target && matches!(t.cloud, crate::api::TargetCloud::Azure(_)));
    if !azure {
        return Vec::new();
    }
    policy
        .status
        .iter()
        .flat_map(|s| s.targets.iter())
        .filter(|t| t.name == target)
        .flat_map(|t| t.private_ips.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

/// Refuses a review that the API server would not send for an AccessRequest CREATE: the
/// stamp endpoint signs only AccessRequests, with the namespace and name the review gives.
fn sent_by_the_api_server(
    req: &AdmissionRequest<DynamicObject>,
    obj: &DynamicObject,
) -> Result<(), String> {
    let r = &req.resource;
    if r.group != GROUP || r.resource != "accessrequests" || req.sub_resource.is_some() {
        return Err(format!(
            "this webhook stamps {GROUP}/accessrequests only, not {}/{}",
            r.group, r.resource
        ));
    }
    let ns = req.namespace.as_deref().unwrap_or_default();
    if ns.is_empty() || obj.metadata.namespace.as_deref().is_some_and(|o| o != ns) {
        return Err("metadata.namespace: does not match the request's namespace".into());
    }
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    if name != req.name {
        return Err("metadata.name: does not match the request's name".into());
    }
    Ok(())
}

/// The patch operation that adds the operator's finalizer, unless the object has it.
fn finalizer_op(obj: &DynamicObject) -> Option<serde_json::Value> {
    let finalizer = crate::controller::FINALIZER;
    match &obj.metadata.finalizers {
        None => Some(
            serde_json::json!({"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}),
        ),
        Some(f) if f.iter().any(|x| x == finalizer) => None,
        Some(_) => Some(
            serde_json::json!({"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}),
        ),
    }
}

/// An update that tries to add a stamp the object never had: drop it.
fn remove_stamp(resp: AdmissionResponse, obj: &DynamicObject) -> AdmissionResponse {
    let has = obj
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION));
    if !has {
        return resp;
    }
    let path = format!(
        "/metadata/annotations/{}",
        ANNOTATION.replace('~', "~0").replace('/', "~1")
    );
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::json!([{"op": "remove", "path": path}]))
            .expect("a valid JSON patch");
    resp.clone().with_patch(patch).unwrap_or(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A review as the API server sends it for an AccessRequest CREATE by alice.
    fn review(object: serde_json::Value) -> serde_json::Value {
        let name = object["metadata"]["name"].clone();
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "kind": {"group": GROUP, "version": "v1alpha1", "kind": "AccessRequest"},
                "resource": {"group": GROUP, "version": "v1alpha1", "resource": "accessrequests"},
                "name": name.as_str().unwrap_or_default(),
                "namespace": "ns",
                "operation": "CREATE",
                "userInfo": {"username": "alice", "uid": "uid-alice", "groups": ["devs"]},
                "object": object,
                "dryRun": false
            }
        })
    }

    fn request(metadata: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "jit.portcullis.dev/v1alpha1",
            "kind": "AccessRequest",
            "metadata": metadata,
            "spec": {
                "policyRef": {"name": "jit"}, "target": "web", "justification": "x",
                "ports": [{"port": 22, "sourcePrefix": "203.0.113.7/32", "duration": "10m"}]
            }
        })
    }

    fn admission() -> Admission {
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        Admission {
            client: kube::Client::try_from(config).unwrap(),
            stamp_key: b"k".repeat(32),
        }
    }

    fn stamp_of(review: serde_json::Value) -> AdmissionResponse {
        let review: kube::core::admission::AdmissionReview<DynamicObject> =
            serde_json::from_value(review).unwrap();
        admission().stamp(&review.try_into().unwrap())
    }

    fn signed(resp: &AdmissionResponse) -> requester::SignedRequester {
        let patch: serde_json::Value =
            serde_json::from_slice(resp.patch.as_ref().expect("a patch")).unwrap();
        let value = &patch[0]["value"];
        let text = value
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value[ANNOTATION].as_str().unwrap().to_string());
        serde_json::from_str(&text).unwrap()
    }

    #[tokio::test]
    async fn the_stamp_names_the_object_and_its_user() {
        let resp = stamp_of(review(request(
            serde_json::json!({"name": "r", "namespace": "ns"}),
        )));
        assert!(resp.allowed, "{}", resp.result.message);
        let s = signed(&resp);
        assert_eq!(s.requester.username, "alice");
        assert_eq!(s.name.as_deref(), Some("r"));
        assert!(s.issued_at.parse::<jiff::Timestamp>().is_ok());

        // A generateName'd request has no name yet: the stamp binds the prefix.
        let resp = stamp_of(review(request(
            serde_json::json!({"generateName": "ssh-", "namespace": "ns"}),
        )));
        let s = signed(&resp);
        assert_eq!((s.name, s.generate_name.as_deref()), (None, Some("ssh-")));
    }

    #[tokio::test]
    async fn the_stamp_endpoint_signs_only_what_the_api_server_would_send() {
        // Another resource.
        let mut r = review(request(serde_json::json!({"name": "r"})));
        r["request"]["resource"]["resource"] = "jitpolicies".into();
        assert!(!stamp_of(r).allowed);
        // A name or namespace in the object that the review does not give.
        let mut r = review(request(serde_json::json!({"name": "r"})));
        r["request"]["name"] = "other".into();
        assert!(!stamp_of(r).allowed);
        let r = review(request(
            serde_json::json!({"name": "r", "namespace": "elsewhere"}),
        ));
        assert!(!stamp_of(r).allowed);
        // Neither a name nor a generateName.
        let r = review(request(serde_json::json!({"namespace": "ns"})));
        let resp = stamp_of(r);
        assert!(!resp.allowed && resp.result.message.contains("metadata.name"));
    }

    /// The patch's operations on `/metadata/finalizers`.
    fn finalizer_ops(resp: &AdmissionResponse) -> Vec<serde_json::Value> {
        let patch: serde_json::Value =
            serde_json::from_slice(resp.patch.as_ref().expect("a patch")).unwrap();
        patch
            .as_array()
            .unwrap()
            .iter()
            .filter(|op| {
                op["path"]
                    .as_str()
                    .unwrap()
                    .starts_with("/metadata/finalizers")
            })
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn a_new_request_comes_with_the_finalizer() {
        let f = crate::controller::FINALIZER;
        let resp = stamp_of(review(request(
            serde_json::json!({"name": "r", "namespace": "ns"}),
        )));
        assert_eq!(
            finalizer_ops(&resp),
            vec![serde_json::json!({"op": "add", "path": "/metadata/finalizers", "value": [f]})]
        );
        // Beside the user's own finalizers; once only.
        let resp = stamp_of(review(request(
            serde_json::json!({"name": "r", "namespace": "ns", "finalizers": ["example.com/keep"]}),
        )));
        assert_eq!(
            finalizer_ops(&resp),
            vec![serde_json::json!({"op": "add", "path": "/metadata/finalizers/-", "value": f})]
        );
        let resp = stamp_of(review(request(
            serde_json::json!({"name": "r", "namespace": "ns", "finalizers": [f]}),
        )));
        assert!(finalizer_ops(&resp).is_empty());
    }
}
