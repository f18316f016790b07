//! `kubectl jit revoke NAME…`: sets `spec.revoke` and waits until each request is closed.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};

use super::connect;
use super::output::{self, Format, Palette};
use super::progress::Progress;
use super::wait;
use super::{Error, Global};
use crate::api::{AccessRequest, Phase};
use crate::domain::duration;

const EXAMPLES: &str = "\
Examples:
  # Close a request now
  kubectl jit revoke web-x7k2q

  # Close several, without waiting
  kubectl jit revoke web-x7k2q db-9f3kd --no-wait

A revoked request cannot be reopened: file a new one.";

/// `kubectl jit revoke NAME…`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct RevokeArgs {
    /// The requests to close.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Return once the revocation is filed, without waiting for the ports to close.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for each request to close.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = duration::parse)]
    pub timeout: Duration,
}

/// Runs `revoke`.
pub async fn run(global: &Global, args: RevokeArgs) -> Result<(), Error> {
    let session = connect::session(global).await?;
    let api: Api<AccessRequest> = Api::namespaced(session.client.clone(), &session.namespace);
    let palette = Palette::stdout();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for name in &args.names {
        match revoke_one(
            &api,
            &session.namespace,
            name,
            &args,
            global.output,
            palette,
        )
        .await
        {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("{} {name}: {e}", Palette::stderr().bad("error:"));
                failures.push(name.clone());
            }
        }
    }
    if global.output != Format::Text {
        output::print(global.output, &output::list(&results))?;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "not revoked: {}",
            failures.join(", ")
        )))
    }
}

async fn revoke_one(
    api: &Api<AccessRequest>,
    ns: &str,
    name: &str,
    args: &RevokeArgs,
    format: Format,
    palette: Palette,
) -> Result<AccessRequest, Error> {
    let what = format!("accessrequest/{name}");
    let current = api
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("cannot read {what}")))?
        .ok_or_else(|| Error::Failed(format!("{what} not found in namespace {ns}")))?;
    if wait::finished(&current) {
        if format == Format::Text {
            println!("{what} is already closed ({})", wait::phase_name(&current));
        }
        return Ok(current);
    }
    let patch = serde_json::json!({"spec": {"revoke": true}});
    let patched = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!("cannot revoke {what}")))?;
    if args.no_wait {
        if format == Format::Text {
            println!("{what} revocation filed");
        }
        return Ok(patched);
    }
    let mut progress = Progress::start(&what);
    let closed = wait::until(api, name, args.timeout, &mut progress, wait::finished).await;
    progress.finish();
    let closed = closed?;
    match closed.status.as_ref().and_then(|s| s.phase) {
        Some(Phase::Revoked | Phase::Expired) => {
            if format == Format::Text {
                println!(
                    "{what} {} ({})",
                    palette.good("closed"),
                    wait::phase_name(&closed)
                );
            }
            Ok(closed)
        }
        _ => Err(Error::Failed(format!(
            "{what} is {}: {}",
            wait::phase_name(&closed),
            wait::message(&closed)
        ))),
    }
}
