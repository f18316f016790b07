//! The admission webhook: stamps who asked, checks they may ask, and validates requests
//! and policies with messages that name the field.
//!
//! `portcullis run` serves it over TLS and keeps the webhook configurations' `caBundle`
//! current: it registers them itself (`--webhook-registration create`: development, the
//! local test bed), or only patches the `caBundle` of those the Helm chart owns
//! (`patch-ca`), or leaves them to cert-manager's CA injector (`none`). Inside a cluster
//! they point at the operator's Service; outside at `--webhook-url`.

pub mod admission;
pub mod namespace;
pub mod register;
pub mod secrets;
pub mod tls;
pub mod upkeep;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_LENGTH;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

pub use admission::Admission;

/// Paths the webhook serves.
pub const MUTATE_REQUESTS: &str = "/mutate/accessrequests";
/// Validation of AccessRequests.
pub const VALIDATE_REQUESTS: &str = "/validate/accessrequests";
/// Validation of JitPolicies.
pub const VALIDATE_POLICIES: &str = "/validate/jitpolicies";

/// The largest AdmissionReview accepted. A review holds the object and, on update, its
/// old version; etcd stores objects of at most 1.5 MiB by default, and our own objects
/// are far smaller (bounded specs, at most 256 KiB of annotations).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// What keeps a slow or hostile client from holding the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The TLS handshake, the request headers and the request body must each arrive
    /// within this (the API server itself gives a webhook at most `timeoutSeconds`).
    pub read_timeout: Duration,
    /// The largest request body accepted; larger ones are refused unread.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            read_timeout: Duration::from_secs(10),
            max_body: MAX_BODY,
        }
    }
}

/// Serves admission on `addr` with `tls` until the process ends. Returns once listening,
/// with the address bound (its port is the system's pick when `addr` asks for port 0).
pub async fn serve(
    addr: SocketAddr,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    admission: Arc<Admission>,
    limits: Limits,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "admission webhook listening");
    let acceptor = TlsAcceptor::from(tls);
    let server =
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, admission) = (acceptor.clone(), admission.clone());
                tokio::spawn(async move {
                    let stream =
                        match tokio::time::timeout(limits.read_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                warn!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                warn!(%peer, "TLS handshake not finished in time: closed");
                                return;
                            }
                        };
                    let svc = service_fn(move |req| handle(req, admission.clone(), limits));
                    // One request per connection: an idle keep-alive connection would either
                    // be held open by anyone for free, or be closed by us just as the API
                    // server reuses it (a POST it cannot retry). A handshake per admission
                    // call costs a millisecond or two.
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.read_timeout)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), svc);
                    // The handshake, headers and body are each bounded; this bounds the whole,
                    // answer included.
                    match tokio::time::timeout(limits.read_timeout * 4, conn).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!(%peer, error = %e, "webhook connection closed"),
                        Err(_) => warn!(%peer, "webhook connection took too long: closed"),
                    }
                });
            }
        });
    Ok((server, bound))
}

async fn handle(
    req: Request<Incoming>,
    admission: Arc<Admission>,
    limits: Limits,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return Ok(too_large(limits));
    }
    let body = Limited::new(req.into_body(), limits.max_body);
    let body = match tokio::time::timeout(limits.read_timeout, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Ok(too_large(limits));
        }
        Ok(Err(e)) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                format!("cannot read body: {e}").into_bytes(),
            ));
        }
        Err(_) => {
            return Ok(reply(
                StatusCode::REQUEST_TIMEOUT,
                b"the request body did not arrive in time".to_vec(),
            ));
        }
    };
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                format!("not an AdmissionReview: {e}").into_bytes(),
            ));
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                format!("no request in the review: {e}").into_bytes(),
            ));
        }
    };
    let response: AdmissionResponse = match path.as_str() {
        MUTATE_REQUESTS => admission.stamp(&request),
        VALIDATE_REQUESTS => admission.validate_request(&request).await,
        VALIDATE_POLICIES => admission.validate_policy(&request),
        _ => return Ok(reply(StatusCode::NOT_FOUND, b"unknown path".to_vec())),
    };
    if !response.allowed {
        info!(path, name = %request.name, message = %response.result.message, "admission denied");
    }
    let out = serde_json::to_vec(&response.into_review()).unwrap_or_default();
    Ok(reply(StatusCode::OK, out))
}

fn too_large(limits: Limits) -> Response<Full<Bytes>> {
    reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {} bytes", limits.max_body).into_bytes(),
    )
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
