//! Resource fields ↔ the domain model.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::policy::{AwsTarget, AzureFirewall, AzureTarget, RevokedRule, TargetCloud};
use crate::api::{AccessRequestStatus, Phase, PortReason};
use crate::domain::validate::Recorded;
use crate::domain::{CloseReason, ForeignRuleSpec, ForeignSource, Locator, PortState};

/// A port state as the status records it.
pub fn port_state_to_api(s: PortState) -> (Phase, Option<PortReason>) {
    match s {
        PortState::Pending => (Phase::Pending, None),
        PortState::Active => (Phase::Active, None),
        PortState::Expired => (Phase::Expired, Some(PortReason::Expired)),
        PortState::Revoked(r) => (
            Phase::Revoked,
            Some(match r {
                CloseReason::UserRequested => PortReason::UserRequested,
                CloseReason::NewerRequestInitiated => PortReason::NewerRequestInitiated,
                CloseReason::PolicyChanged => PortReason::PolicyChanged,
            }),
        ),
        PortState::Denied => (Phase::Denied, None),
        PortState::Failed => (Phase::Failed, None),
    }
}

/// A port state from the status.
pub fn port_state_from_api(phase: Phase, reason: Option<PortReason>) -> PortState {
    match phase {
        Phase::Pending => PortState::Pending,
        Phase::Active => PortState::Active,
        Phase::Expired => PortState::Expired,
        Phase::Revoked => PortState::Revoked(match reason {
            Some(PortReason::NewerRequestInitiated) => CloseReason::NewerRequestInitiated,
            Some(PortReason::PolicyChanged) => CloseReason::PolicyChanged,
            _ => CloseReason::UserRequested,
        }),
        Phase::Denied => PortState::Denied,
        Phase::Failed => PortState::Failed,
    }
}

/// The final states a request's status records, per spec port (matched by position and
/// port). The status is writable by people: these may only keep a port closed.
pub fn recorded(status: Option<&AccessRequestStatus>, spec_ports: &[i32]) -> Recorded {
    let Some(status) = status else {
        return Recorded::default();
    };
    let ports = spec_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            status
                .ports
                .get(i)
                .filter(|p| p.port == *port)
                .map(|p| port_state_from_api(p.state, p.reason))
                .filter(|s| s.is_final())
        })
        .collect();
    Recorded { ports }
}

/// A recorded AWS revocation from the status.
pub fn revoked_from_api(r: &RevokedRule) -> ForeignRuleSpec {
    let source = if let Some(c) = &r.cidr_ipv4 {
        ForeignSource::Cidr(c.clone())
    } else if let Some(c) = &r.cidr_ipv6 {
        ForeignSource::Cidr(c.clone())
    } else if let Some(g) = &r.referenced_group_id {
        ForeignSource::Group(g.clone())
    } else {
        ForeignSource::PrefixList(r.prefix_list_id.clone().unwrap_or_default())
    };
    ForeignRuleSpec {
        container: r.group_id.clone(),
        protocol: r.ip_protocol.clone(),
        ports: (r.from_port >= 0 && r.to_port >= 0)
            .then_some((r.from_port as u16, r.to_port as u16)),
        source,
        description: r.description.clone(),
    }
}

/// A revocation as the status records it.
pub fn revoked_to_api(s: &ForeignRuleSpec) -> RevokedRule {
    let (mut v4, mut v6, mut group, mut prefix) = (None, None, None, None);
    match &s.source {
        ForeignSource::Cidr(c) if c.contains(':') => v6 = Some(c.clone()),
        ForeignSource::Cidr(c) => v4 = Some(c.clone()),
        ForeignSource::Group(g) => group = Some(g.clone()),
        ForeignSource::PrefixList(p) | ForeignSource::Tag(p) => prefix = Some(p.clone()),
    }
    let (from, to) = s
        .ports
        .map(|(f, t)| (i32::from(f), i32::from(t)))
        .unwrap_or((-1, -1));
    RevokedRule {
        group_id: s.container.clone(),
        ip_protocol: s.protocol.clone(),
        from_port: from,
        to_port: to,
        cidr_ipv4: v4,
        cidr_ipv6: v6,
        referenced_group_id: group,
        prefix_list_id: prefix,
        description: s.description.clone(),
        signature: None,
    }
}

/// Where a target lives, as the API writes it.
pub fn cloud_of(locator: &Locator) -> TargetCloud {
    match locator {
        Locator::Aws {
            region,
            instance_id,
        } => TargetCloud::Aws(AwsTarget {
            region: region.clone(),
            instance_id: instance_id.clone(),
        }),
        Locator::Azure { vm_id, firewall } => TargetCloud::Azure(AzureTarget {
            vm_id: vm_id.clone(),
            firewall: firewall.as_ref().map(|(id, ip)| AzureFirewall {
                id: id.clone(),
                public_ip: ip.clone(),
                mapped_ports: None,
            }),
        }),
    }
}

/// A Kubernetes time.
pub fn time(t: jiff::Timestamp) -> Time {
    // Kubernetes times have second precision on the wire; keep what we compare stable.
    Time(jiff::Timestamp::from_second(t.as_second()).unwrap_or(t))
}
