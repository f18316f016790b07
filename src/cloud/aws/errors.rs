//! Classifying EC2 errors.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use crate::cloud::CloudError;

/// EC2 error codes that mean "slow down".
const THROTTLED: &[&str] = &["RequestLimitExceeded", "Throttling", "ThrottlingException"];
/// EC2 error codes that mean "try again soon".
const RETRYABLE: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "IncorrectState",
];
/// EC2 error codes that mean the operator's identity cannot do this.
const UNAUTHORIZED: &[&str] = &[
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "ExpiredToken",
    "OptInRequired",
    "SignatureDoesNotMatch",
];
/// EC2 error codes for limits a person must raise or work around.
const LIMITS: &[(&str, &str)] = &[
    (
        "SecurityGroupsPerInterfaceLimitExceeded",
        "the network interface already has the most security groups it may have; detach one or raise the quota 'Security groups per network interface'",
    ),
    (
        "RulesPerSecurityGroupLimitExceeded",
        "the security group holds the most rules it may; raise the quota 'Inbound or outbound rules per security group'",
    ),
    (
        "SecurityGroupLimitExceeded",
        "the VPC holds the most security groups it may; raise the quota 'VPC security groups per Region'",
    ),
];

/// The error code of an SDK error, when the service gave one.
pub fn code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

/// Classifies an SDK error from operation `op`.
pub fn classify<E>(op: &'static str, err: SdkError<E, HttpResponse>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (code, message, status) = match &err {
        SdkError::ServiceError(e) => (
            e.err().code().unwrap_or("Unknown").to_string(),
            e.err().message().unwrap_or_default().to_string(),
            Some(e.raw().status().as_u16()),
        ),
        SdkError::TimeoutError(_) => ("Timeout".into(), format!("{err}"), None),
        SdkError::DispatchFailure(_) => ("DispatchFailure".into(), format!("{err:?}"), None),
        SdkError::ResponseError(_) => ("ResponseError".into(), format!("{err:?}"), None),
        _ => ("Unknown".into(), format!("{err:?}"), None),
    };
    if THROTTLED.contains(&code.as_str()) {
        return CloudError::Throttled {
            op,
            code,
            message,
            retry_after: None,
        };
    }
    if RETRYABLE.contains(&code.as_str())
        || status.is_some_and(|s| s >= 500)
        || !matches!(err, SdkError::ServiceError(_))
    {
        return CloudError::Retryable { op, code, message };
    }
    if UNAUTHORIZED.contains(&code.as_str()) {
        return CloudError::Unauthorized {
            op,
            code,
            message: format!(
                "{message} (check the operator's AWS identity: IRSA role, policy and region)"
            ),
        };
    }
    if code == "DependencyViolation" {
        return CloudError::InUse { op, code, message };
    }
    if let Some((_, advice)) = LIMITS.iter().find(|(c, _)| *c == code) {
        return CloudError::Limit {
            op,
            code,
            message: format!("{message} ({advice})"),
        };
    }
    if code.ends_with(".NotFound") || code.ends_with(".Malformed") {
        return CloudError::NotFound {
            what: op.to_string(),
            code,
            message,
        };
    }
    CloudError::Fatal { op, code, message }
}
