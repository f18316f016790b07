//! Prometheus metrics: one registry for the process, served on `/metrics`.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    cloud: &'static str,
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    resource: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

struct Metrics {
    registry: Registry,
    cloud_calls: Family<CallLabels, Counter>,
    reconciles: Family<ReconcileLabels, Counter>,
    drift: Family<KindLabels, Counter>,
    swept: Family<KindLabels, Counter>,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("portcullis");
        let cloud_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "cloud_api_calls",
            "Cloud API calls by operation and outcome",
            cloud_calls.clone(),
        );
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by resource and outcome",
            reconciles.clone(),
        );
        let drift = Family::<KindLabels, Counter>::default();
        registry.register(
            "drift_corrections",
            "Drifted rules put right",
            drift.clone(),
        );
        let swept = Family::<KindLabels, Counter>::default();
        registry.register(
            "swept_rules",
            "Owned rules removed by the sweeper",
            swept.clone(),
        );
        Metrics {
            registry,
            cloud_calls,
            reconciles,
            drift,
            swept,
        }
    })
}

/// Counts one cloud API call.
pub fn cloud_call(cloud: &'static str, op: &'static str, outcome: &'static str) {
    metrics()
        .cloud_calls
        .get_or_create(&CallLabels { cloud, op, outcome })
        .inc();
}

/// Counts one reconcile.
pub fn reconcile(resource: &'static str, outcome: &'static str) {
    metrics()
        .reconciles
        .get_or_create(&ReconcileLabels { resource, outcome })
        .inc();
}

/// Counts drift corrections of one kind (`baseline`, `grant`).
pub fn drift(kind: &'static str, n: u64) {
    metrics()
        .drift
        .get_or_create(&KindLabels { kind })
        .inc_by(n);
}

/// Counts rules the sweeper removed (`expired`, `orphaned`).
pub fn swept(kind: &'static str, n: u64) {
    metrics()
        .swept
        .get_or_create(&KindLabels { kind })
        .inc_by(n);
}

/// The metrics in Prometheus text format.
pub fn encode() -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &metrics().registry)
        .expect("writing to a String cannot fail");
    out
}
