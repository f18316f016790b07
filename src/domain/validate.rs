//! Parsing resources into the domain model, with errors that name the field.
//!
//! The CRD schema rejects what is malformed on its face; this checks the rest (host bits,
//! duration limits, uniqueness, the request against its policy). The admission webhook
//! and the controller both use it, so a request the webhook would refuse never reaches a
//! cloud API even when the webhook is absent.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::NonZeroU16;
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;

use super::duration;
use super::firewall::{self, FirewallSettings};
use super::model::*;
use crate::api;

/// The shortest grant a request may ask for.
pub const MIN_REQUEST_DURATION: Duration = Duration::from_secs(10);
/// The shortest `maxDuration` a policy may set.
pub const MIN_MAX_DURATION: Duration = Duration::from_secs(5 * 60);
/// The longest `maxDuration` a policy may set.
pub const MAX_MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `spec.ports[0].sourcePrefix`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found, joined for a status message or an admission answer.
pub fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses a CIDR and insists on a network address (no host bits).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let net: IpNet = text
        .parse()
        .map_err(|_| format!("{text:?} is not a CIDR such as 203.0.113.7/32 or 2001:db8::/64"))?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Parses a policy. `deleting` marks a policy whose deletion is under way.
pub fn policy(
    key: ObjectKey,
    spec: &api::JitPolicySpec,
    deleting: bool,
) -> Result<Policy, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut targets = Vec::new();
    let mut names = BTreeSet::new();
    for (i, t) in spec.targets.iter().enumerate() {
        let field = format!("spec.targets[{i}]");
        if !names.insert(t.name.clone()) {
            errors.push(err(
                format!("{field}.name"),
                format!("duplicate target name {:?}", t.name),
            ));
        }
        targets.push(PolicyTarget {
            name: t.name.clone(),
            locator: locator(&t.cloud),
        });
    }
    if spec.targets.is_empty() {
        errors.push(err("spec.targets", "at least one target is required"));
    }

    let mut ports: Vec<PolicyPort> = Vec::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let Some(port) = u16::try_from(p.port).ok().and_then(NonZeroU16::new) else {
            errors.push(err(
                format!("{field}.port"),
                format!("{} is not a port (1-65535)", p.port),
            ));
            continue;
        };
        let spec_ = PortSpec {
            port,
            protocol: p.protocol.into(),
        };
        if let Some(other) = ports
            .iter()
            .position(|o| o.spec.port == port && o.spec.protocol.overlaps(spec_.protocol))
        {
            errors.push(err(
                format!("{field}.port"),
                format!(
                    "port {spec_} overlaps spec.ports[{other}] ({})",
                    ports[other].spec
                ),
            ));
        }
        let mut allowed = Vec::new();
        for (j, a) in p.allowed_source_prefixes.iter().enumerate() {
            if a == "*" {
                allowed.push(AllowedSource::Any);
                continue;
            }
            match parse_cidr(a) {
                Ok(net) => allowed.push(AllowedSource::Net(net)),
                Err(e) => errors.push(err(format!("{field}.allowedSourcePrefixes[{j}]"), e)),
            }
        }
        if p.allowed_source_prefixes.is_empty() {
            errors.push(err(
                format!("{field}.allowedSourcePrefixes"),
                "at least one prefix is required (write 0.0.0.0/0 or * to allow any source)",
            ));
        }
        let max_duration = match duration::parse(&p.max_duration) {
            Ok(d) if !(MIN_MAX_DURATION..=MAX_MAX_DURATION).contains(&d) => {
                errors.push(err(
                    format!("{field}.maxDuration"),
                    format!("{} is outside 5m to 24h", p.max_duration),
                ));
                d
            }
            Ok(d) => d,
            Err(e) => {
                errors.push(err(format!("{field}.maxDuration"), e));
                Duration::ZERO
            }
        };
        ports.push(PolicyPort {
            spec: spec_,
            allowed,
            max_duration,
        });
    }
    if spec.ports.is_empty() {
        errors.push(err("spec.ports", "at least one port is required"));
    }

    let bands = match &spec.priority_bands {
        None => Bands::default(),
        Some(b) => match bands(b) {
            Ok(b) => b,
            Err(e) => {
                errors.extend(e);
                Bands::default()
            }
        },
    };

    let shared_groups = match spec.aws.as_ref().map(|a| a.shared_groups) {
        Some(api::SharedGroupsMode::Revoke) => SharedGroups::Revoke,
        _ => SharedGroups::Conflict,
    };
    if let Err(e) = firewalls(spec) {
        errors.extend(e);
    }

    if errors.is_empty() {
        Ok(Policy {
            key,
            targets,
            ports,
            bands,
            shared_groups,
            deleting,
            hold: false,
        })
    } else {
        Err(errors)
    }
}

/// Where a target lives, in the domain model.
pub fn locator(cloud: &api::TargetCloud) -> Locator {
    match cloud {
        api::TargetCloud::Azure(a) => Locator::Azure {
            vm_id: a.vm_id.clone(),
            firewall: a
                .firewall
                .as_ref()
                .map(|f| (f.id.clone(), f.public_ip.clone())),
        },
        api::TargetCloud::Aws(a) => Locator::Aws {
            region: a.region.clone(),
            instance_id: a.instance_id.clone(),
        },
    }
}

/// A policy whose spec does not validate, as far as it can be read: its targets (the
/// first of each name) and nothing else. Its baseline is held as it is and nothing new
/// opens (see [`Policy::hold`]).
pub fn held_policy(key: ObjectKey, spec: &api::JitPolicySpec, deleting: bool) -> Policy {
    let mut names = BTreeSet::new();
    Policy {
        key,
        targets: spec
            .targets
            .iter()
            .filter(|t| names.insert(t.name.clone()))
            .map(|t| PolicyTarget {
                name: t.name.clone(),
                locator: locator(&t.cloud),
            })
            .collect(),
        ports: Vec::new(),
        bands: Bands::default(),
        shared_groups: SharedGroups::Conflict,
        deleting,
        hold: true,
    }
}

fn bands(b: &api::PriorityBands) -> Result<Bands, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut band = |name: &str, band: &api::PriorityBand| -> Band {
        let field = format!("spec.priorityBands.{name}");
        let ok = |v: i32| (100..=4096).contains(&v);
        if !ok(band.first) || !ok(band.last) {
            errors.push(err(field.clone(), "priorities must lie in 100-4096"));
        } else if band.first > band.last {
            errors.push(err(
                field.clone(),
                format!("first ({}) is after last ({})", band.first, band.last),
            ));
        }
        Band {
            first: band.first.clamp(100, 4096) as u16,
            last: band.last.clamp(100, 4096) as u16,
        }
    };
    let allow = band("allow", &b.allow);
    let deny = band("deny", &b.deny);
    if errors.is_empty() && allow.last >= deny.first {
        errors.push(err(
            "spec.priorityBands",
            format!(
                "the allow band ({}-{}) must lie above (before) the deny band ({}-{})",
                allow.first, allow.last, deny.first, deny.last
            ),
        ));
    }
    if errors.is_empty() {
        Ok(Bands { allow, deny })
    } else {
        Err(errors)
    }
}

/// The firewall settings of the policy's targets that sit behind an Azure Firewall, by
/// target name: public IP, mapped ports and `priorityBands.firewall` (or the defaults).
pub fn firewalls(
    spec: &api::JitPolicySpec,
) -> Result<BTreeMap<String, FirewallSettings>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let field = "spec.priorityBands.firewall";
    let band = match spec.priority_bands.as_ref().and_then(|b| b.firewall) {
        None => firewall::DEFAULT_BAND,
        Some(b) => {
            let limits =
                i32::from(*firewall::PRIORITIES.start())..=i32::from(*firewall::PRIORITIES.end());
            if !limits.contains(&b.first) || !limits.contains(&b.last) {
                errors.push(err(field, "priorities must lie in 100-65000"));
            } else if b.first > b.last {
                errors.push(err(
                    field,
                    format!("first ({}) is after last ({})", b.first, b.last),
                ));
            }
            Band {
                first: b.first.clamp(100, 65000) as u16,
                last: b.last.clamp(100, 65000) as u16,
            }
        }
    };
    let mut out = BTreeMap::new();
    for (i, t) in spec.targets.iter().enumerate() {
        let api::TargetCloud::Azure(azure) = &t.cloud else {
            continue;
        };
        let Some(fw) = &azure.firewall else {
            continue;
        };
        let field = format!("spec.targets[{i}].azure.firewall");
        let public_ip = fw.public_ip.parse().map_err(|_| {
            err(
                format!("{field}.publicIp"),
                format!("{:?} is not an IPv4 address", fw.public_ip),
            )
        });
        let mapped_ports = match &fw.mapped_ports {
            None => Ok(firewall::DEFAULT_MAPPED_PORTS),
            Some(text) => {
                firewall::parse_port_range(text).map_err(|e| err(format!("{field}.mappedPorts"), e))
            }
        };
        match (public_ip, mapped_ports) {
            (Ok(public_ip), Ok(mapped_ports)) => {
                out.insert(
                    t.name.clone(),
                    FirewallSettings {
                        id: fw.id.clone(),
                        public_ip,
                        mapped_ports,
                        band,
                    },
                );
            }
            (a, b) => errors.extend(a.err().into_iter().chain(b.err())),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// What a request's status already says, for [`request`]: per spec port, a final state
/// it records (it can only keep a port closed).
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// Per spec port, its recorded state.
    pub ports: Vec<Option<PortState>>,
}

/// Parses a request and checks it against its policy (`None`: the policy does not exist).
pub fn request(
    key: ObjectKey,
    spec: &api::AccessRequestSpec,
    policy: Option<&Policy>,
    created: Timestamp,
    deleting: bool,
    recorded: Recorded,
) -> Result<Request, Vec<FieldError>> {
    let mut errors = Vec::new();
    if spec.justification.trim().is_empty() {
        errors.push(err("spec.justification", "a justification is required"));
    } else if spec.justification.len() > 1024 {
        errors.push(err("spec.justification", "is longer than 1024 characters"));
    }
    let Some(policy) = policy else {
        errors.push(err(
            "spec.policyRef.name",
            format!(
                "JitPolicy {:?} does not exist in namespace {:?}",
                spec.policy_ref.name, key.namespace
            ),
        ));
        return Err(errors);
    };
    if policy.target(&spec.target).is_none() {
        let known: Vec<&str> = policy.targets.iter().map(|t| t.name.as_str()).collect();
        errors.push(err(
            "spec.target",
            format!(
                "policy {:?} has no target {:?} (it has {})",
                policy.key.name,
                spec.target,
                known.join(", ")
            ),
        ));
    }
    if spec.ports.is_empty() {
        errors.push(err("spec.ports", "at least one port is required"));
    }
    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let protocol = p.protocol.map(Proto::from);
        let policy_port = u16::try_from(p.port)
            .ok()
            .and_then(|n| policy.port(n, protocol));
        let Some(policy_port) = policy_port else {
            let offered: Vec<String> = policy.ports.iter().map(|p| p.spec.to_string()).collect();
            errors.push(err(
                format!("{field}.port"),
                format!(
                    "port {}{} is not governed by policy {:?} (it offers {})",
                    p.port,
                    protocol.map(|p| format!("/{p}")).unwrap_or_default(),
                    policy.key.name,
                    offered.join(", ")
                ),
            ));
            continue;
        };
        if !seen.insert(policy_port.spec) {
            errors.push(err(
                format!("{field}.port"),
                format!("port {} is requested twice", policy_port.spec),
            ));
        }
        let source = match parse_cidr(&p.source_prefix) {
            Ok(net) => {
                if !policy_port.allowed.iter().any(|a| a.contains(&net)) {
                    let allowed: Vec<String> = policy_port
                        .allowed
                        .iter()
                        .map(|a| match a {
                            AllowedSource::Any => "*".to_string(),
                            AllowedSource::Net(n) => n.to_string(),
                        })
                        .collect();
                    errors.push(err(
                        format!("{field}.sourcePrefix"),
                        format!(
                            "{net} is not inside the prefixes policy {:?} allows for port {} ({})",
                            policy.key.name,
                            policy_port.spec,
                            allowed.join(", ")
                        ),
                    ));
                }
                Some(net)
            }
            Err(e) => {
                errors.push(err(format!("{field}.sourcePrefix"), e));
                None
            }
        };
        let duration = match duration::parse(&p.duration) {
            Ok(d) if d < MIN_REQUEST_DURATION => {
                errors.push(err(
                    format!("{field}.duration"),
                    format!("{} is shorter than 10s", p.duration),
                ));
                None
            }
            Ok(d) if d > policy_port.max_duration => {
                errors.push(err(
                    format!("{field}.duration"),
                    format!(
                        "{} is longer than the policy's maxDuration {}",
                        p.duration,
                        duration::format(policy_port.max_duration)
                    ),
                ));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                errors.push(err(format!("{field}.duration"), e));
                None
            }
        };
        if let (Some(source), Some(duration)) = (source, duration) {
            ports.push(RequestedPort {
                spec: policy_port.spec,
                source,
                duration,
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut states = recorded.ports;
    states.resize(ports.len(), None);
    Ok(Request {
        key,
        policy: spec.policy_ref.name.clone(),
        target: spec.target.clone(),
        ports,
        created,
        revoked: spec.revoke || deleting,
        recorded: states,
    })
}

/// Checks that a request's sources can reach an Azure target: NSG rules name the VM's
/// addresses of the source's family and never mix families, so an IPv6 source needs an
/// IPv6 address on the VM (and the same for IPv4). `addresses` are the VM's private
/// addresses as last resolved; nothing is checked while they are unknown.
pub fn sources_fit_addresses(
    spec: &api::AccessRequestSpec,
    target: &str,
    addresses: &[std::net::IpAddr],
) -> Result<(), Vec<FieldError>> {
    if addresses.is_empty() {
        return Ok(());
    }
    let errors: Vec<FieldError> = spec
        .ports
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let net = parse_cidr(&p.source_prefix).ok()?;
            let family = Family::of_net(&net);
            (!addresses.iter().any(|a| Family::of(a) == family)).then(|| {
                err(
                    format!("spec.ports[{i}].sourcePrefix"),
                    format!(
                        "{net} is an {family} source, but target {target:?} has no {family} address to open it to"
                    ),
                )
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Reads a request without checking it against its policy, for a policy on hold (whose
/// spec does not validate): only to close what it holds on time. The protocol defaults
/// to TCP; ports that do not parse are left out.
pub fn request_unchecked(
    key: ObjectKey,
    spec: &api::AccessRequestSpec,
    created: Timestamp,
    deleting: bool,
    recorded: Recorded,
) -> Request {
    let mut ports = Vec::new();
    let mut states = Vec::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let port = u16::try_from(p.port).ok().and_then(NonZeroU16::new);
        let source = parse_cidr(&p.source_prefix).ok();
        let duration = duration::parse(&p.duration).ok();
        if let (Some(port), Some(source), Some(duration)) = (port, source, duration) {
            ports.push(RequestedPort {
                spec: PortSpec {
                    port,
                    protocol: p.protocol.map(Proto::from).unwrap_or(Proto::Tcp),
                },
                source,
                duration,
            });
            states.push(recorded.ports.get(i).copied().flatten());
        }
    }
    Request {
        key,
        policy: spec.policy_ref.name.clone(),
        target: spec.target.clone(),
        ports,
        created,
        revoked: spec.revoke || deleting,
        recorded: states,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_spec(yaml: &str) -> api::JitPolicySpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn request_spec(yaml: &str) -> api::AccessRequestSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const POLICY: &str = r#"
targets:
  - name: web
    aws: {region: eu-west-1, instanceId: i-0123456789abcdef0}
ports:
  - {port: 22, protocol: TCP, allowedSourcePrefixes: ["203.0.113.0/24"], maxDuration: 1h}
  - {port: 3389, allowedSourcePrefixes: ["*"], maxDuration: 3h}
"#;

    fn valid_policy() -> Policy {
        policy(ObjectKey::new("ns", "p"), &policy_spec(POLICY), false).unwrap()
    }

    fn check(req: &str) -> Result<Request, Vec<FieldError>> {
        request(
            ObjectKey::new("ns", "r"),
            &request_spec(req),
            Some(&valid_policy()),
            Timestamp::UNIX_EPOCH,
            false,
            Recorded::default(),
        )
    }

    fn fields(r: Result<Request, Vec<FieldError>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|e| e.field).collect()
    }

    const REQ: &str = "policyRef: {name: p}\ntarget: web\njustification: x\nports:\n";

    #[test]
    fn a_fitting_request_parses() {
        let r = check(&format!(
            "{REQ}  - {{port: 22, sourcePrefix: 203.0.113.7/32, duration: 30m}}"
        ))
        .unwrap();
        assert_eq!(r.ports[0].spec.protocol, Proto::Tcp);
        assert_eq!(r.ports[0].duration, Duration::from_secs(1800));
    }

    #[test]
    fn each_misfit_names_its_field() {
        let cases = [
            (
                "  - {port: 23, sourcePrefix: 203.0.113.7/32, duration: 30m}",
                "spec.ports[0].port",
            ),
            (
                "  - {port: 22, protocol: UDP, sourcePrefix: 203.0.113.7/32, duration: 30m}",
                "spec.ports[0].port",
            ),
            (
                "  - {port: 22, sourcePrefix: 198.51.100.7/32, duration: 30m}",
                "spec.ports[0].sourcePrefix",
            ),
            (
                "  - {port: 22, sourcePrefix: 203.0.113.0/16, duration: 30m}",
                "spec.ports[0].sourcePrefix",
            ),
            (
                "  - {port: 22, sourcePrefix: 203.0.113.7/24, duration: 30m}",
                "spec.ports[0].sourcePrefix",
            ),
            (
                "  - {port: 22, sourcePrefix: 203.0.113.7/32, duration: 2h}",
                "spec.ports[0].duration",
            ),
            (
                "  - {port: 22, sourcePrefix: 203.0.113.7/32, duration: 5s}",
                "spec.ports[0].duration",
            ),
        ];
        for (port, field) in cases {
            assert_eq!(
                fields(check(&format!("{REQ}{port}"))),
                vec![field],
                "{port}"
            );
        }
        let twice = format!(
            "{REQ}  - {{port: 22, sourcePrefix: 203.0.113.7/32, duration: 30m}}\n  - {{port: 22, sourcePrefix: 203.0.113.8/32, duration: 30m}}"
        );
        assert_eq!(fields(check(&twice)), vec!["spec.ports[1].port"]);
        let target = "policyRef: {name: p}\ntarget: db\njustification: x\nports:\n  - {port: 22, sourcePrefix: 203.0.113.7/32, duration: 30m}";
        assert_eq!(fields(check(target)), vec!["spec.target"]);
        let blank = "policyRef: {name: p}\ntarget: web\njustification: ' '\nports:\n  - {port: 22, sourcePrefix: 203.0.113.7/32, duration: 30m}";
        assert_eq!(fields(check(blank)), vec!["spec.justification"]);
    }

    #[test]
    fn any_source_only_where_written() {
        // 3389 allows `*`: IPv6 and IPv4 sources alike.
        assert!(
            check(&format!(
                "{REQ}  - {{port: 3389, sourcePrefix: 2001:db8::/64, duration: 1h}}"
            ))
            .is_ok()
        );
        assert!(
            check(&format!(
                "{REQ}  - {{port: 3389, sourcePrefix: 0.0.0.0/0, duration: 1h}}"
            ))
            .is_ok()
        );
        // 22 allows 203.0.113.0/24 only: the whole internet is refused.
        assert_eq!(
            fields(check(&format!(
                "{REQ}  - {{port: 22, sourcePrefix: 0.0.0.0/0, duration: 1h}}"
            ))),
            vec!["spec.ports[0].sourcePrefix"]
        );
    }

    #[test]
    fn a_missing_policy_is_named() {
        let r = request(
            ObjectKey::new("ns", "r"),
            &request_spec(&format!(
                "{REQ}  - {{port: 22, sourcePrefix: 203.0.113.7/32, duration: 30m}}"
            )),
            None,
            Timestamp::UNIX_EPOCH,
            false,
            Recorded::default(),
        );
        assert_eq!(fields(r), vec!["spec.policyRef.name"]);
    }

    #[test]
    fn policy_limits_are_checked() {
        let bad = POLICY
            .replace("maxDuration: 1h", "maxDuration: 25h")
            .replace("203.0.113.0/24", "203.0.113.1/24");
        let errs = policy(ObjectKey::new("ns", "p"), &policy_spec(&bad), false).unwrap_err();
        let f: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            f,
            vec![
                "spec.ports[0].allowedSourcePrefixes[0]",
                "spec.ports[0].maxDuration"
            ]
        );
        let dup = format!(
            "{POLICY}  - {{port: 22, protocol: Any, allowedSourcePrefixes: [\"*\"], maxDuration: 1h}}\n"
        );
        let errs = policy(ObjectKey::new("ns", "p"), &policy_spec(&dup), false).unwrap_err();
        assert_eq!(errs[0].field, "spec.ports[2].port");
        let bands = format!(
            "{POLICY}priorityBands:\n  allow: {{first: 3000, last: 3950}}\n  deny: {{first: 3900, last: 4096}}\n"
        );
        let errs = policy(ObjectKey::new("ns", "p"), &policy_spec(&bands), false).unwrap_err();
        assert_eq!(errs[0].field, "spec.priorityBands");
    }

    const FIREWALLED: &str = r#"
targets:
  - name: web
    azure:
      vmId: /subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/web
      firewall:
        id: /subscriptions/s/resourceGroups/g/providers/Microsoft.Network/azureFirewalls/fw
        publicIp: 198.51.100.4
        mappedPorts: 50000-50099
  - name: db
    azure:
      vmId: /subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/db
      firewall:
        id: /subscriptions/s/resourceGroups/g/providers/Microsoft.Network/azureFirewalls/fw
        publicIp: 198.51.100.4
ports:
  - {port: 22, allowedSourcePrefixes: ["203.0.113.0/24"], maxDuration: 1h}
"#;

    #[test]
    fn firewall_settings_parse_with_defaults() {
        let spec = policy_spec(FIREWALLED);
        let settings = firewalls(&spec).unwrap();
        assert_eq!(
            settings["web"].mapped_ports,
            firewall::PortRange {
                first: 50000,
                last: 50099
            }
        );
        assert_eq!(settings["db"].mapped_ports, firewall::DEFAULT_MAPPED_PORTS);
        assert_eq!(settings["db"].band, firewall::DEFAULT_BAND);
        assert_eq!(settings["web"].public_ip.to_string(), "198.51.100.4");
        assert!(policy(ObjectKey::new("ns", "p"), &spec, false).is_ok());
    }

    #[test]
    fn firewall_misfits_name_their_field() {
        let bad = FIREWALLED.replace("50000-50099", "50099-50000");
        let errs = policy(ObjectKey::new("ns", "p"), &policy_spec(&bad), false).unwrap_err();
        assert_eq!(errs[0].field, "spec.targets[0].azure.firewall.mappedPorts");
        let bad = FIREWALLED.replace("50000-50099", "60000-70000");
        let errs = policy(ObjectKey::new("ns", "p"), &policy_spec(&bad), false).unwrap_err();
        assert_eq!(errs[0].field, "spec.targets[0].azure.firewall.mappedPorts");
        let bands = format!(
            "{FIREWALLED}priorityBands:\n  allow: {{first: 3000, last: 3899}}\n  deny: {{first: 3900, last: 4096}}\n  firewall: {{first: 64000, last: 63000}}\n"
        );
        let errs = policy(ObjectKey::new("ns", "p"), &policy_spec(&bands), false).unwrap_err();
        assert_eq!(errs[0].field, "spec.priorityBands.firewall");
        let ok = bands.replace("{first: 64000, last: 63000}", "{first: 63000, last: 64000}");
        let settings = firewalls(&policy_spec(&ok)).unwrap();
        assert_eq!(
            settings["web"].band,
            Band {
                first: 63000,
                last: 64000
            }
        );
    }
}
