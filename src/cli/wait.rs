//! Waiting for a request to reach a phase, reporting each phase change as it happens.
//!
//! Watches the one object (a field selector on its name), so a change shows at once; if
//! the watch fails (e.g. the user may `get` but not `watch`), it polls instead.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::runtime::watcher;

use super::progress::Progress;
use super::{Error, kube_message};
use crate::api::{AccessRequest, Phase};

/// The phase a request is in, as people read it (`Pending` before the operator speaks).
pub fn phase_name(r: &AccessRequest) -> String {
    let phase = r.status.as_ref().and_then(|s| s.phase);
    format!("{:?}", phase.unwrap_or(Phase::Pending))
}

/// The operator's message for a request, or "".
pub fn message(r: &AccessRequest) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

/// Whether a request is done: open, refused, or closed.
pub fn settled(r: &AccessRequest) -> bool {
    let phase = r.status.as_ref().and_then(|s| s.phase);
    !matches!(phase, None | Some(Phase::Pending))
}

/// Whether a request is closed or refused (nothing of it is open or about to open).
pub fn finished(r: &AccessRequest) -> bool {
    let phase = r.status.as_ref().and_then(|s| s.phase);
    matches!(
        phase,
        Some(Phase::Expired | Phase::Revoked | Phase::Denied | Phase::Failed)
    )
}

/// Waits until `done(request)` holds, reporting phase changes to `progress`, or fails
/// after `timeout` saying where the request stands.
pub async fn until(
    api: &Api<AccessRequest>,
    name: &str,
    timeout: Duration,
    progress: &mut Progress,
    done: fn(&AccessRequest) -> bool,
) -> Result<AccessRequest, Error> {
    let mut last: Option<AccessRequest> = None;
    let waited = tokio::time::timeout(timeout, async {
        match watch(api, name, progress, done, &mut last).await {
            Ok(r) => r,
            Err(Fallback(e)) => {
                progress.note(&format!("cannot watch {name} ({e}); polling instead"));
                poll(api, name, progress, done, &mut last).await
            }
        }
    })
    .await;
    match waited {
        Ok(r) => r,
        Err(_) => {
            let (phase, msg) = last
                .as_ref()
                .map(|r| (phase_name(r), message(r)))
                .unwrap_or_else(|| ("unknown".into(), String::new()));
            let msg = if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            };
            Err(Error::Failed(format!(
                "timed out after {} waiting for {name}, which is {phase}{msg}",
                crate::domain::duration::format(timeout)
            )))
        }
    }
}

/// The watch could not run; poll instead.
struct Fallback(String);

async fn watch(
    api: &Api<AccessRequest>,
    name: &str,
    progress: &mut Progress,
    done: fn(&AccessRequest) -> bool,
    last: &mut Option<AccessRequest>,
) -> Result<Result<AccessRequest, Error>, Fallback> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api.clone(), config).boxed();
    loop {
        match events.try_next().await {
            Ok(Some(watcher::Event::Apply(r) | watcher::Event::InitApply(r))) => {
                progress.update(&phase_name(&r), &message(&r));
                let is_done = done(&r);
                *last = Some(r.clone());
                if is_done {
                    return Ok(Ok(r));
                }
            }
            Ok(Some(watcher::Event::Delete(_))) => {
                return Ok(Err(Error::Failed(format!(
                    "{name} was deleted while waiting"
                ))));
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err(Fallback("the watch ended".into())),
            Err(e) => return Err(Fallback(e.to_string())),
        }
    }
}

async fn poll(
    api: &Api<AccessRequest>,
    name: &str,
    progress: &mut Progress,
    done: fn(&AccessRequest) -> bool,
    last: &mut Option<AccessRequest>,
) -> Result<AccessRequest, Error> {
    loop {
        match api.get_opt(name).await {
            Ok(Some(r)) => {
                progress.update(&phase_name(&r), &message(&r));
                let is_done = done(&r);
                *last = Some(r.clone());
                if is_done {
                    return Ok(r);
                }
            }
            Ok(None) => {
                return Err(Error::Failed(format!("{name} was deleted while waiting")));
            }
            Err(e) => {
                return Err(Error::Failed(format!(
                    "cannot read {name}: {}",
                    kube_message(&e)
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
