//! Why a write may be refused before it is looked at: a stale ETag, or an NSG that
//! another long-running operation still holds.

use hyper::HeaderMap;
use serde_json::json;

use super::errors::ArmError;
use super::options::BusyAnswer;
use super::state::{Shared, State};

/// Checks `If-Match` / `If-None-Match` against the current etag of the resource `id`
/// (`None` when it does not exist).
pub(crate) fn etag(headers: &HeaderMap, current: Option<&str>, id: &str) -> Result<(), ArmError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let listed = |value: &str, etag: &str| {
        value
            .split(',')
            .any(|t| t.trim() == "*" || t.trim() == etag)
    };
    if let Some(wanted) = header("if-match") {
        match current {
            Some(etag) if listed(wanted, etag) => {}
            Some(etag) => {
                return Err(failed(format!(
                    "Precondition failed. The etag {wanted} given in the If-Match header does not match the current etag {etag} of resource {id}."
                )));
            }
            None => {
                return Err(failed(format!(
                    "Precondition failed. The If-Match header requires resource {id} to exist, but it does not."
                )));
            }
        }
    }
    if let (Some(unwanted), Some(etag)) = (header("if-none-match"), current)
        && listed(unwanted, etag)
    {
        return Err(failed(format!(
            "Precondition failed. The If-None-Match header {unwanted} matches the current etag {etag} of resource {id}."
        )));
    }
    Ok(())
}

fn failed(message: String) -> ArmError {
    ArmError::provider(412, "PreconditionFailed", message)
}

/// Refuses a write to `target_id` while the NSG `nsg_id` has an operation in flight.
pub(crate) fn not_busy(
    shared: &Shared,
    state: &mut State,
    nsg_id: &str,
    target_id: &str,
) -> Result<(), ArmError> {
    let Some(nsg) = state.model.nsg(nsg_id) else {
        return Ok(());
    };
    let Some(op) = nsg.busy.as_ref().and_then(|id| state.ops.get(id)) else {
        return Ok(());
    };
    let retryable = match shared.options.busy {
        BusyAnswer::Retryable => true,
        BusyAnswer::AnotherOperationInProgress => false,
        BusyAnswer::Alternate => state.busy_turn.is_multiple_of(2),
    };
    let error = if retryable {
        let detail = format!(
            "Cannot proceed with operation because resource {} used by resource {target_id} is not in Succeeded state. Resource is in {} state and the last operation that updated/is updating the resource is {}.",
            nsg.id,
            nsg.state.as_str(),
            op.kind.arm_name()
        );
        ArmError::provider(429, "RetryableError", "A retryable error occurred.")
            .with_details(vec![
                json!({ "code": "ReferencedResourceNotProvisioned", "message": detail }),
            ])
            .with_header("Retry-After", shared.options.retry_after_secs.to_string())
    } else {
        ArmError::provider(
            409,
            "AnotherOperationInProgress",
            format!(
                "Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: {}.",
                op.async_url(&shared.base_url)
            ),
        )
    };
    state.busy_turn += 1;
    Err(error)
}
