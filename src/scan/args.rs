//! The scan's command line and what it asks for, checked: every problem names its flag.

use std::path::PathBuf;

use crate::domain::exposure::{DEFAULT_PORTS, parse_port};
use crate::domain::validate::{MAX_MAX_DURATION, MIN_MAX_DURATION, parse_cidr};
use crate::domain::{PortSpec, duration};

use super::emit;

/// How the report is printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// A table for people.
    #[default]
    Table,
    /// `{"vms": [...], "summary": {...}}`.
    Json,
    /// The JSON document as YAML.
    Yaml,
}

/// The scan's command line.
#[derive(clap::Args, Clone, Debug)]
pub struct ScanArgs {
    /// AWS region to scan (repeat or separate with commas). Credentials come from the
    /// default chain (environment, profile, web identity, instance metadata).
    #[arg(long = "aws-region", value_delimiter = ',')]
    pub aws_regions: Vec<String>,
    /// Azure subscription id to scan (repeat or separate with commas). Credentials as for
    /// the operator: PORTCULLIS_ARM_TOKEN, workload identity, client secret, managed
    /// identity, then the Azure CLI.
    #[arg(long = "azure-subscription", value_delimiter = ',')]
    pub azure_subscriptions: Vec<String>,
    /// Scan only these resource groups of the Azure subscriptions (repeat or separate
    /// with commas).
    #[arg(
        long = "resource-group",
        value_delimiter = ',',
        requires = "azure_subscriptions"
    )]
    pub resource_groups: Vec<String>,
    /// Management ports to look for: `22`, `22/tcp`, `500/udp` (repeat or separate with
    /// commas). Default: 22, 3389, 5985, 5986.
    #[arg(long = "port", value_delimiter = ',', value_parser = parse_port)]
    pub ports: Vec<PortSpec>,
    /// Print JitPolicy YAML for the unhealthy VMs (one policy per region or resource
    /// group) instead of the report; the report's summary goes to standard error.
    #[arg(long, requires = "allow")]
    pub emit_policies: bool,
    /// `allowedSourcePrefixes` of the emitted policies: who may ask for access (CIDRs or
    /// `*`; repeat or separate with commas).
    #[arg(long = "allow", value_delimiter = ',')]
    pub allow: Vec<String>,
    /// `maxDuration` of the emitted policies (5m to 24h).
    #[arg(long, default_value = "3h")]
    pub max_duration: String,
    /// Namespace written into the emitted policies (default: none, so `kubectl apply -n`
    /// decides).
    #[arg(long)]
    pub policy_namespace: Option<String>,
    /// Do not read JitPolicies: nothing counts as governed.
    #[arg(long)]
    pub no_cluster: bool,
    /// How many scopes (regions, subscriptions, resource groups) are read at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Exit with 3 when an unhealthy VM is found (for CI).
    #[arg(long)]
    pub fail_on_unhealthy: bool,
    /// The kubectl-style options (kubeconfig, context, namespace, output): flags of
    /// `portcullis scan` ([`ClusterArgs`]); the `kubectl jit` plugin fills them from its
    /// global options, so they are no flags here.
    #[arg(skip)]
    pub cluster: ClusterArgs,
}

/// Where JitPolicies are read from and how the report is printed, as kubectl's options
/// say it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Kubeconfig to read JitPolicies with (default: $KUBECONFIG, ~/.kube/config, or the
    /// pod's service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Read JitPolicies only from this namespace (default: all namespaces).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Report format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `portcullis scan`: the scan's options and kubectl's.
#[derive(clap::Args, Clone, Debug)]
pub struct ScanCommand {
    /// The scan's options.
    #[command(flatten)]
    pub scan: ScanArgs,
    /// kubectl's options.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl ScanCommand {
    /// The arguments [`super::run`] takes.
    pub fn into_args(self) -> ScanArgs {
        ScanArgs {
            cluster: self.cluster,
            ..self.scan
        }
    }
}

/// One thing to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    Aws(String),
    Azure {
        subscription: String,
        resource_group: Option<String>,
    },
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Aws(region) => write!(f, "aws {region}"),
            Scope::Azure {
                subscription,
                resource_group: None,
            } => write!(f, "azure {subscription}"),
            Scope::Azure {
                subscription,
                resource_group: Some(rg),
            } => write!(f, "azure {subscription}/{rg}"),
        }
    }
}

/// The command line, checked: what to read and how to print it.
pub(super) struct Plan {
    pub scopes: Vec<Scope>,
    pub ports: Vec<PortSpec>,
    pub emit: Option<emit::Settings>,
}

/// Checks the command line; the error names the flag.
pub(super) fn plan(args: &ScanArgs) -> Result<Plan, String> {
    if args.aws_regions.is_empty() && args.azure_subscriptions.is_empty() {
        return Err("nothing to scan: give --aws-region and/or --azure-subscription".into());
    }
    let mut scopes: Vec<Scope> = Vec::new();
    for r in &args.aws_regions {
        let r = r.trim();
        if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!(
                "--aws-region {r:?} is not a region name such as eu-west-1"
            ));
        }
        scopes.push(Scope::Aws(r.to_string()));
    }
    let path_safe = |s: &str| !s.is_empty() && !s.contains(['/', '?', '#', '&']);
    for sub in &args.azure_subscriptions {
        let sub = sub.trim();
        if !path_safe(sub) {
            return Err(format!(
                "--azure-subscription {sub:?} is not a subscription id"
            ));
        }
        if args.resource_groups.is_empty() {
            scopes.push(Scope::Azure {
                subscription: sub.to_string(),
                resource_group: None,
            });
        }
        for rg in &args.resource_groups {
            let rg = rg.trim();
            if !path_safe(rg) {
                return Err(format!(
                    "--resource-group {rg:?} is not a resource group name"
                ));
            }
            scopes.push(Scope::Azure {
                subscription: sub.to_string(),
                resource_group: Some(rg.to_string()),
            });
        }
    }
    scopes.dedup();
    let mut ports = if args.ports.is_empty() {
        DEFAULT_PORTS
            .iter()
            .map(|p| parse_port(&p.to_string()).expect("default ports parse"))
            .collect()
    } else {
        args.ports.clone()
    };
    ports.sort();
    ports.dedup();
    let emit = if args.emit_policies {
        if ports.len() > emit::MAX_PORTS {
            return Err(format!(
                "--port: a JitPolicy holds at most {} ports; --emit-policies cannot write {}",
                emit::MAX_PORTS,
                ports.len()
            ));
        }
        let mut allow = Vec::new();
        for a in &args.allow {
            let a = a.trim();
            if a == "*" {
                allow.push(a.to_string());
                continue;
            }
            // A bare address means that address alone.
            let cidr = if a.contains('/') {
                a.to_string()
            } else if a.contains(':') {
                format!("{a}/128")
            } else {
                format!("{a}/32")
            };
            let net = parse_cidr(&cidr).map_err(|e| format!("--allow {e}"))?;
            allow.push(net.to_string());
        }
        let max = duration::parse(&args.max_duration).map_err(|e| format!("--max-duration {e}"))?;
        if !(MIN_MAX_DURATION..=MAX_MAX_DURATION).contains(&max) {
            return Err(format!(
                "--max-duration {} is outside 5m to 24h",
                args.max_duration
            ));
        }
        Some(emit::Settings {
            allow,
            max_duration: args.max_duration.clone(),
            namespace: args.policy_namespace.clone(),
        })
    } else {
        None
    };
    Ok(Plan {
        scopes,
        ports,
        emit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        scan: ScanCommand,
    }

    fn parse(args: &[&str]) -> Result<ScanArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("scan").chain(args.iter().copied()))
            .map(|c| c.scan.into_args())
    }

    /// The `kubectl jit` plugin takes `--kubeconfig`, `-n` and `-o` as global options and
    /// `ScanArgs` as a subcommand: they must not clash.
    #[test]
    fn fits_under_a_plugin_with_kubectl_globals() {
        use clap::{CommandFactory, Subcommand};
        #[derive(Parser)]
        struct Plugin {
            #[arg(long, global = true)]
            kubeconfig: Option<PathBuf>,
            #[arg(short = 'n', long, global = true)]
            namespace: Option<String>,
            #[arg(short = 'o', long, global = true)]
            output: Option<String>,
            #[command(subcommand)]
            command: PluginCommand,
        }
        #[derive(Subcommand)]
        enum PluginCommand {
            Scan(ScanArgs),
        }
        Plugin::command().debug_assert();
        let p = Plugin::try_parse_from([
            "kubectl-jit",
            "-n",
            "team",
            "scan",
            "--aws-region",
            "x",
            "-o",
            "json",
        ])
        .unwrap();
        let PluginCommand::Scan(scan) = p.command;
        assert_eq!(
            (p.namespace.as_deref(), p.output.as_deref()),
            (Some("team"), Some("json"))
        );
        assert_eq!(scan.aws_regions, ["x"]);
        assert_eq!(scan.cluster.output, Output::Table, "the plugin sets it");
    }

    #[test]
    fn scopes_and_defaults() {
        let a = parse(&[
            "--aws-region",
            "eu-west-1,us-east-1",
            "--azure-subscription",
            "s1",
            "--resource-group",
            "rg1",
            "--resource-group",
            "rg2",
        ])
        .unwrap();
        let p = plan(&a).unwrap();
        let scopes: Vec<String> = p.scopes.iter().map(ToString::to_string).collect();
        assert_eq!(
            scopes,
            [
                "aws eu-west-1",
                "aws us-east-1",
                "azure s1/rg1",
                "azure s1/rg2"
            ]
        );
        let ports: Vec<String> = p.ports.iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["22/tcp", "3389/tcp", "5985/tcp", "5986/tcp"]);
        assert!(p.emit.is_none());
    }

    #[test]
    fn bad_input_names_the_flag() {
        let e = |args: &[&str]| plan(&parse(args).unwrap()).err().unwrap();
        assert!(e(&[]).contains("--aws-region"));
        assert!(e(&["--aws-region", "eu west"]).starts_with("--aws-region"));
        assert!(e(&["--azure-subscription", "a/b"]).starts_with("--azure-subscription"));
        assert!(
            e(&[
                "--aws-region",
                "x",
                "--emit-policies",
                "--allow",
                "10.0.0.1/8"
            ])
            .starts_with("--allow \"10.0.0.1/8\" has host bits set")
        );
        assert!(
            e(&[
                "--aws-region",
                "x",
                "--emit-policies",
                "--allow",
                "*",
                "--max-duration",
                "2d"
            ])
            .starts_with("--max-duration")
        );
        assert!(
            e(&[
                "--aws-region",
                "x",
                "--emit-policies",
                "--allow",
                "*",
                "--max-duration",
                "48h"
            ])
            .contains("outside 5m to 24h")
        );
        // clap's own checks.
        assert!(
            parse(&["--aws-region", "x", "--emit-policies"]).is_err(),
            "--allow is required"
        );
        assert!(
            parse(&["--resource-group", "rg"]).is_err(),
            "needs a subscription"
        );
        assert!(parse(&["--aws-region", "x", "--port", "70000"]).is_err());
        assert!(parse(&["--aws-region", "x", "-o", "xml"]).is_err());
    }

    #[test]
    fn allow_takes_addresses_and_cidrs() {
        let a = parse(&[
            "--aws-region",
            "x",
            "--emit-policies",
            "--allow",
            "203.0.113.7,10.0.0.0/8",
            "--allow",
            "2001:db8::1",
        ])
        .unwrap();
        let s = plan(&a).unwrap().emit.unwrap();
        assert_eq!(s.allow, ["203.0.113.7/32", "10.0.0.0/8", "2001:db8::1/128"]);
        assert_eq!(s.max_duration, "3h");
    }
}
