//! The `kubectl-jit` plugin: ask for access in one line, watch it open, get told where to
//! connect.
//!
//! One file per command (`request`, `ls`, `revoke`, `policies`); this one holds the
//! command line, the error type and the exit codes. The plugin shares the crate's `api`
//! types and `domain` validation, so a request it refuses locally is refused with the very
//! message the admission webhook would give.

pub mod address;
pub mod connect;
pub mod human;
pub mod ls;
pub mod output;
pub mod policies;
pub mod progress;
pub mod request;
pub mod revoke;
pub mod source;
pub mod summary;
pub mod wait;
pub mod whoami;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use output::Format;

/// Exit code: the command did what it was asked (a request is Active).
pub const EXIT_OK: u8 = 0;
/// Exit code: denied, failed, timed out, or the cluster could not be reached.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command line does not say what to do.
pub const EXIT_USAGE: u8 = 2;

const EXAMPLES: &str = "\
Examples:
  # Open SSH on target `web` of policy `build-hosts` for 30 minutes, from your public address
  kubectl jit request build-hosts web --port 22 --for 30m --from auto --reason \"fix the build\"

  # See your open and pending requests, then close one early
  kubectl jit ls
  kubectl jit revoke web-x7k2q

  # Which policies are there, and which may you use?
  kubectl jit policies

  # Which VMs have management ports open to the internet, and no policy?
  kubectl jit scan --aws-region eu-west-1 --azure-subscription <id>

Exit codes: 0 success (the request is Active), 1 denied, failed or timed out, 2 usage.";

/// Just-in-time access to the management ports (SSH, RDP, WinRM) of cloud VMs, through
/// Portcullis.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-jit",
    bin_name = "kubectl jit",
    version,
    after_help = EXAMPLES,
    propagate_version = true
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, like kubectl's.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Output format: text for people, or the objects as json or yaml.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// The commands. New ones (such as `scan`) are one more variant and one more arm in
/// [`run`].
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Ask for access to a policy target's ports and wait until they are open.
    Request(request::RequestArgs),
    /// List your requests (open and pending; --all adds finished ones).
    Ls(ls::LsArgs),
    /// Close requests before their time and wait until they are closed.
    Revoke(revoke::RevokeArgs),
    /// List the policies, their targets and ports, and whether you may request them.
    Policies(policies::PoliciesArgs),
    /// Find the VMs whose management ports are open to the internet and not governed by a
    /// policy, and write policies for them (the same as `portcullis scan`).
    Scan(crate::scan::ScanArgs),
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line does not say what to do (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Denied, failed, timed out (exit 1).
    #[error("{0}")]
    Failed(String),
    /// A command that chose its own exit code (`scan`) and already said why.
    #[error("exit code {0}")]
    Exit(u8),
    /// The API server answered with an error, or could not be reached (exit 1).
    #[error("{context}: {}", kube_message(.source))]
    Kube {
        /// What the plugin was doing.
        context: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Failed(_) | Error::Kube { .. } => EXIT_FAILED,
            Error::Exit(code) => *code,
        }
    }

    /// Wraps a client error with what the plugin was doing.
    pub fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let context = context.into();
        move |source| Error::Kube { context, source }
    }
}

/// The API server's own message when it gave one (admission denials, RBAC refusals), else
/// the client's.
pub fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let Cli { global, command } = cli;
    match command {
        Command::Request(args) => request::run(&global, args).await,
        Command::Ls(args) => ls::run(&global, args).await,
        Command::Revoke(args) => revoke::run(&global, args).await,
        Command::Policies(args) => policies::run(&global, args).await,
        Command::Scan(args) => scan(&global, args).await,
    }
}

/// `kubectl jit scan`: the scan with kubectl's options taken from the global ones (all
/// namespaces unless `-n` was given).
async fn scan(global: &Global, mut args: crate::scan::ScanArgs) -> Result<(), Error> {
    args.cluster = crate::scan::ClusterArgs {
        kubeconfig: global.kubeconfig.clone(),
        context: global.context.clone(),
        namespace: global.namespace.clone(),
        output: match global.output {
            Format::Text => crate::scan::Output::Table,
            Format::Json => crate::scan::Output::Json,
            Format::Yaml => crate::scan::Output::Yaml,
        },
    };
    match crate::scan::run(args).await {
        0 => Ok(()),
        code => Err(Error::Exit(u8::try_from(code).unwrap_or(EXIT_FAILED))),
    }
}

/// The plugin's `main`: parses the command line (exit 2 on a usage error), runs the
/// command and turns its outcome into the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(Error::Exit(code)) => ExitCode::from(code),
        Err(e) => {
            let palette = output::Palette::stderr();
            eprintln!("{} {e}", palette.bad("error:"));
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_help_has_examples() {
        let mut cmd = Cli::command();
        assert!(cmd.render_long_help().to_string().contains("Examples:"));
        for name in ["request", "ls", "revoke", "policies"] {
            let sub = cmd.find_subcommand_mut(name).unwrap();
            let help = sub.render_long_help().to_string();
            assert!(
                help.contains("Examples:") && help.contains("kubectl jit"),
                "{name}"
            );
        }
    }

    #[test]
    fn the_krew_manifest_installs_this_binary_for_every_platform() {
        let text = include_str!("../../plugins/jit.yaml");
        let m: serde_json::Value = serde_saphyr::from_str(text).unwrap();
        assert_eq!(m["kind"], "Plugin");
        assert_eq!(m["metadata"]["name"], "jit");
        let platforms = m["spec"]["platforms"].as_array().unwrap();
        let mut seen = Vec::new();
        for p in platforms {
            assert_eq!(p["bin"], Cli::command().get_name());
            let (os, arch) = (
                p["selector"]["matchLabels"]["os"].as_str().unwrap(),
                p["selector"]["matchLabels"]["arch"].as_str().unwrap(),
            );
            let archive = format!("kubectl-jit-{os}-{arch}.tar.gz");
            assert!(p["uri"].as_str().unwrap().ends_with(&archive), "{p}");
            let sha = format!("${{SHA256_{}_{}}}", os.to_uppercase(), arch.to_uppercase());
            assert_eq!(p["sha256"], sha.as_str());
            seen.push(format!("{os}/{arch}"));
        }
        assert_eq!(
            seen,
            ["linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64"]
        );
    }

    #[test]
    fn usage_errors_exit_2_and_failures_exit_1() {
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        assert_eq!(Error::Failed("x".into()).exit_code(), 1);
        let err = Cli::try_parse_from(["kubectl-jit", "request", "p"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
