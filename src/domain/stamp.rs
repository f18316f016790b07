//! The stamp written into every owned rule's description: installation, owner and expiry.
//!
//! `portcullis cluster=prod-eu owner=team-a/fix-the-build expires=2026-11-25T10:00:00Z`
//!
//! It fits Azure's 140-character descriptions and uses only characters EC2 accepts in
//! rule descriptions. Long owner names are shortened with a hash, so owners are compared
//! by [`owner_id`], never parsed back into names. The installation ([`cluster_id`]) lets
//! two installations that share an NSG or an account tell their rules apart: each one
//! only ever touches its own.

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::model::{ObjectKey, Stamp};

const PREFIX: &str = "portcullis cluster=";
const OWNER: &str = " owner=";
const EXPIRES: &str = " expires=";
/// Owner ids longer than this are shortened.
const MAX_OWNER: usize = 64;
/// Installation ids longer than this are shortened.
const MAX_CLUSTER: usize = 16;

/// The id that names `key` in stamps: `namespace/name`, shortened with a hash when long.
pub fn owner_id(key: &ObjectKey) -> String {
    let full = format!("{}/{}", key.namespace, key.name);
    if full.len() <= MAX_OWNER {
        return full;
    }
    let hash = short_hash(&full);
    // 64 = ns(≤24) + '/' + name(≤30) + '#' + 8 hex digits
    let ns: String = key.namespace.chars().take(24).collect();
    let name: String = key.name.chars().take(30).collect();
    format!("{ns}/{name}#{hash}")
}

/// The id that names an installation (`--cluster-name`) in stamps: the name itself when
/// it is short and plain (`[a-z0-9-]`, at most 16), else a hash of it.
pub fn cluster_id(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= MAX_CLUSTER
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if plain {
        name.to_string()
    } else {
        format!("h{}", short_hash(name))
    }
}

/// Eight hex digits of SHA-256: short, stable names for long inputs.
pub fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Formats a stamp for a rule description of installation `cluster` (a [`cluster_id`]).
pub fn format(cluster: &str, stamp: &Stamp) -> String {
    let base = format!("{PREFIX}{cluster}{OWNER}{}", stamp.owner);
    match stamp.expires_at {
        Some(t) => format!("{base}{EXPIRES}{}", t.strftime("%Y-%m-%dT%H:%M:%SZ")),
        None => base,
    }
}

/// Reads a stamp from a rule description: the installation and the stamp, or `None` when
/// it carries none (not an operator's rule).
pub fn parse(description: &str) -> Option<(String, Stamp)> {
    let rest = description.strip_prefix(PREFIX)?;
    let (cluster, rest) = rest.split_once(OWNER)?;
    let (owner, expires_at) = match rest.split_once(EXPIRES) {
        Some((owner, t)) => (owner, Some(t.parse::<Timestamp>().ok()?)),
        None => (rest, None),
    };
    if cluster.is_empty() || cluster.contains(' ') || owner.is_empty() || owner.contains(' ') {
        return None;
    }
    Some((
        cluster.to_string(),
        Stamp {
            owner: owner.to_string(),
            expires_at,
        },
    ))
}

/// Reads the stamp of installation `cluster` from a rule description; `None` when the
/// rule is not this installation's.
pub fn parse_own(cluster: &str, description: &str) -> Option<Stamp> {
    parse(description).and_then(|(c, s)| (c == cluster).then_some(s))
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
        let text = format("prod-eu", &s);
        assert_eq!(
            text,
            "portcullis cluster=prod-eu owner=team-a/fix-the-build expires=2026-11-25T10:00:00Z"
        );
        assert_eq!(parse(&text), Some(("prod-eu".into(), s.clone())));
        assert_eq!(parse_own("prod-eu", &text), Some(s));
        assert_eq!(parse_own("staging", &text), None);
        assert_eq!(parse("allow ssh from office"), None);
        assert_eq!(parse("portcullis cluster=x owner= expires=x"), None);
        // A stamp of the version without installations is nobody's.
        assert_eq!(parse("portcullis owner=a/b"), None);
    }

    #[test]
    fn cluster_ids_are_short_and_plain() {
        assert_eq!(cluster_id("prod-eu"), "prod-eu");
        assert_eq!(cluster_id("Prod EU"), format!("h{}", short_hash("Prod EU")));
        assert_eq!(cluster_id(&"x".repeat(17)).len(), 9);
    }

    proptest! {
        #[test]
        fn any_owner_fits_140_chars_and_round_trips(
            cluster in "[ -~]{1,40}",
            ns in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
            name in "[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?",
            secs in 0i64..4_000_000_000,
        ) {
            let s = Stamp {
                owner: owner_id(&ObjectKey::new(ns, name)),
                expires_at: Some(Timestamp::from_second(secs).unwrap()),
            };
            let cluster = cluster_id(&cluster);
            let text = format(&cluster, &s);
            prop_assert!(text.len() <= 140, "{} chars: {}", text.len(), text);
            const EC2_DESCRIPTION_CHARS: &str = " ._-:/()#,@[]+=&;{}!$*";
            let fits = text.chars().all(|c| c.is_ascii_alphanumeric() || EC2_DESCRIPTION_CHARS.contains(c));
            prop_assert!(fits, "{}", text);
            prop_assert_eq!(parse(&text), Some((cluster, s)));
        }
    }
}
