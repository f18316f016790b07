//! What a test can tune: ARM's limits and timings, and injected failures.

use std::time::Duration;

/// Subscription used for seeded resources unless a test picks another.
pub const DEFAULT_SUBSCRIPTION: &str = "6b1f0c3e-0000-4000-8000-00000000a7e1";

/// How the emulator answers a write to an NSG while a long-running operation on it
/// (or on one of its rules) has not completed. ARM answers either way in practice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BusyAnswer {
    /// 429 `RetryableError` and 409 `AnotherOperationInProgress` by turns, starting with 429.
    #[default]
    Alternate,
    /// Always 429 `RetryableError` with `Retry-After`.
    Retryable,
    /// Always 409 `AnotherOperationInProgress`.
    AnotherOperationInProgress,
}

/// Failures injected regardless of the request. Calls are counted from the moment the
/// faults are set, so "every third call" is deterministic from there; calls refused for
/// their token or `api-version` are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Faults {
    /// Answer everything normally.
    #[default]
    None,
    /// Every `every`th call gets 429 `SubscriptionRequestsThrottled` with
    /// `Retry-After: retry_after_secs`.
    ThrottleEvery {
        /// Which calls: the `every`th, `2 * every`th, …
        every: u64,
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// Every `n`th call gets 500 `InternalServerError`.
    ServerErrorEvery(u64),
    /// Each call fails with probability `percent` / 100, by turns at random as 429
    /// `SubscriptionRequestsThrottled` (with `Retry-After: retry_after_secs`) or 500.
    Random {
        /// The share of calls that fail, in percent.
        percent: u32,
        /// The `Retry-After` value of the 429s, in seconds.
        retry_after_secs: u64,
    },
}

/// Emulator settings, fixed at start.
#[derive(Clone, Debug)]
pub struct ArmOptions {
    /// Subscription of the resources seeded through the handle.
    pub subscription: String,
    /// Location of seeded resources (and of their operation URLs).
    pub location: String,
    /// How many polls of a long-running operation answer `InProgress` before it
    /// completes; the poll after them answers `Succeeded`. `0` completes on the first poll.
    pub in_progress_polls: u32,
    /// A long-running operation nobody polls completes on its own after this long, as on
    /// ARM (a client that crashed mid-operation must not find the NSG busy forever).
    /// `None`: only polls complete operations.
    pub complete_after: Option<Duration>,
    /// `Retry-After` (seconds) on long-running operations, their polls and 429 `RetryableError`.
    pub retry_after_secs: u64,
    /// Most security rules one NSG may hold (ARM: 1000).
    pub rule_limit: usize,
    /// How a write to a busy NSG is refused.
    pub busy: BusyAnswer,
    /// Most items a list answer holds; more come through `nextLink`.
    pub list_page_size: usize,
}

impl Default for ArmOptions {
    fn default() -> Self {
        ArmOptions {
            subscription: DEFAULT_SUBSCRIPTION.to_string(),
            location: "westus".to_string(),
            in_progress_polls: 1,
            complete_after: Some(Duration::from_secs(5)),
            retry_after_secs: 1,
            rule_limit: 1000,
            busy: BusyAnswer::Alternate,
            list_page_size: 100,
        }
    }
}
