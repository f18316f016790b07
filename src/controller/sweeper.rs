//! The sweeper: removes owned rules whose stamp has expired or whose owner is gone.
//!
//! It runs once before the controllers start (so a restart removes expired rules first,
//! even those whose request was deleted meanwhile) and then on every resync.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tracing::{info, warn};

use super::{Backends, Context, Settings};
use crate::api::{AccessRequest, JitPolicy, Phase, TargetCloud};
use crate::cloud::{CloudError, Live, SweepReport, target_id};
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
        }
        for t in &p.spec.targets {
            live.targets.insert(target_id(&TargetKey {
                policy: key.clone(),
                target: t.name.clone(),
            }));
            if let TargetCloud::Aws(a) = &t.cloud {
                live.aws_regions.insert(a.region.clone());
            }
        }
    }
    for r in requests {
        let finished = matches!(
            r.status.as_ref().and_then(|s| s.phase),
            Some(Phase::Expired | Phase::Revoked | Phase::Denied | Phase::Failed)
        );
        if !finished {
            live.requests.insert(stamp::owner_id(&ObjectKey::new(
                r.namespace().unwrap_or_default(),
                r.name_any(),
            )));
        }
    }
    live
}

async fn sweep_all(
    backends: &Backends,
    now: jiff::Timestamp,
    live: &Live,
) -> Result<SweepReport, CloudError> {
    let mut total = SweepReport::default();
    for backend in [&backends.aws, &backends.azure].into_iter().flatten() {
        let r = backend.sweep(now, live).await?;
        total.expired += r.expired;
        total.orphaned += r.orphaned;
        total.groups_deleted += r.groups_deleted;
    }
    metrics::swept("expired", total.expired as u64);
    metrics::swept("orphaned", total.orphaned as u64);
    Ok(total)
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
    Ok(sweep_all(backends, now, &live).await?)
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
        match sweep_all(&ctx.backends, ctx.now(), &live).await {
            Ok(r) if r != SweepReport::default() => info!(report = ?r, "swept"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "sweep failed"),
        }
    }
}
