//! The `portcullis` command: parse the command line and start what it asks for.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use portcullis::controller::{self, Backends, Settings};
use portcullis::domain::duration;
use portcullis::webhook;

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
    Run(Box<RunArgs>),
    /// Find the VMs whose management ports are open, sort them (Healthy, Unhealthy,
    /// NotApplicable) and print the JitPolicies that would govern them. Reads only.
    Scan(Box<portcullis::scan::ScanCommand>),
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
    /// Names this installation in the tags and stamps of what it creates in the clouds;
    /// each installation touches only its own. Default: derived from the cluster's
    /// kube-system namespace uid and --namespace, so that two clusters, or two
    /// namespace-scoped installations in one cluster, never share a name.
    #[arg(long, env = "PORTCULLIS_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// How many targets may talk to the clouds at the same time.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// The namespace the operator runs in: its Secrets (requester-stamp key, webhook
    /// certificate) live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "portcullis-system")]
    operator_namespace: String,
    /// The Secret holding the key that signs requester stamps (created when missing).
    #[arg(long, default_value = "portcullis-requester-key")]
    stamp_secret: String,
    /// Do not serve or register the admission webhook. Requests then carry no requester
    /// stamp and are denied: use only where another replica serves the webhook.
    #[arg(long)]
    no_webhook: bool,
    /// Where the admission webhook listens.
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_listen: SocketAddr,
    /// The URL the API server calls for admission (outside a cluster, e.g.
    /// https://127.0.0.1:9443). Without it the webhook configurations point at the
    /// Service named by --webhook-service. Port 0 (e.g. https://127.0.0.1:0, with
    /// --webhook-listen 127.0.0.1:0) stands for the port the webhook was given when it
    /// bound: nothing can take it between choosing and binding.
    #[arg(long)]
    webhook_url: Option<String>,
    /// The operator's Service in --operator-namespace (port 443) that fronts the webhook.
    #[arg(long, default_value = "portcullis-webhook")]
    webhook_service: String,
    /// Serve with the certificate in this directory (ca.crt, tls.crt, tls.key, e.g. from
    /// cert-manager) instead of a self-made one kept in a Secret.
    #[arg(long)]
    webhook_cert_dir: Option<PathBuf>,
    /// How often the certificate in --webhook-cert-dir is re-read; a renewed one is
    /// served to new connections without a restart.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    webhook_cert_reload: std::time::Duration,
    /// How long the webhook waits for a client's TLS handshake, request headers and
    /// request body, each, before closing the connection.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    webhook_read_timeout: std::time::Duration,
    /// Complete TLS handshakes only with clients presenting a certificate signed by the
    /// CA in this file: give the API server such a certificate (its
    /// --admission-control-config-file) so that nobody else can call the webhook, and so
    /// nobody else can have it sign a requester stamp.
    #[arg(long)]
    webhook_client_ca: Option<PathBuf>,
    /// The name of the webhook configurations the operator registers.
    #[arg(long, default_value = "portcullis")]
    webhook_config_name: String,
    /// Who owns the webhook configurations: `create` (the operator creates and re-applies
    /// them; they outlive it: development and the local test bed), `patch-ca` (an
    /// installer such as the Helm chart owns them and removes them on uninstall; the
    /// operator only keeps their caBundle current) or `none` (cert-manager's CA injector
    /// keeps the caBundle current).
    #[arg(long, default_value = "create")]
    webhook_registration: webhook::register::Mode,
    /// Run without leader election (one replica only).
    #[arg(long)]
    no_leader_election: bool,
    /// The Lease, in --operator-namespace, that elects the replica that reconciles.
    #[arg(long, default_value = "portcullis-leader")]
    lease_name: String,
    /// How long a leader that stops renewing keeps the Lease.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: std::time::Duration,
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
        Command::Scan(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            std::process::exit(rt.block_on(portcullis::scan::run(args.into_args())));
        }
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let result = rt.block_on(run(*args));
            // A leader that lost its Lease exits now, even with calls hanging.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            result
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
    let cluster = match &args.cluster_name {
        Some(name) => name.clone(),
        None => controller::default_cluster_name(&client, args.namespace.as_deref()).await?,
    };
    tracing::info!(%cluster, "this installation's name in the clouds");
    let aws = portcullis::cloud::aws::AwsBackend::from_env(&cluster).await;
    // Azure is on when ARM is reachable with some credential; targets on a disabled cloud
    // get the condition Unsupported with the reason.
    let arm = portcullis::cloud::azure::arm::ArmClient::from_env()
        .inspect_err(|e| tracing::warn!(error = %e, "the Azure backend is disabled"))
        .ok();
    let azure: Option<Arc<dyn portcullis::cloud::Backend>> = arm.clone().map(|arm| {
        Arc::new(portcullis::cloud::azure::nsg::AzureNsgBackend::new(
            arm, &cluster,
        )) as Arc<dyn portcullis::cloud::Backend>
    });
    let firewall = arm.map(|arm| {
        Arc::new(portcullis::cloud::azure::firewall::FirewallBackend::new(
            arm, &cluster,
        ))
    });
    let backends = Backends {
        aws: Some(Arc::new(aws)),
        azure,
        firewall,
    };
    let settings = Settings {
        resync: args.resync,
        namespace: args.namespace.clone(),
        aws_regions: args.aws_regions.clone(),
        reporter: "portcullis".into(),
        finished_ttl: (!args.finished_ttl.is_zero()).then_some(args.finished_ttl),
        concurrency: args.concurrency,
    };
    let ready = portcullis::http::Readiness::default();
    let http = tokio::spawn(portcullis::http::serve(args.metrics_listen, ready.clone()));

    let stamp_key = webhook::secrets::get_or_create(
        &client,
        &args.operator_namespace,
        &args.stamp_secret,
        || {
            Ok(BTreeMap::from([(
                "key".to_string(),
                webhook::secrets::random_key(),
            )]))
        },
    )
    .await?
    .remove("key")
    .ok_or_else(|| anyhow::anyhow!("Secret {} has no key", args.stamp_secret))?;

    // The webhooks of a namespace-scoped install select its namespace by a label that
    // Kubernetes sets itself only from 1.21 on.
    if let (Some(ns), false) = (&settings.namespace, args.no_webhook) {
        webhook::namespace::ensure_or_warn(&client, ns).await;
    }

    // Every replica serves admission; only the leader registers it and reconciles.
    let (webhook, registration) = if args.no_webhook {
        (None, None)
    } else {
        let (server, registration) =
            start_webhook(&args, &client, &settings, stamp_key.clone()).await?;
        (Some(server), Some(registration))
    };
    // Able to serve admission: ready, leader or not.
    ready.set_ready();
    let election = (!args.no_leader_election).then(|| {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
        portcullis::leader::Election::new(
            &args.operator_namespace,
            &args.lease_name,
            &identity,
            args.lease_duration,
        )
    });
    let lead = async {
        if let Some(e) = &election {
            e.acquire(&client).await;
        }
        // Renewing starts at once, beside the work it guards.
        let keep = async {
            match &election {
                Some(e) => e.keep(&client).await,
                None => std::future::pending().await,
            }
        };
        let upkeep = async {
            match registration {
                Some((r, ca)) => {
                    webhook::upkeep::keep_registered(
                        client.clone(),
                        args.webhook_registration,
                        r,
                        ca,
                        settings.resync,
                    )
                    .await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = controller::run(client.clone(), backends, settings.clone(), Arc::new(jiff::Timestamp::now), stamp_key, ready) => r,
            r = upkeep => r,
            _ = keep => Err(anyhow::anyhow!("lost the leader Lease; exiting so that only one replica writes")),
        }
    };
    let stopped: anyhow::Result<&str> = tokio::select! {
        // The controllers end without an error only when they were told to stop (they
        // too listen for SIGTERM, and finish what they are doing first).
        r = lead => r.map(|()| "the controllers stopped"),
        r = http => Err(anyhow::anyhow!("the metrics server stopped: {:?}", r)),
        r = async { match webhook { Some(w) => w.await, None => std::future::pending().await } } => {
            Err(anyhow::anyhow!("the admission webhook stopped: {:?}", r))
        }
        s = shutdown() => Ok(s),
    };
    tracing::info!(reason = stopped?, "shutting down");
    // Everything that writes stopped with `lead` above; only now may another replica lead.
    if let Some(e) = &election {
        e.release(&client).await;
    }
    Ok(())
}

/// Waits for SIGTERM (a rollout or a node drain) or SIGINT; the signal's name.
async fn shutdown() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "portcullis".into())
}

/// The webhook configurations to register, and the CA they must carry as it changes.
type Registered = (
    webhook::register::Registration,
    tokio::sync::watch::Receiver<String>,
);

/// Serves the admission webhook and keeps its configurations registered, with a current
/// `caBundle`, re-applying them on every resync.
async fn start_webhook(
    args: &RunArgs,
    client: &kube::Client,
    settings: &Settings,
    stamp_key: Vec<u8>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, Registered)> {
    use webhook::register::{Endpoint, Registration};
    let endpoint = match &args.webhook_url {
        Some(url) => Endpoint::Url(url.clone()),
        None => Endpoint::Service {
            namespace: args.operator_namespace.clone(),
            name: args.webhook_service.clone(),
            port: 443,
        },
    };
    let serving = match &args.webhook_cert_dir {
        Some(dir) => webhook::tls::Serving::from_dir(dir.clone(), args.webhook_cert_reload)?,
        None => {
            let names: Vec<String> = match &endpoint {
                Endpoint::Url(url) => {
                    let host = url
                        .split("://")
                        .nth(1)
                        .unwrap_or(url)
                        .split(['/', ':'])
                        .next()
                        .unwrap_or("localhost");
                    vec![host.to_string()]
                }
                Endpoint::Service {
                    namespace, name, ..
                } => vec![
                    name.clone(),
                    format!("{name}.{namespace}"),
                    format!("{name}.{namespace}.svc"),
                    format!("{name}.{namespace}.svc.cluster.local"),
                ],
            };
            // The Secret's name carries the names it was made for, so a new address gets
            // a new certificate, and every replica serves the same one.
            let secret = format!(
                "{}-webhook-tls-{}",
                args.webhook_config_name,
                portcullis::domain::stamp::short_hash(&names.join(","))
            );
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let data =
                webhook::secrets::get_or_create(client, &args.operator_namespace, &secret, || {
                    Ok(webhook::tls::Material::generate(&refs)?.to_secret())
                })
                .await?;
            webhook::tls::Serving::fixed(&webhook::tls::Material::from_secret(&data)?)?
        }
    };
    let admission = Arc::new(webhook::Admission {
        client: client.clone(),
        stamp_key,
    });
    let limits = webhook::Limits {
        read_timeout: args.webhook_read_timeout,
        ..webhook::Limits::default()
    };
    let client_ca = match &args.webhook_client_ca {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--webhook-client-ca {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let tls = serving.server_config_for_clients(client_ca.as_deref())?;
    let (server, bound) = webhook::serve(args.webhook_listen, tls, admission, limits).await?;
    let ca = serving.ca();
    let registration = Registration {
        name: args.webhook_config_name.clone(),
        endpoint: endpoint.with_bound_port(bound.port()),
        ca_pem: ca.borrow().clone(),
        namespace: settings.namespace.clone(),
    };
    Ok((server, (registration, ca)))
}
