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

use ipnet::IpNet;

use super::decide::Decision;
use crate::api::{ConnectionDetails, JitPolicySpec};
use crate::cloud::{CloudError, Resolved};
use crate::controller::Context;
use crate::domain::firewall::{
    BlockedItem, DEFAULT_BAND, DEFAULT_MAPPED_PORTS, FirewallSettings, FirewallTarget,
};
use crate::domain::validate;
use crate::domain::{
    BlockKind, Blocked, Grant, Locator, ObjectKey, PortSpec, TargetDesired, TargetKey,
};

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
    /// Where traffic through the firewall reaches the VM from: the NSGs open to these
    /// (see [`nsg_view`]).
    pub nsg_sources: Vec<IpNet>,
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
/// For a target behind a firewall, the ranges its DNAT traffic comes from (`None`: no
/// firewall).
pub async fn check(ctx: &Context, locator: &Locator) -> Result<Option<Vec<IpNet>>, CloudError> {
    let Some((id, _)) = of(locator) else {
        return Ok(None);
    };
    match &ctx.backends.firewall {
        Some(fw) => fw.check(id).await.map(Some),
        None => Err(CloudError::Unsupported {
            what: format!("Azure Firewall {id}"),
            code: "BackendDisabled".into(),
            message: "the Azure backend is not enabled".into(),
        }),
    }
}

/// The decision as the target's NSGs must carry it. Traffic through the firewall reaches
/// the VM from the firewall's subnet (it translates the source of DNAT'ed traffic), so
/// behind a firewall a grant opens the NSGs to `sources` rather than to the requester:
/// one rule per port, held by the grant that lasts longest (the firewall's DNAT rules
/// decide who gets through). Unchanged when `sources` is `None` or empty.
pub fn nsg_view(decision: &Decision, sources: Option<&[IpNet]>) -> Decision {
    let mut out = decision.clone();
    let Some(sources) = sources.filter(|s| !s.is_empty()) else {
        return out;
    };
    let mut by_rule: BTreeMap<(PortSpec, IpNet), Grant> = BTreeMap::new();
    for g in &decision.desired.grants {
        for source in sources {
            let mapped = Grant {
                source: *source,
                ..g.clone()
            };
            let slot = by_rule.entry((g.port, *source)).or_insert(mapped.clone());
            if (mapped.expires_at, &mapped.request) > (slot.expires_at, &slot.request) {
                *slot = mapped;
            }
        }
    }
    out.desired.grants = by_rule.into_values().collect();
    out
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
    nsg_sources: Option<Vec<IpNet>>,
) -> Option<FirewallRun> {
    let (id, ip) = of(&desired.locator)?;
    let mut run = FirewallRun {
        nsg_sources: nsg_sources.unwrap_or_default(),
        ..FirewallRun::default()
    };
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

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use super::*;
    use crate::domain::Proto;

    fn grant(request: &str, source: &str, secs: i64) -> Grant {
        Grant {
            request: ObjectKey::new("ns", request),
            port: PortSpec {
                port: NonZeroU16::new(22).unwrap(),
                protocol: Proto::Tcp,
            },
            source: source.parse().unwrap(),
            expires_at: jiff::Timestamp::from_second(1_000 + secs).unwrap(),
        }
    }

    #[test]
    fn behind_a_firewall_the_nsgs_open_to_its_subnet_once_per_port() {
        let key = TargetKey {
            policy: ObjectKey::new("ns", "p"),
            target: "vm".into(),
        };
        let locator = Locator::Azure {
            vm_id: "vm".into(),
            firewall: Some(("fw".into(), "198.51.100.4".into())),
        };
        let mut desired = TargetDesired::cleanup(key, locator, Default::default(), vec![]);
        desired.grants = vec![
            grant("short", "203.0.113.7/32", 60),
            grant("long", "203.0.113.8/32", 600),
        ];
        let decision = Decision {
            desired,
            outcomes: Default::default(),
            next_expiry: None,
            cleanup: None,
            held: None,
        };
        let subnet: IpNet = "10.250.0.0/26".parse().unwrap();

        let view = nsg_view(&decision, Some(&[subnet]));

        assert_eq!(view.desired.grants.len(), 1);
        let g = &view.desired.grants[0];
        assert_eq!(g.source, subnet);
        assert_eq!(
            g.request.name, "long",
            "held by the grant that lasts longest"
        );
        assert_eq!(nsg_view(&decision, None), decision);
        assert_eq!(nsg_view(&decision, Some(&[])), decision);
    }
}
