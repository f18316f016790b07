//! The source a request opens for: `--from CIDR`, `--from auto` (the caller's public
//! address, from an echo URL), or the policy's only allowed address.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::Error;
use crate::api::{JitPolicySpec, RequestPort};
use crate::domain::validate;

/// Where `--from auto` asks for the caller's address: answers with the address alone.
pub const DEFAULT_ECHO_URL: &str = "https://checkip.amazonaws.com/";

/// What `--from` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromArg {
    /// Find the caller's public address through the echo URL.
    Auto,
    /// This prefix.
    Cidr(IpNet),
}

/// Parses `--from`: `auto`, a CIDR, or a single address (taken as /32 or /128).
pub fn parse_from(text: &str) -> Result<FromArg, String> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(FromArg::Auto);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(FromArg::Cidr(IpNet::from(ip)));
    }
    validate::parse_cidr(text).map(FromArg::Cidr)
}

/// The caller's public address as `url` sees it, as a /32 (or /128).
pub async fn public_address(url: &str) -> Result<IpNet, Error> {
    let failed = |what: String| {
        Error::Failed(format!(
            "--from auto: {what}; give your address with --from CIDR instead"
        ))
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| failed(format!("cannot make an HTTP client: {e}")))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed(format!("cannot reach {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(failed(format!("{url} answered {}", resp.status())));
    }
    let body = resp
        .text()
        .await
        .map_err(|e| failed(format!("cannot read the answer of {url}: {e}")))?;
    let text = body.trim();
    let ip: IpAddr = text.parse().map_err(|_| {
        let shown: String = text.chars().take(60).collect();
        failed(format!("{url} answered {shown:?}, not an IP address"))
    })?;
    Ok(IpNet::from(ip))
}

/// Without `--from`: the policy's only allowed prefix for the requested ports, when it
/// is a single address. Otherwise a message saying what the policy allows and what to do.
pub fn from_policy(
    policy_name: &str,
    policy: &JitPolicySpec,
    ports: &[RequestPort],
) -> Result<IpNet, String> {
    let mut allowed: Vec<&str> = Vec::new();
    for r in ports {
        for p in policy.ports.iter().filter(|p| p.port == r.port) {
            for a in &p.allowed_source_prefixes {
                if !allowed.contains(&a.as_str()) {
                    allowed.push(a);
                }
            }
        }
    }
    if let [only] = allowed.as_slice()
        && let Ok(net) = validate::parse_cidr(only)
        && net.prefix_len() == net.max_prefix_len()
    {
        return Ok(net);
    }
    let what = if allowed.is_empty() {
        "nothing for these ports".to_string()
    } else {
        allowed.join(", ")
    };
    Err(format!(
        "say where you connect from: policy {policy_name:?} allows {what}; \
         give --from CIDR (e.g. --from 203.0.113.7/32) or --from auto for your public address"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(prefixes: &[&str]) -> JitPolicySpec {
        serde_json::from_value(serde_json::json!({
            "targets": [{"name": "web", "aws": {"region": "eu-west-1", "instanceId": "i-0123456789abcdef0"}}],
            "ports": [
                {"port": 22, "allowedSourcePrefixes": prefixes, "maxDuration": "1h"},
                {"port": 3389, "allowedSourcePrefixes": ["198.51.100.0/24"], "maxDuration": "1h"}
            ]
        }))
        .unwrap()
    }

    fn ports(ns: &[i32]) -> Vec<RequestPort> {
        ns.iter()
            .map(|&port| RequestPort {
                port,
                protocol: None,
                source_prefix: String::new(),
                duration: "1h".into(),
            })
            .collect()
    }

    #[test]
    fn from_accepts_auto_cidrs_and_addresses() {
        assert_eq!(parse_from("auto"), Ok(FromArg::Auto));
        assert_eq!(
            parse_from("203.0.113.7"),
            Ok(FromArg::Cidr("203.0.113.7/32".parse().unwrap()))
        );
        assert_eq!(
            parse_from("2001:db8::/64"),
            Ok(FromArg::Cidr("2001:db8::/64".parse().unwrap()))
        );
        assert!(
            parse_from("203.0.113.7/24")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(parse_from("anywhere").is_err());
    }

    #[test]
    fn the_policys_only_address_is_used_and_nothing_else() {
        let one = policy(&["203.0.113.7/32"]);
        assert_eq!(
            from_policy("p", &one, &ports(&[22])),
            Ok("203.0.113.7/32".parse().unwrap())
        );
        // A range, or two ports allowing different prefixes: the caller must say.
        let range = policy(&["203.0.113.0/24"]);
        let err = from_policy("p", &range, &ports(&[22])).unwrap_err();
        assert!(
            err.contains("203.0.113.0/24") && err.contains("--from"),
            "{err}"
        );
        assert!(from_policy("p", &one, &ports(&[22, 3389])).is_err());
        assert!(from_policy("p", &policy(&["*"]), &ports(&[22])).is_err());
    }
}
