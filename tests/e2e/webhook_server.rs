//! The admission webhook's server under hostile or slow clients: an oversized body is
//! refused unread, connections that stall in the TLS handshake, the headers or the body
//! are closed after the read timeout, and a rotated cert-manager certificate is served to
//! new connections (and its CA registered) without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::support::kube_helpers::{eventually, namespace, wait_for_webhook};
use crate::support::operator::Operator;
use crate::support::testbed::{ADMIN, Testbed};

const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// An operator serving admission with certificates from `dir` (cert-manager's layout).
struct Served {
    ns: String,
    port: u16,
    dir: PathBuf,
    ca_pem: String,
    cert_pem: String,
    _operator: Operator,
}

/// Writes a certificate into `dir` the way the kubelet updates a mounted Secret: the files
/// are symlinks through `..data`, which is swapped atomically to a new directory.
fn mount(dir: &Path, generation: u32, c: &portcullis::certs::ServingCert) {
    let data = dir.join(format!("..gen{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    for (file, pem) in [
        ("ca.crt", &c.ca_pem),
        ("tls.crt", &c.cert_pem),
        ("tls.key", &c.key_pem),
    ] {
        std::fs::write(data.join(file), pem).unwrap();
        let link = dir.join(file);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new("..data").join(file), &link).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    std::fs::remove_file(&tmp).ok();
    std::os::unix::fs::symlink(format!("..gen{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

async fn serve(prefix: &str) -> Served {
    serve_with(prefix, &[]).await
}

async fn serve_with(prefix: &str, extra: &[String]) -> Served {
    let tb = Testbed::shared();
    tb.install_crds().unwrap();
    let client = tb.client(ADMIN).await;
    let ns = namespace(&client, prefix).await;
    let dir = tb.dir.join(format!("webhook-certs-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = portcullis::certs::serving_cert("generation-1", &["127.0.0.1"]).unwrap();
    mount(&dir, 1, &cert);
    let args = vec![
        "--webhook-listen".to_string(),
        "127.0.0.1:0".to_string(),
        "--webhook-url".into(),
        "https://127.0.0.1:0".to_string(),
        "--webhook-config-name".into(),
        format!("portcullis-{ns}"),
        "--webhook-cert-dir".into(),
        dir.display().to_string(),
        "--webhook-cert-reload".into(),
        "1s".into(),
        "--webhook-read-timeout".into(),
        "2s".into(),
    ];
    let args = args.into_iter().chain(extra.iter().cloned()).collect();
    let operator = Operator::start_with(tb, &ns, &tb.moto_url, "2s", args, &[]);
    wait_for_webhook(&client, &ns).await;
    Served {
        ns,
        port: operator.webhook_port.expect("the webhook's port"),
        dir,
        ca_pem: cert.ca_pem,
        cert_pem: cert.cert_pem,
        _operator: operator,
    }
}

fn connector(cas: &[&str]) -> TlsConnector {
    connector_as(cas, None)
}

/// A connector trusting `cas`, presenting `client` (a certificate and key, PEM) if given.
fn connector_as(cas: &[&str], client: Option<(&str, &str)>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => config.with_no_client_auth(),
        Some((cert, key)) => config
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    TlsConnector::from(Arc::new(config))
}

async fn tls(port: u16, cas: &[&str]) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    connector(cas).connect(name, tcp).await
}

/// Reads until the server closes the connection (or fails it); how long that took and
/// what it sent.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Option<(Duration, String)> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((start.elapsed(), String::from_utf8_lossy(&got).into_owned()));
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

const HEAD: &str =
    "POST /mutate/accessrequests HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";

#[tokio::test]
async fn webhook_server_refuses_oversized_bodies_unread() {
    let s = serve("wh-body").await;
    let limit = portcullis::webhook::MAX_BODY;

    // Declared too large: refused on the headers alone, before a byte of body is sent.
    let mut c = tls(s.port, &[&s.ca_pem]).await.unwrap();
    c.write_all(format!("{HEAD}Content-Length: {}\r\n\r\n", 100 * limit).as_bytes())
        .await
        .unwrap();
    let (_, answer) = until_closed(&mut c, Duration::from_secs(20))
        .await
        .expect("an answer without the body");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Undeclared (chunked) and endless: refused once past the limit, while the client is
    // still sending.
    let c = tls(s.port, &[&s.ca_pem]).await.unwrap();
    let (mut r, mut w) = tokio::io::split(c);
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            w.write_all(format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n").as_bytes())
                .await?;
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..(64 * limit / chunk.len()) {
                w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                w.write_all(&chunk).await?;
                w.write_all(b"\r\n").await?;
                sent.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
            }
            Ok::<(), std::io::Error>(())
        })
    };
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(60), r.read_exact(&mut head))
        .await
        .expect("an answer while the body is still coming")
        .unwrap();
    let at = sent.load(std::sync::atomic::Ordering::SeqCst);
    writer.abort();
    assert_eq!(&head, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&head));
    eprintln!(
        "METRIC webhook: a {}-byte limit refused a 256 MiB chunked body after {at} bytes were sent (socket buffers included)",
        limit
    );
    // What was sent includes what sits in the TLS and socket buffers; the point is that
    // the answer came long before the end of the body.
    let total = 64 * limit;
    assert!(
        at < total / 4,
        "the answer came only after {at} of {total} bytes"
    );

    // Still serving.
    wait_for_webhook(&Testbed::shared().client(ADMIN).await, &s.ns).await;
}

#[tokio::test]
async fn webhook_server_closes_stalled_connections() {
    let s = serve("wh-slow").await;
    let deadline = READ_TIMEOUT + Duration::from_secs(10);
    // 1. A TCP connection that never starts its TLS handshake.
    let mut raw = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    // 2. One that stops halfway through its ClientHello.
    let mut half = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    // 3. A finished handshake, then headers that never end.
    let mut headers = tls(s.port, &[&s.ca_pem]).await.unwrap();
    headers
        .write_all(b"POST /mutate/accessrequests HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    // 4. Complete headers, then a body that never arrives in full.
    let mut body = tls(s.port, &[&s.ca_pem]).await.unwrap();
    body.write_all(format!("{HEAD}Content-Length: 100\r\n\r\n{{\"api").as_bytes())
        .await
        .unwrap();

    let (raw, half, headers, body) = tokio::join!(
        until_closed(&mut raw, deadline),
        until_closed(&mut half, deadline),
        until_closed(&mut headers, deadline),
        until_closed(&mut body, deadline),
    );
    let mut failures = Vec::new();
    for (what, closed) in [
        ("no handshake", raw),
        ("half a handshake", half),
        ("unfinished headers", headers),
        ("unfinished body", body),
    ] {
        match closed {
            Some((after, answer)) => eprintln!(
                "METRIC webhook: {what}: closed after {:.1}s (read timeout {READ_TIMEOUT:?}) {}",
                after.as_secs_f64(),
                answer.lines().next().unwrap_or_default()
            ),
            None => failures.push(format!("{what}: still open after {deadline:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    wait_for_webhook(&Testbed::shared().client(ADMIN).await, &s.ns).await;
}

#[tokio::test]
async fn webhook_server_serves_a_rotated_certificate() {
    let s = serve("wh-rotate").await;
    let served = |port: u16, cas: Vec<String>| async move {
        let refs: Vec<&str> = cas.iter().map(String::as_str).collect();
        let c = tls(port, &refs).await.ok()?;
        let der = c.get_ref().1.peer_certificates()?.first()?.to_vec();
        Some(der)
    };
    let der = |pem: &str| {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    assert_eq!(
        served(s.port, vec![s.ca_pem.clone()]).await,
        Some(der(&s.cert_pem))
    );

    // cert-manager renews: a new key and certificate, here from a new CA too.
    let new = portcullis::certs::serving_cert("generation-2", &["127.0.0.1"]).unwrap();
    mount(&s.dir, 2, &new);
    let rotated = Instant::now();
    let both = vec![s.ca_pem.clone(), new.ca_pem.clone()];
    eventually(
        "the renewed certificate to be served",
        Duration::from_secs(30),
        || {
            let both = both.clone();
            let want = der(&new.cert_pem);
            async move { (served(s.port, both).await? == want).then_some(()) }
        },
    )
    .await;
    eprintln!(
        "METRIC webhook: the renewed certificate was served {:.1}s after the files changed (re-read every 1s)",
        rotated.elapsed().as_secs_f64()
    );

    // The API server is told the new CA, and admission keeps working through it.
    let client = Testbed::shared().client(ADMIN).await;
    let config = format!("portcullis-{}", s.ns);
    let bundle_of = |m: Option<Vec<Option<k8s_openapi::ByteString>>>| -> Vec<String> {
        m.unwrap_or_default()
            .into_iter()
            .map(|b| String::from_utf8(b.unwrap_or_default().0).unwrap())
            .collect()
    };
    eventually(
        "the caBundle to be the new CA",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let (config, want) = (config.clone(), new.ca_pem.clone());
            async move {
                let m = Api::<MutatingWebhookConfiguration>::all(client.clone())
                    .get(&config)
                    .await
                    .ok()?;
                let v = Api::<ValidatingWebhookConfiguration>::all(client)
                    .get(&config)
                    .await
                    .ok()?;
                let bundles: Vec<String> = bundle_of(
                    m.webhooks
                        .map(|w| w.into_iter().map(|w| w.client_config.ca_bundle).collect()),
                )
                .into_iter()
                .chain(bundle_of(v.webhooks.map(|w| {
                    w.into_iter().map(|w| w.client_config.ca_bundle).collect()
                })))
                .collect();
                (!bundles.is_empty() && bundles.iter().all(|b| *b == want)).then_some(())
            }
        },
    )
    .await;
    wait_for_webhook(&client, &s.ns).await;
}

/// A hand-made AdmissionReview claiming that `admin` creates an AccessRequest in `ns`: what
/// someone who can reach the webhook's port would send to get a stamp signed.
fn forged_review(ns: &str) -> String {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "forged",
            "kind": {"group": "jit.portcullis.dev", "version": "v1alpha1", "kind": "AccessRequest"},
            "resource": {"group": "jit.portcullis.dev", "version": "v1alpha1", "resource": "accessrequests"},
            "name": "forged",
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": "admin", "groups": ["system:masters"]},
            "object": {
                "apiVersion": "jit.portcullis.dev/v1alpha1",
                "kind": "AccessRequest",
                "metadata": {"name": "forged", "namespace": ns},
                "spec": {
                    "policyRef": {"name": "jit"}, "target": "web", "justification": "forged",
                    "ports": [{"port": 22, "sourcePrefix": "203.0.113.7/32", "duration": "10m"}]
                }
            },
            "dryRun": false
        }
    })
    .to_string()
}

/// Posts `review` to the mutate endpoint over `connector`; the HTTP answer, or why none.
async fn post_review(port: u16, connector: TlsConnector, review: &str) -> Result<String, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut c = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // With TLS 1.3 the server judges the client's certificate after the client thinks
    // the handshake is done: a refusal shows up on the first read.
    c.write_all(format!("{HEAD}Content-Length: {}\r\n\r\n{review}", review.len()).as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut answer)).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(e)) if answer.is_empty() => Err(format!("read: {e}")),
        Ok(_) => Ok(String::from_utf8_lossy(&answer).into_owned()),
    }
}

#[tokio::test]
async fn webhook_server_answers_only_the_api_server() {
    // The test bed's API server presents a client certificate to webhooks (its admission
    // configuration); the operator accepts no other client.
    let tb = Testbed::shared();
    let client_ca = tb.webhook_client_ca().display().to_string();
    let s = serve_with("wh-mtls", &["--webhook-client-ca".to_string(), client_ca]).await;
    // `serve` waited for admission through the API server: it got through. Others do not.
    let review = forged_review(&s.ns);
    let anonymous = post_review(s.port, connector(&[&s.ca_pem]), &review).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was answered: {anonymous:?}"
    );
    let stranger = portcullis::certs::client_cert("someone-else").unwrap();
    let other = post_review(
        s.port,
        connector_as(&[&s.ca_pem], Some((&stranger.cert_pem, &stranger.key_pem))),
        &review,
    )
    .await;
    assert!(
        other.is_err(),
        "a client with a certificate from another CA was answered: {other:?}"
    );
    eprintln!("refused: no certificate ({anonymous:?}); another CA's ({other:?})");
    // The control: with the API server's own client certificate the same review is
    // answered, so what refused the others was the certificate alone.
    let kubeconfig = std::fs::read_to_string(tb.dir.join("webhook-client.kubeconfig")).unwrap();
    let field = |name: &str| -> String {
        use base64::Engine;
        let b64 = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap()
            .trim();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    };
    let (cert, key) = (field("client-certificate-data:"), field("client-key-data:"));
    let answered = post_review(
        s.port,
        connector_as(&[&s.ca_pem], Some((&cert, &key))),
        &review,
    )
    .await
    .expect("the API server's certificate is accepted");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    // Admission through the API server still works.
    wait_for_webhook(&tb.client(ADMIN).await, &s.ns).await;
}
