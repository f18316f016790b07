//! A small typed Azure Resource Manager REST client on `azure_core`'s pipeline.
//!
//! No maintained Rust crate covers `Microsoft.Network`, so this client speaks ARM's
//! generic protocol: GET, PUT with `If-Match`, DELETE, long-running operations polled
//! through `Azure-AsyncOperation` or `Location`, and ARM's error bodies classified into
//! [`CloudError`]s.
//!
//! Retries are the client's own rather than `azure_core`'s retry policy: that policy
//! judges by status alone, and ARM's "busy" answers (409 `AnotherOperationInProgress`,
//! 429 `RetryableError`) and a stale ETag (412, which must not be retried blindly) need
//! the error code; the loop also counts every HTTP attempt in the metrics with its
//! outcome.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::http::headers::{
    ACCEPT, CONTENT_TYPE, ETAG, HeaderName, Headers, IF_MATCH, RETRY_AFTER,
};
use azure_core::http::policies::Policy;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::{
    ClientOptions, Context, HttpClient, Method, Pipeline, PipelineSendOptions, RawResponse,
    Request, RetryOptions, Transport, Url,
};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use rand::Rng;
use serde_json::Value;

use super::arm_error::{ArmFault, chain, classify, retry_in_call, transport_error};
use crate::cloud::CloudError;
use crate::metrics;

/// The public cloud's ARM endpoint.
pub const PUBLIC_ENDPOINT: &str = "https://management.azure.com";

/// HTTP attempts per request (the first one included) before an error is returned.
const MAX_ATTEMPTS: u32 = 6;
/// First backoff step between attempts; it doubles per attempt up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(400);
/// Longest backoff step.
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A `Retry-After` longer than this is not waited out inside a call: the error goes to
/// the caller, whose requeue does not hold a reconcile open that long.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(60);
/// Pause between polls of a long-running operation that gives no `Retry-After`.
const DEFAULT_POLL: Duration = Duration::from_secs(2);
/// Longest pause between polls, whatever `Retry-After` says.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);
/// How long a long-running operation may take before the call gives up on it.
const LRO_TIMEOUT: Duration = Duration::from_secs(300);

const AZURE_ASYNC_OPERATION: HeaderName = HeaderName::from_static("azure-asyncoperation");
const LOCATION: HeaderName = HeaderName::from_static("location");
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
const X_MS_RETRY_AFTER_MS: HeaderName = HeaderName::from_static("x-ms-retry-after-ms");

/// The `op` label of errors raised while the client is being built.
const CONFIGURE: &str = "ConfigureArmClient";

/// The ARM response of a GET: the resource and its ETag.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// The resource as ARM renders it.
    pub body: Value,
    /// Its ETag (the `ETag` header, or the body's `etag`), for `If-Match` on a later PUT.
    pub etag: Option<String>,
}

/// A client for one ARM endpoint.
#[derive(Clone, Debug)]
pub struct ArmClient {
    pipeline: Pipeline,
    endpoint: Url,
    /// ARM throttles per subscription and principal, not per call: after a throttling
    /// 429 every call of this client (clones share it) holds back until Retry-After has
    /// passed. A busy resource's 429 (`RetryableError`) holds only its own call.
    hold_until: std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

/// What a long-running operation is for: a delete ends well when its target is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lro {
    Put,
    Delete,
}

impl ArmClient {
    /// From the environment: base URL from `PORTCULLIS_ARM_ENDPOINT` (default
    /// `https://management.azure.com`; also sovereign clouds and tests), an extra trusted
    /// CA (PEM) from `PORTCULLIS_ARM_CA_FILE`, a static bearer token from
    /// `PORTCULLIS_ARM_TOKEN` when set (tests, local runs), otherwise `azure_identity`
    /// credentials: workload identity when `AZURE_FEDERATED_TOKEN_FILE` is set, else a
    /// client secret when `AZURE_CLIENT_SECRET` is set, else managed identity (a
    /// user-assigned one when `AZURE_CLIENT_ID` is set) with the developer tools (Azure
    /// CLI, Azure Developer CLI) as the last resort. Token scope: `{endpoint}/.default`.
    pub fn from_env() -> Result<ArmClient, CloudError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let endpoint = var("PORTCULLIS_ARM_ENDPOINT").unwrap_or_else(|| PUBLIC_ENDPOINT.into());
        let extra_ca = match var("PORTCULLIS_ARM_CA_FILE") {
            Some(path) => Some(read_ca(Path::new(&path))?),
            None => None,
        };
        let http = http_client(extra_ca.as_deref())?;
        let credential: Arc<dyn TokenCredential> = match var("PORTCULLIS_ARM_TOKEN") {
            Some(token) => Arc::new(StaticToken::new(token)),
            None => identity_credential(&http, &var)?,
        };
        ArmClient::with_http_client(&endpoint, credential, http)
    }

    /// Explicit construction (tests): endpoint URL, a credential, an extra CA PEM.
    pub fn new(
        endpoint: &str,
        credential: Arc<dyn TokenCredential>,
        extra_ca_pem: Option<&str>,
    ) -> Result<ArmClient, CloudError> {
        ArmClient::with_http_client(endpoint, credential, http_client(extra_ca_pem)?)
    }

    fn with_http_client(
        endpoint: &str,
        credential: Arc<dyn TokenCredential>,
        http: Arc<dyn HttpClient>,
    ) -> Result<ArmClient, CloudError> {
        let endpoint = parse_endpoint(endpoint)?;
        let scope = format!("{}/.default", endpoint.as_str().trim_end_matches('/'));
        let auth: Arc<dyn Policy> =
            Arc::new(BearerTokenAuthorizationPolicy::new(credential, [scope]));
        let options = ClientOptions {
            retry: RetryOptions::none(),
            transport: Some(Transport::new(http)),
            ..ClientOptions::default()
        };
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            options,
            Vec::new(),
            vec![auth],
            None,
        );
        Ok(ArmClient {
            pipeline,
            endpoint,
            hold_until: Default::default(),
        })
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str().trim_end_matches('/')
    }

    /// GET `{endpoint}{id}?api-version=...`; `Ok(None)` on 404.
    pub async fn get(
        &self,
        op: &'static str,
        id: &str,
        api_version: &str,
    ) -> Result<Option<Resource>, CloudError> {
        let url = self.url(op, id, api_version)?;
        match self.call(op, id, Method::Get, &url, None, None).await {
            Ok(reply) => Ok(Some(resource(op, &reply)?)),
            Err(CloudError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// PUT with an optional `If-Match` ETag. A long-running operation (201/202 with
    /// `Azure-AsyncOperation` or `Location`) is polled until it succeeds (honouring
    /// `Retry-After` between polls); then the resource is read back with GET and
    /// returned. A PUT that completes at once returns the resource it answered.
    pub async fn put(
        &self,
        op: &'static str,
        id: &str,
        api_version: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Resource, CloudError> {
        let url = self.url(op, id, api_version)?;
        let payload = serde_json::to_vec(body).map_err(|e| CloudError::Fatal {
            op,
            code: "InvalidRequestBody".into(),
            message: e.to_string(),
        })?;
        let first = self
            .call(op, id, Method::Put, &url, Some(payload), if_match)
            .await?;
        let resource = if self.wait(op, id, api_version, &first, Lro::Put).await? {
            self.get(op, id, api_version)
                .await?
                .ok_or_else(|| CloudError::Retryable {
                    op,
                    code: "NotFoundAfterPut".into(),
                    message: format!("{id} was not found after its PUT completed"),
                })?
        } else {
            resource(op, &first)?
        };
        match provisioning_state(&resource.body) {
            Some(state) if state.eq_ignore_ascii_case("Failed") => Err(CloudError::Fatal {
                op,
                code: "ProvisioningStateFailed".into(),
                message: format!("{id} ended in provisioningState {state}"),
            }),
            _ => Ok(resource),
        }
    }

    /// DELETE; polls the long-running operation to the end. 404 and 204 count as done.
    pub async fn delete(
        &self,
        op: &'static str,
        id: &str,
        api_version: &str,
    ) -> Result<(), CloudError> {
        let url = self.url(op, id, api_version)?;
        let first = match self.call(op, id, Method::Delete, &url, None, None).await {
            Ok(reply) => reply,
            Err(CloudError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if u16::from(first.status()) == 204 {
            return Ok(());
        }
        self.wait(op, id, api_version, &first, Lro::Delete)
            .await
            .map(|_| ())
    }

    /// `{endpoint}{id}?api-version=…`.
    pub(crate) fn url(
        &self,
        op: &'static str,
        id: &str,
        api_version: &str,
    ) -> Result<Url, CloudError> {
        if !id.starts_with('/') || id.contains(['?', '#']) {
            return Err(CloudError::Fatal {
                op,
                code: "InvalidResourceId".into(),
                message: format!("'{id}' is not an ARM resource id"),
            });
        }
        let mut url = self.endpoint.clone();
        let path = format!("{}{id}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.query_pairs_mut()
            .append_pair("api-version", api_version);
        Ok(url)
    }

    /// Sends one request, retrying throttled and passing failures; any 2xx answer is
    /// returned, any other is classified.
    pub(crate) async fn call(
        &self,
        op: &'static str,
        id: &str,
        method: Method,
        url: &Url,
        body: Option<Vec<u8>>,
        if_match: Option<&str>,
    ) -> Result<RawResponse, CloudError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let hold = *self.hold_until.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(until) = hold {
                tokio::time::sleep_until(until).await;
            }
            let mut request = Request::new(url.clone(), method);
            request.insert_header(ACCEPT, "application/json");
            if let Some(body) = &body {
                request.insert_header(CONTENT_TYPE, "application/json");
                request.set_body(body.clone());
            }
            if let Some(etag) = if_match {
                request.insert_header(IF_MATCH, etag.to_string());
            }
            let options = PipelineSendOptions {
                skip_checks: true,
                ..PipelineSendOptions::default()
            };
            let sent = self
                .pipeline
                .send(&Context::new(), &mut request, Some(options))
                .await;
            let (error, retry_after, unauthorized) = match sent {
                Ok(reply) if reply.status().is_success() => {
                    metrics::cloud_call("azure", op, "ok");
                    return Ok(reply);
                }
                Ok(reply) => {
                    let status = u16::from(reply.status());
                    let retry_after = retry_after(reply.headers());
                    let fault = ArmFault::from_body(status, reply.body());
                    let error = classify(op, id, Some(status), fault, retry_after);
                    (error, retry_after, status == 401)
                }
                Err(e) => (transport_error(op, &e), None, false),
            };
            metrics::cloud_call("azure", op, error.category());
            // The bearer policy dropped its cached token on the 401; one more try
            // fetches a fresh one, so an expired or rotated token costs no reconcile.
            let again = retry_in_call(&error) || (unauthorized && attempt == 1);
            if !again || attempt >= MAX_ATTEMPTS {
                return Err(error);
            }
            // ARM throttles per subscription: then every call of this client holds. A busy
            // resource's 429 (`RetryableError`) concerns that resource alone: only this
            // call waits (holding every call made one busy NSG delay all expiries).
            let subscription_throttled =
                matches!(&error, CloudError::Throttled { code, .. } if code != "RetryableError");
            if let (true, Some(wait)) = (subscription_throttled, retry_after) {
                let until = tokio::time::Instant::now() + wait;
                let mut hold = self.hold_until.lock().unwrap_or_else(|e| e.into_inner());
                *hold = Some(hold.map_or(until, |h| h.max(until)));
            }
            let delay = match retry_after {
                Some(wait) if wait > MAX_INLINE_WAIT => return Err(error),
                // A little jitter on top keeps callers told the same moment apart.
                Some(wait) => wait + jitter(Duration::from_millis(250)),
                None => backoff(attempt),
            };
            tracing::debug!(op, id, attempt, ?delay, error = %error, "retrying ARM request");
            tokio::time::sleep(delay).await;
        }
    }

    /// Follows the long-running operation that `first` started, if any, to its end;
    /// whether there was one.
    async fn wait(
        &self,
        op: &'static str,
        id: &str,
        api_version: &str,
        first: &RawResponse,
        kind: Lro,
    ) -> Result<bool, CloudError> {
        let headers = first.headers();
        let status = u16::from(first.status());
        let poll = if let Some(url) = headers.get_optional_str(&AZURE_ASYNC_OPERATION) {
            Poll::AsyncOperation(self.poll_url(op, url)?)
        } else if let (Some(url), 201 | 202) = (headers.get_optional_str(&LOCATION), status) {
            Poll::Location(self.poll_url(op, url)?)
        } else if kind == Lro::Put && !body_is_terminal(first.body()) {
            Poll::Resource(self.url(op, id, api_version)?)
        } else {
            return Ok(false);
        };
        let deadline = Instant::now() + LRO_TIMEOUT;
        let mut pause = retry_after(headers).unwrap_or(DEFAULT_POLL);
        loop {
            let pause_for = pause.min(MAX_POLL_WAIT);
            if Instant::now() + pause_for > deadline {
                return Err(CloudError::Retryable {
                    op,
                    code: "OperationTimedOut".into(),
                    message: format!(
                        "the operation on {id} did not finish within {}s",
                        LRO_TIMEOUT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(pause_for).await;
            let reply = match self.call(op, id, Method::Get, poll.url(), None, None).await {
                Ok(reply) => reply,
                Err(CloudError::NotFound { .. }) if kind == Lro::Delete => return Ok(true),
                Err(e) => return Err(e),
            };
            let done = match &poll {
                Poll::AsyncOperation(_) => operation_status(op, id, reply.body())?,
                Poll::Location(_) => u16::from(reply.status()) != 202,
                Poll::Resource(_) => resource_status(op, id, reply.body())?,
            };
            if done {
                return Ok(true);
            }
            pause = retry_after(reply.headers()).unwrap_or(DEFAULT_POLL);
        }
    }

    /// Checks that a polling URL points at the endpoint: the bearer token must not be
    /// sent anywhere else.
    pub(crate) fn poll_url(&self, op: &'static str, url: &str) -> Result<Url, CloudError> {
        let parsed = Url::parse(url).map_err(|e| CloudError::Fatal {
            op,
            code: "InvalidPollingUrl".into(),
            message: format!("'{url}': {e}"),
        })?;
        let same_origin = parsed.scheme() == self.endpoint.scheme()
            && parsed.host_str() == self.endpoint.host_str()
            && parsed.port_or_known_default() == self.endpoint.port_or_known_default();
        if !same_origin {
            return Err(CloudError::Fatal {
                op,
                code: "UntrustedPollingUrl".into(),
                message: format!(
                    "ARM asked to poll '{url}', which is not on {}",
                    self.endpoint()
                ),
            });
        }
        Ok(parsed)
    }
}

/// Where a long-running operation is followed.
enum Poll {
    /// `Azure-AsyncOperation`: a status document.
    AsyncOperation(Url),
    /// `Location`: 202 until done.
    Location(Url),
    /// Neither header, but the resource says it is still provisioning.
    Resource(Url),
}

impl Poll {
    fn url(&self) -> &Url {
        match self {
            Poll::AsyncOperation(url) | Poll::Location(url) | Poll::Resource(url) => url,
        }
    }
}

/// Reads an `Azure-AsyncOperation` status document: whether the operation succeeded,
/// `Ok(false)` while it runs, the classified error when it failed.
fn operation_status(op: &'static str, id: &str, body: &[u8]) -> Result<bool, CloudError> {
    let doc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let status = doc.get("status").and_then(Value::as_str).unwrap_or("");
    match status.to_ascii_lowercase().as_str() {
        "succeeded" => Ok(true),
        "failed" | "canceled" | "cancelled" => Err(failed_operation(op, id, &doc, status)),
        _ => Ok(false),
    }
}

/// Reads a resource's `provisioningState` while no operation URL is given.
fn resource_status(op: &'static str, id: &str, body: &[u8]) -> Result<bool, CloudError> {
    let doc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match provisioning_state(&doc)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("succeeded") => Ok(true),
        Some(state @ ("failed" | "canceled" | "cancelled")) => {
            Err(failed_operation(op, id, &doc, state))
        }
        Some(_) => Ok(false),
    }
}

/// The error of a failed or canceled operation, classified by its code.
fn failed_operation(op: &'static str, id: &str, doc: &Value, status: &str) -> CloudError {
    let fallback = if status.eq_ignore_ascii_case("failed") {
        "OperationFailed"
    } else {
        "OperationCanceled"
    };
    let fault = match doc.get("error") {
        Some(error) => ArmFault::from_error(error, fallback),
        None => ArmFault {
            code: fallback.to_string(),
            message: format!("the operation on {id} ended {status}"),
        },
    };
    classify(op, id, None, fault, None)
}

fn provisioning_state(body: &Value) -> Option<&str> {
    body.pointer("/properties/provisioningState")
        .and_then(Value::as_str)
}

/// Whether a PUT's answer shows a resource that needs no polling.
fn body_is_terminal(body: &[u8]) -> bool {
    let doc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match provisioning_state(&doc) {
        None => true,
        Some(state) => ["succeeded", "failed", "canceled", "cancelled"]
            .contains(&state.to_ascii_lowercase().as_str()),
    }
}

/// A 2xx answer as a [`Resource`].
fn resource(op: &'static str, reply: &RawResponse) -> Result<Resource, CloudError> {
    let body: Value = if reply.body().is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(reply.body()).map_err(|e| CloudError::Retryable {
            op,
            code: "InvalidResponseBody".into(),
            message: format!("ARM answered a body that is not JSON: {e}"),
        })?
    };
    let etag = reply
        .headers()
        .get_optional_string(&ETAG)
        .or_else(|| body.get("etag").and_then(Value::as_str).map(str::to_string));
    Ok(Resource { body, etag })
}

/// How long ARM asked to wait: `retry-after-ms`, `x-ms-retry-after-ms` or `Retry-After`
/// (seconds or an HTTP date).
fn retry_after(headers: &Headers) -> Option<Duration> {
    let millis = |name: &HeaderName| {
        headers
            .get_optional_str(name)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
    };
    millis(&RETRY_AFTER_MS)
        .or_else(|| millis(&X_MS_RETRY_AFTER_MS))
        .or_else(|| {
            let value = headers.get_optional_str(&RETRY_AFTER)?.trim();
            if let Ok(seconds) = value.parse::<u64>() {
                return Some(Duration::from_secs(seconds));
            }
            let at = azure_core::time::parse_rfc7231(value).ok()?;
            let left = at - azure_core::time::OffsetDateTime::now_utc();
            Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
        })
}

/// Exponential backoff with "equal jitter": half the step is fixed so a retry never
/// comes at once, half is random so callers that failed together spread out.
fn backoff(attempt: u32) -> Duration {
    let step = BACKOFF_BASE
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    step / 2 + jitter(step / 2)
}

fn jitter(max: Duration) -> Duration {
    let millis = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

/// The HTTP client: `reqwest` on rustls with the platform's roots, plus `extra_ca_pem`.
fn http_client(extra_ca_pem: Option<&str>) -> Result<Arc<dyn HttpClient>, CloudError> {
    let config = |message: String| CloudError::Fatal {
        op: CONFIGURE,
        code: "InvalidConfiguration".into(),
        message,
    };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        // ARM does not redirect; a redirect would carry the bearer token elsewhere.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = extra_ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| config(format!("the extra CA is not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(config("the extra CA holds no certificate".into()));
        }
        builder = builder.tls_certs_merge(certs);
    }
    let client = builder
        .build()
        .map_err(|e| config(format!("cannot build the HTTP client: {}", chain(&e))))?;
    Ok(Arc::new(client))
}

fn read_ca(path: &Path) -> Result<String, CloudError> {
    std::fs::read_to_string(path).map_err(|e| CloudError::Fatal {
        op: CONFIGURE,
        code: "InvalidConfiguration".into(),
        message: format!("cannot read PORTCULLIS_ARM_CA_FILE {}: {e}", path.display()),
    })
}

fn parse_endpoint(endpoint: &str) -> Result<Url, CloudError> {
    let config = |message: String| CloudError::Fatal {
        op: CONFIGURE,
        code: "InvalidConfiguration".into(),
        message,
    };
    let url = Url::parse(endpoint.trim())
        .map_err(|e| config(format!("ARM endpoint '{endpoint}': {e}")))?;
    // azure_core's bearer policy refuses plain http at the first call; say so up front.
    if url.scheme() != "https" || url.host_str().is_none() {
        return Err(config(format!(
            "ARM endpoint '{endpoint}' must be an https URL"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(config(format!(
            "ARM endpoint '{endpoint}' must not carry a query"
        )));
    }
    Ok(url)
}

/// Picks an `azure_identity` credential from the environment (see
/// [`ArmClient::from_env`]); the credentials share the ARM client's HTTP client, so an
/// extra CA applies to a TLS-inspecting proxy in front of Entra ID as well.
fn identity_credential(
    http: &Arc<dyn HttpClient>,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn TokenCredential>, CloudError> {
    let config = |e: azure_core::Error| CloudError::Fatal {
        op: CONFIGURE,
        code: "CredentialUnavailable".into(),
        message: chain(&e),
    };
    let client_options = || ClientOptions {
        transport: Some(Transport::new(http.clone())),
        ..ClientOptions::default()
    };
    if var("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        let options = WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions {
                client_options: client_options(),
            },
            ..WorkloadIdentityCredentialOptions::default()
        };
        return Ok(WorkloadIdentityCredential::new(Some(options)).map_err(config)?);
    }
    if let Some(secret) = var("AZURE_CLIENT_SECRET") {
        let missing = |name: &str| CloudError::Fatal {
            op: CONFIGURE,
            code: "CredentialUnavailable".into(),
            message: format!("AZURE_CLIENT_SECRET is set but {name} is not"),
        };
        let tenant = var("AZURE_TENANT_ID").ok_or_else(|| missing("AZURE_TENANT_ID"))?;
        let client = var("AZURE_CLIENT_ID").ok_or_else(|| missing("AZURE_CLIENT_ID"))?;
        let options = ClientSecretCredentialOptions {
            client_options: client_options(),
        };
        return Ok(ClientSecretCredential::new(
            &tenant,
            client,
            Secret::new(secret),
            Some(options),
        )
        .map_err(config)?);
    }
    let managed = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
        user_assigned_id: var("AZURE_CLIENT_ID").map(UserAssignedId::ClientId),
        client_options: client_options(),
    }))
    .map_err(config)?;
    let mut sources: Vec<Arc<dyn TokenCredential>> = vec![managed];
    // Off Azure (a laptop, CI) managed identity fails at the first token; the Azure CLI
    // login is what a developer has there.
    if let Ok(tools) = DeveloperToolsCredential::new(None) {
        sources.push(tools);
    }
    Ok(Arc::new(FirstOf::new(sources)))
}

/// A static bearer token credential (for `PORTCULLIS_ARM_TOKEN` and tests).
#[derive(Clone, Debug)]
pub struct StaticToken(Secret);

impl StaticToken {
    /// A credential that always answers `token`.
    pub fn new(token: impl Into<String>) -> StaticToken {
        StaticToken(Secret::new(token.into()))
    }
}

#[async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        // A far expiry keeps the bearer policy from asking again and again; how long the
        // token really lives is up to whoever issued it.
        let expires_on =
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::days(1);
        Ok(AccessToken::new(self.0.clone(), expires_on))
    }
}

/// Tries credentials in order; the first that gives a token is used from then on.
#[derive(Debug)]
struct FirstOf {
    sources: Vec<Arc<dyn TokenCredential>>,
    chosen: AtomicUsize,
}

impl FirstOf {
    fn new(sources: Vec<Arc<dyn TokenCredential>>) -> FirstOf {
        FirstOf {
            sources,
            chosen: AtomicUsize::new(usize::MAX),
        }
    }
}

#[async_trait]
impl TokenCredential for FirstOf {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        if let Some(source) = self.sources.get(self.chosen.load(Ordering::Relaxed)) {
            return source.get_token(scopes, options).await;
        }
        let mut failures = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            match source.get_token(scopes, options.clone()).await {
                Ok(token) => {
                    self.chosen.store(i, Ordering::Relaxed);
                    return Ok(token);
                }
                Err(e) => failures.push(chain(&e)),
            }
        }
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            format!("no credential gave a token: {}", failures.join("; ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> Headers {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers(&[
                ("retry-after", "3"),
                ("retry-after-ms", "1500")
            ])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Wed, 21 Oct 2015 07:28:00 GMT"
            )])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[])), None);
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 1..=20 {
            let d = backoff(attempt);
            let step = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_CAP);
            assert!(d >= step / 2 && d <= step, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn endpoints_must_be_https() {
        assert!(parse_endpoint("http://127.0.0.1:1").is_err());
        assert!(parse_endpoint("https://management.azure.com").is_ok());
        assert!(parse_endpoint("https://x/?a=b").is_err());
    }

    #[test]
    fn urls_join_endpoint_and_id() {
        let client = ArmClient::new(
            "https://management.azure.com/",
            Arc::new(StaticToken::new("t")),
            None,
        )
        .unwrap();
        let url = client
            .url("Op", "/subscriptions/s/resourceGroups/rg", "2024-05-01")
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://management.azure.com/subscriptions/s/resourceGroups/rg?api-version=2024-05-01"
        );
        assert!(client.url("Op", "subscriptions/s", "v").is_err());
        assert!(
            client
                .poll_url("Op", "https://evil.example/operations/1")
                .is_err()
        );
    }

    #[test]
    fn operation_documents() {
        assert!(!operation_status("Op", "/x", br#"{"status":"InProgress"}"#).unwrap());
        assert!(operation_status("Op", "/x", br#"{"status":"Succeeded"}"#).unwrap());
        let e = operation_status(
            "Op",
            "/x",
            br#"{"status":"Failed","error":{"code":"SecurityRuleConflict","message":"m"}}"#,
        )
        .unwrap_err();
        assert!(matches!(e, CloudError::Fatal { ref code, .. } if code == "SecurityRuleConflict"));
        let e = operation_status("Op", "/x", br#"{"status":"Canceled"}"#).unwrap_err();
        assert_eq!(e.category(), "retryable");
    }
}
