//! The requester stamp: who asked, signed by the admission webhook.
//!
//! The webhook writes the API server's `userInfo` into an annotation with an HMAC over
//! the namespace, the identity and the request's spec (without `revoke`). The controller
//! opens nothing whose stamp does not verify, so a request that bypassed the webhook, or
//! that carries a stamp copied from another request, never opens a port.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::{AccessRequestSpec, Requester};

/// The annotation that carries the stamp.
pub const ANNOTATION: &str = "jit.portcullis.dev/requester";

/// The annotation's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRequester {
    /// Who asked.
    #[serde(flatten)]
    pub requester: Requester,
    /// HMAC-SHA256 over namespace, identity and spec, base64url.
    pub signature: String,
}

fn message(namespace: &str, r: &Requester, spec: &AccessRequestSpec) -> Vec<u8> {
    let mut spec = spec.clone();
    spec.revoke = false;
    let spec_json = serde_json::to_vec(&spec).expect("a spec serializes");
    let digest = Sha256::digest(&spec_json);
    let mut m = Vec::new();
    for part in [
        "portcullis-requester-v1",
        namespace,
        &r.username,
        r.uid.as_deref().unwrap_or(""),
        &r.groups.join("\u{1f}"),
    ] {
        m.extend_from_slice(part.as_bytes());
        m.push(0);
    }
    m.extend_from_slice(&digest);
    m
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// Signs a requester for a request in `namespace` with `spec`.
pub fn sign(
    key: &[u8],
    namespace: &str,
    requester: &Requester,
    spec: &AccessRequestSpec,
) -> SignedRequester {
    let mut m = mac(key);
    m.update(&message(namespace, requester, spec));
    SignedRequester {
        requester: requester.clone(),
        signature: URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()),
    }
}

/// Reads and verifies the stamp annotation; the requester when it is genuine.
pub fn verify(
    key: &[u8],
    namespace: &str,
    annotation: Option<&str>,
    spec: &AccessRequestSpec,
) -> Result<Requester, String> {
    let text = annotation.ok_or_else(|| {
        format!("no requester stamp ({ANNOTATION}): requests must be admitted by Portcullis's admission webhook")
    })?;
    let signed: SignedRequester = serde_json::from_str(text)
        .map_err(|e| format!("the requester stamp ({ANNOTATION}) is malformed: {e}"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(&signed.signature)
        .map_err(|_| format!("the requester stamp ({ANNOTATION}) has a malformed signature"))?;
    let mut m = mac(key);
    m.update(&message(namespace, &signed.requester, spec));
    m.verify_slice(&sig)
        .map_err(|_| format!("the requester stamp ({ANNOTATION}) does not verify: it was not written by this Portcullis for this request"))?;
    Ok(signed.requester)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: i32) -> AccessRequestSpec {
        serde_json::from_value(serde_json::json!({
            "policyRef": {"name": "p"}, "target": "web", "justification": "x",
            "ports": [{"port": port, "sourcePrefix": "203.0.113.7/32", "duration": "1m"}]
        }))
        .unwrap()
    }

    fn alice() -> Requester {
        Requester {
            username: "alice".into(),
            uid: Some("u1".into()),
            groups: vec!["devs".into()],
        }
    }

    #[test]
    fn a_stamp_verifies_only_for_its_request() {
        let key = b"k".repeat(32);
        let s = sign(&key, "ns", &alice(), &spec(22));
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(verify(&key, "ns", Some(&text), &spec(22)), Ok(alice()));
        // Revoking does not break the stamp.
        let mut revoked = spec(22);
        revoked.revoke = true;
        assert!(verify(&key, "ns", Some(&text), &revoked).is_ok());
        // Another namespace, another spec, another key, a forged name: refused.
        assert!(verify(&key, "other", Some(&text), &spec(22)).is_err());
        assert!(verify(&key, "ns", Some(&text), &spec(3389)).is_err());
        assert!(verify(&b"x".repeat(32), "ns", Some(&text), &spec(22)).is_err());
        let forged = text.replace("alice", "mallory");
        assert!(verify(&key, "ns", Some(&forged), &spec(22)).is_err());
        assert!(
            verify(&key, "ns", None, &spec(22))
                .unwrap_err()
                .contains("no requester stamp")
        );
    }
}
