//! Reading a region for `portcullis scan`: every instance, every network interface and
//! every security group rule, a page at a time, so the number of calls grows with
//! pages and never with instances. Reads only.

use std::collections::BTreeMap;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Instance, NetworkInterface, SecurityGroupRule};
use ipnet::IpNet;

use super::{AwsBackend, call, filter};
use crate::cloud::CloudError;
use crate::domain::PortSpec;
use crate::domain::exposure::aws::{IngressRule, RuleSource, open_ports};
use crate::domain::exposure::{Cloud, NotApplicable, ScannedVm};

/// The largest page EC2 gives for the describe calls used here.
const PAGE: i32 = 1000;

/// Told how far a read has got: a line such as `eu-west-1: 1000 instances`.
pub type Progress<'a> = &'a (dyn Fn(String) + Send + Sync);

/// Reads EC2 regions for the scan, with the operator's client setup: aws-config's default
/// credential chain, standard retries with jittered backoff on `RequestLimitExceeded` and
/// 5xx under one shared retry budget, the same error classification.
pub struct AwsScanner {
    backend: AwsBackend,
}

impl AwsScanner {
    /// A scanner on aws-config's default chain (`AWS_ENDPOINT_URL` points it at moto).
    pub async fn from_env() -> AwsScanner {
        // The cluster name only tags what the backend creates; the scan creates nothing.
        // Its listings run together and a page holds 1,000 items: on a busy endpoint one
        // takes tens of seconds (moto with 2,000 instances took > 20 s under load, and
        // the retry doubled the calls), so an attempt gets two minutes.
        AwsScanner {
            backend: AwsBackend::from_env_with_attempt_timeout(
                "scan",
                std::time::Duration::from_secs(120),
            )
            .await,
        }
    }

    /// Every instance of `region` that is not terminated, with the management ports in
    /// `ports` its security groups open.
    pub async fn region(
        &self,
        region: &str,
        ports: &[PortSpec],
        progress: Progress<'_>,
    ) -> Result<Vec<ScannedVm>, CloudError> {
        let ec2 = self.backend.client(region);
        let (instances, enis, rules) = tokio::try_join!(
            instances(&ec2, region, progress),
            interfaces(&ec2),
            ingress_rules(&ec2),
        )?;
        let enis: BTreeMap<&str, &NetworkInterface> = enis
            .iter()
            .filter_map(|e| Some((e.network_interface_id()?, e)))
            .collect();
        let mut by_group: BTreeMap<&str, Vec<IngressRule>> = BTreeMap::new();
        for r in &rules {
            if let (Some(group), Some(rule)) = (r.group_id(), ingress_rule(r)) {
                by_group.entry(group).or_default().push(rule);
            }
        }
        Ok(instances
            .iter()
            .filter_map(|i| scanned(i, region, &enis, &by_group, ports))
            .collect())
    }
}

fn scanned(
    instance: &Instance,
    region: &str,
    enis: &BTreeMap<&str, &NetworkInterface>,
    by_group: &BTreeMap<&str, Vec<IngressRule>>,
    ports: &[PortSpec],
) -> Option<ScannedVm> {
    let id = instance.instance_id()?.to_string();
    let state = instance
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_default();
    let name = instance
        .tags()
        .iter()
        .find(|t| t.key() == Some("Name"))
        .and_then(|t| t.value())
        .filter(|v| !v.is_empty())
        .unwrap_or(&id)
        .to_string();
    // The interfaces themselves are the truth about their groups: the instance's own
    // copy of the list can lag behind a change.
    let mut groups: Vec<String> = Vec::new();
    let mut public_ips: Vec<String> = instance
        .public_ip_address()
        .map(str::to_string)
        .into_iter()
        .collect();
    for attached in instance.network_interfaces() {
        let Some(eni_id) = attached.network_interface_id() else {
            continue;
        };
        let listed = enis.get(eni_id);
        let eni_groups = match listed {
            Some(e) => e.groups(),
            None => attached.groups(),
        };
        groups.extend(
            eni_groups
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string)),
        );
        if let Some(e) = listed {
            public_ips.extend(
                e.private_ip_addresses()
                    .iter()
                    .filter_map(|a| a.association().and_then(|s| s.public_ip()))
                    .map(str::to_string),
            );
            public_ips.extend(
                e.ipv6_addresses()
                    .iter()
                    .filter_map(|a| a.ipv6_address())
                    .map(str::to_string),
            );
        }
    }
    groups.sort();
    groups.dedup();
    public_ips.sort();
    public_ips.dedup();
    let rules: Vec<IngressRule> = groups
        .iter()
        .flat_map(|g| by_group.get(g.as_str()).into_iter().flatten().cloned())
        .collect();
    let running = matches!(state.as_str(), "running" | "pending");
    Some(ScannedVm {
        cloud: Cloud::Aws,
        id,
        name,
        region: region.to_string(),
        resource_group: None,
        public_ips,
        open_ports: open_ports(&rules, ports),
        not_applicable: (!running).then_some(NotApplicable::NotRunning { state }),
        note: None,
    })
}

fn ingress_rule(r: &SecurityGroupRule) -> Option<IngressRule> {
    if r.is_egress() == Some(true) {
        return None;
    }
    let source = if let Some(c) = r.cidr_ipv4().or(r.cidr_ipv6()) {
        RuleSource::Cidr(c.parse::<IpNet>().ok()?.trunc())
    } else if let Some(p) = r.prefix_list_id() {
        RuleSource::PrefixList(p.to_string())
    } else {
        RuleSource::Group(r.referenced_group_info()?.group_id()?.to_string())
    };
    let ports = match (r.from_port(), r.to_port()) {
        (Some(from), Some(to)) => Some((from, to)),
        _ => None,
    };
    Some(IngressRule {
        group: r.group_id()?.to_string(),
        id: r.security_group_rule_id().unwrap_or_default().to_string(),
        protocol: r.ip_protocol()?.to_string(),
        ports,
        source,
    })
}

/// Every instance that is not terminated, all pages.
async fn instances(
    ec2: &Client,
    region: &str,
    progress: Progress<'_>,
) -> Result<Vec<Instance>, CloudError> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = call(
            "DescribeInstances",
            ec2.describe_instances()
                .filters(filter(
                    "instance-state-name",
                    ["pending", "running", "stopping", "stopped"],
                ))
                .max_results(PAGE)
                .set_next_token(token.take())
                .send(),
        )
        .await?;
        out.extend(
            page.reservations()
                .iter()
                .flat_map(|r| r.instances().iter().cloned()),
        );
        progress(format!("aws {region}: {} instances", out.len()));
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// Every network interface of the region, all pages.
async fn interfaces(ec2: &Client) -> Result<Vec<NetworkInterface>, CloudError> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = call(
            "DescribeNetworkInterfaces",
            ec2.describe_network_interfaces()
                .max_results(PAGE)
                .set_next_token(token.take())
                .send(),
        )
        .await?;
        out.extend(page.network_interfaces().iter().cloned());
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// Every security group rule of the region, all pages.
async fn ingress_rules(ec2: &Client) -> Result<Vec<SecurityGroupRule>, CloudError> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = call(
            "DescribeSecurityGroupRules",
            ec2.describe_security_group_rules()
                .max_results(PAGE)
                .set_next_token(token.take())
                .send(),
        )
        .await?;
        out.extend(page.security_group_rules().iter().cloned());
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}
