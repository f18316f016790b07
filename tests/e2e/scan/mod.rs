//! `portcullis scan` end to end: the binary, run as a user would, against moto, the ARM
//! emulator and the real kube-apiserver.

mod emit;
mod mix;
mod scale;

use std::path::Path;
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{
    IpPermission, IpRange, Ipv6Range, PrefixListId, ResourceType, Tag, TagSpecification,
};
use serde_json::Value;

use crate::support::arm::ArmEmulator;
use crate::support::operator::binary;

/// An EC2 client for `region` at `url`, with test credentials.
pub fn ec2(url: &str, region: &str) -> Client {
    let conf = aws_sdk_ec2::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    Client::from_conf(conf)
}

/// A VPC with one subnet, and an image to launch.
pub struct Vpc {
    pub id: String,
    pub subnet: String,
    pub image: String,
}

pub async fn vpc(ec2: &Client, cidr: &str, subnet: &str) -> Vpc {
    let id = ec2
        .create_vpc()
        .cidr_block(cidr)
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&id)
        .cidr_block(subnet)
        .send()
        .await
        .unwrap()
        .subnet()
        .unwrap()
        .subnet_id()
        .unwrap()
        .to_string();
    let image = ec2.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_string();
    Vpc { id, subnet, image }
}

/// `protocol` ports `from`–`to` from an IPv4 or IPv6 CIDR.
pub fn allow(protocol: &str, from: i32, to: i32, cidr: &str) -> IpPermission {
    let b = IpPermission::builder()
        .ip_protocol(protocol)
        .from_port(from)
        .to_port(to);
    if cidr.contains(':') {
        b.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(cidr).build())
    } else {
        b.ip_ranges(IpRange::builder().cidr_ip(cidr).build())
    }
    .build()
}

/// TCP `port` from the managed prefix list `list`.
pub fn allow_prefix_list(port: i32, list: &str) -> IpPermission {
    IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(port)
        .to_port(port)
        .prefix_list_ids(PrefixListId::builder().prefix_list_id(list).build())
        .build()
}

/// A security group in `vpc` holding exactly `rules`; its id and its rules' ids.
pub async fn group(
    ec2: &Client,
    vpc: &Vpc,
    name: &str,
    rules: Vec<IpPermission>,
) -> (String, Vec<String>) {
    let id = ec2
        .create_security_group()
        .group_name(name)
        .description(format!("scan test: {name}"))
        .vpc_id(&vpc.id)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    for r in rules {
        ec2.authorize_security_group_ingress()
            .group_id(&id)
            .ip_permissions(r)
            .send()
            .await
            .unwrap();
    }
    let ids = crate::support::aws::ingress(ec2, &id)
        .await
        .iter()
        .filter_map(|r| r.security_group_rule_id().map(str::to_string))
        .collect();
    (id, ids)
}

/// Launches `count` instances named `name` in `vpc` with `groups`; their ids.
pub async fn launch(
    ec2: &Client,
    vpc: &Vpc,
    name: &str,
    groups: &[&str],
    count: i32,
) -> Vec<String> {
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key("Name").value(name).build())
        .build();
    let run = ec2
        .run_instances()
        .image_id(&vpc.image)
        .min_count(count)
        .max_count(count)
        .subnet_id(&vpc.subnet)
        .set_security_group_ids(Some(groups.iter().map(|g| g.to_string()).collect()))
        .tag_specifications(tags)
        .send()
        .await
        .unwrap();
    run.instances()
        .iter()
        .map(|i| i.instance_id().unwrap().to_string())
        .collect()
}

/// What a scan printed and how it ended.
pub struct ScanOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl ScanOutput {
    /// The JSON report.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }
}

/// The `portcullis scan` binary with the environment a user would give it.
pub struct Scanner {
    envs: Vec<(String, String)>,
}

impl Scanner {
    /// AWS at `aws_url` (moto or a proxy) with test credentials.
    pub fn new(aws_url: &str) -> Scanner {
        Scanner {
            envs: vec![
                ("AWS_ENDPOINT_URL".into(), aws_url.into()),
                ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
                ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ],
        }
    }

    /// Azure at the emulator, trusting its CA (written to `ca_file`).
    pub fn with_arm(mut self, arm: &ArmEmulator, ca_file: &Path) -> Scanner {
        std::fs::write(ca_file, &arm.ca_pem).unwrap();
        self.envs.extend([
            ("PORTCULLIS_ARM_ENDPOINT".into(), arm.url.clone()),
            (
                "PORTCULLIS_ARM_CA_FILE".into(),
                ca_file.display().to_string(),
            ),
            ("PORTCULLIS_ARM_TOKEN".into(), arm.token.clone()),
        ]);
        self
    }

    /// The variables, for the operator.
    pub fn envs(&self) -> Vec<(&str, &str)> {
        self.envs
            .iter()
            .filter(|(k, _)| k.starts_with("PORTCULLIS_"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Runs `portcullis scan ARGS` to the end (at most ten minutes).
    pub async fn run(&self, args: &[&str]) -> ScanOutput {
        let mut cmd = tokio::process::Command::new(binary());
        cmd.arg("scan")
            .args(args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
            .await
            .expect("the scan finishes within ten minutes")
            .expect("the scan runs");
        ScanOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// One line of the expected table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub name: String,
    pub category: String,
    pub ports: String,
    pub reason: String,
}

/// A row written in a test.
pub fn row(name: &str, category: &str, ports: &str, reason: impl Into<String>) -> Row {
    Row {
        name: name.into(),
        category: category.into(),
        ports: ports.into(),
        reason: reason.into(),
    }
}

/// The report's VMs named in `names`, as rows sorted by name; ports as the table prints
/// them.
pub fn rows(report: &Value, names: &[&str]) -> Vec<Row> {
    let mut out: Vec<Row> = report["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .filter(|v| names.contains(&v["name"].as_str().unwrap_or_default()))
        .map(|v| {
            let ports: Vec<String> = v["openPorts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let spec = format!(
                        "{}/{}",
                        p["port"],
                        p["protocol"].as_str().unwrap().to_ascii_lowercase()
                    );
                    match p["reach"].as_str() {
                        Some("internal") => format!("{spec} (internal)"),
                        _ => spec,
                    }
                })
                .collect();
            Row {
                name: v["name"].as_str().unwrap().into(),
                category: v["category"].as_str().unwrap().into(),
                ports: if ports.is_empty() {
                    "-".into()
                } else {
                    ports.join(", ")
                },
                reason: v["reason"].as_str().unwrap().into(),
            }
        })
        .collect();
    out.sort();
    out
}

/// Asserts row by row, so that a failure names the VM.
pub fn assert_rows(actual: &[Row], expected: &[Row]) {
    let mut expected = expected.to_vec();
    expected.sort();
    for (a, e) in actual.iter().zip(&expected) {
        assert_eq!(a, e, "VM {}", e.name);
    }
    assert_eq!(
        actual.iter().map(|r| &r.name).collect::<Vec<_>>(),
        expected.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
}
