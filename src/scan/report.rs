//! What the scan prints: a table for people, JSON or YAML for programs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::domain::exposure::{Category, Governing, OpenPort, Reach, ScannedVm, Verdict};
use crate::domain::{PortSpec, Proto};

/// One VM with its recommendation.
#[derive(Clone, Debug)]
pub struct Finding {
    /// The VM as read.
    pub vm: ScannedVm,
    /// Its category and reason.
    pub verdict: Verdict,
    /// Every port any policy names for it (whether open or not).
    pub named_ports: Vec<PortSpec>,
}

impl Finding {
    /// Sorts `vm` given the policies that name it.
    pub fn new(vm: ScannedVm, governing: &[Governing]) -> Finding {
        let verdict = crate::domain::exposure::verdict(&vm, governing);
        let mut named_ports: Vec<PortSpec> = governing
            .iter()
            .flat_map(|g| g.ports.iter().copied())
            .collect();
        named_ports.sort();
        named_ports.dedup();
        Finding {
            vm,
            verdict,
            named_ports,
        }
    }
}

/// A scope that could not be read.
#[derive(Clone, Debug, Serialize)]
pub struct ScopeError {
    /// `aws <region>` or `azure <subscription>[/<resource group>]`.
    pub scope: String,
    /// What went wrong.
    pub message: String,
}

/// The JSON/YAML document.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every VM, by cloud, region and name.
    pub vms: Vec<VmReport>,
    /// How many VMs fell into each category.
    pub summary: BTreeMap<&'static str, usize>,
    /// Scopes that could not be read: their VMs are missing above.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ScopeError>,
}

/// One VM in the document.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmReport {
    /// `aws` or `azure`.
    pub cloud: String,
    /// Instance id or ARM id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Region or location.
    pub region: String,
    /// Azure: the resource group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    /// `Healthy`, `Unhealthy` or `NotApplicable`.
    pub category: &'static str,
    /// Management ports its rules leave open.
    pub open_ports: Vec<PortReport>,
    /// Why it is in its category.
    pub reason: String,
    /// The policies that name it, comma-separated; `null` when none does.
    pub policy: Option<String>,
    /// Its public addresses.
    pub public_ips: Vec<String>,
}

/// One open port in the document.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortReport {
    /// The port number.
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
    /// `internet` or `internal`.
    pub reach: &'static str,
    /// The sources that reach it, as the rules write them.
    pub sources: Vec<String>,
    /// The rules that open it, comma-separated.
    pub rule: String,
}

fn protocol(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
        Proto::Any => "Any",
    }
}

fn reach(r: Reach) -> &'static str {
    match r {
        Reach::Internet => "internet",
        Reach::Internal => "internal",
    }
}

fn port_report(o: &OpenPort) -> PortReport {
    PortReport {
        port: o.port.port.get(),
        protocol: protocol(o.port.protocol),
        reach: reach(o.reach),
        sources: o.sources.clone(),
        rule: o.rules.join(", "),
    }
}

/// Sorts findings the way they are printed: by cloud, region, name, id.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        (a.vm.cloud, &a.vm.region, &a.vm.name, &a.vm.id).cmp(&(
            b.vm.cloud,
            &b.vm.region,
            &b.vm.name,
            &b.vm.id,
        ))
    });
}

/// How many findings fell into each category (every category present).
pub fn summary(findings: &[Finding]) -> BTreeMap<&'static str, usize> {
    Category::ALL
        .iter()
        .map(|c| {
            (
                c.as_str(),
                findings.iter().filter(|f| f.verdict.category == *c).count(),
            )
        })
        .collect()
}

/// The document for JSON and YAML.
pub fn document(findings: &[Finding], errors: &[ScopeError]) -> Report {
    Report {
        vms: findings
            .iter()
            .map(|f| VmReport {
                cloud: f.vm.cloud.to_string(),
                id: f.vm.id.clone(),
                name: f.vm.name.clone(),
                region: f.vm.region.clone(),
                resource_group: f.vm.resource_group.clone(),
                category: f.verdict.category.as_str(),
                open_ports: f.vm.open_ports.iter().map(port_report).collect(),
                reason: f.verdict.reason.clone(),
                policy: (!f.verdict.policies.is_empty()).then(|| f.verdict.policies.join(", ")),
                public_ips: f.vm.public_ips.clone(),
            })
            .collect(),
        summary: summary(findings),
        errors: errors.to_vec(),
    }
}

/// `22/tcp, 3389/tcp (internal)`, or `-`.
fn ports_cell(open: &[OpenPort]) -> String {
    if open.is_empty() {
        return "-".into();
    }
    open.iter()
        .map(|o| match o.reach {
            Reach::Internet => o.port.to_string(),
            Reach::Internal => format!("{} (internal)", o.port),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table: a header, one line per VM, then the counts.
pub fn table(findings: &[Finding]) -> String {
    let header = ["CLOUD", "REGION", "VM", "CATEGORY", "OPEN PORTS", "REASON"];
    let rows: Vec<[String; 6]> = findings
        .iter()
        .map(|f| {
            [
                f.vm.cloud.to_string(),
                f.vm.region.clone(),
                f.vm.name.clone(),
                f.verdict.category.to_string(),
                ports_cell(&f.vm.open_ports),
                f.verdict.reason.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == cells.len() - 1 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    let counts = summary(findings);
    out.push_str(&format!(
        "\n{} VMs: {}\n",
        findings.len(),
        counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::exposure::{Cloud, parse_port};

    fn finding(name: &str, open: Vec<OpenPort>) -> Finding {
        Finding::new(
            ScannedVm {
                cloud: Cloud::Aws,
                id: format!("i-{name}"),
                name: name.into(),
                region: "eu-west-1".into(),
                resource_group: None,
                public_ips: vec!["203.0.113.9".into()],
                open_ports: open,
                not_applicable: None,
                note: None,
            },
            &[],
        )
    }

    fn ssh() -> OpenPort {
        OpenPort {
            port: parse_port("22").unwrap(),
            reach: Reach::Internet,
            sources: vec!["0.0.0.0/0".into()],
            rules: vec!["sg-1/sgr-1".into()],
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let doc = document(&[finding("web", vec![ssh()])], &[]);
        let v = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "vms": [{
                    "cloud": "aws", "id": "i-web", "name": "web", "region": "eu-west-1",
                    "category": "Unhealthy",
                    "openPorts": [{"port": 22, "protocol": "TCP", "reach": "internet",
                                   "sources": ["0.0.0.0/0"], "rule": "sg-1/sgr-1"}],
                    "reason": "open to the internet and governed by no JitPolicy: 22/tcp from 0.0.0.0/0 via sg-1/sgr-1",
                    "policy": null,
                    "publicIps": ["203.0.113.9"],
                }],
                "summary": {"Healthy": 0, "NotApplicable": 0, "Unhealthy": 1},
            })
        );
    }

    #[test]
    fn the_table_lines_up() {
        let t = table(&[finding("web", vec![ssh()]), finding("db", Vec::new())]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("CLOUD  REGION     VM   CATEGORY   OPEN PORTS  REASON"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("aws    eu-west-1  web  Unhealthy  22/tcp      open to"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("aws    eu-west-1  db   Healthy    -           no management"),
            "{t}"
        );
        assert_eq!(lines[4], "2 VMs: 1 Healthy, 0 NotApplicable, 1 Unhealthy");
    }
}
