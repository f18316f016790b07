//! `Microsoft.Network/azureFirewalls` in the emulator: shapes against Microsoft's
//! examples (`AzureFirewallGet/Put/Delete`), long-running writes, ETags and the 412 race
//! hook, busy firewalls, the validation of classic rule collections, and Firewall
//! Manager firewalls.

use hyper::Method;
use serde_json::{Value, json};

use super::support::arm::{ArmClient, ArmEmulator};
use super::{
    assert_contains, assert_shape, emulator_like_the_examples, example_body, example_headers,
    fixture, poll_async,
};

/// A change to a firewall's `properties`.
type Edit = Box<dyn FnOnce(&mut serde_json::Map<String, Value>)>;

const FW_GET: &str = "network-2024-05-01__AzureFirewallGet.json";
const FW_PUT: &str = "network-2024-05-01__AzureFirewallPut.json";
const FW_DELETE: &str = "network-2024-05-01__AzureFirewallDelete.json";
const FW_ID: &str = "/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Network/azureFirewalls/azurefirewall";

/// The writable `properties` of the GET example (what a PUT would have sent).
fn example_properties() -> Value {
    let mut props = example_body(FW_GET, "200")["properties"].clone();
    let map = props.as_object_mut().unwrap();
    for read_only in ["provisioningState", "ipGroups"] {
        map.remove(read_only);
    }
    props
}

fn collections_of(body: &Value) -> Value {
    let p = &body["properties"];
    json!({
        "applicationRuleCollections": p["applicationRuleCollections"],
        "natRuleCollections": p["natRuleCollections"],
        "networkRuleCollections": p["networkRuleCollections"],
        "sku": p["sku"],
        "threatIntelMode": p["threatIntelMode"],
    })
}

/// A PUT body for `fw` as GET showed it, with `edit` applied to its properties.
fn rewrite(fw: &Value, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut body = fw.clone();
    edit(body["properties"].as_object_mut().unwrap());
    body
}

fn network_collection(name: &str, priority: i64) -> Value {
    json!({
        "name": name,
        "properties": {
            "priority": priority,
            "action": { "type": "Allow" },
            "rules": [{
                "name": "ssh",
                "protocols": ["TCP"],
                "sourceAddresses": ["10.1.0.0/16"],
                "destinationAddresses": ["10.0.0.4"],
                "destinationPorts": ["22"],
            }]
        }
    })
}

fn nat_collection(name: &str, priority: i64, rule: Value) -> Value {
    json!({
        "name": name,
        "properties": { "priority": priority, "action": { "type": "Dnat" }, "rules": [rule] }
    })
}

fn dnat_rule() -> Value {
    json!({
        "name": "ssh",
        "protocols": ["TCP"],
        "sourceAddresses": ["203.0.113.7/32"],
        "destinationAddresses": ["198.51.100.4"],
        "destinationPorts": ["50000"],
        "translatedAddress": "10.0.0.4",
        "translatedPort": "22",
    })
}

#[tokio::test]
async fn firewall_get_matches_the_example() {
    let arm = emulator_like_the_examples().await;
    let seeded = arm.seed_firewall("rg1", "azurefirewall", example_properties());
    assert_eq!(seeded.id, FW_ID);

    let got = ArmClient::new(&arm).get(FW_ID).await;

    assert_eq!(got.status, 200, "{}", got.body);
    let example = example_body(FW_GET, "200");
    // Seeded without tags; the PUT test checks that tags are kept.
    assert_shape("GET firewall", &example, &got.body, &["tags"]);
    assert_contains(
        "GET firewall",
        &collections_of(&example),
        &collections_of(&got.body),
    );
    assert_eq!(got.body["type"], "Microsoft.Network/azureFirewalls");
    assert_eq!(
        got.body["properties"]["natRuleCollections"][0]["id"],
        format!("{FW_ID}/natRuleCollections/natrulecoll")
    );
    let etag = got.body["etag"].as_str().expect("a firewall has an etag");
    assert!(etag.starts_with("W/\"") && etag.ends_with('"'), "{etag}");
    assert_eq!(
        got.header("etag"),
        None,
        "the etag is in the body, as for NSGs"
    );
    assert_eq!(arm.firewall(FW_ID), Some(got.body));
}

#[tokio::test]
async fn firewall_put_matches_the_example_and_completes_through_azure_async_operation() {
    let arm = emulator_like_the_examples().await;
    let client = ArmClient::new(&arm);
    let body = fixture(FW_PUT)["parameters"]["parameters"].clone();

    let created = client.put(FW_ID, &body).await;

    assert_eq!(created.status, 201, "{}", created.body);
    // The 201 example adds autoscaleConfiguration, which the request did not set.
    let example = example_body(FW_PUT, "201");
    assert_shape(
        "PUT firewall (201)",
        &example,
        &created.body,
        &["properties.autoscaleConfiguration"],
    );
    assert_eq!(created.body["properties"]["provisioningState"], "Updating");
    assert_eq!(created.body["location"], "West US");
    assert_eq!(created.body["tags"], json!({ "key1": "value1" }));
    assert!(created.header("azure-asyncoperation").is_some());
    assert_eq!(created.header("retry-after"), Some("1"));
    assert_eq!(
        poll_async(&client, &created).await,
        ["InProgress", "Succeeded"]
    );
    let done = client.get(FW_ID).await;
    assert_eq!(done.body["properties"]["provisioningState"], "Succeeded");
    assert_contains(
        "GET after PUT",
        &collections_of(&example),
        &collections_of(&done.body),
    );

    // Writing back what GET showed (read-only members and all) is accepted unchanged.
    let updated = client.put(FW_ID, &done.body).await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_shape(
        "PUT firewall (200)",
        &example_body(FW_PUT, "200"),
        &updated.body,
        &[],
    );
    assert_ne!(updated.body["etag"], done.body["etag"]);
    poll_async(&client, &updated).await;
    assert_eq!(
        collections_of(&client.get(FW_ID).await.body),
        collections_of(&done.body)
    );
    assert_eq!(arm.pending_operations(), 0);
}

#[tokio::test]
async fn firewall_delete_matches_the_example_and_completes_through_location() {
    let arm = emulator_like_the_examples().await;
    let client = ArmClient::new(&arm);
    arm.seed_firewall("rg1", "azurefirewall", json!({}));

    let deleted = client.delete(FW_ID).await;

    assert_eq!(deleted.status, 202, "{}", deleted.body);
    for header in example_headers(FW_DELETE, "202") {
        assert!(deleted.header(&header).is_some(), "202 lacks {header}");
    }
    let location = deleted.header("location").unwrap().to_string();
    assert!(location.contains("/operationResults/"), "{location}");
    assert_eq!(
        client.get(FW_ID).await.body["properties"]["provisioningState"],
        "Deleting"
    );
    assert_eq!(client.get(&location).await.status, 202);
    assert_eq!(client.get(&location).await.status, 204);
    let gone = client.get(FW_ID).await;
    assert_eq!(
        (gone.status, gone.error_code()),
        (404, Some("ResourceNotFound"))
    );
    assert_eq!(client.delete(FW_ID).await.status, 204);
    assert_eq!(arm.firewall_writes(FW_ID), 2);
}

#[tokio::test]
async fn stale_etags_get_412_and_a_read_hook_changes_the_firewall_after_a_get() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let fw = arm.seed_firewall("rg1", "fw", json!({})).id;
    arm.on_next_firewall_read(&fw, |props| {
        props["networkRuleCollections"] = json!([network_collection("theirs", 300)]);
    });

    let read = client.get(&fw).await;
    let etag = read.body["etag"].as_str().unwrap().to_string();
    assert_eq!(read.body["properties"]["networkRuleCollections"], json!([]));
    let now = arm.firewall(&fw).unwrap();
    assert_ne!(
        now["etag"], read.body["etag"],
        "the hook ran after the read"
    );
    assert_eq!(
        now["properties"]["networkRuleCollections"][0]["name"],
        "theirs"
    );

    let url = client.url(&fw);
    let stale = client
        .send(Method::PUT, &url, Some(&read.body), &[("If-Match", &etag)])
        .await;
    assert_eq!(
        (stale.status, stale.error_code()),
        (412, Some("PreconditionFailed"))
    );
    let fresh = now["etag"].as_str().unwrap();
    let accepted = client
        .send(Method::PUT, &url, Some(&now), &[("If-Match", fresh)])
        .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    // The hook fires once.
    poll_async(&client, &accepted).await;
    let again = client.get(&fw).await;
    assert_eq!(arm.firewall(&fw).unwrap()["etag"], again.body["etag"]);

    // A change queued for the next write lands just before it: that write loses.
    let etag = again.body["etag"].as_str().unwrap().to_string();
    arm.on_next_firewall_write(&fw, |props| {
        props["networkRuleCollections"]
            .as_array_mut()
            .unwrap()
            .push(network_collection("later", 301));
    });
    let lost = client
        .send(Method::PUT, &url, Some(&again.body), &[("If-Match", &etag)])
        .await;
    assert_eq!(lost.status, 412, "{}", lost.body);
    let names: Vec<Value> = arm.firewall(&fw).unwrap()["properties"]["networkRuleCollections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, [json!("theirs"), json!("later")]);
}

#[tokio::test]
async fn a_busy_firewall_answers_retryable_error_or_another_operation_in_progress() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let fw = arm.seed_firewall("rg1", "fw", json!({})).id;
    let body = arm.firewall(&fw).unwrap();
    let first = client.put(&fw, &body).await;
    assert_eq!(first.status, 200, "{}", first.body);

    let second = client.put(&fw, &body).await;
    assert_eq!(
        (second.status, second.error_code()),
        (429, Some("RetryableError"))
    );
    assert_eq!(second.header("retry-after"), Some("1"));
    let third = client.put(&fw, &body).await;
    assert_eq!(
        (third.status, third.error_code()),
        (409, Some("AnotherOperationInProgress"))
    );
    poll_async(&client, &first).await;
    assert_eq!(client.put(&fw, &body).await.status, 200);
}

#[tokio::test]
async fn rule_collections_are_checked_as_arm_does() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let fw = arm.seed_firewall("rg1", "fw", json!({})).id;
    let base = arm.firewall(&fw).unwrap();
    let refuse = |edit: Edit| {
        let body = rewrite(&base, edit);
        let client = client.clone();
        let fw = fw.clone();
        async move { client.put(&fw, &body).await }
    };
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "DuplicateResourceName",
            "a",
            Box::new(|p| {
                p["networkRuleCollections"] =
                    json!([network_collection("a", 300), network_collection("a", 301)]);
            }),
        ),
        (
            "AzureFirewallRuleCollectionDuplicatePriority",
            "same priority 300",
            Box::new(|p| {
                p["networkRuleCollections"] =
                    json!([network_collection("a", 300), network_collection("b", 300)]);
            }),
        ),
        (
            "AzureFirewallRuleCollectionInvalidPriority",
            "properties.priority",
            Box::new(|p| {
                p["networkRuleCollections"] = json!([network_collection("a", 65001)]);
            }),
        ),
        (
            "AzureFirewallRuleCollectionInvalidAction",
            "action.type",
            Box::new(|p| {
                p["natRuleCollections"] = json!([{"name": "n", "properties": {"priority": 100, "action": {"type": "Allow"}, "rules": []}}]);
            }),
        ),
        (
            "AzureFirewallNatRuleInvalid",
            "destinationAddresses",
            Box::new(|p| {
                let mut rule = dnat_rule();
                rule["destinationAddresses"] = json!(["198.51.100.4", "198.51.100.5"]);
                p["natRuleCollections"] = json!([nat_collection("n", 100, rule)]);
            }),
        ),
        (
            "AzureFirewallNatRuleInvalid",
            "destinationPorts",
            Box::new(|p| {
                let mut rule = dnat_rule();
                rule["destinationPorts"] = json!(["50000-50010"]);
                p["natRuleCollections"] = json!([nat_collection("n", 100, rule)]);
            }),
        ),
        (
            "AzureFirewallNatRuleInvalid",
            "translatedPort",
            Box::new(|p| {
                let mut rule = dnat_rule();
                rule.as_object_mut().unwrap().remove("translatedPort");
                p["natRuleCollections"] = json!([nat_collection("n", 100, rule)]);
            }),
        ),
        (
            "AzureFirewallRuleInvalidProtocol",
            "ICMP",
            Box::new(|p| {
                let mut rule = dnat_rule();
                rule["protocols"] = json!(["ICMP"]);
                p["natRuleCollections"] = json!([nat_collection("n", 100, rule)]);
            }),
        ),
        (
            "AzureFirewallRuleParameterMissing",
            "DestinationPorts",
            Box::new(|p| {
                let mut c = network_collection("a", 300);
                c["properties"]["rules"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("destinationPorts");
                p["networkRuleCollections"] = json!([c]);
            }),
        ),
        (
            "AzureFirewallRuleDuplicateName",
            "ssh",
            Box::new(|p| {
                let mut c = network_collection("a", 300);
                let rule = c["properties"]["rules"][0].clone();
                c["properties"]["rules"].as_array_mut().unwrap().push(rule);
                p["networkRuleCollections"] = json!([c]);
            }),
        ),
    ];
    for (code, mentions, edit) in cases {
        let refused = refuse(edit).await;
        assert_eq!(refused.status, 400, "{code}: {}", refused.body);
        assert_eq!(refused.error_code(), Some(code), "{}", refused.body);
        assert!(
            refused.error_message().contains(mentions),
            "{code}: {}",
            refused.error_message()
        );
    }
    assert_eq!(arm.pending_operations(), 0, "nothing refused was written");

    // The same priority in two kinds is fine, and protocols come back in ARM's casing.
    let mut rule = dnat_rule();
    rule["protocols"] = json!(["tcp"]);
    let body = rewrite(&base, |p| {
        p["networkRuleCollections"] = json!([network_collection("a", 300)]);
        p["natRuleCollections"] = json!([nat_collection("n", 300, rule)]);
    });
    let ok = client.put(&fw, &body).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.body["properties"]["natRuleCollections"][0]["properties"]["rules"][0]["protocols"],
        json!(["TCP"])
    );
}

#[tokio::test]
async fn firewall_manager_firewalls_refuse_classic_rules() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let policy = format!(
        "/subscriptions/{}/resourceGroups/rg1/providers/Microsoft.Network/firewallPolicies/central",
        arm.subscription
    );
    let fw = arm
        .seed_firewall(
            "rg1",
            "managed",
            json!({ "firewallPolicy": { "id": policy }, "sku": { "name": "AZFW_VNet", "tier": "Premium" } }),
        )
        .id;
    let got = client.get(&fw).await;
    assert_eq!(got.body["properties"]["firewallPolicy"]["id"], policy);
    assert_eq!(got.body["properties"]["sku"]["tier"], "Premium");

    let body = rewrite(&got.body, |p| {
        p["networkRuleCollections"] = json!([network_collection("a", 300)]);
    });
    let refused = client.put(&fw, &body).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.error_message().contains(&policy));
}
