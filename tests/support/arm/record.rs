//! What the emulator remembers about its callers: every call, the faults it injected,
//! and how long callers waited after being told to back off.

use std::time::{Duration, Instant};

use super::options::Faults;

/// One request and the status it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// HTTP method, upper case.
    pub method: String,
    /// Request path without the query, as the client sent it.
    pub path: String,
    /// Status of the answer.
    pub status: u16,
    /// When the request arrived.
    pub at: Instant,
}

impl Call {
    /// Whether the call asked for a change (PUT, PATCH, DELETE, POST).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "PUT" | "PATCH" | "DELETE" | "POST")
    }
}

/// The pause a client made after a 429, next to what the 429 asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleWait {
    /// The 429's `Retry-After`.
    pub retry_after: Duration,
    /// Time from the 429 answer to the next request the emulator received.
    pub waited: Duration,
}

/// A failure the emulator injects instead of answering.
pub(crate) enum Injected {
    Throttle { retry_after_secs: u64 },
    ServerError,
}

#[derive(Default)]
pub(crate) struct Recorder {
    calls: Vec<Call>,
    faults: Faults,
    since_faults_set: u64,
    injected: u64,
    /// When the last 429 was answered and its `Retry-After`, until the next request.
    /// Throttled calls not retried yet: (method, path, answered at, Retry-After).
    open_throttles: Vec<(String, String, Instant, Duration)>,
    waits: Vec<ThrottleWait>,
}

impl Recorder {
    /// Notes a request's arrival (closing an open throttle wait).
    pub fn arrived(&mut self, method: &str, path: &str, now: Instant) {
        // A retry is the same call again: concurrent callers of other paths do not count.
        if let Some(i) = self
            .open_throttles
            .iter()
            .position(|(m, p, _, _)| m == method && p == path)
        {
            let (_, _, answered, retry_after) = self.open_throttles.remove(i);
            self.waits.push(ThrottleWait {
                retry_after,
                waited: now.saturating_duration_since(answered),
            });
        }
    }

    pub fn answered(&mut self, call: Call, retry_after: Option<Duration>, now: Instant) {
        if call.status == 429
            && let Some(retry_after) = retry_after
        {
            self.open_throttles
                .push((call.method.clone(), call.path.clone(), now, retry_after));
        }
        self.calls.push(call);
    }

    /// The failure to inject for the call being answered, if any.
    pub fn next_fault(&mut self) -> Option<Injected> {
        self.since_faults_set += 1;
        let n = self.since_faults_set;
        let fault = match self.faults {
            Faults::ThrottleEvery {
                every,
                retry_after_secs,
            } if every > 0 && n.is_multiple_of(every) => Injected::Throttle { retry_after_secs },
            Faults::ServerErrorEvery(every) if every > 0 && n.is_multiple_of(every) => {
                Injected::ServerError
            }
            Faults::Random {
                percent,
                retry_after_secs,
            } if rand::random_range(0..100u32) < percent => match rand::random::<bool>() {
                true => Injected::Throttle { retry_after_secs },
                false => Injected::ServerError,
            },
            _ => return None,
        };
        self.injected += 1;
        Some(fault)
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
        self.since_faults_set = 0;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.clone()
    }

    pub fn clear_calls(&mut self) {
        self.calls.clear();
    }

    pub fn injected(&self) -> u64 {
        self.injected
    }

    pub fn waits(&self) -> Vec<ThrottleWait> {
        self.waits.clone()
    }
}
