//! The sweeper: removes owned rules whose stamp has expired or whose owner is gone.
//!
//! It runs once before the controllers start (so a restart removes expired rules first,
//! even those whose request was deleted meanwhile) and then on every resync.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tracing::{info, warn};

use super::{Backends, Context, Settings};
use crate::api::{AccessRequest, JitPolicy, TargetCloud};
use crate::cloud::{Live, SweepReport, target_id};
use crate::domain::{ObjectKey, TargetKey, stamp};
use crate::metrics;

/// What may keep its rules, from the policies and requests that exist.
pub fn live<'a>(
    policies: impl Iterator<Item = &'a JitPolicy>,
    requests: impl Iterator<Item = &'a AccessRequest>,
    settings: &Settings,
) -> Live {
    let mut live = Live::default();
    live.aws_regions
        .extend(settings.aws_regions.iter().cloned());
    for p in policies {
        let key = ObjectKey::new(p.namespace().unwrap_or_default(), p.name_any());
        live.policies.insert(stamp::owner_id(&key));
        for t in p.status.iter().flat_map(|s| s.targets.iter()) {
            live.azure_nsgs.extend(t.nsg_ids.iter().cloned());
            // A removed target is live until its cleanup (which its record drives) is done.
            if let Some(r) = &t.record {
                live.azure_nsgs.extend(r.nsg_ids.iter().cloned());
                if let TargetCloud::Azure(a) = &r.cloud {
                    live.azure_firewalls
                        .extend(a.firewall.iter().map(|f| f.id.clone()));
                }
                live.targets.insert(target_id(&TargetKey {
                    policy: key.clone(),
                    target: t.name.clone(),
                }));
                if let TargetCloud::Aws(a) = &r.cloud {
                    live.aws_regions.insert(a.region.clone());
                }
            }
        }
        for t in &p.spec.targets {
            live.targets.insert(target_id(&TargetKey {
                policy: key.clone(),
                target: t.name.clone(),
            }));
            if let TargetCloud::Aws(a) = &t.cloud {
                live.aws_regions.insert(a.region.clone());
            }
            if let TargetCloud::Azure(a) = &t.cloud {
                live.azure_firewalls
                    .extend(a.firewall.iter().map(|f| f.id.clone()));
            }
        }
    }
    // Every request that exists: its rules go when their stamped expiry passes (the
    // sweeper) or when its target's actor no longer wants them; the status (which people
    // can write) decides nothing here.
    for r in requests {
        live.requests.insert(stamp::owner_id(&ObjectKey::new(
            r.namespace().unwrap_or_default(),
            r.name_any(),
        )));
    }
    live
}

/// Sweeps every backend; a failure in one place (a forbidden region, an NSG that cannot
/// be read) stops nothing else.
async fn sweep_all(backends: &Backends, now: jiff::Timestamp, live: &Live) -> SweepReport {
    let mut total = SweepReport::default();
    for backend in [&backends.aws, &backends.azure].into_iter().flatten() {
        total.absorb(backend.sweep(now, live).await);
    }
    if let Some(firewall) = &backends.firewall {
        total.absorb(firewall.sweep(now, live).await);
    }
    metrics::swept("expired", total.expired as u64);
    metrics::swept("orphaned", total.orphaned as u64);
    for (what, e) in &total.errors {
        warn!(%what, error = %e, "could not sweep");
    }
    total
}

/// The sweep before the controllers start, from a fresh list of everything.
pub async fn startup_sweep(
    policies: &Api<JitPolicy>,
    requests: &Api<AccessRequest>,
    backends: &Backends,
    settings: &Settings,
    now: jiff::Timestamp,
) -> anyhow::Result<SweepReport> {
    let ps = policies.list(&ListParams::default()).await?;
    let rs = requests.list(&ListParams::default()).await?;
    let live = live(ps.items.iter(), rs.items.iter(), settings);
    Ok(sweep_all(backends, now, &live).await)
}

/// Sweeps on every resync, from the controllers' caches.
pub async fn run(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(ctx.settings.resync).await;
        if ctx.policies.wait_until_ready().await.is_err()
            || ctx.requests.wait_until_ready().await.is_err()
        {
            continue;
        }
        let policies = ctx.policies.state();
        let requests = ctx.requests.state();
        let live = live(
            policies.iter().map(|p| p.as_ref()),
            requests.iter().map(|r| r.as_ref()),
            &ctx.settings,
        );
        let report = sweep_all(&ctx.backends, ctx.now(), &live).await;
        if report.removed_anything() {
            info!(?report, "swept");
        }
    }
}
