//! Keeps the webhook configurations registered, with the `caBundle` of the certificate
//! served now: re-applied on every resync, and at once when the CA changes (a rotated
//! cert-manager CA), so the API server trusts the new certificate as soon as it is served.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::register::{self, Registration};

/// Applies `registration` now, then again every `resync` and whenever `ca` changes, for as
/// long as it is polled. Returns only when the first application fails.
pub async fn keep_registered(
    client: kube::Client,
    mut registration: Registration,
    mut ca: watch::Receiver<String>,
    resync: Duration,
) -> anyhow::Result<()> {
    registration.ca_pem = ca.borrow_and_update().clone();
    register::apply(&client, &registration).await?;
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
        if let Err(e) = register::apply(&client, &registration).await {
            warn!(error = %e, "cannot re-apply the webhook configurations");
        }
    }
}
