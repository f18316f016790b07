//! The ARM client (`portcullis::cloud::azure::arm`) against the ARM emulator
//! (`tests/support/arm`) over HTTPS: reads, long-running writes, ETags, ARM's error
//! codes, busy NSGs, throttling with `Retry-After`, and whom the client trusts.

#[path = "support/mod.rs"]
mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::cloud::CloudError;
use portcullis::cloud::azure::arm::{ArmClient, StaticToken};
use serde_json::{Value, json};
use support::arm::{ArmEmulator, ArmOptions, Faults};

const RG: &str = "rg1";
const API: &str = "2024-05-01";

/// Runs `test`, failing loudly when it hangs.
async fn within<T>(secs: u64, test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {secs}s"))
}

/// A client of `arm` that trusts its CA and sends its token.
fn client(arm: &ArmEmulator) -> ArmClient {
    ArmClient::new(
        &arm.url,
        Arc::new(StaticToken::new(arm.token.clone())),
        Some(&arm.ca_pem),
    )
    .expect("client builds")
}

/// An inbound allow rule for `port` at `priority`.
fn allow(priority: u16, port: u16) -> Value {
    json!({
        "properties": {
            "description": "portcullis test",
            "protocol": "Tcp",
            "sourceAddressPrefix": "203.0.113.7/32",
            "sourcePortRange": "*",
            "destinationAddressPrefix": "10.0.0.4",
            "destinationPortRange": port.to_string(),
            "access": "Allow",
            "priority": priority,
            "direction": "Inbound",
        }
    })
}

fn rule_id(nsg_id: &str, name: &str) -> String {
    format!("{nsg_id}/securityRules/{name}")
}

fn code(e: &CloudError) -> &str {
    e.code()
}

/// The `cloud_api_calls` counter of this process for `op` and `outcome`.
fn counted(op: &str, outcome: &str) -> u64 {
    let labels = [
        "cloud=\"azure\"".to_string(),
        format!("op=\"{op}\""),
        format!("outcome=\"{outcome}\""),
    ];
    portcullis::metrics::encode()
        .lines()
        .filter(|l| l.starts_with("portcullis_cloud_api_calls"))
        .filter(|l| labels.iter().all(|label| l.contains(label.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn get_returns_a_seeded_nsg_with_its_etag() {
    within(30, async {
        let arm = ArmEmulator::start().await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        arm.seed_rule(&nsg, "ssh-admins", allow(200, 22)["properties"].clone());

        let got = client(&arm)
            .get("GetNetworkSecurityGroup", &nsg, API)
            .await
            .expect("GET succeeds")
            .expect("the NSG exists");

        assert_eq!(got.body["id"].as_str(), Some(nsg.as_str()));
        assert_eq!(got.body["name"], "nsg1");
        let rules = got.body["properties"]["securityRules"]
            .as_array()
            .expect("securityRules");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0]["name"], "ssh-admins");
        assert_eq!(rules[0]["properties"]["priority"], 200);
        let etag = got.etag.expect("an NSG has an ETag");
        assert_eq!(got.body["etag"].as_str(), Some(etag.as_str()));
        assert_eq!(Some(got.body), arm.nsg(&nsg));
    })
    .await;
}

#[tokio::test]
async fn get_of_a_missing_resource_is_none() {
    within(30, async {
        let arm = ArmEmulator::start().await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        let client = client(&arm);
        let missing_nsg = nsg.replace("nsg1", "nsg-gone");

        let top = client
            .get("GetNetworkSecurityGroup", &missing_nsg, API)
            .await;
        let child = client
            .get("GetSecurityRule", &rule_id(&nsg, "no-such-rule"), API)
            .await;

        assert_eq!(top.expect("a 404 is not an error"), None);
        assert_eq!(child.expect("a 404 is not an error"), None);
    })
    .await;
}

#[tokio::test]
async fn put_waits_for_the_long_running_operation_and_reads_back() {
    within(60, async {
        let arm = ArmEmulator::start().await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        let id = rule_id(&nsg, "jit-req1-22");

        let put = client(&arm)
            .put("PutSecurityRule", &id, API, &allow(300, 22), None)
            .await
            .expect("PUT succeeds");

        assert_eq!(put.body["id"].as_str(), Some(id.as_str()));
        assert_eq!(put.body["properties"]["provisioningState"], "Succeeded");
        assert_eq!(put.body["properties"]["priority"], 300);
        assert!(put.etag.is_some(), "the rule's ETag is returned");
        assert_eq!(
            arm.pending_operations(),
            0,
            "the operation was polled to its end"
        );
        assert_eq!(Some(put.body), arm.rule(&nsg, "jit-req1-22"));
        let calls = arm.calls();
        let polls = calls
            .iter()
            .filter(|c| c.method == "GET" && c.path.contains("/operations/"))
            .count();
        assert!(
            polls >= 2,
            "the operation answered InProgress once: {calls:?}"
        );
        assert_eq!(calls.last().map(|c| c.path.as_str()), Some(id.as_str()));
    })
    .await;
}

#[tokio::test]
async fn put_with_a_stale_etag_is_retryable_precondition_failed() {
    within(60, async {
        let arm = ArmEmulator::start().await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        let id = rule_id(&nsg, "jit-req1-22");
        arm.seed_rule(&nsg, "jit-req1-22", allow(300, 22)["properties"].clone());
        let client = client(&arm);
        let current = client
            .get("GetSecurityRule", &id, API)
            .await
            .unwrap()
            .expect("seeded");
        let stale = "W/\"00000000-0000-0000-0000-000000000000\"";

        let refused = client
            .put("PutSecurityRule", &id, API, &allow(300, 3389), Some(stale))
            .await
            .expect_err("a stale ETag is refused");
        let writes_after_refusal = arm.writes().len();
        let accepted = client
            .put(
                "PutSecurityRule",
                &id,
                API,
                &allow(300, 3389),
                current.etag.as_deref(),
            )
            .await
            .expect("the current ETag is accepted");

        assert!(
            matches!(&refused, CloudError::Retryable { code, .. } if code == "PreconditionFailed"),
            "{refused:?}"
        );
        assert_eq!(
            writes_after_refusal, 1,
            "a stale ETag is not retried blindly"
        );
        assert_eq!(accepted.body["properties"]["destinationPortRange"], "3389");
        assert_ne!(accepted.etag, current.etag);
    })
    .await;
}

#[tokio::test]
async fn a_duplicate_priority_is_fatal_security_rule_conflict() {
    within(30, async {
        let arm = ArmEmulator::start().await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        arm.seed_rule(&nsg, "someone-elses", allow(400, 443)["properties"].clone());

        let err = client(&arm)
            .put(
                "PutSecurityRule",
                &rule_id(&nsg, "jit-req1-22"),
                API,
                &allow(400, 22),
                None,
            )
            .await
            .expect_err("ARM refuses a second rule at one priority and direction");

        assert!(
            matches!(&err, CloudError::Fatal { code, .. } if code == "SecurityRuleConflict"),
            "{err:?}"
        );
        assert_eq!(arm.writes().len(), 1, "a conflict is not retried");
        assert_eq!(arm.rule(&nsg, "jit-req1-22"), None);
    })
    .await;
}

#[tokio::test]
async fn the_rule_limit_is_a_limit_error() {
    within(60, async {
        let arm = ArmEmulator::start_with(ArmOptions {
            rule_limit: 1,
            ..ArmOptions::default()
        })
        .await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        arm.seed_rule(&nsg, "first", allow(500, 22)["properties"].clone());

        let err = client(&arm)
            .put(
                "PutSecurityRule",
                &rule_id(&nsg, "second"),
                API,
                &allow(501, 22),
                None,
            )
            .await
            .expect_err("the NSG is full");

        assert!(
            matches!(&err, CloudError::Limit { code, .. } if code == "SecurityRuleCountLimitReached"),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn delete_completes_and_a_second_delete_is_fine() {
    within(60, async {
        let arm = ArmEmulator::start().await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        let id = rule_id(&nsg, "jit-req1-22");
        arm.seed_rule(&nsg, "jit-req1-22", allow(300, 22)["properties"].clone());
        let client = client(&arm);

        client
            .delete("DeleteSecurityRule", &id, API)
            .await
            .expect("DELETE succeeds");
        let gone = arm.rule(&nsg, "jit-req1-22");
        let pending = arm.pending_operations();
        client
            .delete("DeleteSecurityRule", &id, API)
            .await
            .expect("deleting what is gone succeeds");
        client
            .delete(
                "DeleteSecurityRule",
                &rule_id(&nsg.replace("nsg1", "nsg-gone"), "x"),
                API,
            )
            .await
            .expect("deleting under a missing NSG succeeds");

        assert_eq!(gone, None, "the rule is gone when delete returns");
        assert_eq!(pending, 0, "the operation was polled to its end");
        assert_eq!(client.get("GetSecurityRule", &id, API).await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn throttling_is_waited_out_for_at_least_retry_after() {
    const OP: &str = "ArmClientTestThrottledPut";
    within(120, async {
        let arm = ArmEmulator::start().await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        let client = client(&arm);
        arm.set_faults(Faults::ThrottleEvery {
            every: 3,
            retry_after_secs: 2,
        });

        for (i, port) in [22u16, 3389, 5985, 5986].into_iter().enumerate() {
            let priority = 300 + u16::try_from(i).unwrap();
            let name = format!("jit-req{i}-{port}");
            let put = client
                .put(OP, &rule_id(&nsg, &name), API, &allow(priority, port), None)
                .await
                .unwrap_or_else(|e| panic!("PUT {name} succeeds despite throttling: {e}"));
            assert_eq!(put.body["properties"]["provisioningState"], "Succeeded");
        }

        let waits = arm.throttle_waits();
        assert!(arm.injected() >= 3, "every third call was throttled");
        assert!(waits.len() as u64 >= arm.injected(), "{waits:?}");
        for wait in &waits {
            assert!(
                wait.waited >= wait.retry_after,
                "the client came back after {:?}, before Retry-After {:?}",
                wait.waited,
                wait.retry_after
            );
        }
        assert_eq!(arm.rules(&nsg).len(), 4);
        assert!(counted(OP, "throttled") >= arm.injected());
        assert!(
            counted(OP, "ok") >= 4 * 4,
            "PUT, two polls and a GET per rule"
        );
    })
    .await;
}

#[tokio::test]
async fn server_errors_are_retried() {
    within(60, async {
        let arm = ArmEmulator::start().await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        let id = rule_id(&nsg, "jit-req1-22");
        let client = client(&arm);
        arm.set_faults(Faults::ServerErrorEvery(2));

        let put = client
            .put("PutSecurityRule", &id, API, &allow(300, 22), None)
            .await
            .expect("PUT succeeds despite 500s");
        client
            .delete("DeleteSecurityRule", &id, API)
            .await
            .expect("DELETE succeeds despite 500s");

        assert_eq!(put.body["properties"]["provisioningState"], "Succeeded");
        assert!(arm.injected() >= 2);
        assert!(arm.calls().iter().any(|c| c.status == 500));
        assert_eq!(arm.rule(&nsg, "jit-req1-22"), None);
    })
    .await;
}

#[tokio::test]
async fn a_busy_nsg_is_retried_until_it_is_free() {
    within(60, async {
        let arm = ArmEmulator::start().await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        // Someone else's write, whose operation nobody polls: the NSG stays busy until
        // time (here: the test) completes it.
        let other = support::arm::ArmClient::new(&arm);
        let started = other
            .put(&rule_id(&nsg, "someone-elses"), &allow(600, 443))
            .await;
        assert_eq!(started.status, 201);
        let releaser = {
            let arm = arm.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                arm.complete_operations();
            })
        };
        let begun = Instant::now();

        let put = client(&arm)
            .put(
                "PutSecurityRule",
                &rule_id(&nsg, "jit-req1-22"),
                API,
                &allow(300, 22),
                None,
            )
            .await
            .expect("the PUT goes through once the NSG is free");
        releaser.await.unwrap();

        assert_eq!(put.body["properties"]["provisioningState"], "Succeeded");
        assert!(begun.elapsed() >= Duration::from_millis(1500));
        let refused: Vec<u16> = arm
            .calls()
            .iter()
            .filter(|c| c.method == "PUT" && c.status >= 400)
            .map(|c| c.status)
            .collect();
        assert!(refused.contains(&429), "RetryableError first: {refused:?}");
        assert!(
            refused.contains(&409),
            "then AnotherOperationInProgress: {refused:?}"
        );
        for wait in arm.throttle_waits() {
            assert!(wait.waited >= wait.retry_after, "{wait:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn only_the_given_ca_is_trusted() {
    within(30, async {
        let arm = ArmEmulator::start().await;
        let other = ArmEmulator::start().await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        let token = Arc::new(StaticToken::new(arm.token.clone()));
        let without_ca = ArmClient::new(&arm.url, token.clone(), None).unwrap();
        let wrong_ca = ArmClient::new(&arm.url, token, Some(&other.ca_pem)).unwrap();

        let plain = without_ca.get("GetNetworkSecurityGroup", &nsg, API).await;
        let wrong = wrong_ca.get("GetNetworkSecurityGroup", &nsg, API).await;
        let right = client(&arm).get("GetNetworkSecurityGroup", &nsg, API).await;

        for result in [plain, wrong] {
            let err = result.expect_err("an untrusted server is refused");
            assert!(
                matches!(&err, CloudError::Fatal { code, .. } if code == "UntrustedCertificate"),
                "{err:?}"
            );
        }
        assert!(right.expect("the right CA is trusted").is_some());
        assert_eq!(
            arm.calls().len(),
            1,
            "no request crossed an untrusted connection"
        );
    })
    .await;
}

#[tokio::test]
async fn a_wrong_token_is_fatal_after_one_fresh_try() {
    within(30, async {
        let arm = ArmEmulator::start().await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        let client = ArmClient::new(
            &arm.url,
            Arc::new(StaticToken::new("not-the-token")),
            Some(&arm.ca_pem),
        )
        .unwrap();

        let err = client
            .get("GetNetworkSecurityGroup", &nsg, API)
            .await
            .expect_err("the emulator refuses the token");

        assert_eq!(code(&err), "InvalidAuthenticationToken", "{err:?}");
        assert_eq!(err.category(), "fatal");
        assert_eq!(arm.calls().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn plain_http_endpoints_are_refused_up_front() {
    let made = ArmClient::new("http://127.0.0.1:1", Arc::new(StaticToken::new("t")), None);
    let err = made.expect_err("azure_core's bearer policy would refuse it at the first call");
    assert_eq!(code(&err), "InvalidConfiguration");
}

#[tokio::test]
async fn from_env_reads_endpoint_ca_and_token() {
    within(60, async {
        let arm = ArmEmulator::start().await;
        let nsg = arm.seed_nsg(RG, "nsg1");
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("arm-ca.pem");
        std::fs::write(&ca_file, &arm.ca_pem).unwrap();

        // The environment belongs to the whole process, and other tests run beside this
        // one: read it in a child, this test binary running the ignored test below.
        let child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "from_env_child", "--nocapture"])
            .env("PORTCULLIS_ARM_ENDPOINT", &arm.url)
            .env("PORTCULLIS_ARM_CA_FILE", &ca_file)
            .env("PORTCULLIS_ARM_TOKEN", &arm.token)
            .env("ARM_CLIENT_TEST_NSG", &nsg)
            .output()
            .await
            .unwrap();

        assert!(
            child.status.success(),
            "the child failed:\n{}",
            String::from_utf8_lossy(&child.stdout)
        );
        let calls = arm.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(
            (calls[0].path.as_str(), calls[0].status),
            (nsg.as_str(), 200)
        );
    })
    .await;
}

/// The child of [`from_env_reads_endpoint_ca_and_token`].
#[tokio::test]
#[ignore = "run by from_env_reads_endpoint_ca_and_token with its environment"]
async fn from_env_child() {
    let nsg = std::env::var("ARM_CLIENT_TEST_NSG").expect("run by the parent test");
    let client = ArmClient::from_env().expect("the environment configures a client");
    let got = client
        .get("GetNetworkSecurityGroup", &nsg, API)
        .await
        .expect("GET succeeds");
    assert!(got.is_some());
}
