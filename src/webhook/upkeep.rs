//! Keeps the webhook configurations' `caBundle` current: re-applied (or re-patched) on
//! every resync, and at once when the CA changes (a rotated cert-manager CA), so the API
//! server trusts the new certificate as soon as it is served.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::register::{self, CaPatch, Mode, Registration};

/// In [`Mode::Create`] applies `registration` now, then again every `resync` and whenever
/// `ca` changes, for as long as it is polled; returns only when the first application
/// fails. In [`Mode::PatchCa`] patches the `caBundle` of the configurations an installer
/// made, at the same moments, and never creates them. In [`Mode::None`] does nothing.
pub async fn keep_registered(
    client: kube::Client,
    mode: Mode,
    mut registration: Registration,
    mut ca: watch::Receiver<String>,
    resync: Duration,
) -> anyhow::Result<()> {
    registration.ca_pem = ca.borrow_and_update().clone();
    match mode {
        Mode::None => return std::future::pending().await,
        Mode::Create => register::apply(&client, &registration).await?,
        Mode::PatchCa => patch_ca(&client, &registration).await,
    }
    let mut ca_open = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(resync) => {}
            changed = ca.changed(), if ca_open => {
                if changed.is_err() {
                    // The certificate source is gone: keep the last CA.
                    ca_open = false;
                    continue;
                }
                info!("the webhook CA changed: updating the caBundle");
            }
        }
        registration.ca_pem = ca.borrow_and_update().clone();
        match mode {
            Mode::Create => {
                if let Err(e) = register::apply(&client, &registration).await {
                    warn!(error = %e, "cannot re-apply the webhook configurations");
                }
            }
            Mode::PatchCa => patch_ca(&client, &registration).await,
            Mode::None => {}
        }
    }
}

/// One [`register::patch_ca`], logged; failures wait for the next resync.
async fn patch_ca(client: &kube::Client, r: &Registration) {
    match register::patch_ca(client, &r.name, &r.ca_pem).await {
        Ok(CaPatch::Current) => debug!(name = %r.name, "the webhook caBundle is current"),
        Ok(CaPatch::Patched(n)) => {
            info!(name = %r.name, webhooks = n, "patched the webhook caBundle")
        }
        Ok(CaPatch::Missing) => warn!(
            name = %r.name,
            "the webhook configurations do not exist (they come with the install); nothing to patch"
        ),
        Err(e) => warn!(name = %r.name, error = %e, "cannot patch the webhook caBundle"),
    }
}
