//! Classifying ARM answers (and failures to get one) into [`CloudError`]s, and deciding
//! which ones the client retries itself before giving up.

use std::time::Duration;

use serde_json::Value;

use crate::cloud::CloudError;

/// ARM error codes of passing faults: a busy resource, a server-side hiccup.
const RETRYABLE: &[&str] = &[
    "RetryableError",
    "AnotherOperationInProgress",
    "InternalServerError",
    "InternalError",
    "ServiceUnavailable",
    "GatewayTimeout",
    "OperationPreempted",
    "CanceledAndSupersededDueToAnotherOperation",
    // A canceled operation without an error: someone else's write took its place.
    "OperationCanceled",
];

/// ARM error codes that mean "slow down" even when they arrive without a 429 (in a
/// failed long-running operation).
const THROTTLED: &[&str] = &[
    "TooManyRequests",
    "SubscriptionRequestsThrottled",
    "TenantRequestsThrottled",
    "ResourceRequestsThrottled",
];

/// ARM error codes of a missing resource.
const NOT_FOUND: &[&str] = &["NotFound", "ResourceNotFound", "ResourceGroupNotFound"];

/// Advice for limits a person must raise or work around; other `*LimitReached` and
/// `*QuotaExceeded` codes get the cloud's message alone.
const LIMIT_ADVICE: &[(&str, &str)] = &[(
    "SecurityRuleCountLimitReached",
    "the network security group holds the most rules it may (1000); remove rules or guard the VM with another NSG",
)];

/// An ARM error as the body states it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ArmFault {
    /// `error.code`, or a code made from the HTTP status when the body has none.
    pub code: String,
    /// `error.message`, or the start of the body.
    pub message: String,
}

impl ArmFault {
    /// Reads `{"error":{"code","message"}}` from an error body of status `status`.
    pub fn from_body(status: u16, body: &[u8]) -> ArmFault {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        match parsed.as_ref().and_then(|v| v.get("error")) {
            Some(error) => ArmFault::from_error(error, &format!("Http{status}")),
            None => ArmFault {
                code: format!("Http{status}"),
                message: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
            },
        }
    }

    /// Reads an ARM `error` object; `fallback` names it when it has no code.
    pub fn from_error(error: &Value, fallback: &str) -> ArmFault {
        let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_string);
        ArmFault {
            code: text("code").unwrap_or_else(|| fallback.to_string()),
            message: text("message").unwrap_or_default(),
        }
    }
}

/// Classifies the answer to operation `op` on resource `id`: its HTTP status (`None`
/// for the error of a failed long-running operation), the fault it stated and the
/// `Retry-After` it gave.
pub(crate) fn classify(
    op: &'static str,
    id: &str,
    status: Option<u16>,
    fault: ArmFault,
    retry_after: Option<Duration>,
) -> CloudError {
    let ArmFault { code, message } = fault;
    let code_is = |list: &[&str]| list.contains(&code.as_str());
    if status == Some(429) || (status.is_none() && code_is(THROTTLED)) {
        return CloudError::Throttled {
            op,
            code,
            message,
            retry_after,
        };
    }
    // A stale ETag: retrying the same write cannot succeed, but the caller's next
    // read-modify-write will, so it is transient for the controller.
    if status == Some(412) || code == "PreconditionFailed" {
        return CloudError::Retryable {
            op,
            code: "PreconditionFailed".to_string(),
            message,
        };
    }
    if status == Some(404) || (status.is_none() && code_is(NOT_FOUND)) {
        return CloudError::NotFound {
            what: id.to_string(),
            code,
            message,
        };
    }
    if matches!(status, Some(401 | 403))
        || code == "AuthorizationFailed"
        || code == "InvalidAuthenticationToken"
    {
        return CloudError::Unauthorized {
            op,
            code,
            message: format!(
                "{message} (check the operator's Azure identity and its role assignment on {id})"
            ),
        };
    }
    let another_operation =
        code == "Conflict" && message.to_ascii_lowercase().contains("another operation");
    if status.is_some_and(|s| s >= 500) || code_is(RETRYABLE) || another_operation {
        return CloudError::Retryable { op, code, message };
    }
    if code.ends_with("LimitReached") || code.ends_with("QuotaExceeded") {
        let message = match LIMIT_ADVICE.iter().find(|(c, _)| *c == code) {
            Some((_, advice)) => format!("{message} ({advice})"),
            None => message,
        };
        return CloudError::Limit { op, code, message };
    }
    // SecurityRuleConflict lands here on purpose, with its code verbatim: the caller
    // answers it by choosing another priority.
    CloudError::Fatal { op, code, message }
}

/// Whether the client should send the same request again after `error` (within its
/// attempt budget). A stale ETag is left to the caller, which must read again first.
pub(crate) fn retry_in_call(error: &CloudError) -> bool {
    match error {
        CloudError::Throttled { .. } => true,
        CloudError::Retryable { code, .. } => code != "PreconditionFailed",
        _ => false,
    }
}

/// Classifies a failure to get any answer.
pub(crate) fn transport_error(op: &'static str, error: &azure_core::Error) -> CloudError {
    use azure_core::error::ErrorKind;
    let message = chain(error);
    if untrusted_certificate(error) {
        // Retrying cannot make the server's certificate trusted: the CA setting is wrong.
        return CloudError::Fatal {
            op,
            code: "UntrustedCertificate".into(),
            message,
        };
    }
    match error.kind() {
        ErrorKind::Connection | ErrorKind::Io => CloudError::Retryable {
            op,
            code: "Transport".into(),
            message,
        },
        ErrorKind::Credential => CloudError::Retryable {
            op,
            code: "CredentialUnavailable".into(),
            message,
        },
        _ => CloudError::Fatal {
            op,
            code: "ClientError".into(),
            message,
        },
    }
}

/// The error and its sources, in one line.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// Whether the TLS handshake failed because the server's certificate is not trusted.
fn untrusted_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    use tokio_rustls::rustls::Error as TlsError;
    let is_cert = |e: &(dyn std::error::Error + 'static)| {
        matches!(
            e.downcast_ref::<TlsError>(),
            Some(TlsError::InvalidCertificate(_))
        )
    };
    let mut next = Some(error);
    while let Some(e) = next {
        if is_cert(e) {
            return true;
        }
        // io::Error hides the error it wraps from `source()` (rustls's arrives wrapped in
        // two of them), so step into it instead.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(code: &str, message: &str) -> ArmFault {
        ArmFault {
            code: code.to_string(),
            message: message.to_string(),
        }
    }

    fn code_of(e: &CloudError) -> &str {
        e.code()
    }

    #[test]
    fn statuses_and_codes_map_to_categories() {
        let cases = [
            (Some(429), "RetryableError", "", "throttled"),
            (Some(429), "SubscriptionRequestsThrottled", "", "throttled"),
            (Some(409), "AnotherOperationInProgress", "", "retryable"),
            (
                Some(409),
                "Conflict",
                "Another operation is in progress",
                "retryable",
            ),
            (Some(409), "Conflict", "name taken", "fatal"),
            (Some(500), "InternalServerError", "", "retryable"),
            (Some(503), "Http503", "", "retryable"),
            (Some(412), "PreconditionFailed", "", "retryable"),
            (Some(404), "ResourceNotFound", "", "not_found"),
            (Some(400), "SecurityRuleCountLimitReached", "", "limit"),
            (Some(400), "PublicIPCountQuotaExceeded", "", "limit"),
            (Some(400), "SecurityRuleConflict", "", "fatal"),
            (Some(400), "InvalidRequestFormat", "", "fatal"),
            (Some(403), "AuthorizationFailed", "", "unauthorized"),
            (None, "AnotherOperationInProgress", "", "retryable"),
            (None, "SecurityRuleConflict", "", "fatal"),
            (None, "TooManyRequests", "", "throttled"),
        ];
        for (status, code, message, want) in cases {
            let e = classify("Op", "/x", status, fault(code, message), None);
            assert_eq!(e.category(), want, "{status:?} {code}");
        }
    }

    #[test]
    fn codes_are_kept_verbatim_except_a_stale_etag() {
        let e = classify(
            "Op",
            "/x",
            Some(400),
            fault("SecurityRuleConflict", "m"),
            None,
        );
        assert_eq!(code_of(&e), "SecurityRuleConflict");
        let e = classify("Op", "/x", Some(412), fault("Http412", ""), None);
        assert_eq!(code_of(&e), "PreconditionFailed");
        assert!(!retry_in_call(&e));
    }

    #[test]
    fn throttling_keeps_retry_after() {
        let e = classify(
            "Op",
            "/x",
            Some(429),
            fault("RetryableError", ""),
            Some(Duration::from_secs(3)),
        );
        assert!(matches!(
            e,
            CloudError::Throttled { retry_after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        assert!(retry_in_call(&e));
    }

    #[test]
    fn bodies_without_an_arm_error_are_named_by_status() {
        let f = ArmFault::from_body(502, b"<html>bad gateway</html>");
        assert_eq!(f.code, "Http502");
        assert!(f.message.contains("bad gateway"));
        let f = ArmFault::from_body(
            400,
            br#"{"error":{"code":"SecurityRuleConflict","message":"m"}}"#,
        );
        assert_eq!(f, fault("SecurityRuleConflict", "m"));
    }
}
