//! The HTTPS listener: rustls (aws-lc-rs) in front of a hyper HTTP/1.1 server on a
//! free loopback port, running until the test's runtime ends.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming as Body};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use portcullis::certs::ServingCert;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::dispatch::{self, Incoming};
use super::state::Shared;

/// A TLS acceptor serving `cert`.
pub(crate) fn acceptor(cert: &ServingCert) -> TlsAcceptor {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("emulator certificate parses");
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("emulator key parses");
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key match");
    // The server speaks HTTP/1.1 only; say so to clients that offer h2 as well.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Serves `shared` on `listener` from a background task.
pub(crate) fn spawn(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, shared) = (acceptor.clone(), shared.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request| respond(shared.clone(), request));
                http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                    .ok();
            });
        }
    });
}

async fn respond(
    shared: Arc<Shared>,
    request: Request<Body>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let incoming = Incoming {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    };
    let response = dispatch::handle(&shared, &incoming).into_response();
    let write = matches!(
        incoming.method.as_str(),
        "PUT" | "PATCH" | "DELETE" | "POST"
    );
    if write && response.status().is_success() {
        let hook = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let trip = &mut state.trip;
            trip.done += 1;
            match trip.hook.is_some() && trip.done == trip.at {
                true => {
                    trip.tripped = Some(format!("{} {}", incoming.method, incoming.path));
                    trip.hook.take()
                }
                false => None,
            }
        };
        if let Some(hook) = hook {
            hook();
        }
    }
    Ok(response)
}
