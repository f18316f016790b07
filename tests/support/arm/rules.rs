//! Validation of security rules the way the network resource provider does it: each
//! refusal names the offending property, with ARM's error code where a public report
//! shows it.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::errors::ArmError;
use super::state::Rule;

/// Longest description ARM accepts on a rule.
pub(crate) const MAX_DESCRIPTION: usize = 140;
/// Lowest and highest priority of a rule that is not a default rule.
pub(crate) const PRIORITIES: std::ops::RangeInclusive<i64> = 100..=4096;

const STRINGS: [&str; 8] = [
    "description",
    "protocol",
    "sourcePortRange",
    "destinationPortRange",
    "sourceAddressPrefix",
    "destinationAddressPrefix",
    "access",
    "direction",
];
const STRING_LISTS: [&str; 4] = [
    "sourcePortRanges",
    "destinationPortRanges",
    "sourceAddressPrefixes",
    "destinationAddressPrefixes",
];
const OBJECT_LISTS: [&str; 2] = [
    "sourceApplicationSecurityGroups",
    "destinationApplicationSecurityGroups",
];
const PROTOCOLS: [&str; 6] = ["Tcp", "Udp", "Icmp", "Esp", "*", "Ah"];

/// Checks a resource name (NSG or rule) against ARM's naming rule.
pub(crate) fn validate_name(name: &str) -> Result<(), ArmError> {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let ok = (1..=80).contains(&name.chars().count())
        && name.chars().next().is_some_and(word)
        && name.chars().last().is_some_and(word)
        && name.chars().all(|c| word(c) || c == '.' || c == '-');
    if ok {
        return Ok(());
    }
    Err(ArmError::bad_request(
        "InvalidResourceName",
        format!(
            "Resource name {name} is invalid. The name can be up to 80 characters long. It must begin with a word character, and it must end with a word character or with '_'. The name may contain word characters or '.', '-', '_'."
        ),
    ))
}

/// Validates the `properties` of rule `name` (id `rule_id`) and returns them with only
/// the writable properties ARM knows, enum values in ARM's casing.
pub(crate) fn validate_rule(
    rule_id: &str,
    properties: Option<&Value>,
) -> Result<Map<String, Value>, ArmError> {
    let empty = Map::new();
    let given = match properties {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(ArmError::invalid_request_format(format!(
                "Unexpected value {other} for 'properties', an object is required."
            )));
        }
    };
    let mut props = known_properties(given)?;

    for (field, label) in [
        ("protocol", "Protocol"),
        ("access", "Access"),
        ("priority", "Priority"),
        ("direction", "Direction"),
    ] {
        if !props.contains_key(field) {
            return Err(ArmError::bad_request(
                "SecurityRuleParameterMissing",
                format!(
                    "Required security rule parameter {label} (properties.{field}) is missing for security rule with Id: {rule_id}."
                ),
            ));
        }
    }

    let protocol = str_of(&props, "protocol");
    let Some(canonical) = PROTOCOLS.iter().find(|p| p.eq_ignore_ascii_case(protocol)) else {
        return Err(ArmError::bad_request(
            "SecurityRuleInvalidProtocol",
            format!(
                "Security rule has invalid Protocol. Value provided: {protocol} Allowed values: Icmp,Tcp,Udp,Esp,Ah,*."
            ),
        ));
    };
    props.insert("protocol".into(), Value::from(*canonical));
    canonical_enum(&mut props, "access", &["Allow", "Deny"])?;
    canonical_enum(&mut props, "direction", &["Inbound", "Outbound"])?;

    let priority = props["priority"].as_i64().unwrap_or_default();
    if !PRIORITIES.contains(&priority) {
        return Err(ArmError::bad_request(
            "SecurityRuleInvalidPriority",
            format!(
                "Security rule has invalid Priority. Value provided: {priority} Allowed range 100-4096."
            ),
        ));
    }

    if let Some(description) = props.get("description").and_then(Value::as_str) {
        let length = description.chars().count();
        if length > MAX_DESCRIPTION {
            return Err(ArmError::bad_request(
                "SecurityRuleDescriptionTooLong",
                format!(
                    "Security rule parameter Description (properties.description) for rule with Id {rule_id} is {length} characters long; at most {MAX_DESCRIPTION} are allowed."
                ),
            ));
        }
    }

    for side in ["source", "destination"] {
        let ports = values(
            &props,
            &format!("{side}PortRange"),
            &format!("{side}PortRanges"),
        );
        if ports.is_empty() {
            let label = capitalized(side);
            return Err(ArmError::bad_request(
                "SecurityRuleParametersMissing",
                format!(
                    "Required security rule parameters are missing for security rule with Id: {rule_id}. Security rule must specify {label}PortRanges or {label}PortRange."
                ),
            ));
        }
        if let Some(bad) = ports.iter().find(|p| !is_port_range(p)) {
            return Err(ArmError::bad_request(
                "SecurityRuleInvalidPortRange",
                format!(
                    "Security rule has invalid Port range. Value provided: {bad}. Value should be an integer OR integer range with '-' delimiter. Valid range 0-65535."
                ),
            ));
        }
        let prefixes = values(
            &props,
            &format!("{side}AddressPrefix"),
            &format!("{side}AddressPrefixes"),
        );
        let groups = props
            .get(&format!("{side}ApplicationSecurityGroups"))
            .and_then(Value::as_array)
            .is_some_and(|g| !g.is_empty());
        if prefixes.is_empty() && !groups {
            let label = capitalized(side);
            return Err(ArmError::bad_request(
                "SecurityRuleParametersMissing",
                format!(
                    "Required security rule parameters are missing for security rule with Id: {rule_id}. Security rule must specify {label}AddressPrefixes, {label}AddressPrefix, or {label}ApplicationSecurityGroups."
                ),
            ));
        }
        if let Some(bad) = prefixes.iter().find(|p| !is_address_prefix(p)) {
            return Err(ArmError::bad_request(
                "SecurityRuleInvalidAddressPrefix",
                format!(
                    "Security rule has invalid Address prefix. Value provided: {bad}. Property {side}AddressPrefix of rule with Id {rule_id}."
                ),
            ));
        }
    }
    // ARM refuses a rule whose addresses (source and destination together) mix IPv4 and
    // IPv6.
    let families: std::collections::BTreeSet<bool> = ["source", "destination"]
        .iter()
        .flat_map(|side| {
            values(
                &props,
                &format!("{side}AddressPrefix"),
                &format!("{side}AddressPrefixes"),
            )
        })
        .filter_map(|p| {
            p.parse::<IpAddr>()
                .map(|a| a.is_ipv4())
                .or_else(|_| p.parse::<IpNet>().map(|n| matches!(n, IpNet::V4(_))))
                .ok()
        })
        .collect();
    if families.len() > 1 {
        return Err(ArmError::bad_request(
            "ResourceCannotContainAddressPrefixesFromDifferentAddressFamilies",
            format!(
                "Resource {rule_id} contains IP addresses or prefixes that belong to different address families. All IP addresses or prefixes in the resource should belong to the same address family."
            ),
        ));
    }
    Ok(props)
}

/// The rule already in `rules` that `name` (with `props`) would conflict with.
pub(crate) fn conflict<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
    name: &str,
    props: &Map<String, Value>,
) -> Result<(), ArmError> {
    let priority = props.get("priority").and_then(Value::as_i64);
    let direction = props.get("direction").and_then(Value::as_str);
    for existing in rules {
        if !existing.name.eq_ignore_ascii_case(name)
            && existing.priority() == priority
            && existing.direction() == direction
        {
            return Err(conflict_error(&existing.name, name));
        }
    }
    Ok(())
}

/// `SecurityRuleConflict` between an earlier rule and a later one.
pub(crate) fn conflict_error(existing: &str, new: &str) -> ArmError {
    ArmError::bad_request(
        "SecurityRuleConflict",
        format!(
            "Security rule {existing} conflicts with rule {new}. Rules cannot have the same Priority and Direction. To learn more, see aka.ms/nsgrules."
        ),
    )
}

/// `SecurityRuleCountLimitReached` when an NSG would hold `count` rules.
pub(crate) fn check_count(count: usize, limit: usize) -> Result<(), ArmError> {
    if count <= limit {
        return Ok(());
    }
    Err(ArmError::bad_request(
        "SecurityRuleCountLimitReached",
        format!("A security group cannot have more than {limit} security rules."),
    ))
}

/// The writable properties of `given`, type-checked; unknown and read-only ones dropped
/// as ARM drops them.
fn known_properties(given: &Map<String, Value>) -> Result<Map<String, Value>, ArmError> {
    let mut props = Map::new();
    for (field, value) in given {
        if value.is_null() {
            continue;
        }
        let field = field.as_str();
        let ok = if STRINGS.contains(&field) {
            value.is_string()
        } else if STRING_LISTS.contains(&field) {
            value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string))
        } else if OBJECT_LISTS.contains(&field) {
            value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_object))
        } else if field == "priority" {
            value.as_i64().is_some_and(|p| i32::try_from(p).is_ok())
        } else {
            continue;
        };
        if !ok {
            return Err(ArmError::invalid_request_format(format!(
                "Error converting value {value} to the type of 'properties.{field}'. Path 'properties.{field}'."
            )));
        }
        props.insert(field.to_string(), value.clone());
    }
    Ok(props)
}

fn canonical_enum(
    props: &mut Map<String, Value>,
    field: &str,
    allowed: &[&str],
) -> Result<(), ArmError> {
    let given = str_of(props, field);
    match allowed.iter().find(|a| a.eq_ignore_ascii_case(given)) {
        Some(canonical) => {
            props.insert(field.to_string(), Value::from(*canonical));
            Ok(())
        }
        None => Err(ArmError::invalid_request_format(format!(
            "Requested value '{given}' was not found; allowed: {}. Path 'properties.{field}'.",
            allowed.join(", ")
        ))),
    }
}

fn str_of<'a>(props: &'a Map<String, Value>, field: &str) -> &'a str {
    props.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// The non-empty values of a singular property and its plural twin.
fn values(props: &Map<String, Value>, singular: &str, plural: &str) -> Vec<String> {
    let one = props
        .get(singular)
        .and_then(Value::as_str)
        .map(str::to_string);
    let many = props
        .get(plural)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string);
    one.into_iter()
        .chain(many)
        .filter(|v| !v.is_empty())
        .collect()
}

fn is_port_range(value: &str) -> bool {
    if value == "*" {
        return true;
    }
    let port = |s: &str| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) && s.parse::<u16>().is_ok()
    };
    match value.split_once('-') {
        None => port(value),
        Some((low, high)) => {
            port(low) && port(high) && low.parse::<u16>().ok() <= high.parse::<u16>().ok()
        }
    }
}

/// `*`, an IP address, a CIDR, or a service tag (letters, digits, '.', '_' and '-',
/// starting with a letter).
fn is_address_prefix(value: &str) -> bool {
    if value == "*" || value.parse::<IpAddr>().is_ok() || value.parse::<IpNet>().is_ok() {
        return true;
    }
    value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn capitalized(side: &str) -> String {
    let mut chars = side.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}
