//! The stamp written into every owned rule's description: owner and expiry.
//!
//! `portcullis owner=team-a/fix-the-build expires=2026-11-25T10:00:00Z`
//!
//! It fits Azure's 140-character descriptions and uses only characters EC2 accepts in
//! rule descriptions. Long owner names are shortened with a hash, so owners are compared
//! by [`owner_id`], never parsed back into names.

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::model::{ObjectKey, Stamp};

const PREFIX: &str = "portcullis owner=";
const EXPIRES: &str = " expires=";
/// Owner ids longer than this are shortened.
const MAX_OWNER: usize = 80;

/// The id that names `key` in stamps: `namespace/name`, shortened with a hash when long.
pub fn owner_id(key: &ObjectKey) -> String {
    let full = format!("{}/{}", key.namespace, key.name);
    if full.len() <= MAX_OWNER {
        return full;
    }
    let hash = short_hash(&full);
    // 80 = ns(≤30) + '/' + name(≤39) + '#' + 8 hex digits (+ slack)
    let ns: String = key.namespace.chars().take(30).collect();
    let name: String = key.name.chars().take(39).collect();
    format!("{ns}/{name}#{hash}")
}

/// Eight hex digits of SHA-256: short, stable names for long inputs.
pub fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Formats a stamp for a rule description.
pub fn format(stamp: &Stamp) -> String {
    match stamp.expires_at {
        Some(t) => format!(
            "{PREFIX}{}{EXPIRES}{}",
            stamp.owner,
            t.strftime("%Y-%m-%dT%H:%M:%SZ")
        ),
        None => format!("{PREFIX}{}", stamp.owner),
    }
}

/// Reads a stamp from a rule description; `None` when it carries none (not ours).
pub fn parse(description: &str) -> Option<Stamp> {
    let rest = description.strip_prefix(PREFIX)?;
    let (owner, expires_at) = match rest.split_once(EXPIRES) {
        Some((owner, t)) => (owner, Some(t.parse::<Timestamp>().ok()?)),
        None => (rest, None),
    };
    if owner.is_empty() || owner.contains(' ') {
        return None;
    }
    Some(Stamp {
        owner: owner.to_string(),
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_fits() {
        let s = Stamp {
            owner: owner_id(&ObjectKey::new("team-a", "fix-the-build")),
            expires_at: Some("2026-11-25T10:00:00Z".parse().unwrap()),
        };
        let text = format(&s);
        assert_eq!(
            text,
            "portcullis owner=team-a/fix-the-build expires=2026-11-25T10:00:00Z"
        );
        assert_eq!(parse(&text), Some(s));
        assert_eq!(parse("allow ssh from office"), None);
        assert_eq!(parse("portcullis owner= expires=x"), None);
    }

    proptest! {
        #[test]
        fn any_owner_fits_140_chars_and_round_trips(
            ns in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
            name in "[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?",
            secs in 0i64..4_000_000_000,
        ) {
            let s = Stamp {
                owner: owner_id(&ObjectKey::new(ns, name)),
                expires_at: Some(Timestamp::from_second(secs).unwrap()),
            };
            let text = format(&s);
            prop_assert!(text.len() <= 140, "{} chars: {}", text.len(), text);
            const EC2_DESCRIPTION_CHARS: &str = " ._-:/()#,@[]+=&;{}!$*";
            let fits = text.chars().all(|c| c.is_ascii_alphanumeric() || EC2_DESCRIPTION_CHARS.contains(c));
            prop_assert!(fits, "{}", text);
            prop_assert_eq!(parse(&text), Some(s));
        }
    }
}
