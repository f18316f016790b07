//! The operator's signed memory of a target: where it lives, which NSGs it wrote to, and
//! which foreign rules the AWS baseline revoked.
//!
//! It is kept in the policy's status so people can read it, and signed with the
//! operator's key so that nobody else can have written it: the status is writable by
//! anyone with rights on `jitpolicies/status`, and a forged record could otherwise make
//! the operator "restore" a rule that opens a port to the world, or clean up a VM that is
//! not the target's. A record that does not verify is ignored and reported.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::model::{ForeignRuleSpec, ForeignSource, Locator, ObjectKey};

/// What the operator remembers about one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRecord {
    /// The target's name in the policy.
    pub target: String,
    /// Where it lives, as the operator first touched it.
    pub locator: Locator,
    /// Azure: the NSGs the operator wrote to for this target.
    pub containers: Vec<String>,
    /// AWS: the foreign rules the baseline revoked.
    pub revoked: Vec<ForeignRuleSpec>,
}

impl TargetRecord {
    /// A record of a target the operator is about to touch for the first time.
    pub fn new(target: &str, locator: &Locator) -> Self {
        TargetRecord {
            target: target.to_string(),
            locator: locator.clone(),
            containers: Vec::new(),
            revoked: Vec::new(),
        }
    }

    /// Whether it holds anything that must be undone besides owned rules.
    pub fn holds_revocations(&self) -> bool {
        !self.revoked.is_empty()
    }

    /// The same record in canonical order (signatures do not depend on order).
    pub fn normalized(mut self) -> Self {
        self.containers.sort();
        self.containers.dedup();
        self.revoked.sort();
        self.revoked.dedup();
        self
    }
}

/// Signs a record of a target of the policy `policy` whose object has uid `policy_uid`
/// (a re-created policy of the same name does not inherit it).
pub fn sign(key: &[u8], policy_uid: &str, policy: &ObjectKey, record: &TargetRecord) -> String {
    let mut m = mac(key);
    m.update(&message(policy_uid, policy, record));
    URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
}

/// Whether `signature` is the operator's for this record.
pub fn verify(
    key: &[u8],
    policy_uid: &str,
    policy: &ObjectKey,
    record: &TargetRecord,
    signature: &str,
) -> bool {
    let Ok(sig) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let mut m = mac(key);
    m.update(&message(policy_uid, policy, record));
    m.verify_slice(&sig).is_ok()
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // A key of its own, derived from the operator's key: a requester stamp can never
    // pass for a record or the other way round.
    let mut derive =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    derive.update(b"portcullis-target-record-v1");
    let derived = derive.finalize().into_bytes();
    <Hmac<Sha256> as KeyInit>::new_from_slice(&derived).expect("HMAC takes keys of any length")
}

/// The signed bytes: every field, each followed by a separator that cannot appear in it
/// unescaped (fields are length-prefixed).
fn message(policy_uid: &str, policy: &ObjectKey, record: &TargetRecord) -> Vec<u8> {
    let r = record.clone().normalized();
    let mut m = Vec::new();
    let mut put = |field: &str| {
        m.extend_from_slice(&(field.len() as u64).to_be_bytes());
        m.extend_from_slice(field.as_bytes());
    };
    put(policy_uid);
    put(&policy.namespace);
    put(&policy.name);
    put(&r.target);
    match &r.locator {
        Locator::Aws {
            region,
            instance_id,
        } => {
            put("aws");
            put(region);
            put(instance_id);
        }
        Locator::Azure { vm_id, firewall } => {
            put("azure");
            put(vm_id);
            put(firewall.as_ref().map_or("", |f| f.0.as_str()));
            put(firewall.as_ref().map_or("", |f| f.1.as_str()));
        }
    }
    put(&r.containers.len().to_string());
    for c in &r.containers {
        put(c);
    }
    put(&r.revoked.len().to_string());
    for s in &r.revoked {
        put(&s.container);
        put(&s.protocol);
        put(&s.ports.map_or("-".into(), |(a, b)| format!("{a}-{b}")));
        let (kind, value) = match &s.source {
            ForeignSource::Cidr(v) => ("cidr", v),
            ForeignSource::Group(v) => ("group", v),
            ForeignSource::PrefixList(v) => ("prefix-list", v),
            ForeignSource::Tag(v) => ("tag", v),
        };
        put(kind);
        put(value);
        put(s.description.as_deref().unwrap_or("\u{0}none"));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TargetRecord {
        TargetRecord {
            target: "web".into(),
            locator: Locator::Aws {
                region: "eu-west-1".into(),
                instance_id: "i-0123".into(),
            },
            containers: vec![],
            revoked: vec![ForeignRuleSpec {
                container: "sg-1".into(),
                protocol: "tcp".into(),
                ports: Some((22, 22)),
                source: ForeignSource::Cidr("10.0.0.0/8".into()),
                description: Some("office".into()),
            }],
        }
    }

    #[test]
    fn only_the_operators_own_record_verifies() {
        let key = b"k".repeat(32);
        let p = ObjectKey::new("ns", "p");
        let sig = sign(&key, "uid-1", &p, &record());
        assert!(verify(&key, "uid-1", &p, &record(), &sig));
        // Another policy object, another policy, another key: refused.
        assert!(!verify(&key, "uid-2", &p, &record(), &sig));
        assert!(!verify(&key, "uid-1", &ObjectKey::new("ns", "q"), &record(), &sig));
        assert!(!verify(&b"x".repeat(32), "uid-1", &p, &record(), &sig));
        // A rule that opens 3306 to the world slipped in: refused.
        let mut forged = record();
        forged.revoked.push(ForeignRuleSpec {
            container: "sg-9".into(),
            protocol: "tcp".into(),
            ports: Some((3306, 3306)),
            source: ForeignSource::Cidr("0.0.0.0/0".into()),
            description: None,
        });
        assert!(!verify(&key, "uid-1", &p, &forged, &sig));
        // Moved to another VM: refused.
        let mut moved = record();
        moved.locator = Locator::Aws {
            region: "eu-west-1".into(),
            instance_id: "i-9999".into(),
        };
        assert!(!verify(&key, "uid-1", &p, &moved, &sig));
        // The order of entries does not matter.
        let mut reordered = record();
        reordered.revoked.insert(0, forged.revoked[1].clone());
        let sig2 = sign(&key, "uid-1", &p, &reordered);
        reordered.revoked.reverse();
        assert!(verify(&key, "uid-1", &p, &reordered, &sig2));
        assert!(!verify(&key, "uid-1", &p, &record(), "not base64!"));
    }
}
