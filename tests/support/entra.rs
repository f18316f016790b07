//! A Microsoft Entra ID token endpoint for Azure Workload Identity, beside the ARM
//! emulator: `POST /{tenant}/oauth2/v2.0/token` with a client assertion (the pod's
//! projected ServiceAccount token), answered with the ARM emulator's bearer token when
//! the assertion passes what a federated identity credential checks: issued by the
//! cluster (the API server's TokenReview says it is valid), for audience
//! `api://AzureADTokenExchange`, for the federated subject
//! `system:serviceaccount:<namespace>:<name>`, and presented by the identity's client id
//! for the ARM scope. Served over TLS (azure_identity refuses a plain-http authority).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The audience Azure Workload Identity's projected token carries.
pub const AUDIENCE: &str = "api://AzureADTokenExchange";

/// What the federated identity credential accepts, and what it hands out.
#[derive(Clone, Debug)]
pub struct Federation {
    /// The tenant in the token URL.
    pub tenant_id: String,
    /// The identity's client id.
    pub client_id: String,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub subject: String,
    /// The scope the client must ask for (`<ARM endpoint>/.default`).
    pub scope: String,
    /// The access token to answer with (the ARM emulator's).
    pub access_token: String,
}

/// A running token endpoint.
#[derive(Clone)]
pub struct TokenEndpoint {
    /// `https://127.0.0.1:PORT`: `AZURE_AUTHORITY_HOST`.
    pub url: String,
    /// The CA clients must trust.
    pub ca_pem: String,
    /// Every exchange answered: `Ok(subject)` or `Err(why refused)`.
    pub exchanges: Arc<Mutex<Vec<Result<String, String>>>>,
    federation: Federation,
    client: kube::Client,
}

impl TokenEndpoint {
    /// Starts the endpoint; `client` (an admin's) reviews the assertions it receives.
    pub async fn start(client: kube::Client, federation: Federation) -> TokenEndpoint {
        let cert = portcullis::certs::serving_cert("entra-emulator", &["127.0.0.1", "localhost"])
            .expect("TLS material");
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let endpoint = TokenEndpoint {
            url,
            ca_pem: cert.ca_pem,
            exchanges: Arc::default(),
            federation,
            client,
        };
        let served = endpoint.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, served) = (acceptor.clone(), served.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |r| {
                        let served = served.clone();
                        async move { Ok::<_, Infallible>(served.answer(r).await) }
                    });
                    http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await
                        .ok();
                });
            }
        });
        endpoint
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let form = parse_form(&String::from_utf8_lossy(&body));
        let verdict = self.exchange(&path, &form).await;
        self.exchanges.lock().unwrap().push(verdict.clone());
        let (status, body) = match verdict {
            Ok(_) => (
                200,
                json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                       "access_token": self.federation.access_token}),
            ),
            Err(why) => (
                400,
                json!({"error": "invalid_client", "error_description": format!("AADSTS700213: {why}"),
                       "error_codes": [700213]}),
            ),
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json; charset=utf-8")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    /// The checks of a federated identity credential; the subject on success.
    pub async fn exchange(
        &self,
        path: &str,
        form: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, String> {
        let f = &self.federation;
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
        if path != format!("/{}/oauth2/v2.0/token", f.tenant_id) {
            return Err(format!("no tenant at {path}"));
        }
        if field("grant_type") != "client_credentials"
            || field("client_assertion_type")
                != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        {
            return Err("not a client-assertion grant".into());
        }
        if field("client_id") != f.client_id {
            return Err(format!("unknown client id {}", field("client_id")));
        }
        if field("scope") != f.scope {
            return Err(format!("scope {} is not {}", field("scope"), f.scope));
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: field("client_assertion").to_string(),
                audiences: Some(vec![AUDIENCE.into()]),
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview: {e}"))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(format!(
                "the assertion is not a valid token for {AUDIENCE}: {:?}",
                status.error
            ));
        }
        let subject = status.user.and_then(|u| u.username).unwrap_or_default();
        if subject != f.subject {
            return Err(format!("no federated credential for subject {subject}"));
        }
        Ok(subject)
    }
}

/// Decodes an `application/x-www-form-urlencoded` body.
fn parse_form(body: &str) -> std::collections::BTreeMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}
