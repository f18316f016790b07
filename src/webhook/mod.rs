//! The admission webhook: stamps who asked, checks they may ask, and validates requests
//! and policies with messages that name the field.
//!
//! `portcullis run` serves it over TLS and registers its own webhook configurations,
//! keeping their `caBundle` current. Inside a cluster they point at the operator's
//! Service; outside (development, the local test bed) at `--webhook-url`.

pub mod admission;
pub mod register;
pub mod secrets;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

pub use admission::Admission;

/// Paths the webhook serves.
pub const MUTATE_REQUESTS: &str = "/mutate/accessrequests";
/// Validation of AccessRequests.
pub const VALIDATE_REQUESTS: &str = "/validate/accessrequests";
/// Validation of JitPolicies.
pub const VALIDATE_POLICIES: &str = "/validate/jitpolicies";

/// Serves admission on `addr` with `tls` until the process ends. Returns once listening.
pub async fn serve(
    addr: SocketAddr,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    admission: Arc<Admission>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "admission webhook listening");
    let acceptor = TlsAcceptor::from(tls);
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let (acceptor, admission) = (acceptor.clone(), admission.clone());
            tokio::spawn(async move {
                let stream = match acceptor.accept(stream).await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let svc = service_fn(move |req| handle(req, admission.clone()));
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    warn!(%peer, error = %e, "webhook connection failed");
                }
            });
        }
    }))
}

async fn handle(
    req: Request<Incoming>,
    admission: Arc<Admission>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                format!("cannot read body: {e}").into_bytes(),
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

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
