//! A local stand-in for a "what is my IP" service: answers every GET with one address,
//! as the public ones do, and counts the calls.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The server; it runs until the test's runtime ends.
pub struct IpEcho {
    /// The URL to give `--ip-echo-url`.
    pub url: String,
    calls: Arc<AtomicU64>,
}

impl IpEcho {
    /// Starts a server on a free loopback port that answers `address` and a newline.
    pub async fn start(address: &str) -> IpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let calls = Arc::new(AtomicU64::new(0));
        let body = format!("{address}\n");
        let counter = calls.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (body, counter) = (body.clone(), counter.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let resp = Response::builder()
                            .status(StatusCode::OK)
                            .header("content-type", "text/plain")
                            .body(Full::new(Bytes::from(body.clone())))
                            .unwrap();
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                        .ok();
                });
            }
        });
        IpEcho { url, calls }
    }

    /// How many requests it answered.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}
