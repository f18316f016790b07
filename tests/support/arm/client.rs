//! A small HTTPS client for tests that talk to the emulator directly: it trusts the
//! emulator's CA, sends its bearer token and returns status, headers and JSON.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{HeaderMap, Method, Request};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::emulator::ArmEmulator;

/// The Microsoft.Network API version of the reference examples.
pub const NETWORK_API_VERSION: &str = "2024-05-01";

/// An answer: status, headers and the body parsed as JSON (`Null` when empty, a JSON
/// string when the body is not JSON).
#[derive(Clone, Debug)]
pub struct ArmResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Value,
}

impl ArmResponse {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `error.code` of an error body.
    pub fn error_code(&self) -> Option<&str> {
        self.body.pointer("/error/code").and_then(Value::as_str)
    }

    /// `error.message` of an error body, or "".
    pub fn error_message(&self) -> &str {
        self.body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// An HTTPS client for one emulator.
#[derive(Clone)]
pub struct ArmClient {
    base: String,
    token: Option<String>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ArmClient {
    /// A client that trusts `emulator`'s CA and sends its token.
    pub fn new(emulator: &ArmEmulator) -> ArmClient {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(emulator.ca_pem.as_bytes()) {
            roots
                .add(cert.expect("CA PEM parses"))
                .expect("CA certificate is usable");
        }
        let config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        ArmClient {
            base: emulator.url.clone(),
            token: Some(emulator.token.clone()),
            http: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    /// The same client sending no `Authorization` header.
    pub fn without_token(mut self) -> ArmClient {
        self.token = None;
        self
    }

    /// The same client sending `token` instead.
    pub fn with_token(mut self, token: &str) -> ArmClient {
        self.token = Some(token.to_string());
        self
    }

    /// The URL for `path`: absolute URLs are kept, paths are put under the emulator,
    /// and a path without a query gets `api-version` [`NETWORK_API_VERSION`].
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("https://") {
            return path.to_string();
        }
        if path.contains('?') {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?api-version={NETWORK_API_VERSION}", self.base)
        }
    }

    /// GET `path` (see [`ArmClient::url`]).
    pub async fn get(&self, path: &str) -> ArmResponse {
        self.send(Method::GET, &self.url(path), None, &[]).await
    }

    /// PUT `body` to `path` (see [`ArmClient::url`]).
    pub async fn put(&self, path: &str, body: &Value) -> ArmResponse {
        self.send(Method::PUT, &self.url(path), Some(body), &[])
            .await
    }

    /// DELETE `path` (see [`ArmClient::url`]).
    pub async fn delete(&self, path: &str) -> ArmResponse {
        self.send(Method::DELETE, &self.url(path), None, &[]).await
    }

    /// Sends a request to `url` as given, with extra `headers`.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> ArmResponse {
        let mut request = Request::builder().method(method).uri(url);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let payload = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(body).expect("JSON values serialize"))
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .expect("request is well formed");
        let response = self
            .http
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
        let (parts, body) = response.into_parts();
        let bytes = body
            .collect()
            .await
            .expect("response body arrives")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        ArmResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }
}
