//! An Azure Firewall's JSON, to and from the domain model: parse the rule collections,
//! tell a Firewall Manager firewall, and merge owned collections into the resource for
//! the PUT without touching a byte of anyone else's.

use serde_json::{Map, Value, json};

use crate::domain::firewall::{Collection, CollectionKind, FirewallObserved, FwRule, Names};

/// The `properties` member holding collections of `kind`.
pub fn member(kind: CollectionKind) -> &'static str {
    match kind {
        CollectionKind::Nat => "natRuleCollections",
        CollectionKind::Network => "networkRuleCollections",
    }
}

const KINDS: [CollectionKind; 2] = [CollectionKind::Nat, CollectionKind::Network];

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn parse_rule(rule: &Value) -> FwRule {
    let listed = |key: &str| !strings(rule, key).is_empty();
    FwRule {
        name: text(rule, "name").unwrap_or_default(),
        description: text(rule, "description"),
        protocols: strings(rule, "protocols"),
        sources: strings(rule, "sourceAddresses"),
        destinations: strings(rule, "destinationAddresses"),
        ports: strings(rule, "destinationPorts"),
        translated_address: text(rule, "translatedAddress"),
        translated_port: text(rule, "translatedPort"),
        opaque: listed("destinationFqdns") || listed("destinationIpGroups"),
    }
}

/// One collection as the domain sees it; `exact` says whether rendering it back gives
/// what ARM showed.
fn parse_collection(kind: CollectionKind, item: &Value) -> Collection {
    let props = item.get("properties").cloned().unwrap_or(Value::Null);
    let mut c = Collection {
        kind,
        name: text(item, "name").unwrap_or_default(),
        priority: props
            .get("priority")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0),
        action: props
            .pointer("/action/type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        rules: props
            .get("rules")
            .and_then(Value::as_array)
            .map(|rules| rules.iter().map(parse_rule).collect())
            .unwrap_or_default(),
        exact: false,
    };
    c.exact = comparable(item) == comparable(&render_collection(&c));
    c
}

/// The NAT and network collections of a firewall, in the order ARM lists them.
pub fn parse(body: &Value) -> FirewallObserved {
    let mut collections = Vec::new();
    for kind in KINDS {
        let items = body
            .pointer(&format!("/properties/{}", member(kind)))
            .and_then(Value::as_array);
        for item in items.into_iter().flatten() {
            collections.push(parse_collection(kind, item));
        }
    }
    FirewallObserved { collections }
}

fn render_rule(rule: &FwRule) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), json!(rule.name));
    if let Some(d) = &rule.description {
        out.insert("description".into(), json!(d));
    }
    for (key, list) in [
        ("protocols", &rule.protocols),
        ("sourceAddresses", &rule.sources),
        ("destinationAddresses", &rule.destinations),
        ("destinationPorts", &rule.ports),
    ] {
        if !list.is_empty() {
            out.insert(key.into(), json!(list));
        }
    }
    if let Some(a) = &rule.translated_address {
        out.insert("translatedAddress".into(), json!(a));
    }
    if let Some(p) = &rule.translated_port {
        out.insert("translatedPort".into(), json!(p));
    }
    Value::Object(out)
}

/// A collection as a PUT body states it.
pub fn render_collection(c: &Collection) -> Value {
    json!({
        "name": c.name,
        "properties": {
            "priority": c.priority,
            "action": { "type": c.action },
            "rules": c.rules.iter().map(render_rule).collect::<Vec<_>>(),
        }
    })
}

/// `value` without what ARM adds on its own (ids, etags, provisioning states) and
/// without empty lists and nulls, which ARM may or may not show for unset fields.
fn comparable(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "id" | "etag" | "provisioningState"))
                .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
                .map(|(k, v)| (k.clone(), comparable(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(comparable).collect()),
        other => other.clone(),
    }
}

/// Why a firewall cannot be governed with classic rules, if it cannot: it is managed by
/// Azure Firewall Manager (a firewall policy, a secured virtual hub, or a SKU tier that
/// takes policies only).
pub fn managed_by(body: &Value) -> Option<String> {
    let id = |path: &str| {
        body.pointer(path)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(policy) = id("/properties/firewallPolicy/id") {
        return Some(format!("firewall policy {policy}"));
    }
    if let Some(hub) = id("/properties/virtualHub/id") {
        return Some(format!("secured virtual hub {hub}"));
    }
    let sku = |field: &str| {
        body.pointer(&format!("/properties/sku/{field}"))
            .and_then(Value::as_str)
    };
    if sku("name").is_some_and(|n| n.eq_ignore_ascii_case("AZFW_Hub")) {
        return Some("a secured virtual hub (SKU AZFW_Hub)".into());
    }
    match sku("tier") {
        Some(tier)
            if ["Premium", "Basic"]
                .iter()
                .any(|t| t.eq_ignore_ascii_case(tier)) =>
        {
            Some(format!(
                "SKU tier {tier}, which takes firewall policies only"
            ))
        }
        _ => None,
    }
}

/// The firewall `body` (as GET showed it) with installation `cluster`'s collections
/// replaced by `owned`: every other collection stays exactly as ARM showed it, in its
/// place; owned ones are replaced in place and new ones appended.
pub fn merge(body: &Value, cluster: &str, owned: &[Collection]) -> Value {
    let names = Names::new(cluster);
    let mut out = body.clone();
    for kind in KINDS {
        let key = member(kind);
        let before = body
            .pointer(&format!("/properties/{key}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut items = Vec::new();
        let mut placed = Vec::new();
        for item in before {
            let seen = parse_collection(kind, &item);
            if !names.owns(&seen) {
                items.push(item);
            } else if let Some(new) = owned.iter().find(|c| c.kind == kind && c.name == seen.name) {
                placed.push(new.name.clone());
                items.push(render_collection(new));
            }
        }
        for new in owned.iter().filter(|c| c.kind == kind) {
            if !placed.contains(&new.name) {
                items.push(render_collection(new));
            }
        }
        if !out["properties"].is_object() {
            out["properties"] = json!({});
        }
        out["properties"][key] = Value::Array(items);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::firewall::apply;

    fn example() -> Value {
        let text =
            include_str!("../../../tests/fixtures/azure/network-2024-05-01__AzureFirewallGet.json");
        let doc: Value = serde_json::from_str(text).unwrap();
        doc["responses"]["200"]["body"].clone()
    }

    #[test]
    fn the_example_parses_and_renders_back_exactly() {
        let observed = parse(&example());
        let summary: Vec<(CollectionKind, &str, u16, &str, usize, bool)> = observed
            .collections
            .iter()
            .map(|c| {
                (
                    c.kind,
                    c.name.as_str(),
                    c.priority,
                    c.action.as_str(),
                    c.rules.len(),
                    c.exact,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (CollectionKind::Nat, "natrulecoll", 112, "Dnat", 2, false),
                (
                    CollectionKind::Network,
                    "netrulecoll",
                    112,
                    "Deny",
                    2,
                    false
                ),
            ],
            "translatedFqdn and destinationFqdns are not modelled: not exact"
        );
        let net = &observed.collections[1].rules[1];
        assert!(net.opaque, "FQDN destinations may reach anything");
        let mut plain = example();
        plain["properties"]["natRuleCollections"][0]["properties"]["rules"]
            .as_array_mut()
            .unwrap()
            .truncate(1);
        assert!(parse(&plain).collections[0].exact);
    }

    #[test]
    fn merge_keeps_foreign_collections_and_replaces_owned_ones_in_place() {
        let mut body = example();
        let owned_old = json!({
            "name": "portcullis-prod-allow",
            "id": "x",
            "properties": { "priority": 60000, "action": { "type": "Allow" }, "rules": [] }
        });
        body["properties"]["networkRuleCollections"]
            .as_array_mut()
            .unwrap()
            .insert(0, owned_old);
        let observed = parse(&body);
        let mut allow = observed.collections[1].clone();
        allow.priority = 60002;
        let deny = Collection {
            name: "portcullis-prod-deny-0123abcd".into(),
            action: "Deny".into(),
            ..allow.clone()
        };
        let owned = vec![allow.clone(), deny.clone()];
        let merged = merge(&body, "prod", &owned);

        let nets = merged["properties"]["networkRuleCollections"]
            .as_array()
            .unwrap();
        assert_eq!(nets[0], render_collection(&allow), "replaced in place");
        assert_eq!(
            nets[1], body["properties"]["networkRuleCollections"][1],
            "foreign: as it was"
        );
        assert_eq!(nets[2], render_collection(&deny), "new: last");
        for key in [
            "natRuleCollections",
            "applicationRuleCollections",
            "ipConfigurations",
            "sku",
        ] {
            assert_eq!(merged["properties"][key], body["properties"][key], "{key}");
        }
        // Parsing the merged JSON gives what the domain's apply() says (exactness aside:
        // the example's collections hold fields the model leaves out).
        let ignoring_exact = |o: FirewallObserved| -> Vec<Collection> {
            o.collections
                .into_iter()
                .map(|c| Collection { exact: true, ..c })
                .collect()
        };
        assert_eq!(
            ignoring_exact(parse(&merged)),
            ignoring_exact(apply(&observed, "prod", &owned))
        );
    }

    #[test]
    fn firewall_manager_is_recognised() {
        let mut body = example();
        assert_eq!(managed_by(&body), None);
        body["properties"]["firewallPolicy"] = json!({ "id": "/p" });
        assert_eq!(managed_by(&body).as_deref(), Some("firewall policy /p"));
        let mut hub = example();
        hub["properties"]["sku"] = json!({ "name": "AZFW_Hub", "tier": "Standard" });
        assert!(managed_by(&hub).unwrap().contains("hub"));
        let mut premium = example();
        premium["properties"]["sku"]["tier"] = json!("Premium");
        assert!(managed_by(&premium).unwrap().contains("Premium"));
    }
}
