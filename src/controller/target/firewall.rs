//! The Azure Firewall in front of a target (classic rules): checked before anything is
//! written, reconciled after the NSGs with this target's baseline and grants, and where
//! to connect for the requests' statuses. Needs a client.
//!
//! The firewall is shared by every target behind it; each target's run writes only its
//! own rules (the plan leaves the others' alone), under a lock on the firewall so that
//! two targets never pick the same mapped port or priority. All grants of a target go in
//! one PUT.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::api::{ConnectionDetails, JitPolicySpec};
use crate::cloud::{CloudError, Resolved};
use crate::controller::Context;
use crate::domain::firewall::{
    BlockedItem, DEFAULT_BAND, DEFAULT_MAPPED_PORTS, FirewallSettings, FirewallTarget,
};
use crate::domain::validate;
use crate::domain::{BlockKind, Blocked, Locator, ObjectKey, PortSpec, TargetDesired, TargetKey};

/// What the firewall's reconcile found, for the target's outcome and its requests.
#[derive(Debug, Default)]
pub struct FirewallRun {
    /// Where to connect, per request and port that is open at the firewall.
    pub connections: BTreeMap<(ObjectKey, PortSpec), ConnectionDetails>,
    /// Grants the firewall cannot carry, and why (`Unsupported`: never, e.g. an IPv6
    /// source; `Conflict`: not now, e.g. every mapped port taken).
    pub grants_blocked: BTreeMap<(ObjectKey, PortSpec), (BlockKind, String)>,
    /// Baseline ports the firewall cannot close, and why.
    pub blocked: Vec<Blocked>,
    /// The error that stopped it.
    pub error: Option<CloudError>,
}

impl FirewallRun {
    /// Whether the firewall matches the desired state.
    pub fn converged(&self) -> bool {
        self.error.is_none() && self.blocked.is_empty() && self.grants_blocked.is_empty()
    }
}

/// The firewall's id and public IP, when the target sits behind one.
pub fn of(locator: &Locator) -> Option<(&str, &str)> {
    match locator {
        Locator::Azure {
            firewall: Some((id, ip)),
            ..
        } => Some((id, ip)),
        _ => None,
    }
}

/// Refuses a target whose firewall cannot be governed (managed by Azure Firewall
/// Manager: `Unsupported`; missing: `NotFound`), before anything is written anywhere.
pub async fn check(ctx: &Context, locator: &Locator) -> Result<(), CloudError> {
    let Some((id, _)) = of(locator) else {
        return Ok(());
    };
    match &ctx.backends.firewall {
        Some(fw) => fw.check(id).await,
        None => Err(CloudError::Unsupported {
            what: format!("Azure Firewall {id}"),
            code: "BackendDisabled".into(),
            message: "the Azure backend is not enabled".into(),
        }),
    }
}

/// The firewall part of the target's desired state.
fn target(
    key: &TargetKey,
    spec: &JitPolicySpec,
    desired: &TargetDesired,
    resolved: &Resolved,
    (id, public_ip): (&str, &str),
) -> Result<FirewallTarget, CloudError> {
    let public_ip: Ipv4Addr = public_ip.parse().map_err(|_| CloudError::Fatal {
        op: "PutAzureFirewall",
        code: "InvalidPublicIp".into(),
        message: format!("{public_ip:?} is not an IPv4 address"),
    })?;
    // A target being cleaned up may have left the spec: its rules go whatever the
    // settings, so the defaults do.
    let settings = validate::firewalls(spec)
        .ok()
        .and_then(|mut all| all.remove(&key.target))
        .filter(|s| s.id.eq_ignore_ascii_case(id))
        .unwrap_or(FirewallSettings {
            id: id.to_string(),
            public_ip,
            mapped_ports: DEFAULT_MAPPED_PORTS,
            band: DEFAULT_BAND,
        });
    Ok(FirewallTarget {
        key: key.clone(),
        settings: FirewallSettings {
            public_ip,
            ..settings
        },
        private_ips: resolved
            .private_ips()
            .iter()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .collect(),
        baseline: desired.baseline.clone(),
        hold: desired.hold,
        grants: desired.grants.clone(),
    })
}

/// Reconciles the target's firewall, if it has one: its deny collection and its grants'
/// DNAT and allow rules, in one guarded PUT (none when converged).
pub async fn reconcile(
    ctx: &Context,
    key: &TargetKey,
    spec: &JitPolicySpec,
    desired: &TargetDesired,
    resolved: &Resolved,
) -> Option<FirewallRun> {
    let (id, ip) = of(&desired.locator)?;
    let mut run = FirewallRun::default();
    let Some(backend) = &ctx.backends.firewall else {
        run.error = check(ctx, &desired.locator).await.err();
        return Some(run);
    };
    let target = match target(key, spec, desired, resolved, (id, ip)) {
        Ok(t) => t,
        Err(e) => {
            run.error = Some(e);
            return Some(run);
        }
    };
    let _guard = ctx
        .locks
        .lock(vec![format!("firewall:{}", id.to_ascii_lowercase())])
        .await;
    let outcome = match backend.reconcile(id, vec![target], ctx.now()).await {
        Ok(o) => o,
        Err(e) => {
            run.error = Some(e);
            return Some(run);
        }
    };
    if outcome.writes > 0 {
        tracing::info!(firewall = id, writes = outcome.writes, "firewall written");
    }
    for c in outcome.connections {
        let details = ConnectionDetails {
            address: c.address.to_string(),
            port: i32::from(c.mapped_port),
        };
        run.connections.insert((c.request, c.port), details);
    }
    for b in outcome.blocked {
        let reason = format!("Azure Firewall {id}: {}", b.reason);
        match b.item {
            BlockedItem::Baseline(port) => run.blocked.push(Blocked {
                location: id.to_string(),
                port,
                kind: b.kind,
                reason,
            }),
            BlockedItem::Grant { request, port } => {
                run.grants_blocked.insert((request, port), (b.kind, reason));
            }
        }
    }
    Some(run)
}
