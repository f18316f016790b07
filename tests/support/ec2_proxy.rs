//! A recording, fault-injecting HTTP proxy in front of moto.
//!
//! moto never throttles; real EC2 answers `RequestLimitExceeded` (HTTP 503) and 5xx. The
//! proxy forwards every call to moto, remembers each call's `Action`, and on demand
//! answers some calls itself with an EC2 error instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// EC2 actions that change something.
pub const WRITES: &[&str] = &[
    "AuthorizeSecurityGroupIngress",
    "RevokeSecurityGroupIngress",
    "ModifySecurityGroupRules",
    "UpdateSecurityGroupRuleDescriptionsIngress",
    "CreateSecurityGroup",
    "DeleteSecurityGroup",
    "ModifyNetworkInterfaceAttribute",
    "CreateTags",
];

/// Which calls fail, and how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Faults {
    /// Forward everything.
    #[default]
    None,
    /// Every `n`th call gets 503 `RequestLimitExceeded`.
    ThrottleEvery(u64),
    /// Every `n`th call gets 500 `InternalError`.
    ServerErrorEvery(u64),
}

/// A call the proxy answers itself with an EC2 error: every call of `action` (any action
/// when `None`) in `region` (any region when `None`).
#[derive(Clone, Debug)]
pub struct Refuse {
    /// The EC2 action, e.g. `DeleteSecurityGroup`.
    pub action: Option<&'static str>,
    /// The region the call is signed for.
    pub region: Option<&'static str>,
    /// The HTTP status.
    pub status: u16,
    /// The EC2 error code, e.g. `DependencyViolation`.
    pub code: &'static str,
}

/// Runs before the proxy forwards a call of an action: the test changes the world (e.g.
/// through moto directly) while the operator is in the middle of its work.
pub type Hook = Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

#[derive(Default)]
struct State {
    calls: Mutex<Vec<String>>,
    faults: Mutex<Faults>,
    refusals: Mutex<Vec<Refuse>>,
    /// Refusals for a number of calls only.
    counted: Mutex<Vec<(u64, Refuse)>>,
    delays: Mutex<Vec<(String, std::time::Duration)>>,
    hooks: Mutex<Vec<(String, Hook)>>,
    /// Runs after the n-th write (counted from when it was set) is done upstream, before
    /// its answer goes back.
    trip: Mutex<Option<(u64, Hook)>>,
    writes_done: AtomicU64,
    tripped: Mutex<Option<String>>,
    injected: AtomicU64,
    seq: AtomicU64,
    timed: Mutex<Vec<TimedCall>>,
    chaos: Mutex<Option<Chaos>>,
    hold: Mutex<Option<Trip>>,
    writes_seen: AtomicU64,
}

/// One call as the proxy answered it, with when: for rates per second and for the
/// moment a rule was revoked.
#[derive(Clone, Debug)]
pub struct TimedCall {
    /// When the answer was sent (or the connection dropped).
    pub at: std::time::Instant,
    /// The EC2 action.
    pub action: String,
    /// The HTTP status answered (0: the connection was dropped without an answer).
    pub status: u16,
    /// The request's form parameters, for write actions only (e.g. the rule ids revoked).
    pub params: String,
}

impl TimedCall {
    /// The values of form parameters named `prefix.N` (e.g. `SecurityGroupRuleId`).
    pub fn param_values(&self, prefix: &str) -> Vec<String> {
        self.params
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| {
                k.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
            })
            .map(|(_, v)| v.replace("%2F", "/").replace("%3A", ":"))
            .collect()
    }
}

/// Random cloud faults: each call fails with probability `rate`, in one of four ways
/// picked at random: 503 `RequestLimitExceeded`, 500 `InternalError`, the connection
/// reset without an answer, or the call held for `hold` and then dropped (a timeout).
#[derive(Clone, Copy, Debug)]
pub struct Chaos {
    /// The share of calls that fail, 0.0 to 1.0.
    pub rate: f64,
    /// How long a "timeout" holds the call before dropping the connection.
    pub hold: std::time::Duration,
}

struct Trip {
    /// Which write (counted from when the trip was set, 1-based) trips.
    nth: u64,
    /// Told when the write arrives; the write is then held until `release` fires.
    tripped: Option<tokio::sync::oneshot::Sender<()>>,
    release: Option<tokio::sync::oneshot::Receiver<()>>,
    counted_from: u64,
}

/// How the proxy answers one call when it fails it on purpose.
enum Injected {
    Answer(Response<Full<Bytes>>),
    Drop,
}

/// The proxy; it runs until the test's runtime ends.
#[derive(Clone)]
pub struct Ec2Proxy {
    /// The URL to give the SDK (`AWS_ENDPOINT_URL`).
    pub url: String,
    state: Arc<State>,
}

impl Ec2Proxy {
    /// Starts a proxy to `upstream` (moto's URL) on a free loopback port.
    pub async fn start(upstream: &str) -> Ec2Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let upstream = upstream.to_string();
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (st, client, upstream) = (st.clone(), client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        answer(req, st.clone(), client.clone(), upstream.clone())
                    });
                    http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                        .ok();
                });
            }
        });
        Ec2Proxy {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// Sets which calls fail from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().unwrap() = faults;
    }

    /// Refuses the calls `refuse` describes, from now on (besides the faults).
    pub fn refuse(&self, refuse: Refuse) {
        self.state.refusals.lock().unwrap().push(refuse);
    }

    /// Refuses only the next `times` calls `refuse` describes: a passing fault such as
    /// EC2's eventual consistency (`InvalidGroup.NotFound` right after a create).
    pub fn refuse_next(&self, times: u64, refuse: Refuse) {
        self.state.counted.lock().unwrap().push((times, refuse));
    }

    /// Stops refusing calls.
    pub fn stop_refusing(&self) {
        self.state.refusals.lock().unwrap().clear();
    }

    /// Holds every call signed for `region` this long before forwarding it: a slow region.
    pub fn delay_region(&self, region: &str, delay: std::time::Duration) {
        self.state
            .delays
            .lock()
            .unwrap()
            .push((region.to_string(), delay));
    }

    /// Runs `hook` once, before the next call of `action` is forwarded.
    pub fn before_next(&self, action: &str, hook: Hook) {
        self.state
            .hooks
            .lock()
            .unwrap()
            .push((action.to_string(), hook));
    }

    /// Runs `hook` once, after the `n`-th write forwarded from now on is done by moto and
    /// before its answer goes back: the test kills the operator there, so the cloud has
    /// changed and the operator never learns it.
    pub fn after_write(&self, n: u64, hook: Hook) {
        self.state.writes_done.store(0, Ordering::SeqCst);
        *self.state.tripped.lock().unwrap() = None;
        *self.state.trip.lock().unwrap() = Some((n, hook));
    }

    /// The writes moto accepted since [`Ec2Proxy::after_write`] was set.
    pub fn writes_done(&self) -> u64 {
        self.state.writes_done.load(Ordering::SeqCst)
    }

    /// The write after which the [`Ec2Proxy::after_write`] hook ran, once it has.
    pub fn tripped(&self) -> Option<String> {
        self.state.tripped.lock().unwrap().clone()
    }

    /// Every action seen so far, in order (injected failures included).
    pub fn calls(&self) -> Vec<String> {
        self.state.calls.lock().unwrap().clone()
    }

    /// The write actions seen so far.
    pub fn writes(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|a| WRITES.contains(&a.as_str()))
            .collect()
    }

    /// Forgets the calls seen so far.
    pub fn clear(&self) {
        self.state.calls.lock().unwrap().clear();
    }

    /// How many calls the proxy failed on purpose.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// Every call answered so far with its time and status (see [`TimedCall`]).
    pub fn timed_calls(&self) -> Vec<TimedCall> {
        self.state.timed.lock().unwrap().clone()
    }

    /// Forgets the timed calls so far.
    pub fn clear_timed(&self) {
        self.state.timed.lock().unwrap().clear();
    }

    /// Fails calls at random from now on (`None`: stop); besides the other faults.
    pub fn set_chaos(&self, chaos: Option<Chaos>) {
        *self.state.chaos.lock().unwrap() = chaos;
    }

    /// Holds the `nth` write call from now on (1-based) without forwarding it: the first
    /// receiver fires when it arrives (so the test can kill the operator mid-write); the
    /// call is then dropped without an answer when the returned sender fires or is dropped.
    pub fn trip_on_write(
        &self,
        nth: u64,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (tripped_tx, tripped_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel();
        *self.state.hold.lock().unwrap() = Some(Trip {
            nth,
            tripped: Some(tripped_tx),
            release: Some(release_rx),
            counted_from: self.state.writes_seen.load(Ordering::SeqCst),
        });
        (tripped_rx, release_tx)
    }
}

/// The region a call is signed for (SigV4 credential scope).
fn region_of(headers: &hyper::HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let scope = auth.split("Credential=").nth(1)?.split(',').next()?;
    scope.split('/').nth(2).map(str::to_string)
}

fn action_of(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("?")
        .to_string()
}

fn ec2_error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>proxy-{code}</RequestID></Response>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/xml;charset=UTF-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// The dropped connection of a reset or a timeout (hyper closes the connection when the
/// service fails).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the test proxy")
    }
}

impl std::error::Error for Dropped {}

/// Answers one call: the chaos faults and the write trip first, then [`forward`]; every
/// answer is logged with its time.
async fn answer(
    req: Request<Incoming>,
    st: Arc<State>,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: String,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let action = action_of(&body);
    let write = WRITES.contains(&action.as_str());
    let params = if write {
        String::from_utf8_lossy(&body).into_owned()
    } else {
        String::new()
    };
    let log = |status: u16| {
        st.timed.lock().unwrap().push(TimedCall {
            at: std::time::Instant::now(),
            action: action.clone(),
            status,
            params: params.clone(),
        });
    };
    let result = match inject(&st, write).await {
        Some(Injected::Answer(r)) => {
            st.calls.lock().unwrap().push(action.clone());
            Ok(r)
        }
        Some(Injected::Drop) => {
            st.calls.lock().unwrap().push(action.clone());
            Err(Dropped)
        }
        None => Ok(forward(parts, body, &action, st.clone(), client, upstream).await),
    };
    log(result.as_ref().map(|r| r.status().as_u16()).unwrap_or(0));
    result
}

/// The chaos fault or the write trip for this call, if any.
async fn inject(st: &State, write: bool) -> Option<Injected> {
    if write {
        let n = st.writes_seen.fetch_add(1, Ordering::SeqCst) + 1;
        let held = {
            let mut trip = st.hold.lock().unwrap();
            match trip.as_mut() {
                Some(t) if n - t.counted_from == t.nth => {
                    t.tripped.take().map(|tx| tx.send(()).ok());
                    t.release.take()
                }
                _ => None,
            }
        };
        if let Some(release) = held {
            release.await.ok();
            st.injected.fetch_add(1, Ordering::SeqCst);
            return Some(Injected::Drop);
        }
    }
    let chaos = *st.chaos.lock().unwrap();
    let chaos = chaos.filter(|c| rand::random::<f64>() < c.rate)?;
    st.injected.fetch_add(1, Ordering::SeqCst);
    Some(match rand::random_range(0..4u8) {
        0 => Injected::Answer(ec2_error(
            503,
            "RequestLimitExceeded",
            "Request limit exceeded.",
        )),
        1 => Injected::Answer(ec2_error(
            500,
            "InternalError",
            "An internal error has occurred.",
        )),
        2 => Injected::Drop,
        _ => {
            tokio::time::sleep(chaos.hold).await;
            Injected::Drop
        }
    })
}

/// Forwards a call [`answer`] has read (its `action` parsed from `body`) to moto, unless
/// a hook, delay, refusal or fault says otherwise.
async fn forward(
    parts: hyper::http::request::Parts,
    body: Bytes,
    action: &str,
    st: Arc<State>,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: String,
) -> Response<Full<Bytes>> {
    let action = action.to_string();
    st.calls.lock().unwrap().push(action.clone());
    let n = st.seq.fetch_add(1, Ordering::SeqCst) + 1;
    let hook = {
        let mut hooks = st.hooks.lock().unwrap();
        hooks
            .iter()
            .position(|(a, _)| *a == action)
            .map(|i| hooks.remove(i).1)
    };
    if let Some(hook) = hook {
        hook().await;
    }
    let region = region_of(&parts.headers);
    let delay = st
        .delays
        .lock()
        .unwrap()
        .iter()
        .find(|(r, _)| Some(r.as_str()) == region.as_deref())
        .map(|(_, d)| *d);
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let matches = |r: &Refuse| {
        r.action.is_none_or(|a| a == action)
            && r.region.is_none_or(|g| Some(g) == region.as_deref())
    };
    let refusal = st
        .refusals
        .lock()
        .unwrap()
        .iter()
        .find(|r| matches(r))
        .cloned();
    let refusal = refusal.or_else(|| {
        let mut counted = st.counted.lock().unwrap();
        let i = counted
            .iter()
            .position(|(left, r)| *left > 0 && matches(r))?;
        counted[i].0 -= 1;
        Some(counted[i].1.clone())
    });
    if let Some(r) = refusal {
        st.injected.fetch_add(1, Ordering::SeqCst);
        return ec2_error(r.status, r.code, "refused by the test proxy");
    }
    let faults = *st.faults.lock().unwrap();
    match faults {
        Faults::ThrottleEvery(k) if k > 0 && n.is_multiple_of(k) => {
            st.injected.fetch_add(1, Ordering::SeqCst);
            return ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.");
        }
        Faults::ServerErrorEvery(k) if k > 0 && n.is_multiple_of(k) => {
            st.injected.fetch_add(1, Ordering::SeqCst);
            return ec2_error(500, "InternalError", "An internal error has occurred.");
        }
        _ => {}
    }
    let uri = format!(
        "{upstream}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut up = Request::builder().method(parts.method).uri(uri);
    for (k, v) in parts.headers.iter() {
        if k != "host" {
            up = up.header(k, v);
        }
    }
    let up = up.body(Full::new(body)).unwrap();
    match client.request(up).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if WRITES.contains(&action.as_str()) && parts.status.is_success() {
                trip(&st, &action).await;
            }
            Response::from_parts(parts, Full::new(body))
        }
        Err(e) => ec2_error(502, "ProxyError", &e.to_string()),
    }
}

/// Counts a write moto has done and runs the trip hook on the chosen one.
async fn trip(st: &State, action: &str) {
    let n = st.writes_done.fetch_add(1, Ordering::SeqCst) + 1;
    let hook = {
        let mut trip = st.trip.lock().unwrap();
        match trip.as_ref() {
            Some((at, _)) if *at == n => trip.take().map(|(_, h)| h),
            _ => None,
        }
    };
    if let Some(hook) = hook {
        *st.tripped.lock().unwrap() = Some(action.to_string());
        hook().await;
    }
}
