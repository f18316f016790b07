//! The requester stamp belongs to one object: copied onto a re-created request (same
//! namespace, name and spec) at a moment the webhook is not in the way, it opens nothing.

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use portcullis::api::{AccessRequest, Phase};

use crate::aws::{MINUTE, World};
use crate::support::ec2_proxy::Faults;
use crate::support::kube_helpers::{delete_and_wait_gone, eventually};
use crate::support::operator::Operator;
use crate::support::testbed::{ADMIN, Testbed};

const STAMP: &str = "jit.portcullis.dev/requester";

#[tokio::test]
async fn stamp_copied_onto_a_recreated_request_does_not_verify() {
    let mut w = World::new("stamp-copy", Faults::None).await;
    w.create_policy("jit").await;
    w.ready_policy("jit").await;
    // Alice's (here: admin's) genuine request, stamped by the webhook, opens.
    w.create_request("r", 22, "203.0.113.7/32", "10m").await;
    let stamped_at = Instant::now();
    let original = w.phase("r", Phase::Active, MINUTE).await;
    let stamp = original.annotations()[STAMP].clone();
    delete_and_wait_gone(&w.requests, "r").await;
    w.wait_owned_rules("the grant of r to close", 0).await;

    // A moment with no admission webhook in the way: the operator is down and its webhook
    // configurations are gone (say, during a reinstall).
    w.operator.kill();
    let client = Testbed::shared().client(ADMIN).await;
    let config = format!("portcullis-{}", w.ns);
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(&config, &DeleteParams::default())
        .await
        .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(&config, &DeleteParams::default())
        .await
        .unwrap();

    // Someone re-creates the very same request with the copied stamp, once the stamp's
    // window (15 s after it was issued) has passed.
    let wait = Duration::from_secs(17).saturating_sub(stamped_at.elapsed());
    tokio::time::sleep(wait).await;
    let mut copy: AccessRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "jit.portcullis.dev/v1alpha1",
        "kind": "AccessRequest",
        "metadata": {"name": "r", "annotations": {STAMP: stamp}},
        "spec": serde_json::to_value(&original.spec).unwrap(),
    }))
    .unwrap();
    copy.spec.revoke = false;
    let created = w
        .requests
        .create(&PostParams::default(), &copy)
        .await
        .expect("created without admission");
    assert_eq!(
        created.annotations()[STAMP],
        stamp,
        "the copy kept the stamp"
    );

    // The operator (no webhook now) refuses it: the stamp was made for another object.
    w.proxy.clear();
    let _op = Operator::start_without_webhook(Testbed::shared(), &w.ns, &w.proxy.url, "2s");
    let r = w.phase("r", Phase::Denied, MINUTE).await;
    let message = r.status.unwrap().message.unwrap_or_default();
    assert!(
        message.contains(STAMP) && message.contains("does not carry over"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // a resync or two
    assert_eq!(
        w.proxy.writes(),
        Vec::<String>::new(),
        "a copied stamp reached the cloud"
    );
    assert!(w.owned_rules().await.is_empty());
    eventually("the request to stay Denied", MINUTE, || async {
        let r = w.requests.get("r").await.ok()?;
        (r.status?.phase == Some(Phase::Denied)).then_some(())
    })
    .await;
}
