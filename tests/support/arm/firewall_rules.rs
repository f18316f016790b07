//! Validation of an Azure Firewall's classic rule collections, as the network resource
//! provider checks them on a PUT of the firewall: collection names and priorities unique
//! per kind, priorities 100–65000, the action each kind allows, and the shape of NAT and
//! network rules. Each refusal names the offending property path.
//!
//! The error codes are modelled on ARM's naming; no public example shows the ones the
//! provider really answers for classic collections, so clients should rely on the
//! status (400) and the message, not on these codes.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::errors::ArmError;
use super::rules::validate_name;

/// Lowest and highest rule collection priority.
pub(crate) const PRIORITIES: std::ops::RangeInclusive<i64> = 100..=65000;

/// The three kinds of classic collections, by their property name.
pub(crate) const KINDS: [&str; 3] = [
    "applicationRuleCollections",
    "natRuleCollections",
    "networkRuleCollections",
];

const NAT_FIELDS: [&str; 10] = [
    "name",
    "description",
    "sourceAddresses",
    "destinationAddresses",
    "destinationPorts",
    "protocols",
    "translatedAddress",
    "translatedPort",
    "translatedFqdn",
    "sourceIpGroups",
];
const NETWORK_FIELDS: [&str; 9] = [
    "name",
    "description",
    "protocols",
    "sourceAddresses",
    "destinationAddresses",
    "destinationPorts",
    "destinationFqdns",
    "sourceIpGroups",
    "destinationIpGroups",
];
const APPLICATION_FIELDS: [&str; 7] = [
    "name",
    "description",
    "sourceAddresses",
    "protocols",
    "targetFqdns",
    "fqdnTags",
    "sourceIpGroups",
];

fn invalid(code: &str, message: String) -> ArmError {
    ArmError::bad_request(code, message)
}

fn format_error(path: &str, what: &str) -> ArmError {
    ArmError::invalid_request_format(format!("Unexpected value for '{path}': {what}."))
}

/// Validates the three collection lists of a firewall's `properties` and returns them
/// cleaned: read-only members dropped, `id`s (re)made from `firewall_id`, actions and
/// protocols in ARM's casing.
pub(crate) fn validate_collections(
    firewall_id: &str,
    properties: &Map<String, Value>,
) -> Result<Map<String, Value>, ArmError> {
    let mut out = Map::new();
    for kind in KINDS {
        let items = match properties.get(kind) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.clone(),
            Some(_) => return Err(format_error(&format!("properties.{kind}"), "an array")),
        };
        let mut names: Vec<String> = Vec::new();
        let mut priorities: Vec<(i64, String)> = Vec::new();
        let mut cleaned = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("properties.{kind}[{i}]");
            let collection = collection(firewall_id, kind, &path, item)?;
            let name = collection["name"].as_str().unwrap_or_default().to_string();
            if names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                return Err(invalid(
                    "DuplicateResourceName",
                    format!(
                        "Resource {firewall_id} has two child resources with the same name ({name}) in {kind}."
                    ),
                ));
            }
            let priority = collection["properties"]["priority"]
                .as_i64()
                .unwrap_or_default();
            if let Some((_, other)) = priorities.iter().find(|(p, _)| *p == priority) {
                return Err(invalid(
                    "AzureFirewallRuleCollectionDuplicatePriority",
                    format!(
                        "Rule collections {other} and {name} in {kind} of {firewall_id} have the same priority {priority}. Priorities must be unique within a rule collection type."
                    ),
                ));
            }
            names.push(name.clone());
            priorities.push((priority, name));
            cleaned.push(collection);
        }
        out.insert(kind.to_string(), Value::Array(cleaned));
    }
    Ok(out)
}

fn collection(firewall_id: &str, kind: &str, path: &str, item: &Value) -> Result<Value, ArmError> {
    let Some(item) = item.as_object() else {
        return Err(format_error(path, "an object"));
    };
    let Some(name) = item.get("name").and_then(Value::as_str) else {
        return Err(invalid(
            "AzureFirewallRuleCollectionNameMissing",
            format!("A rule collection has no name. Path '{path}.name'."),
        ));
    };
    validate_name(name)?;
    let props = match item.get("properties") {
        Some(Value::Object(p)) => p,
        _ => return Err(format_error(&format!("{path}.properties"), "an object")),
    };
    let priority = props.get("priority").and_then(Value::as_i64);
    if !priority.is_some_and(|p| PRIORITIES.contains(&p)) {
        let given = props.get("priority").cloned().unwrap_or(Value::Null);
        return Err(invalid(
            "AzureFirewallRuleCollectionInvalidPriority",
            format!(
                "Rule collection {name} has invalid priority {given} ({path}.properties.priority). Allowed range 100-65000."
            ),
        ));
    }
    let allowed: &[&str] = if kind == "natRuleCollections" {
        &["Dnat", "Snat"]
    } else {
        &["Allow", "Deny"]
    };
    let action = props
        .get("action")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
        .and_then(|a| allowed.iter().find(|x| x.eq_ignore_ascii_case(a)));
    let Some(action) = action else {
        return Err(invalid(
            "AzureFirewallRuleCollectionInvalidAction",
            format!(
                "Rule collection {name} has an invalid action type ({path}.properties.action.type). Allowed values: {}.",
                allowed.join(", ")
            ),
        ));
    };
    let rules = match props.get("rules") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(r)) => r.clone(),
        Some(_) => {
            return Err(format_error(
                &format!("{path}.properties.rules"),
                "an array",
            ));
        }
    };
    let mut seen: Vec<String> = Vec::new();
    let mut cleaned = Vec::new();
    for (j, rule) in rules.iter().enumerate() {
        let rule_path = format!("{path}.properties.rules[{j}]");
        let rule = match kind {
            "natRuleCollections" => nat_rule(&rule_path, rule)?,
            "networkRuleCollections" => network_rule(&rule_path, rule)?,
            _ => known(&rule_path, rule, &APPLICATION_FIELDS)?,
        };
        let rule_name = rule
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if rule_name.is_empty() {
            return Err(invalid(
                "AzureFirewallRuleNameMissing",
                format!("A rule has no name. Path '{rule_path}.name'."),
            ));
        }
        if seen.iter().any(|n| n.eq_ignore_ascii_case(&rule_name)) {
            return Err(invalid(
                "AzureFirewallRuleDuplicateName",
                format!("Rule collection {name} has two rules named {rule_name}."),
            ));
        }
        seen.push(rule_name);
        cleaned.push(Value::Object(rule));
    }
    Ok(serde_json::json!({
        "name": name,
        "id": format!("{firewall_id}/{kind}/{name}"),
        "properties": {
            "priority": priority,
            "action": { "type": action },
            "rules": cleaned,
        }
    }))
}

/// The members of `rule` ARM knows (`fields`), type-checked: `name`, `description` and
/// the `translated*` ones strings, the others lists of strings (application rules'
/// `protocols`: objects).
fn known(path: &str, rule: &Value, fields: &[&str]) -> Result<Map<String, Value>, ArmError> {
    let Some(rule) = rule.as_object() else {
        return Err(format_error(path, "an object"));
    };
    let mut out = Map::new();
    for (field, value) in rule {
        if value.is_null() || !fields.contains(&field.as_str()) {
            continue;
        }
        let single = matches!(
            field.as_str(),
            "name" | "description" | "translatedAddress" | "translatedPort" | "translatedFqdn"
        );
        let ok = if single {
            value.is_string()
        } else if field == "protocols" && fields == APPLICATION_FIELDS {
            value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_object))
        } else {
            value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string))
        };
        if !ok {
            return Err(format_error(&format!("{path}.{field}"), "wrong type"));
        }
        out.insert(field.clone(), value.clone());
    }
    Ok(out)
}

fn strings<'a>(rule: &'a Map<String, Value>, field: &str) -> Vec<&'a str> {
    rule.get(field)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn missing(path: &str, what: &str) -> ArmError {
    invalid(
        "AzureFirewallRuleParameterMissing",
        format!("Required rule parameter {what} is missing ({path})."),
    )
}

/// Protocols in ARM's casing, each one of `allowed`.
fn protocols(rule: &mut Map<String, Value>, path: &str, allowed: &[&str]) -> Result<(), ArmError> {
    let given = strings(rule, "protocols");
    if given.is_empty() {
        return Err(missing(&format!("{path}.protocols"), "Protocols"));
    }
    let mut canonical = Vec::new();
    for p in given {
        let Some(c) = allowed.iter().find(|a| a.eq_ignore_ascii_case(p)) else {
            return Err(invalid(
                "AzureFirewallRuleInvalidProtocol",
                format!(
                    "Rule has invalid protocol {p} ({path}.protocols). Allowed values: {}.",
                    allowed.join(", ")
                ),
            ));
        };
        canonical.push(Value::from(*c));
    }
    rule.insert("protocols".into(), Value::Array(canonical));
    Ok(())
}

fn is_port(text: &str) -> bool {
    text.trim().parse::<u16>().is_ok_and(|p| p > 0)
}

fn is_port_range(text: &str) -> bool {
    text == "*"
        || is_port(text)
        || text
            .split_once('-')
            .is_some_and(|(a, b)| is_port(a) && is_port(b))
}

fn nat_rule(path: &str, rule: &Value) -> Result<Map<String, Value>, ArmError> {
    let mut rule = known(path, rule, &NAT_FIELDS)?;
    protocols(&mut rule, path, &["TCP", "UDP"])?;
    if strings(&rule, "sourceAddresses").is_empty() && strings(&rule, "sourceIpGroups").is_empty() {
        return Err(missing(path, "SourceAddresses or SourceIpGroups"));
    }
    let shape = |what: &str, field: &str| {
        invalid(
            "AzureFirewallNatRuleInvalid",
            format!("A NAT rule needs {what} ({path}.{field})."),
        )
    };
    match strings(&rule, "destinationAddresses").as_slice() {
        [one] if one.parse::<IpAddr>().is_ok() => {}
        _ => {
            return Err(shape(
                "exactly one destination address, the firewall's public IP",
                "destinationAddresses",
            ));
        }
    }
    match strings(&rule, "destinationPorts").as_slice() {
        [one] if is_port(one) => {}
        _ => return Err(shape("exactly one destination port", "destinationPorts")),
    }
    let address = rule.get("translatedAddress").and_then(Value::as_str);
    let fqdn = rule.get("translatedFqdn").and_then(Value::as_str);
    match (address, fqdn) {
        (Some(a), None) if a.parse::<IpAddr>().is_ok() => {}
        (None, Some(f)) if !f.is_empty() => {}
        _ => {
            return Err(shape(
                "either a translated IP address or a translated FQDN",
                "translatedAddress",
            ));
        }
    }
    if !rule
        .get("translatedPort")
        .and_then(Value::as_str)
        .is_some_and(is_port)
    {
        return Err(shape("a translated port", "translatedPort"));
    }
    Ok(rule)
}

fn network_rule(path: &str, rule: &Value) -> Result<Map<String, Value>, ArmError> {
    let mut rule = known(path, rule, &NETWORK_FIELDS)?;
    protocols(&mut rule, path, &["TCP", "UDP", "Any", "ICMP"])?;
    if strings(&rule, "sourceAddresses").is_empty() && strings(&rule, "sourceIpGroups").is_empty() {
        return Err(missing(path, "SourceAddresses or SourceIpGroups"));
    }
    let destinations = [
        "destinationAddresses",
        "destinationFqdns",
        "destinationIpGroups",
    ];
    if destinations.iter().all(|d| strings(&rule, d).is_empty()) {
        return Err(missing(
            path,
            "DestinationAddresses, DestinationFqdns or DestinationIpGroups",
        ));
    }
    let ports = strings(&rule, "destinationPorts");
    if ports.is_empty() {
        return Err(missing(
            &format!("{path}.destinationPorts"),
            "DestinationPorts",
        ));
    }
    if let Some(bad) = ports.iter().find(|p| !is_port_range(p)) {
        return Err(invalid(
            "AzureFirewallRuleInvalidPort",
            format!("Rule has invalid destination port {bad} ({path}.destinationPorts)."),
        ));
    }
    Ok(rule)
}
