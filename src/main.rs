//! The `portcullis` command: parse the command line and start what it asks for.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use portcullis::controller::{self, Backends, Settings};
use portcullis::domain::duration;

/// Just-in-time access to the management ports of cloud VMs.
#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: controllers, sweeper, metrics and health endpoints.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crds {
        /// Write one file per CRD into this directory instead of printing them.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, or in-cluster config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "PORTCULLIS_NAMESPACE")]
    namespace: Option<String>,
    /// How often everything is reconciled and swept even when nothing changed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    resync: std::time::Duration,
    /// How long finished requests are kept before deletion ("0s" keeps them).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    finished_ttl: std::time::Duration,
    /// AWS regions the sweeper always looks in, besides those of current policies.
    #[arg(long = "aws-region", value_delimiter = ',')]
    aws_regions: Vec<String>,
    /// Names this installation in the cloud tags of what it creates; installations that
    /// share a cloud account must use different names.
    #[arg(long, default_value = "default", env = "PORTCULLIS_CLUSTER_NAME")]
    cluster_name: String,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    duration::parse(s)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { out_dir: None } => {
            print!("{}", portcullis::api::crds::all_yaml()?);
            Ok(())
        }
        Command::Crds { out_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)?;
            for crd in portcullis::api::crds::all() {
                let path = dir.join(portcullis::api::crds::file_name(&crd));
                std::fs::write(&path, portcullis::api::crds::to_yaml(&crd)?)?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(args))
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    portcullis::telemetry::init(&args.log_format);
    let client = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            kube::Client::try_from(config)?
        }
        None => kube::Client::try_default().await?,
    };
    let aws = portcullis::cloud::aws::AwsBackend::from_env(&args.cluster_name).await;
    let backends = Backends {
        aws: Some(Arc::new(aws)),
        azure: None,
    };
    let settings = Settings {
        resync: args.resync,
        namespace: args.namespace,
        aws_regions: args.aws_regions,
        reporter: "portcullis".into(),
        finished_ttl: (!args.finished_ttl.is_zero()).then_some(args.finished_ttl),
    };
    let ready = portcullis::http::Readiness::default();
    let http = tokio::spawn(portcullis::http::serve(args.metrics_listen, ready.clone()));
    ready.set_ready();
    tokio::select! {
        r = controller::run(client, backends, settings, Arc::new(jiff::Timestamp::now)) => r,
        r = http => Err(anyhow::anyhow!("the metrics server stopped: {:?}", r)),
    }
}
