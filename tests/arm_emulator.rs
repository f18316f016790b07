//! The ARM emulator (`tests/support/arm`), spoken to over HTTPS: its answers checked
//! against Microsoft's published examples (`tests/fixtures/azure/`), and the ARM
//! behaviours Portcullis must cope with — long-running operations, ETags, validation,
//! busy NSGs, throttling and authentication.

#[path = "support/mod.rs"]
mod support;

#[path = "arm_emulator/firewall.rs"]
mod firewall;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use support::arm::{ArmClient, ArmEmulator, ArmOptions, ArmResponse, BusyAnswer, Faults};

const RG: &str = "rg1";

const NSG_GET: &str = "network-2024-05-01__NetworkSecurityGroupGet.json";
const NSG_LIST: &str = "network-2024-05-01__NetworkSecurityGroupList.json";
const NSG_PUT: &str = "network-2024-05-01__NetworkSecurityGroupCreateWithRule.json";
const NSG_DELETE: &str = "network-2024-07-01__NetworkSecurityGroupDelete.json";
const RULE_GET: &str = "network-2024-05-01__NetworkSecurityGroupRuleGet.json";
const RULE_LIST: &str = "network-2024-05-01__NetworkSecurityGroupRuleList.json";
const RULE_PUT: &str = "network-2024-05-01__NetworkSecurityGroupRuleCreate.json";
const RULE_DELETE: &str = "network-2024-07-01__NetworkSecurityGroupRuleDelete.json";
const NIC_GET: &str = "network-2024-05-01__NetworkInterfaceGet.json";
const SUBNET_GET: &str = "network-2024-05-01__SubnetGet.json";
const VM_GET: &str = "compute-2025-11-01__VirtualMachine_Get.json";

// ----- the examples -----

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/azure")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixtures are JSON")
}

/// The body of `status` in example `name`.
fn example_body(name: &str, status: &str) -> Value {
    fixture(name)["responses"][status]["body"].clone()
}

/// The header names of `status` in example `name`.
fn example_headers(name: &str, status: &str) -> Vec<String> {
    fixture(name)["responses"][status]["headers"]
        .as_object()
        .map(|h| h.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every key path of `value`: `a.b` for object members, `a[]` for array elements.
fn key_paths(value: &Value) -> BTreeSet<String> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, member) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    out.insert(path.clone());
                    walk(&path, member, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    walk(&format!("{prefix}[]"), item, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk("", value, &mut out);
    out
}

/// Asserts that `actual` has every key path of `example`, except those at or under an
/// `optional` path (fields the schema makes optional and the emulator leaves out).
fn assert_shape(what: &str, example: &Value, actual: &Value, optional: &[&str]) {
    let have = key_paths(actual);
    let skipped = |path: &str| {
        optional.iter().any(|o| {
            path == *o || path.starts_with(&format!("{o}.")) || path.starts_with(&format!("{o}["))
        })
    };
    let missing: Vec<String> = key_paths(example)
        .into_iter()
        .filter(|p| !have.contains(p) && !skipped(p))
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: the emulator's body lacks {missing:#?}\nbody: {actual:#}"
    );
}

/// Asserts that every member of `example` is in `actual` with the same value (arrays
/// element by element); `actual` may have more members.
fn assert_contains(what: &str, example: &Value, actual: &Value) {
    fn check(path: &str, example: &Value, actual: &Value) -> Result<(), String> {
        match (example, actual) {
            (Value::Object(want), Value::Object(have)) => {
                for (key, value) in want {
                    let member = have
                        .get(key)
                        .ok_or_else(|| format!("{path}.{key} is missing"))?;
                    check(&format!("{path}.{key}"), value, member)?;
                }
                Ok(())
            }
            (Value::Array(want), Value::Array(have)) => {
                if want.len() != have.len() {
                    return Err(format!(
                        "{path} has {} elements, the example {}",
                        have.len(),
                        want.len()
                    ));
                }
                for (i, (w, h)) in want.iter().zip(have).enumerate() {
                    check(&format!("{path}[{i}]"), w, h)?;
                }
                Ok(())
            }
            (want, have) if want == have => Ok(()),
            (want, have) => Err(format!("{path} is {have}, the example has {want}")),
        }
    }
    if let Err(difference) = check("", example, actual) {
        panic!("{what}: {difference}\nbody: {actual:#}");
    }
}

// ----- helpers -----

/// An emulator whose seeded ids are those of the network examples (subscription `subid`).
async fn emulator_like_the_examples() -> ArmEmulator {
    ArmEmulator::start_with(ArmOptions {
        subscription: "subid".to_string(),
        ..ArmOptions::default()
    })
    .await
}

/// A valid inbound SSH rule at `priority` in `direction`.
fn ssh_rule(priority: i64, direction: &str) -> Value {
    json!({
        "properties": {
            "protocol": "Tcp",
            "sourcePortRange": "*",
            "destinationPortRange": "22",
            "sourceAddressPrefix": "203.0.113.7/32",
            "destinationAddressPrefix": "10.0.0.4",
            "access": "Allow",
            "priority": priority,
            "direction": direction,
        }
    })
}

/// Polls the `Azure-AsyncOperation` URL of `accepted` until it leaves `InProgress`;
/// returns the statuses seen.
async fn poll_async(client: &ArmClient, accepted: &ArmResponse) -> Vec<String> {
    let url = accepted
        .header("azure-asyncoperation")
        .expect("an accepted write carries Azure-AsyncOperation")
        .to_string();
    let mut seen = Vec::new();
    for _ in 0..20 {
        let poll = client.get(&url).await;
        assert_eq!(poll.status, 200, "poll of {url}: {}", poll.body);
        let status = poll.body["status"]
            .as_str()
            .expect("operation status")
            .to_string();
        seen.push(status.clone());
        if status != "InProgress" {
            return seen;
        }
    }
    panic!("operation {url} never finished: {seen:?}");
}

/// PUTs `body` to `path`, expects it accepted and polls it to completion.
async fn put_and_wait(client: &ArmClient, path: &str, body: &Value) -> ArmResponse {
    let accepted = client.put(path, body).await;
    assert!(
        matches!(accepted.status, 200 | 201),
        "PUT {path}: {} {}",
        accepted.status,
        accepted.body
    );
    assert_eq!(
        poll_async(client, &accepted)
            .await
            .last()
            .map(String::as_str),
        Some("Succeeded")
    );
    accepted
}

fn rule_names(rules: &[Value]) -> Vec<String> {
    rules
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

// ----- 1. shapes against Microsoft's examples -----

#[tokio::test]
async fn nsg_get_matches_the_example() {
    let arm = emulator_like_the_examples().await;
    let example = example_body(NSG_GET, "200");
    let nsg = arm.seed_nsg(RG, "testnsg");
    arm.seed_rule(
        &nsg,
        "rule1",
        example["properties"]["securityRules"][0]["properties"].clone(),
    );

    let got = ArmClient::new(&arm).get(&nsg).await;

    assert_eq!(got.status, 200, "{}", got.body);
    assert_shape("GET NSG", &example, &got.body, &[]);
    assert_contains("GET NSG", &example, &got.body);
    let etag = got.body["etag"].as_str().expect("an NSG has an etag");
    assert!(etag.starts_with("W/\"") && etag.ends_with('"'), "{etag}");
}

#[tokio::test]
async fn default_rules_are_the_six_of_the_examples() {
    let arm = emulator_like_the_examples().await;
    let client = ArmClient::new(&arm);
    let seeded = arm.seed_nsg(RG, "testnsg");
    let put = NSG_PUT;
    let created = put_and_wait(
        &client,
        &format!("/subscriptions/subid/resourceGroups/{RG}/providers/Microsoft.Network/networkSecurityGroups/other"),
        &json!({ "location": "westus" }),
    )
    .await;
    let created_id = created.body["id"].as_str().unwrap().to_string();

    let summary = |rules: &Value| -> Vec<(String, i64, String, String)> {
        rules
            .as_array()
            .expect("a list of rules")
            .iter()
            .map(|r| {
                let p = &r["properties"];
                (
                    r["name"].as_str().unwrap().to_string(),
                    p["priority"].as_i64().unwrap(),
                    p["direction"].as_str().unwrap().to_string(),
                    p["access"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let want = example_body(NSG_GET, "200")["properties"]["defaultSecurityRules"].clone();
    assert_eq!(
        summary(&want),
        [
            ("AllowVnetInBound", 65000, "Inbound", "Allow"),
            ("AllowAzureLoadBalancerInBound", 65001, "Inbound", "Allow"),
            ("DenyAllInBound", 65500, "Inbound", "Deny"),
            ("AllowVnetOutBound", 65000, "Outbound", "Allow"),
            ("AllowInternetOutBound", 65001, "Outbound", "Allow"),
            ("DenyAllOutBound", 65500, "Outbound", "Deny"),
        ]
        .map(|(n, p, d, a)| (n.to_string(), p, d.to_string(), a.to_string()))
    );
    // The PUT example repeats them for another NSG: same rules, other ids.
    assert_eq!(
        summary(&example_body(put, "201")["properties"]["defaultSecurityRules"]),
        summary(&want)
    );

    let got = client.get(&seeded).await;
    assert_contains(
        "default rules of a seeded NSG",
        &want,
        &got.body["properties"]["defaultSecurityRules"],
    );
    let listed = client.get(&format!("{seeded}/defaultSecurityRules")).await;
    assert_eq!(listed.status, 200);
    assert_contains("defaultSecurityRules list", &want, &listed.body["value"]);
    let one = client
        .get(&format!("{seeded}/defaultSecurityRules/DenyAllInBound"))
        .await;
    assert_contains("one default rule", &want[2], &one.body);

    let created = client.get(&created_id).await;
    assert_eq!(
        summary(&created.body["properties"]["defaultSecurityRules"]),
        summary(&want),
        "an NSG created by PUT carries the six default rules"
    );
}

#[tokio::test]
async fn rule_get_and_list_match_the_examples() {
    let arm = emulator_like_the_examples().await;
    let client = ArmClient::new(&arm);
    let example = example_body(RULE_GET, "200");
    let nsg = arm.seed_nsg(RG, "testnsg");
    let rule = arm.seed_rule(&nsg, "rule1", example["properties"].clone());

    let got = client.get(&rule).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_shape("GET rule", &example, &got.body, &[]);
    assert_contains("GET rule", &example, &got.body);
    assert_eq!(
        got.body["type"],
        "Microsoft.Network/networkSecurityGroups/securityRules"
    );

    let listed = client.get(&format!("{nsg}/securityRules")).await;
    let list_example = example_body(RULE_LIST, "200");
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_shape("list rules", &list_example, &listed.body, &[]);
    assert_contains("list rules", &list_example, &listed.body);
    assert!(listed.body.get("nextLink").is_none());
}

#[tokio::test]
async fn rule_put_matches_the_example_and_completes_through_azure_async_operation() {
    let arm = emulator_like_the_examples().await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "testnsg");
    let body = fixture(RULE_PUT)["parameters"]["securityRuleParameters"].clone();
    let path = format!("{nsg}/securityRules/rule1");

    let created = client.put(&path, &body).await;

    assert_eq!(created.status, 201, "{}", created.body);
    let example = example_body(RULE_PUT, "201");
    assert_shape("PUT rule (201)", &example, &created.body, &[]);
    let operation = created.header("azure-asyncoperation").unwrap_or_default();
    assert!(
        operation.starts_with(&format!(
            "{}/subscriptions/subid/providers/Microsoft.Network/locations/westus/operations/",
            arm.url
        )) && operation.contains("?api-version=2024-05-01"),
        "{operation}"
    );
    assert_eq!(created.header("retry-after"), Some("1"));
    assert_eq!(created.body["properties"]["provisioningState"], "Updating");

    // ARM shows the rule while it is being written.
    let during = client.get(&path).await;
    assert_eq!(during.status, 200);
    assert_eq!(during.body["properties"]["provisioningState"], "Updating");

    assert_eq!(
        poll_async(&client, &created).await,
        ["InProgress", "Succeeded"]
    );
    let done = client.get(&path).await;
    assert_contains("GET after PUT", &example, &done.body);

    let updated = client.put(&path, &body).await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_shape(
        "PUT rule (200)",
        &example_body(RULE_PUT, "200"),
        &updated.body,
        &[],
    );
    assert_ne!(
        updated.body["etag"], done.body["etag"],
        "a write changes the etag"
    );
    poll_async(&client, &updated).await;
    assert_eq!(arm.pending_operations(), 0);
}

#[tokio::test]
async fn rule_delete_matches_the_example_and_completes_through_location() {
    let arm = emulator_like_the_examples().await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "testnsg");
    let rule = arm.seed_rule(
        &nsg,
        "rule1",
        ssh_rule(130, "Inbound")["properties"].clone(),
    );

    let deleted = client.delete(&rule).await;

    assert_eq!(deleted.status, 202, "{}", deleted.body);
    assert_eq!(deleted.body, Value::Null);
    for header in example_headers(RULE_DELETE, "202")
        .into_iter()
        .chain(["Location".to_string()])
    {
        assert!(deleted.header(&header).is_some(), "202 lacks {header}");
    }
    assert_eq!(
        arm.rule(&nsg, "rule1").unwrap()["properties"]["provisioningState"],
        "Deleting"
    );
    let location = deleted.header("location").unwrap().to_string();
    assert!(location.contains("/operationResults/"), "{location}");

    let first = client.get(&location).await;
    assert_eq!(first.status, 202);
    assert!(first.header("location").is_some() && first.header("retry-after").is_some());
    let second = client.get(&location).await;
    assert_eq!(second.status, 204);

    let gone = client.get(&rule).await;
    assert_eq!((gone.status, gone.error_code()), (404, Some("NotFound")));
    let again = client.delete(&rule).await;
    assert_eq!(
        again.status, 204,
        "deleting what is gone succeeds, like the example's 204"
    );
    assert!(example_body(RULE_DELETE, "204").is_null());
}

#[tokio::test]
async fn nsg_put_with_an_inline_rule_matches_the_example() {
    let arm = emulator_like_the_examples().await;
    let client = ArmClient::new(&arm);
    let body = fixture(NSG_PUT)["parameters"]["parameters"].clone();
    let path = "/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Network/networkSecurityGroups/testnsg";

    let created = client.put(path, &body).await;

    assert_eq!(created.status, 201, "{}", created.body);
    let example = example_body(NSG_PUT, "201");
    assert_shape("PUT NSG (201)", &example, &created.body, &[]);
    assert_eq!(created.body["properties"]["provisioningState"], "Updating");
    assert_eq!(
        poll_async(&client, &created).await,
        ["InProgress", "Succeeded"]
    );
    let done = client.get(path).await;
    assert_contains("GET after PUT NSG", &example, &done.body);

    let updated = client.put(path, &body).await;
    assert_eq!(updated.status, 200);
    assert_shape(
        "PUT NSG (200)",
        &example_body(NSG_PUT, "200"),
        &updated.body,
        &[],
    );
    poll_async(&client, &updated).await;

    // A PUT replaces the whole NSG: rules it does not list are gone.
    put_and_wait(&client, path, &json!({ "location": "eastus" })).await;
    assert!(arm.rules(path).is_empty());
}

#[tokio::test]
async fn nsg_list_and_delete_match_the_examples() {
    let arm = emulator_like_the_examples().await;
    let client = ArmClient::new(&arm);
    arm.seed_nsg(RG, "nsg1");
    let nsg3 = arm.seed_nsg(RG, "nsg3");
    arm.seed_nsg("other-rg", "nsg2");

    let listed = client
        .get("/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Network/networkSecurityGroups")
        .await;
    let example = example_body(NSG_LIST, "200");
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_shape("list NSGs", &example, &listed.body, &[]);
    assert_contains("list NSGs", &example, &listed.body);
    let everywhere = client
        .get("/subscriptions/subid/providers/Microsoft.Network/networkSecurityGroups")
        .await;
    assert_eq!(everywhere.body["value"].as_array().map(Vec::len), Some(3));

    let deleted = client.delete(&nsg3).await;
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    for header in example_headers(NSG_DELETE, "202") {
        assert!(deleted.header(&header).is_some(), "202 lacks {header}");
    }
    assert_eq!(
        client.get(&nsg3).await.body["properties"]["provisioningState"],
        "Deleting"
    );
    assert_eq!(
        poll_async(&client, &deleted).await,
        ["InProgress", "Succeeded"]
    );
    assert_eq!(client.get(&nsg3).await.status, 404);
    assert_eq!(client.delete(&nsg3).await.status, 204);
}

#[tokio::test]
async fn nic_subnet_and_vm_match_the_examples() {
    let arm = emulator_like_the_examples().await;
    let client = ArmClient::new(&arm);
    let nic_example = example_body(NIC_GET, "200");
    let nsg = arm.seed_nsg(RG, "nsg");
    let subnet = arm.seed_vnet_subnet(RG, "rg1-vnet", "default", "172.20.2.0/24", None);
    let nic = arm.seed_nic(RG, "test-nic", &subnet, &["172.20.2.4"], Some(&nsg));
    let vm = arm.seed_vm(RG, "vm1", &[&nic]);

    let got = client.get(&nic).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_shape(
        "GET NIC",
        &nic_example,
        &got.body,
        &[
            // The seeded NIC has no public address.
            "properties.ipConfigurations[].properties.publicIPAddress",
            // Only IP configurations holding a prefix have a prefix length.
            "properties.ipConfigurations[].properties.privateIPAddressPrefixLength",
            // DSCP configurations are optional and unused here.
            "properties.dscpConfiguration",
        ],
    );
    // The ids the operator follows are exactly the example's.
    for pointer in [
        "/id",
        "/properties/networkSecurityGroup/id",
        "/properties/virtualMachine/id",
        "/properties/ipConfigurations/0/properties/subnet/id",
        "/properties/ipConfigurations/0/properties/privateIPAddress",
        "/properties/ipConfigurations/0/properties/primary",
    ] {
        assert_eq!(
            got.body.pointer(pointer),
            nic_example.pointer(pointer),
            "{pointer}"
        );
    }

    let subnet_example = example_body(SUBNET_GET, "200");
    let plain = arm.seed_vnet_subnet(RG, "vnetname", "subnet1", "10.0.0.0/16", None);
    let got = client.get(&plain).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_shape("GET subnet", &subnet_example, &got.body, &[]);
    assert_eq!(got.body["properties"]["addressPrefix"], "10.0.0.0/16");
    assert!(got.body["properties"].get("networkSecurityGroup").is_none());
    arm.set_subnet_nsg(&plain, Some(&nsg));
    let got = client.get(&plain).await;
    assert_eq!(
        got.body["properties"]["networkSecurityGroup"]["id"],
        nsg.as_str()
    );

    let got = client.get(&format!("{vm}?api-version=2025-11-01")).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_shape(
        "GET VM",
        &example_body(VM_GET, "200"),
        &got.body,
        &[
            // Optional placement, application and extension settings the seeded VM lacks.
            "properties.availabilitySet",
            "properties.proximityPlacementGroup",
            "properties.applicationProfile",
            "resources",
            // Only VMs of a scale set are managed by it.
            "managedBy",
            // Returned only with `$expand=userData`.
            "properties.userData",
            // The seeded VM runs Linux, has no data disks and uses managed boot diagnostics.
            "properties.osProfile.windowsConfiguration",
            "properties.storageProfile.dataDisks[]",
            "properties.diagnosticsProfile.bootDiagnostics.storageUri",
            // Tags are free-form.
            "tags.myTag1",
        ],
    );
    assert_eq!(
        got.body["properties"]["networkProfile"]["networkInterfaces"][0]["id"],
        nic.as_str()
    );
    assert_eq!(got.body["properties"]["provisioningState"], "Succeeded");
}

/// Follows `nextLink` from `path`; every page's items and how many pages there were.
async fn all_pages(client: &ArmClient, path: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut next = Some(path.to_string());
    while let Some(url) = next {
        let page = client.get(&url).await;
        assert_eq!(page.status, 200, "{url}: {}", page.body);
        pages += 1;
        items.extend(page.body["value"].as_array().cloned().unwrap_or_default());
        next = page.body["nextLink"].as_str().map(str::to_string);
        assert!(pages < 50, "nextLink never ends");
    }
    (items, pages)
}

#[tokio::test]
async fn lists_page_with_next_link_and_match_the_examples() {
    let arm = ArmEmulator::start_with(ArmOptions {
        subscription: "subid".to_string(),
        list_page_size: 2,
        ..ArmOptions::default()
    })
    .await;
    let client = ArmClient::new(&arm);
    let vms: Vec<_> = (1..=3)
        .map(|i| arm.seed_vm_with_network(RG, &format!("vm{i}"), &format!("10.0.{i}.4")))
        .collect();
    arm.seed_vm_with_network("other-rg", "elsewhere", "10.9.0.4");
    arm.set_power_state(&vms[1].vm_id, "deallocated");
    let pip = arm.seed_public_ip(RG, "vm1-ip", "203.0.113.10", Some(&vms[0].nic_id));

    // VMs: three, two to a page; each shaped like a GET.
    let (listed, pages) = all_pages(
        &client,
        "/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines?api-version=2025-11-01",
    )
    .await;
    assert_eq!((listed.len(), pages), (3, 2));
    let first = client
        .get("/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines?api-version=2025-11-01")
        .await;
    let next = first.body["nextLink"].as_str().unwrap();
    assert!(next.starts_with(&arm.url), "{next}");
    assert!(next.contains("api-version=2025-11-01"), "{next}");
    let single = client
        .get(&format!("{}?api-version=2025-11-01", vms[0].vm_id))
        .await;
    assert_eq!(key_paths(&listed[0]), key_paths(&single.body));
    assert!(listed[0]["properties"].get("instanceView").is_none());

    // Power states: `statusOnly=true` on the subscription, `$expand=instanceView` on a group.
    let power = |v: &Value| {
        v["properties"]["instanceView"]["statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["code"].as_str())
            .find(|c| c.starts_with("PowerState/"))
            .map(str::to_string)
    };
    let (status, _) = all_pages(
        &client,
        "/subscriptions/subid/providers/Microsoft.Compute/virtualMachines?api-version=2025-11-01&statusOnly=true",
    )
    .await;
    let states: Vec<(String, Option<String>)> = status
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), power(v)))
        .collect();
    assert_eq!(
        states,
        [
            (
                "elsewhere".to_string(),
                Some("PowerState/running".to_string())
            ),
            ("vm1".to_string(), Some("PowerState/running".to_string())),
            (
                "vm2".to_string(),
                Some("PowerState/deallocated".to_string())
            ),
            ("vm3".to_string(), Some("PowerState/running".to_string())),
        ]
    );
    let (expanded, _) = all_pages(
        &client,
        "/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines?api-version=2025-11-01&%24expand=instanceView",
    )
    .await;
    assert_eq!(
        power(&expanded[1]).as_deref(),
        Some("PowerState/deallocated")
    );
    assert!(expanded[1]["properties"]["networkProfile"].is_object());

    // NICs, with the public IP that names them.
    let (nics, _) = all_pages(
        &client,
        "/subscriptions/subid/providers/Microsoft.Network/networkInterfaces",
    )
    .await;
    assert_eq!(nics.len(), 4);
    let vm1_nic = nics
        .iter()
        .find(|n| n["id"] == vms[0].nic_id.as_str())
        .unwrap();
    assert_shape(
        "list NICs",
        &example_body(NIC_GET, "200"),
        vm1_nic,
        &[
            "properties.ipConfigurations[].properties.privateIPAddressPrefixLength",
            "properties.dscpConfiguration",
        ],
    );
    let on_nic = |v: &Value| {
        v["properties"]["ipConfigurations"][0]["properties"]["publicIPAddress"]["id"].clone()
    };
    let vm1_nic = nics
        .iter()
        .find(|n| n["id"] == vms[0].nic_id.as_str())
        .unwrap();
    assert_eq!(on_nic(vm1_nic), json!(pip));
    assert_eq!(on_nic(&client.get(&vms[0].nic_id).await.body), json!(pip));

    // NSGs: two per seeded VM, paged; a page is shaped like the example list.
    let (nsgs, pages) = all_pages(
        &client,
        "/subscriptions/subid/providers/Microsoft.Network/networkSecurityGroups",
    )
    .await;
    assert_eq!((nsgs.len(), pages), (8, 4));
    let page = client
        .get("/subscriptions/subid/providers/Microsoft.Network/networkSecurityGroups")
        .await;
    let mut example = example_body(NSG_LIST, "200");
    example["nextLink"] = json!("https://…");
    assert_shape("list NSGs (a page)", &example, &page.body, &[]);
    assert_eq!(
        nsgs.iter()
            .find(|n| n["id"] == vms[0].subnet_nsg_id.as_str())
            .unwrap()["properties"]["subnets"][0]["id"],
        vms[0].subnet_id.as_str()
    );

    // Public IPs, firewalls and classic VMs, as stored.
    let (pips, _) = all_pages(
        &client,
        "/subscriptions/subid/providers/Microsoft.Network/publicIPAddresses",
    )
    .await;
    assert_eq!(pips.len(), 1);
    assert_shape(
        "list public IPs",
        &fixture("network-2024-05-01__PublicIpAddressGet.json")["responses"]["200"]["body"],
        &pips[0],
        &[
            // No DDoS protection plan and no IP tags on the seeded address.
            "properties.ddosSettings.ddosProtectionPlan",
            "properties.ipTags[]",
        ],
    );
    assert_eq!(pips[0]["properties"]["ipAddress"], "203.0.113.10");
    let fw = arm.seed_listed_firewall(
        RG,
        "fw1",
        "hub-vnet",
        "10.100.0.0/26",
        "10.100.0.4",
        Some("fw-policy"),
    );
    let classic =
        arm.seed_listed_firewall(RG, "fw2", "hub2-vnet", "10.101.0.0/26", "10.101.0.4", None);
    let (fws, _) = all_pages(
        &client,
        "/subscriptions/subid/resourceGroups/rg1/providers/Microsoft.Network/azureFirewalls",
    )
    .await;
    assert_eq!(fws.len(), 2);
    assert_shape(
        "list firewalls",
        &fixture("network-2024-05-01__AzureFirewallGet.json")["responses"]["200"]["body"],
        &fws[0],
        &[
            // Rule collections are the firewall helper's business; seeded firewalls have none.
            "properties.applicationRuleCollections[]",
            "properties.natRuleCollections[]",
            "properties.networkRuleCollections[]",
            "properties.ipConfigurations[].properties.publicIPAddress",
            "properties.autoscaleConfiguration",
            "tags.key1",
        ],
    );
    let by_id = |id: &str| fws.iter().find(|f| f["id"] == id).unwrap().clone();
    let policy = by_id(&fw)["properties"]["firewallPolicy"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(policy.ends_with("/providers/Microsoft.Network/firewallPolicies/fw-policy"));
    assert_eq!(
        client.get(&policy).await.body["properties"]["firewalls"][0]["id"],
        fw.as_str()
    );
    assert!(
        by_id(&classic)["properties"]
            .get("firewallPolicy")
            .is_none()
    );
    assert_eq!(client.get(&fw).await.body, by_id(&fw));

    let old = arm.seed_classic_vm(RG, "legacy");
    let (classics, _) = all_pages(
        &client,
        "/subscriptions/subid/providers/Microsoft.ClassicCompute/virtualMachines?api-version=2017-04-01",
    )
    .await;
    assert_eq!(classics.len(), 1);
    assert_eq!(classics[0]["id"], old.as_str());

    // A resource group that holds nothing does not exist.
    let missing = client
        .get("/subscriptions/subid/resourceGroups/nope/providers/Microsoft.Compute/virtualMachines?api-version=2025-11-01")
        .await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (404, Some("ResourceGroupNotFound"))
    );
    let bad = client
        .get("/subscriptions/subid/providers/Microsoft.Network/networkInterfaces?api-version=2024-05-01&$skiptoken=x")
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn ids_match_in_any_case_and_are_echoed_as_stored() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg("MyGroup", "Web-NSG");
    arm.seed_rule(
        &nsg,
        "Allow-SSH",
        ssh_rule(100, "Inbound")["properties"].clone(),
    );

    let shouted = client
        .get(&format!(
            "/SUBSCRIPTIONS/{}/RESOURCEGROUPS/mygroup/PROVIDERS/microsoft.network/NETWORKSECURITYGROUPS/web-nsg/SECURITYRULES/allow-ssh",
            arm.subscription
        ))
        .await;
    assert_eq!(shouted.status, 200, "{}", shouted.body);
    assert_eq!(shouted.body["id"], format!("{nsg}/securityRules/Allow-SSH"));
    assert_eq!(shouted.body["name"], "Allow-SSH");

    // A PUT in another case updates the rule ARM already has.
    let updated = client
        .put(
            &format!("{nsg}/securityRules/ALLOW-SSH"),
            &ssh_rule(110, "Inbound"),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["name"], "Allow-SSH");
    assert_eq!(rule_names(&arm.rules(&nsg.to_uppercase())), ["Allow-SSH"]);
}

#[tokio::test]
async fn a_seeded_vm_resolves_to_both_nsgs_and_rules_read_back() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let seeded = arm.seed_vm_with_network("rg-app", "vm1", "10.1.2.4");

    let vm = client.get(&seeded.vm_id).await;
    let nic_id = vm.body["properties"]["networkProfile"]["networkInterfaces"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(nic_id, seeded.nic_id);
    let nic = client.get(&nic_id).await;
    let config = &nic.body["properties"]["ipConfigurations"][0]["properties"];
    assert_eq!(config["privateIPAddress"], "10.1.2.4");
    assert_eq!(
        nic.body["properties"]["networkSecurityGroup"]["id"],
        seeded.nic_nsg_id.as_str()
    );
    let subnet = client.get(config["subnet"]["id"].as_str().unwrap()).await;
    assert_eq!(subnet.body["properties"]["addressPrefix"], "10.1.2.0/24");
    assert_eq!(
        subnet.body["properties"]["networkSecurityGroup"]["id"],
        seeded.subnet_nsg_id.as_str()
    );
    let nsg = client.get(&seeded.subnet_nsg_id).await;
    assert_eq!(
        nsg.body["properties"]["subnets"][0]["id"],
        seeded.subnet_id.as_str()
    );

    put_and_wait(
        &client,
        &format!("{}/securityRules/jit-deny-22", seeded.nic_nsg_id),
        &ssh_rule(4000, "Inbound"),
    )
    .await;
    let rules = arm.rules(&seeded.nic_nsg_id);
    assert_eq!(rule_names(&rules), ["jit-deny-22"]);
    assert_eq!(rules[0]["properties"]["provisioningState"], "Succeeded");
    assert!(arm.rules(&seeded.subnet_nsg_id).is_empty());
    let writes: Vec<(String, u16)> = arm
        .writes()
        .into_iter()
        .map(|c| (c.method, c.status))
        .collect();
    assert_eq!(writes, [("PUT".to_string(), 201)]);
    arm.clear_calls();
    assert!(arm.calls().is_empty());
}

#[tokio::test]
#[should_panic(expected = "conflicts with rule")]
async fn seeding_checks_rules_as_arm_does() {
    let arm = ArmEmulator::start().await;
    let nsg = arm.seed_nsg(RG, "nsg");
    arm.seed_rule(&nsg, "a", ssh_rule(200, "Inbound")["properties"].clone());
    arm.seed_rule(&nsg, "b", ssh_rule(200, "Inbound")["properties"].clone());
}

// ----- 3. ETags, conflicts, limits, validation, 404 -----

#[tokio::test]
async fn stale_etags_are_refused_with_412() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "nsg");
    let path = format!("{nsg}/securityRules/ssh");
    let first = put_and_wait(&client, &path, &ssh_rule(100, "Inbound")).await;
    let stale = first.body["etag"].as_str().unwrap().to_string();
    let nsg_etag_before = client.get(&nsg).await.body["etag"].clone();
    let second = put_and_wait(&client, &path, &ssh_rule(101, "Inbound")).await;
    let current = second.body["etag"].as_str().unwrap().to_string();
    assert_ne!(stale, current);
    assert_ne!(
        client.get(&nsg).await.body["etag"],
        nsg_etag_before,
        "a rule write changes the NSG's etag too"
    );

    let body = ssh_rule(102, "Inbound");
    let url = client.url(&path);
    let refused = client
        .send(Method::PUT, &url, Some(&body), &[("If-Match", &stale)])
        .await;
    assert_eq!(refused.status, 412, "{}", refused.body);
    assert_eq!(refused.error_code(), Some("PreconditionFailed"));
    let refused = client
        .send(Method::PUT, &url, Some(&body), &[("If-None-Match", "*")])
        .await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (412, Some("PreconditionFailed"))
    );
    let refused = client
        .send(Method::DELETE, &url, None, &[("If-Match", &stale)])
        .await;
    assert_eq!(refused.status, 412);
    assert_eq!(
        arm.rule(&nsg, "ssh").unwrap()["properties"]["priority"],
        101
    );

    let accepted = client
        .send(Method::PUT, &url, Some(&body), &[("If-Match", &current)])
        .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    poll_async(&client, &accepted).await;
    let created = client
        .send(
            Method::PUT,
            &client.url(&format!("{nsg}/securityRules/new")),
            Some(&ssh_rule(300, "Inbound")),
            &[("If-None-Match", "*")],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
}

#[tokio::test]
async fn same_priority_and_direction_is_security_rule_conflict_400() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "nsg");
    arm.seed_rule(
        &nsg,
        "foreign-rdp",
        ssh_rule(200, "Inbound")["properties"].clone(),
    );

    let refused = client
        .put(
            &format!("{nsg}/securityRules/jit-ssh"),
            &ssh_rule(200, "Inbound"),
        )
        .await;

    assert_eq!(refused.status, 400, "ARM answers 400, not 409");
    assert_eq!(refused.error_code(), Some("SecurityRuleConflict"));
    let message = refused.error_message();
    assert!(
        message.contains("foreign-rdp") && message.contains("jit-ssh"),
        "{message}"
    );
    assert_eq!(refused.body["error"]["details"], json!([]));
    assert!(arm.rule(&nsg, "jit-ssh").is_none());

    // The other direction is free.
    put_and_wait(
        &client,
        &format!("{nsg}/securityRules/jit-out"),
        &ssh_rule(200, "Outbound"),
    )
    .await;
    // Within one NSG PUT, two rules with the same priority and direction conflict too.
    let inline = json!({
        "location": "westus",
        "properties": { "securityRules": [
            { "name": "a", "properties": ssh_rule(300, "Inbound")["properties"] },
            { "name": "b", "properties": ssh_rule(300, "Inbound")["properties"] },
        ]}
    });
    let refused = client.put(&format!("{nsg}-2"), &inline).await;
    assert_eq!(refused.error_code(), Some("SecurityRuleConflict"));
}

#[tokio::test]
async fn the_rule_count_limit_is_security_rule_count_limit_reached_400() {
    let arm = ArmEmulator::start_with(ArmOptions {
        rule_limit: 3,
        ..ArmOptions::default()
    })
    .await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "nsg");
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        arm.seed_rule(
            &nsg,
            name,
            ssh_rule(100 + i as i64, "Inbound")["properties"].clone(),
        );
    }

    let refused = client
        .put(&format!("{nsg}/securityRules/d"), &ssh_rule(200, "Inbound"))
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.error_code(), Some("SecurityRuleCountLimitReached"));
    assert!(
        refused.error_message().contains("more than 3"),
        "{}",
        refused.error_message()
    );

    // Changing a rule does not add one.
    put_and_wait(
        &client,
        &format!("{nsg}/securityRules/a"),
        &ssh_rule(150, "Inbound"),
    )
    .await;

    let rules: Vec<Value> = (0..4)
        .map(|i| json!({ "name": format!("r{i}"), "properties": ssh_rule(100 + i, "Inbound")["properties"] }))
        .collect();
    let refused = client
        .put(
            &format!("{nsg}-big"),
            &json!({ "location": "westus", "properties": { "securityRules": rules } }),
        )
        .await;
    assert_eq!(refused.error_code(), Some("SecurityRuleCountLimitReached"));
    assert_eq!(ArmOptions::default().rule_limit, 1000);
}

#[tokio::test]
async fn invalid_rules_are_refused_naming_the_field() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "nsg");
    let path = format!("{nsg}/securityRules/bad");

    let with = |field: &str, value: Value| {
        let mut body = ssh_rule(100, "Inbound");
        if value.is_null() {
            body["properties"].as_object_mut().unwrap().remove(field);
        } else {
            body["properties"][field] = value;
        }
        body
    };
    let cases = [
        (
            with("priority", json!(99)),
            "SecurityRuleInvalidPriority",
            "Priority",
        ),
        (
            with("priority", json!(4097)),
            "SecurityRuleInvalidPriority",
            "Priority",
        ),
        (
            with("priority", Value::Null),
            "SecurityRuleParameterMissing",
            "Priority",
        ),
        (
            with("priority", json!("high")),
            "InvalidRequestFormat",
            "properties.priority",
        ),
        (
            with("protocol", json!("Http")),
            "SecurityRuleInvalidProtocol",
            "Protocol",
        ),
        (
            with("protocol", Value::Null),
            "SecurityRuleParameterMissing",
            "Protocol",
        ),
        (
            with("access", Value::Null),
            "SecurityRuleParameterMissing",
            "Access",
        ),
        (
            with("access", json!("Permit")),
            "InvalidRequestFormat",
            "properties.access",
        ),
        (
            with("direction", Value::Null),
            "SecurityRuleParameterMissing",
            "Direction",
        ),
        (
            with("description", json!("x".repeat(141))),
            "SecurityRuleDescriptionTooLong",
            "Description",
        ),
        (
            with("destinationPortRange", json!("22-")),
            "SecurityRuleInvalidPortRange",
            "Port range",
        ),
        (
            with("destinationPortRange", json!("70000")),
            "SecurityRuleInvalidPortRange",
            "Port range",
        ),
        (
            with("destinationPortRange", json!("30-20")),
            "SecurityRuleInvalidPortRange",
            "Port range",
        ),
        (
            with("destinationPortRange", json!("ssh")),
            "SecurityRuleInvalidPortRange",
            "Port range",
        ),
        (
            with("destinationPortRange", Value::Null),
            "SecurityRuleParametersMissing",
            "DestinationPortRange",
        ),
        (
            with("sourceAddressPrefix", Value::Null),
            "SecurityRuleParametersMissing",
            "SourceAddressPrefix",
        ),
        (
            with("sourceAddressPrefix", json!("10.0.0.300/8")),
            "SecurityRuleInvalidAddressPrefix",
            "Address prefix",
        ),
        (
            with("sourceAddressPrefix", json!("2001:db8::/64")),
            "ResourceCannotContainAddressPrefixesFromDifferentAddressFamilies",
            "different address families",
        ),
    ];
    for (body, code, field) in cases {
        let refused = client.put(&path, &body).await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
        assert_eq!(refused.error_code(), Some(code), "{body}: {}", refused.body);
        // A parse error names the property in its details, as ARM does.
        let text = format!(
            "{} {}",
            refused.error_message(),
            refused.body["error"]["details"]
        );
        assert!(text.contains(field), "{code} should name {field}: {text}");
    }
    assert!(arm.rules(&nsg).is_empty());
    assert!(arm.writes().iter().all(|c| c.status == 400));
    assert_eq!(arm.pending_operations(), 0);

    let edge = with("description", json!("x".repeat(140)));
    assert_eq!(put_and_wait(&client, &path, &edge).await.status, 201);
    let bad_name = client
        .put(
            &format!("{nsg}/securityRules/-dash"),
            &ssh_rule(300, "Inbound"),
        )
        .await;
    assert_eq!(bad_name.error_code(), Some("InvalidResourceName"));
}

#[tokio::test]
async fn missing_resources_answer_arm_404_bodies() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "nsg");
    let sub = &arm.subscription;
    let base = format!("/subscriptions/{sub}/resourceGroups/{RG}/providers");

    let missing_nsg = client
        .get(&format!(
            "{base}/Microsoft.Network/networkSecurityGroups/nope"
        ))
        .await;
    assert_eq!(missing_nsg.status, 404);
    assert_eq!(missing_nsg.error_code(), Some("ResourceNotFound"));
    assert!(
        missing_nsg.error_message().starts_with(
            "The Resource 'Microsoft.Network/networkSecurityGroups/nope' under resource group 'rg1' was not found."
        ),
        "{}",
        missing_nsg.error_message()
    );
    assert!(missing_nsg.body["error"].get("details").is_none());

    let missing_rule = client.get(&format!("{nsg}/securityRules/nope")).await;
    assert_eq!(
        (missing_rule.status, missing_rule.error_code()),
        (404, Some("NotFound"))
    );
    assert!(
        missing_rule
            .error_message()
            .contains(&format!("{nsg}/securityRules/nope"))
    );

    let rule_in_missing_nsg = client
        .put(
            &format!("{base}/Microsoft.Network/networkSecurityGroups/nope/securityRules/r"),
            &ssh_rule(100, "Inbound"),
        )
        .await;
    assert_eq!(rule_in_missing_nsg.error_code(), Some("ResourceNotFound"));

    for (path, type_name) in [
        (
            "Microsoft.Compute/virtualMachines/nope",
            "Microsoft.Compute/virtualMachines/nope",
        ),
        (
            "Microsoft.Network/networkInterfaces/nope",
            "Microsoft.Network/networkInterfaces/nope",
        ),
        (
            "Microsoft.Network/virtualNetworks/nope/subnets/default",
            "Microsoft.Network/virtualNetworks/nope",
        ),
    ] {
        let got = client.get(&format!("{base}/{path}")).await;
        assert_eq!(
            (got.status, got.error_code()),
            (404, Some("ResourceNotFound")),
            "{path}"
        );
        assert!(
            got.error_message().contains(&format!("'{type_name}'")),
            "{}",
            got.error_message()
        );
    }
    let vnet_subnet = arm.seed_vnet_subnet(RG, "vnet", "a", "10.0.0.0/24", None);
    let missing_subnet = client
        .get(&vnet_subnet.replace("/subnets/a", "/subnets/b"))
        .await;
    assert_eq!(missing_subnet.error_code(), Some("NotFound"));

    let unknown = client
        .get(&format!("{base}/Microsoft.Storage/storageAccounts/x"))
        .await;
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (404, Some("InvalidResourceType"))
    );
}

#[tokio::test]
async fn requests_without_api_version_are_refused() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "nsg");

    let bare = client
        .send(Method::GET, &format!("{}{nsg}", arm.url), None, &[])
        .await;
    assert_eq!(bare.status, 400);
    assert_eq!(bare.error_code(), Some("MissingApiVersionParameter"));
    let empty = client.get(&format!("{nsg}?api-version=")).await;
    assert_eq!(empty.error_code(), Some("MissingApiVersionParameter"));
    let odd = client.get(&format!("{nsg}?api-version=latest")).await;
    assert_eq!(odd.error_code(), Some("InvalidApiVersionParameter"));
    let preview = client
        .get(&format!("{nsg}?api-version=2024-05-01-preview"))
        .await;
    assert_eq!(preview.status, 200);
}

#[tokio::test]
async fn nsgs_in_use_cannot_be_deleted() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let vm = arm.seed_vm_with_network(RG, "vm1", "10.0.0.4");

    let refused = client.delete(&vm.nic_nsg_id).await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.error_code(),
        Some("InUseNetworkSecurityGroupCannotBeDeleted")
    );
    assert!(refused.error_message().contains(&vm.nic_id));

    arm.set_nic_nsg(&vm.nic_id, None);
    assert_eq!(client.delete(&vm.nic_nsg_id).await.status, 202);
}

// ----- 4. long-running operations -----

#[tokio::test]
async fn operations_stay_in_progress_for_the_configured_polls() {
    let arm = ArmEmulator::start_with(ArmOptions {
        in_progress_polls: 3,
        ..ArmOptions::default()
    })
    .await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "nsg");
    let path = format!("{nsg}/securityRules/ssh");

    let accepted = client.put(&path, &ssh_rule(100, "Inbound")).await;
    assert_eq!(
        client.get(&nsg).await.body["properties"]["provisioningState"],
        "Updating"
    );
    assert_eq!(
        poll_async(&client, &accepted).await,
        ["InProgress", "InProgress", "InProgress", "Succeeded"]
    );
    assert_eq!(
        client.get(&nsg).await.body["properties"]["provisioningState"],
        "Succeeded"
    );
    // A finished operation keeps answering Succeeded.
    assert_eq!(poll_async(&client, &accepted).await, ["Succeeded"]);

    // A DELETE can be followed through Azure-AsyncOperation as well as Location.
    let deleted = client.delete(&path).await;
    assert_eq!(arm.pending_operations(), 1);
    assert_eq!(
        poll_async(&client, &deleted).await.last().unwrap(),
        "Succeeded"
    );
    assert_eq!(
        client.get(deleted.header("location").unwrap()).await.status,
        204
    );
    assert!(arm.rules(&nsg).is_empty());

    // Tests can let time pass instead of polling.
    client.put(&path, &ssh_rule(100, "Inbound")).await;
    arm.complete_operations();
    assert_eq!(arm.pending_operations(), 0);
    assert_eq!(
        arm.rule(&nsg, "ssh").unwrap()["properties"]["provisioningState"],
        "Succeeded"
    );

    let unknown = client
        .get(&format!(
            "/subscriptions/{}/providers/Microsoft.Network/locations/westus/operations/nope",
            arm.subscription
        ))
        .await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn unpolled_operations_complete_on_their_own_after_a_while() {
    let arm = ArmEmulator::start_with(ArmOptions {
        complete_after: Some(Duration::from_millis(300)),
        ..ArmOptions::default()
    })
    .await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "nsg");
    let first = client
        .put(&format!("{nsg}/securityRules/a"), &ssh_rule(100, "Inbound"))
        .await;
    assert_eq!(first.status, 201);
    assert_eq!(arm.pending_operations(), 1);

    // The client that started it is gone (say it crashed); ARM finishes the work anyway.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(arm.pending_operations(), 0);
    assert_eq!(
        arm.rule(&nsg, "a").unwrap()["properties"]["provisioningState"],
        "Succeeded"
    );
    let next = client
        .put(&format!("{nsg}/securityRules/b"), &ssh_rule(101, "Inbound"))
        .await;
    assert_eq!(next.status, 201, "{}", next.body);
    assert_eq!(poll_async(&client, &first).await, ["Succeeded"]);
}

// ----- 5. writes to a busy NSG -----

#[tokio::test]
async fn writes_to_a_busy_nsg_get_retryable_error_or_another_operation_in_progress() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "nsg");
    let other = arm.seed_nsg(RG, "other");
    let first = client
        .put(&format!("{nsg}/securityRules/a"), &ssh_rule(100, "Inbound"))
        .await;
    assert_eq!(first.status, 201);

    // No poll: the NSG is still held by the first write.
    let second = client
        .put(&format!("{nsg}/securityRules/b"), &ssh_rule(101, "Inbound"))
        .await;
    assert_eq!(second.status, 429, "{}", second.body);
    assert_eq!(second.error_code(), Some("RetryableError"));
    assert_eq!(second.header("retry-after"), Some("1"));
    assert_eq!(
        second.body["error"]["details"][0]["code"],
        "ReferencedResourceNotProvisioned"
    );
    let third = client.delete(&format!("{nsg}/securityRules/a")).await;
    assert_eq!(third.status, 409, "{}", third.body);
    assert_eq!(third.error_code(), Some("AnotherOperationInProgress"));
    let operation = first.header("azure-asyncoperation").unwrap();
    assert!(
        third.error_message().contains(operation),
        "{}",
        third.error_message()
    );

    // Other NSGs are not held.
    let elsewhere = client
        .put(
            &format!("{other}/securityRules/b"),
            &ssh_rule(101, "Inbound"),
        )
        .await;
    assert_eq!(elsewhere.status, 201);

    poll_async(&client, &first).await;
    let after = client
        .put(&format!("{nsg}/securityRules/b"), &ssh_rule(101, "Inbound"))
        .await;
    assert_eq!(after.status, 201, "{}", after.body);
    assert_eq!(rule_names(&arm.rules(&nsg)), ["a", "b"]);
}

#[tokio::test]
async fn busy_answers_can_be_fixed_to_one_kind() {
    for (busy, status, code) in [
        (BusyAnswer::Retryable, 429, "RetryableError"),
        (
            BusyAnswer::AnotherOperationInProgress,
            409,
            "AnotherOperationInProgress",
        ),
    ] {
        let arm = ArmEmulator::start_with(ArmOptions {
            busy,
            ..ArmOptions::default()
        })
        .await;
        let client = ArmClient::new(&arm);
        let nsg = arm.seed_nsg(RG, "nsg");
        client
            .put(&format!("{nsg}/securityRules/a"), &ssh_rule(100, "Inbound"))
            .await;
        for _ in 0..3 {
            let refused = client.put(&nsg, &json!({ "location": "westus" })).await;
            assert_eq!((refused.status, refused.error_code()), (status, Some(code)));
        }
    }
}

// ----- 6. injected faults and the measured back-off -----

/// GETs `path`, sleeping for `Retry-After` and retrying when throttled, like a client
/// that honours ARM.
async fn get_honouring_retry_after(client: &ArmClient, path: &str) -> ArmResponse {
    loop {
        let got = client.get(path).await;
        if got.status != 429 {
            return got;
        }
        let seconds: u64 = got
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("a 429 carries Retry-After");
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }
}

#[tokio::test]
async fn every_third_call_is_throttled_and_the_wait_is_measured() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "nsg");
    arm.set_faults(Faults::ThrottleEvery {
        every: 3,
        retry_after_secs: 1,
    });

    assert_eq!(client.get(&nsg).await.status, 200);
    assert_eq!(client.get(&nsg).await.status, 200);
    let throttled = client.get(&nsg).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(
        throttled.error_code(),
        Some("SubscriptionRequestsThrottled")
    );
    assert_eq!(throttled.header("retry-after"), Some("1"));
    assert!(
        throttled.error_message().contains("'1' seconds"),
        "{}",
        throttled.error_message()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    for _ in 0..3 {
        assert_eq!(get_honouring_retry_after(&client, &nsg).await.status, 200);
    }
    let statuses: Vec<u16> = arm.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429, 200]);
    assert_eq!(arm.injected(), 2);
    let waits = arm.throttle_waits();
    assert_eq!(waits.len(), 2);
    assert!(
        waits
            .iter()
            .all(|w| w.retry_after == Duration::from_secs(1))
    );
    let min = arm.min_wait_after_429().expect("a wait was measured");
    assert!(min >= Duration::from_secs(1), "{min:?}");

    arm.set_faults(Faults::None);
    for _ in 0..4 {
        assert_eq!(client.get(&nsg).await.status, 200);
    }
}

#[tokio::test]
async fn a_client_ignoring_retry_after_shows_in_the_measurement() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "nsg");
    arm.set_faults(Faults::ThrottleEvery {
        every: 1,
        retry_after_secs: 5,
    });
    assert_eq!(client.get(&nsg).await.status, 429);
    arm.set_faults(Faults::None);
    assert_eq!(client.get(&nsg).await.status, 200);

    let waits = arm.throttle_waits();
    assert_eq!(waits.len(), 1);
    assert_eq!(waits[0].retry_after, Duration::from_secs(5));
    assert!(arm.min_wait_after_429().unwrap() < Duration::from_secs(5));
}

#[tokio::test]
async fn server_errors_can_be_injected() {
    let arm = ArmEmulator::start().await;
    let client = ArmClient::new(&arm);
    let nsg = arm.seed_nsg(RG, "nsg");
    arm.set_faults(Faults::ServerErrorEvery(2));

    let statuses = [
        client.get(&nsg).await.status,
        client.get(&nsg).await.status,
        client
            .put(&format!("{nsg}/securityRules/a"), &ssh_rule(100, "Inbound"))
            .await
            .status,
        client
            .put(&format!("{nsg}/securityRules/a"), &ssh_rule(100, "Inbound"))
            .await
            .status,
    ];
    assert_eq!(statuses, [200, 500, 201, 500]);
    arm.set_faults(Faults::ServerErrorEvery(1));
    let failed = client.get(&nsg).await;
    assert_eq!(failed.error_code(), Some("InternalServerError"));
    assert_eq!(arm.injected(), 3);
}

// ----- 7. authentication -----

#[tokio::test]
async fn requests_without_the_token_get_401() {
    let arm = ArmEmulator::start().await;
    let nsg = arm.seed_nsg(RG, "nsg");
    let path = format!("{nsg}/securityRules/a");

    let anonymous = ArmClient::new(&arm).without_token();
    let refused = anonymous.put(&path, &ssh_rule(100, "Inbound")).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.error_code(), Some("AuthenticationFailed"));
    assert_eq!(
        refused.error_message(),
        "Authentication failed. The 'Authorization' header is missing."
    );
    assert!(
        refused
            .header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer "))
    );
    assert_eq!(anonymous.get(&nsg).await.status, 401);

    let impostor = ArmClient::new(&arm).with_token("not-the-token");
    let refused = impostor.get(&nsg).await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (401, Some("InvalidAuthenticationToken"))
    );

    let basic = ArmClient::new(&arm).without_token();
    let refused = basic
        .send(
            Method::GET,
            &basic.url(&nsg),
            None,
            &[("Authorization", "Basic dXNlcjpwYXNz")],
        )
        .await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.error_code(),
        Some("AuthenticationFailedInvalidHeader")
    );

    assert!(arm.rules(&nsg).is_empty());
    assert_eq!(ArmClient::new(&arm).get(&nsg).await.status, 200);
}
