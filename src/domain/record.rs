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

/// A record's signatures: one over where the target lives (and the NSGs written to),
/// and one per revoked rule, so that an entry someone slipped in fails alone while the
/// operator's own entries stay good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signatures {
    /// Over the policy, the target, its locator and the containers.
    pub record: String,
    /// Per revoked rule (same order as [`TargetRecord::revoked`] after
    /// [`TargetRecord::normalized`]).
    pub revoked: Vec<String>,
}

/// Signs a record of a target of the policy `policy` whose object has uid `policy_uid`
/// (a re-created policy of the same name does not inherit it). The record is normalized.
pub fn sign(
    key: &[u8],
    policy_uid: &str,
    policy: &ObjectKey,
    record: &TargetRecord,
) -> (TargetRecord, Signatures) {
    let r = record.clone().normalized();
    let signatures = Signatures {
        record: tag(key, &head(policy_uid, policy, &r)),
        revoked: r
            .revoked
            .iter()
            .map(|s| tag(key, &rule(policy_uid, policy, &r, s)))
            .collect(),
    };
    (r, signatures)
}

/// What of a signed record verifies: the record with only the revoked rules whose
/// signatures verify, and the rules that did not. `None` when the record's own signature
/// does not verify (someone else wrote or moved it).
pub fn verify(
    key: &[u8],
    policy_uid: &str,
    policy: &ObjectKey,
    record: &TargetRecord,
    signatures: &Signatures,
) -> Option<(TargetRecord, Vec<ForeignRuleSpec>)> {
    let base = TargetRecord {
        revoked: Vec::new(),
        ..record.clone()
    }
    .normalized();
    if !check(key, &head(policy_uid, policy, &base), &signatures.record) {
        return None;
    }
    let mut good = base.clone();
    let mut bad = Vec::new();
    for (i, s) in record.revoked.iter().enumerate() {
        let sig = signatures.revoked.get(i).map(String::as_str).unwrap_or("");
        if check(key, &rule(policy_uid, policy, &base, s), sig) {
            good.revoked.push(s.clone());
        } else {
            bad.push(s.clone());
        }
    }
    Some((good.normalized(), bad))
}

fn tag(key: &[u8], message: &[u8]) -> String {
    let mut m = mac(key);
    m.update(message);
    URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
}

fn check(key: &[u8], message: &[u8], signature: &str) -> bool {
    let Ok(sig) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let mut m = mac(key);
    m.update(message);
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

/// Length-prefixes each field, so no two different records give the same bytes.
fn put(m: &mut Vec<u8>, field: &str) {
    m.extend_from_slice(&(field.len() as u64).to_be_bytes());
    m.extend_from_slice(field.as_bytes());
}

/// The signed bytes of where a target lives: policy, target, locator, containers.
fn head(policy_uid: &str, policy: &ObjectKey, r: &TargetRecord) -> Vec<u8> {
    let mut m = Vec::new();
    put(&mut m, "record");
    put(&mut m, policy_uid);
    put(&mut m, &policy.namespace);
    put(&mut m, &policy.name);
    put(&mut m, &r.target);
    match &r.locator {
        Locator::Aws {
            region,
            instance_id,
        } => {
            put(&mut m, "aws");
            put(&mut m, region);
            put(&mut m, instance_id);
        }
        Locator::Azure { vm_id, firewall } => {
            put(&mut m, "azure");
            put(&mut m, vm_id);
            put(&mut m, firewall.as_ref().map_or("", |f| f.0.as_str()));
            put(&mut m, firewall.as_ref().map_or("", |f| f.1.as_str()));
        }
    }
    put(&mut m, &r.containers.len().to_string());
    for c in &r.containers {
        put(&mut m, c);
    }
    m
}

/// The signed bytes of one revoked rule of a target: bound to the policy, the target
/// and where it lives, so it cannot be moved to another.
fn rule(policy_uid: &str, policy: &ObjectKey, r: &TargetRecord, s: &ForeignRuleSpec) -> Vec<u8> {
    let base = TargetRecord {
        containers: Vec::new(),
        revoked: Vec::new(),
        ..r.clone()
    };
    let mut m = head(policy_uid, policy, &base);
    put(&mut m, "revoked");
    put(&mut m, &s.container);
    put(&mut m, &s.protocol);
    put(
        &mut m,
        &s.ports.map_or("-".into(), |(a, b)| format!("{a}-{b}")),
    );
    let (kind, value) = match &s.source {
        ForeignSource::Cidr(v) => ("cidr", v),
        ForeignSource::Group(v) => ("group", v),
        ForeignSource::PrefixList(v) => ("prefix-list", v),
        ForeignSource::Tag(v) => ("tag", v),
    };
    put(&mut m, kind);
    put(&mut m, value);
    put(&mut m, s.description.as_deref().unwrap_or("\u{0}none"));
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
        let (r, sigs) = sign(&key, "uid-1", &p, &record());
        assert_eq!(
            verify(&key, "uid-1", &p, &r, &sigs),
            Some((record(), vec![]))
        );
        // Another policy object, another policy, another key: refused.
        assert_eq!(verify(&key, "uid-2", &p, &r, &sigs), None);
        assert_eq!(
            verify(&key, "uid-1", &ObjectKey::new("ns", "q"), &r, &sigs),
            None
        );
        assert_eq!(verify(&b"x".repeat(32), "uid-1", &p, &r, &sigs), None);
        // Moved to another VM: refused.
        let mut moved = r.clone();
        moved.locator = Locator::Aws {
            region: "eu-west-1".into(),
            instance_id: "i-9999".into(),
        };
        assert_eq!(verify(&key, "uid-1", &p, &moved, &sigs), None);
        // A rule that opens 3306 to the world slipped in: that entry alone is refused,
        // the operator's own entry stays good.
        let forged_rule = ForeignRuleSpec {
            container: "sg-9".into(),
            protocol: "tcp".into(),
            ports: Some((3306, 3306)),
            source: ForeignSource::Cidr("0.0.0.0/0".into()),
            description: None,
        };
        let mut forged = r.clone();
        forged.revoked.push(forged_rule.clone());
        let mut forged_sigs = sigs.clone();
        forged_sigs.revoked.push(sigs.revoked[0].clone());
        assert_eq!(
            verify(&key, "uid-1", &p, &forged, &forged_sigs),
            Some((record(), vec![forged_rule]))
        );
        // A signature of one target's rule does not vouch for another target.
        let mut other = r.clone();
        other.target = "db".into();
        assert_eq!(verify(&key, "uid-1", &p, &other, &sigs), None);
        assert!(!check(&key, b"x", "not base64!"));
    }
}
