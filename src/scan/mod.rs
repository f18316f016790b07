//! `portcullis scan` (and `kubectl jit scan`): find the VMs whose management ports are
//! open, sort them as Defender for Cloud's JIT recommendation does, and write the
//! JitPolicies that would govern them. Reads the clouds and the cluster; writes nothing.
//!
//! The clouds are read per scope (AWS region, Azure subscription or resource group), a
//! few scopes at a time, each with paged list calls; the JitPolicies come from the
//! cluster as kubectl finds it. The evaluation itself is pure
//! ([`crate::domain::exposure`]).

mod args;
pub mod emit;
pub mod governance;
pub mod progress;
pub mod report;

use std::sync::Arc;

use futures::StreamExt;

use crate::cloud::CloudError;
use crate::cloud::aws::scan::AwsScanner;
use crate::cloud::azure::scan::AzureScanner;
use crate::domain::PortSpec;
use crate::domain::exposure::{Category, ScannedVm};

pub use self::args::{ClusterArgs, Output, ScanArgs, ScanCommand};
use self::args::{Scope, plan};
use self::governance::Governance;
use self::progress::Progress;
use self::report::{Finding, ScopeError};

/// Exit code: the scan finished.
pub const EXIT_OK: i32 = 0;
/// Exit code: some scope could not be read (what could be read is still reported).
pub const EXIT_PARTIAL: i32 = 1;
/// Exit code: the command line is wrong.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: `--fail-on-unhealthy` and an unhealthy VM was found.
pub const EXIT_UNHEALTHY: i32 = 3;

/// The cloud readers, made once and shared by the scopes.
struct Readers {
    aws: Option<AwsScanner>,
    azure: Option<Result<AzureScanner, CloudError>>,
}

impl Readers {
    async fn new(scopes: &[Scope]) -> Readers {
        let aws = if scopes.iter().any(|s| matches!(s, Scope::Aws(_))) {
            Some(AwsScanner::from_env().await)
        } else {
            None
        };
        let azure = scopes
            .iter()
            .any(|s| matches!(s, Scope::Azure { .. }))
            .then(AzureScanner::from_env);
        Readers { aws, azure }
    }

    async fn read(
        &self,
        scope: &Scope,
        ports: &[PortSpec],
        progress: &Progress,
    ) -> Result<Vec<ScannedVm>, String> {
        let say = |line: String| progress.say(line);
        match scope {
            Scope::Aws(region) => {
                let aws = self.aws.as_ref().expect("made for AWS scopes");
                aws.region(region, ports, &say)
                    .await
                    .map_err(|e| e.to_string())
            }
            Scope::Azure {
                subscription,
                resource_group,
            } => match self.azure.as_ref().expect("made for Azure scopes") {
                Ok(azure) => azure
                    .subscription(subscription, resource_group.as_deref(), ports, &say)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("no Azure client: {e}")),
            },
        }
    }
}

/// Reads the JitPolicies, or says why none count.
async fn governance(args: &ScanArgs) -> Governance {
    if args.no_cluster {
        return Governance::default();
    }
    let read = async {
        let client = governance::client(
            args.cluster.kubeconfig.as_deref(),
            args.cluster.context.as_deref(),
        )
        .await
        .map_err(governance::ReadError::Unreachable)?;
        governance::read(client, args.cluster.namespace.as_deref()).await
    };
    match read.await {
        Ok((policies, mut problems)) => {
            let (g, more) = Governance::new(&policies);
            problems.extend(more);
            for p in problems {
                eprintln!("warning: {p}");
            }
            g
        }
        Err(e) => {
            eprintln!("warning: {e}; no VM counts as governed (--no-cluster skips this read)");
            Governance::default()
        }
    }
}

/// Runs the scan and returns the process's exit code.
pub async fn run(args: ScanArgs) -> i32 {
    let plan = match plan(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let progress = Arc::new(Progress::new());
    let readers = Readers::new(&plan.scopes).await;
    let reads = futures::stream::iter(plan.scopes.iter())
        .map(|scope| {
            let (readers, ports, progress) = (&readers, &plan.ports, progress.clone());
            async move { (scope, readers.read(scope, ports, &progress).await) }
        })
        .buffer_unordered(usize::from(args.concurrency))
        .collect::<Vec<_>>();
    let (results, governance) = tokio::join!(reads, governance(&args));
    progress.clear();

    let mut findings = Vec::new();
    let mut errors = Vec::new();
    for (scope, result) in results {
        match result {
            Ok(vms) => findings.extend(vms.into_iter().map(|vm| {
                let governing = governance.of(&vm).to_vec();
                Finding::new(vm, &governing)
            })),
            Err(message) => errors.push(ScopeError {
                scope: scope.to_string(),
                message,
            }),
        }
    }
    report::sort(&mut findings);
    for e in &errors {
        eprintln!("error: {}: {}", e.scope, e.message);
    }

    let printed = match &plan.emit {
        Some(settings) => {
            let policies = emit::policies(&findings, settings);
            eprint!("{}", report::table(&findings));
            if policies.is_empty() {
                eprintln!("no unhealthy VM left to govern: no JitPolicy written");
                Ok(())
            } else {
                emit::yaml(&policies)
                    .map(|y| print!("{y}"))
                    .map_err(|e| e.to_string())
            }
        }
        None => match args.cluster.output {
            Output::Table => {
                print!("{}", report::table(&findings));
                Ok(())
            }
            Output::Json => serde_json::to_string_pretty(&report::document(&findings, &errors))
                .map(|j| println!("{j}"))
                .map_err(|e| e.to_string()),
            Output::Yaml => serde_saphyr::to_string(&report::document(&findings, &errors))
                .map(|y| print!("{y}"))
                .map_err(|e| e.to_string()),
        },
    };
    if let Err(e) = printed {
        eprintln!("error: cannot print the report: {e}");
        return EXIT_PARTIAL;
    }
    let unhealthy = findings
        .iter()
        .any(|f| f.verdict.category == Category::Unhealthy);
    if !errors.is_empty() {
        EXIT_PARTIAL
    } else if args.fail_on_unhealthy && unhealthy {
        EXIT_UNHEALTHY
    } else {
        EXIT_OK
    }
}
