//! EC2 fixtures on moto: a VPC, a subnet, a security group with rules, an instance.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, SecurityGroupRule};

/// The region tests use.
pub const REGION: &str = "eu-west-1";

/// An EC2 client talking to `url` (moto or the proxy) with test credentials.
pub fn client(url: &str) -> Client {
    let conf = aws_sdk_ec2::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    Client::from_conf(conf)
}

/// One instance in its own VPC whose group allows 22/tcp and 443/tcp from anywhere.
pub struct Instance {
    pub instance_id: String,
    pub eni_id: String,
    pub group_id: String,
    pub vpc_id: String,
}

fn open_to_world(port: i32, description: &str) -> IpPermission {
    IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(port)
        .to_port(port)
        .ip_ranges(
            IpRange::builder()
                .cidr_ip("0.0.0.0/0")
                .description(description)
                .build(),
        )
        .build()
}

/// Creates the fixture.
pub async fn instance(ec2: &Client) -> Instance {
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.0.1.0/24")
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_string();
    let sg = ec2
        .create_security_group()
        .group_name(format!("web-{vpc_id}"))
        .description("web servers")
        .vpc_id(&vpc_id)
        .send()
        .await
        .unwrap();
    let group_id = sg.group_id().unwrap().to_string();
    for (port, d) in [(22, "ssh from anywhere"), (443, "https")] {
        ec2.authorize_security_group_ingress()
            .group_id(&group_id)
            .ip_permissions(open_to_world(port, d))
            .send()
            .await
            .unwrap();
    }
    let images = ec2.describe_images().send().await.unwrap();
    let image = images
        .images()
        .first()
        .and_then(|i| i.image_id())
        .expect("moto has images")
        .to_string();
    let run = ec2
        .run_instances()
        .image_id(image)
        .min_count(1)
        .max_count(1)
        .subnet_id(&subnet_id)
        .security_group_ids(&group_id)
        .send()
        .await
        .unwrap();
    let inst = &run.instances()[0];
    Instance {
        instance_id: inst.instance_id().unwrap().to_string(),
        eni_id: inst.network_interfaces()[0]
            .network_interface_id()
            .unwrap()
            .to_string(),
        group_id,
        vpc_id,
    }
}

/// Re-adds 22/tcp from anywhere, as someone fixing things by hand would.
pub async fn reopen_ssh(ec2: &Client, group_id: &str) {
    ec2.authorize_security_group_ingress()
        .group_id(group_id)
        .ip_permissions(open_to_world(22, "ssh from anywhere"))
        .send()
        .await
        .unwrap();
}

/// The ingress rules of a group.
pub async fn ingress(ec2: &Client, group_id: &str) -> Vec<SecurityGroupRule> {
    ec2.describe_security_group_rules()
        .filters(Filter::builder().name("group-id").values(group_id).build())
        .send()
        .await
        .unwrap()
        .security_group_rules()
        .iter()
        .filter(|r| r.is_egress() != Some(true))
        .cloned()
        .collect()
}

/// `(protocol, from, to, cidr, description)` of each ingress rule, sorted.
pub async fn ingress_summary(
    ec2: &Client,
    group_id: &str,
) -> Vec<(String, i32, i32, String, String)> {
    let mut v: Vec<_> = ingress(ec2, group_id)
        .await
        .iter()
        .map(|r| {
            (
                r.ip_protocol().unwrap_or_default().to_string(),
                r.from_port().unwrap_or(-1),
                r.to_port().unwrap_or(-1),
                r.cidr_ipv4()
                    .or(r.cidr_ipv6())
                    .unwrap_or_default()
                    .to_string(),
                r.description().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The groups attached to an ENI, read from the ENI (DescribeInstances lags in moto).
pub async fn eni_groups(ec2: &Client, eni_id: &str) -> Vec<String> {
    let out = ec2
        .describe_network_interfaces()
        .network_interface_ids(eni_id)
        .send()
        .await
        .unwrap();
    out.network_interfaces()[0]
        .groups()
        .iter()
        .filter_map(|g| g.group_id().map(str::to_string))
        .collect()
}

/// Security groups carrying the Portcullis cluster tag of installation `cluster` (the
/// `--cluster-name` it runs with).
pub async fn owned_groups(ec2: &Client, cluster: &str) -> Vec<String> {
    let out = ec2
        .describe_security_groups()
        .filters(
            Filter::builder()
                .name("tag:portcullis.dev/cluster")
                .values(portcullis::domain::stamp::cluster_id(cluster))
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.security_groups()
        .iter()
        .filter_map(|g| g.group_id().map(str::to_string))
        .collect()
}
