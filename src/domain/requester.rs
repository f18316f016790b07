//! The requester stamp: who asked, signed by the admission webhook.
//!
//! The webhook writes the API server's `userInfo` into an annotation with an HMAC over
//! the namespace, the object's name, the moment it signed, the identity and the request's
//! spec (without `revoke`). The controller opens nothing whose stamp does not verify, so a
//! request that bypassed the webhook, or that carries a stamp copied from another request,
//! never opens a port.
//!
//! Why the moment: at mutating admission on CREATE the object has neither `metadata.uid`
//! nor `creationTimestamp` (the API server fills both after the mutating webhooks, before
//! the validating ones), so the stamp cannot name the object's UID. It names the time it
//! was issued instead, and [`verify`] requires the object's `creationTimestamp` — which
//! only the API server sets, and which no update can change — to fall within a few seconds
//! of it. A stamp copied onto a re-created object (same namespace, name and spec) then no
//! longer verifies once that window has passed, and neither does one obtained by posting
//! a hand-made AdmissionReview to the webhook: besides, any CREATE through the API server
//! passes the mutating webhook, which overwrites whatever stamp the object carried.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::{AccessRequestSpec, Requester};

/// The annotation that carries the stamp.
pub const ANNOTATION: &str = "jit.portcullis.dev/requester";

/// How much later than the object's `creationTimestamp` a stamp may have been issued:
/// `creationTimestamp` has whole seconds (rounded down), and the webhook's clock may run
/// a little ahead of the API server's.
pub const ISSUED_AFTER_CREATION: SignedDuration = SignedDuration::from_secs(5);

/// How much later than its stamp an object may have been created: the validating webhooks
/// that run between the stamp and the write, plus clock skew. A stamp outside this window
/// was made for another object.
pub const CREATED_AFTER_ISSUE: SignedDuration = SignedDuration::from_secs(15);

/// The object a stamp is checked against, as the API server stored it.
#[derive(Clone, Copy, Debug)]
pub struct Object<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its `metadata.creationTimestamp` (set by the API server after the stamp).
    pub created: Option<Timestamp>,
}

/// What the object was called when the stamp was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name<'a> {
    /// `metadata.name`.
    Exact(&'a str),
    /// `metadata.generateName`, when the name was left to the API server (it generates the
    /// name after the mutating webhooks).
    Prefix(&'a str),
}

/// The annotation's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedRequester {
    /// Who asked.
    #[serde(flatten)]
    pub requester: Requester,
    /// The object's name when signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The object's `generateName` when it had no name yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    /// When the webhook signed, RFC 3339 in milliseconds, by the webhook's clock.
    #[serde(default)]
    pub issued_at: String,
    /// HMAC-SHA256 over all of the above, the namespace and the spec, base64url.
    pub signature: String,
}

fn message(
    namespace: &str,
    name: Name<'_>,
    issued_at: &str,
    r: &Requester,
    spec: &AccessRequestSpec,
) -> Vec<u8> {
    let mut spec = spec.clone();
    spec.revoke = false;
    let spec_json = serde_json::to_vec(&spec).expect("a spec serializes");
    let digest = Sha256::digest(&spec_json);
    let (name_kind, name) = match name {
        Name::Exact(n) => ("name", n),
        Name::Prefix(p) => ("generateName", p),
    };
    let mut m = Vec::new();
    for part in [
        "portcullis-requester-v2",
        namespace,
        name_kind,
        name,
        issued_at,
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

/// Signs a requester for the request `name` in `namespace` with `spec`, issued at `now`.
pub fn sign(
    key: &[u8],
    namespace: &str,
    name: Name<'_>,
    now: Timestamp,
    requester: &Requester,
    spec: &AccessRequestSpec,
) -> SignedRequester {
    let issued_at = Timestamp::from_millisecond(now.as_millisecond())
        .expect("a current time is in range")
        .to_string();
    let mut m = mac(key);
    m.update(&message(namespace, name, &issued_at, requester, spec));
    let (exact, prefix) = match name {
        Name::Exact(n) => (Some(n.to_string()), None),
        Name::Prefix(p) => (None, Some(p.to_string())),
    };
    SignedRequester {
        requester: requester.clone(),
        name: exact,
        generate_name: prefix,
        issued_at,
        signature: URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()),
    }
}

/// Reads and verifies the stamp annotation of `object`; the requester when it is genuine
/// and was made for this very object (its name, and a `creationTimestamp` within
/// [`CREATED_AFTER_ISSUE`] after the stamp was issued).
pub fn verify(
    key: &[u8],
    object: Object<'_>,
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
    let name = match (&signed.name, &signed.generate_name) {
        (Some(n), None) => Name::Exact(n),
        (None, Some(p)) => Name::Prefix(p),
        _ => {
            return Err(format!(
                "the requester stamp ({ANNOTATION}) does not verify: it names no object, so it was not written by this Portcullis"
            ));
        }
    };
    let mut m = mac(key);
    m.update(&message(
        object.namespace,
        name,
        &signed.issued_at,
        &signed.requester,
        spec,
    ));
    m.verify_slice(&sig)
        .map_err(|_| format!("the requester stamp ({ANNOTATION}) does not verify: it was not written by this Portcullis for this request"))?;
    // Genuine: now check that it was made for this object, not copied from another.
    let named = match name {
        Name::Exact(n) => n == object.name,
        Name::Prefix(p) => object.name.len() > p.len() && object.name.starts_with(p),
    };
    if !named {
        return Err(format!(
            "the requester stamp ({ANNOTATION}) was made for another object (name {:?}), not {:?}",
            signed
                .name
                .as_deref()
                .or(signed.generate_name.as_deref())
                .unwrap_or_default(),
            object.name
        ));
    }
    let issued: Timestamp = signed
        .issued_at
        .parse()
        .map_err(|_| format!("the requester stamp ({ANNOTATION}) has a malformed issuedAt"))?;
    let created = object.created.ok_or_else(|| {
        format!("the requester stamp ({ANNOTATION}) cannot be checked: the object has no creationTimestamp")
    })?;
    let lag = created.duration_since(issued);
    if lag < -ISSUED_AFTER_CREATION || lag > CREATED_AFTER_ISSUE {
        return Err(format!(
            "the requester stamp ({ANNOTATION}) was issued at {issued} for an object created then, \
             but this one was created at {created}: a stamp copied from an earlier request does not carry over"
        ));
    }
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

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn object<'a>(namespace: &'a str, name: &'a str, created: &str) -> Object<'a> {
        Object {
            namespace,
            name,
            created: Some(t(created)),
        }
    }

    const ISSUED: &str = "2025-01-01T10:00:00.700Z";
    const CREATED: &str = "2025-01-01T10:00:00Z"; // the same second, rounded down

    fn stamp(key: &[u8]) -> String {
        let s = sign(key, "ns", Name::Exact("r"), t(ISSUED), &alice(), &spec(22));
        serde_json::to_string(&s).unwrap()
    }

    #[test]
    fn a_stamp_verifies_only_for_its_request() {
        let key = b"k".repeat(32);
        let text = stamp(&key);
        let here = object("ns", "r", CREATED);
        assert_eq!(verify(&key, here, Some(&text), &spec(22)), Ok(alice()));
        // Revoking does not break the stamp.
        let mut revoked = spec(22);
        revoked.revoke = true;
        assert!(verify(&key, here, Some(&text), &revoked).is_ok());
        // Another namespace, another spec, another key, a forged name: refused.
        assert!(verify(&key, object("other", "r", CREATED), Some(&text), &spec(22)).is_err());
        assert!(verify(&key, here, Some(&text), &spec(3389)).is_err());
        assert!(verify(&b"x".repeat(32), here, Some(&text), &spec(22)).is_err());
        let forged = text.replace("alice", "mallory");
        assert!(verify(&key, here, Some(&forged), &spec(22)).is_err());
        // Moving the stamp's time along with a copy breaks the signature.
        let moved = text.replace("10:00:00.7", "10:05:00.7");
        assert!(
            verify(
                &key,
                object("ns", "r", "2025-01-01T10:05:00Z"),
                Some(&moved),
                &spec(22)
            )
            .unwrap_err()
            .contains("does not verify")
        );
        assert!(
            verify(&key, here, None, &spec(22))
                .unwrap_err()
                .contains("no requester stamp")
        );
    }

    #[test]
    fn a_stamp_copied_onto_another_object_does_not_verify() {
        let key = b"k".repeat(32);
        let text = stamp(&key);
        // Same namespace and spec, another name.
        let err = verify(&key, object("ns", "r2", CREATED), Some(&text), &spec(22)).unwrap_err();
        assert!(err.contains("another object"), "{err}");
        // Same name, re-created a minute later.
        let err = verify(
            &key,
            object("ns", "r", "2025-01-01T10:01:00Z"),
            Some(&text),
            &spec(22),
        )
        .unwrap_err();
        assert!(err.contains("does not carry over"), "{err}");
        // Created long before the stamp was issued (a stamp made for a later object).
        assert!(
            verify(
                &key,
                object("ns", "r", "2025-01-01T09:59:00Z"),
                Some(&text),
                &spec(22)
            )
            .is_err()
        );
        // No creation time: nothing to check against.
        let mut none = object("ns", "r", CREATED);
        none.created = None;
        assert!(verify(&key, none, Some(&text), &spec(22)).is_err());
        // The window's edges.
        assert!(
            verify(
                &key,
                object("ns", "r", "2025-01-01T10:00:15Z"),
                Some(&text),
                &spec(22)
            )
            .is_ok()
        );
        assert!(
            verify(
                &key,
                object("ns", "r", "2025-01-01T10:00:16Z"),
                Some(&text),
                &spec(22)
            )
            .is_err()
        );
        assert!(
            verify(
                &key,
                object("ns", "r", "2025-01-01T09:59:56Z"),
                Some(&text),
                &spec(22)
            )
            .is_ok()
        );
        assert!(
            verify(
                &key,
                object("ns", "r", "2025-01-01T09:59:55Z"),
                Some(&text),
                &spec(22)
            )
            .is_err()
        );
        // A stamp from before names and times were signed (v1) does not verify either.
        let v1 = r#"{"username":"alice","uid":"u1","groups":["devs"],"signature":"AAAA"}"#;
        assert!(verify(&key, object("ns", "r", CREATED), Some(v1), &spec(22)).is_err());
    }

    #[test]
    fn a_stamp_for_a_generated_name_binds_its_prefix() {
        let key = b"k".repeat(32);
        let s = sign(
            &key,
            "ns",
            Name::Prefix("ssh-"),
            t(ISSUED),
            &alice(),
            &spec(22),
        );
        let text = serde_json::to_string(&s).unwrap();
        assert!(
            verify(
                &key,
                object("ns", "ssh-x7k2p", CREATED),
                Some(&text),
                &spec(22)
            )
            .is_ok()
        );
        assert!(
            verify(
                &key,
                object("ns", "rdp-x7k2p", CREATED),
                Some(&text),
                &spec(22)
            )
            .is_err()
        );
        assert!(verify(&key, object("ns", "ssh-", CREATED), Some(&text), &spec(22)).is_err());
    }
}
