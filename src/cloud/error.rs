//! Cloud errors, classified the way the controller must react to them.

use std::time::Duration;

/// A cloud call that failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The cloud asked us to slow down; retry after a while.
    #[error("{op}: throttled ({code}): {message}")]
    Throttled {
        /// The API operation.
        op: &'static str,
        /// The cloud's error code.
        code: String,
        /// The cloud's message.
        message: String,
        /// How long the cloud asked us to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// A passing fault (5xx, a timeout, a concurrent change); retry with backoff.
    #[error("{op}: {code}: {message}")]
    Retryable {
        /// The API operation.
        op: &'static str,
        /// The cloud's error code, or the kind of transport failure.
        code: String,
        /// What happened.
        message: String,
    },
    /// The target (VM, instance, interface) does not exist.
    #[error("{what} not found ({code}): {message}")]
    NotFound {
        /// What is missing.
        what: String,
        /// The cloud's error code.
        code: String,
        /// The cloud's message.
        message: String,
    },
    /// A cloud limit stops the change (groups per interface, rules per group, …).
    #[error("{op}: limit reached ({code}): {message}")]
    Limit {
        /// The API operation.
        op: &'static str,
        /// The cloud's error code.
        code: String,
        /// What to do about it.
        message: String,
    },
    /// The resource is of a kind Portcullis does not govern (e.g. an Azure Firewall
    /// managed by Firewall Manager); nothing was written to it.
    #[error("{message}")]
    Unsupported {
        /// What is unsupported.
        what: String,
        /// A short code for the reason.
        code: String,
        /// Why, for people.
        message: String,
    },
    /// The credentials are missing, wrong, expired or lack a permission: a person must
    /// fix the operator's identity; retried only at the slow resync pace.
    #[error("{op}: not authorized ({code}): {message}")]
    Unauthorized {
        /// The API operation.
        op: &'static str,
        /// The cloud's error code.
        code: String,
        /// The cloud's message.
        message: String,
    },
    /// Something outside the operator holds on to what it must change (e.g. EC2's
    /// `DependencyViolation`: a group still referenced elsewhere): retried at the slow
    /// resync pace and reported, not hammered.
    #[error("{op}: in use ({code}): {message}")]
    InUse {
        /// The API operation.
        op: &'static str,
        /// The cloud's error code.
        code: String,
        /// What holds on to it.
        message: String,
    },
    /// Anything else: retrying will not help until something changes.
    #[error("{op}: {code}: {message}")]
    Fatal {
        /// The API operation.
        op: &'static str,
        /// The cloud's error code.
        code: String,
        /// The cloud's message.
        message: String,
    },
}

impl CloudError {
    /// A static label for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            CloudError::Throttled { .. } => "throttled",
            CloudError::Retryable { .. } => "retryable",
            CloudError::NotFound { .. } => "not_found",
            CloudError::Limit { .. } => "limit",
            CloudError::Unsupported { .. } => "unsupported",
            CloudError::Unauthorized { .. } => "unauthorized",
            CloudError::InUse { .. } => "in_use",
            CloudError::Fatal { .. } => "fatal",
        }
    }

    /// The cloud's error code.
    pub fn code(&self) -> &str {
        match self {
            CloudError::Throttled { code, .. }
            | CloudError::Retryable { code, .. }
            | CloudError::NotFound { code, .. }
            | CloudError::Limit { code, .. }
            | CloudError::Unsupported { code, .. }
            | CloudError::Unauthorized { code, .. }
            | CloudError::InUse { code, .. }
            | CloudError::Fatal { code, .. } => code,
        }
    }

    /// Whether retrying the same thing later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CloudError::Throttled { .. } | CloudError::Retryable { .. }
        )
    }
}
