//! The webhook's serving certificate: self-made (kept in a Secret) or cert-manager's,
//! which is re-read while the server runs so that a renewed certificate is served to new
//! connections without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// PEM material for serving.
#[derive(Clone, Debug)]
pub struct Material {
    /// The CA clients must trust (the webhook configurations' `caBundle`).
    pub ca_pem: String,
    /// The serving certificate chain.
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

impl Material {
    /// From a Secret's data (`ca.crt`, `tls.crt`, `tls.key`).
    pub fn from_secret(data: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<Self> {
        let get = |k: &str| -> anyhow::Result<String> {
            Ok(String::from_utf8(
                data.get(k)
                    .cloned()
                    .with_context(|| format!("secret has no {k}"))?,
            )?)
        };
        Ok(Material {
            ca_pem: get("ca.crt")?,
            cert_pem: get("tls.crt")?,
            key_pem: get("tls.key")?,
        })
    }

    /// A Secret's data for this material.
    pub fn to_secret(&self) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            ("ca.crt".to_string(), self.ca_pem.clone().into_bytes()),
            ("tls.crt".to_string(), self.cert_pem.clone().into_bytes()),
            ("tls.key".to_string(), self.key_pem.clone().into_bytes()),
        ])
    }

    /// From a directory as cert-manager mounts it (`ca.crt`, `tls.crt`, `tls.key`).
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .with_context(|| format!("cannot read {}", dir.join(f).display()))
        };
        Ok(Material {
            ca_pem: read("ca.crt")?,
            cert_pem: read("tls.crt")?,
            key_pem: read("tls.key")?,
        })
    }

    /// A new CA and a serving certificate for `names`.
    pub fn generate(names: &[&str]) -> anyhow::Result<Self> {
        let c = crate::certs::serving_cert("portcullis-webhook", names)?;
        Ok(Material {
            ca_pem: c.ca_pem,
            cert_pem: c.cert_pem,
            key_pem: c.key_pem,
        })
    }

    /// A rustls server configuration that always serves this material.
    pub fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        Ok(Serving::fixed(self)?.server_config())
    }

    /// The serving certificate and key, checked to belong together.
    fn certified_key(&self) -> anyhow::Result<Arc<CertifiedKey>> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .context("tls.crt is not PEM")?;
        anyhow::ensure!(!certs.is_empty(), "tls.crt holds no certificate");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .context("tls.key is not a PEM private key")?;
        let key = CertifiedKey::from_der(certs, key, &provider())
            .context("tls.key does not belong to tls.crt")?;
        Ok(Arc::new(key))
    }
}

fn provider() -> CryptoProvider {
    tokio_rustls::rustls::crypto::aws_lc_rs::default_provider()
}

/// The certificate the webhook serves now; it can be replaced while the server runs, and
/// each new TLS handshake picks up the current one.
#[derive(Debug)]
pub struct Serving {
    current: RwLock<Arc<CertifiedKey>>,
    ca: watch::Sender<String>,
}

impl Serving {
    /// Serves `material` until replaced.
    pub fn fixed(material: &Material) -> anyhow::Result<Arc<Serving>> {
        let (ca, _) = watch::channel(material.ca_pem.clone());
        Ok(Arc::new(Serving {
            current: RwLock::new(material.certified_key()?),
            ca,
        }))
    }

    /// Serves the certificate in `dir` (as cert-manager mounts it) and re-reads the files
    /// every `interval`, switching to a new certificate once its files are complete and
    /// consistent. Polling, rather than file notifications, because the kubelet replaces a
    /// mounted Secret by swapping a symlink, which notifications on the files miss.
    pub fn from_dir(dir: PathBuf, interval: Duration) -> anyhow::Result<Arc<Serving>> {
        let mut material = Material::from_dir(&dir)?;
        let serving = Self::fixed(&material)?;
        let weak = Arc::downgrade(&serving);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(serving) = weak.upgrade() else {
                    return;
                };
                match Material::from_dir(&dir) {
                    Ok(new)
                        if new.cert_pem != material.cert_pem
                            || new.key_pem != material.key_pem
                            || new.ca_pem != material.ca_pem =>
                    {
                        match serving.replace(&new) {
                            Ok(()) => {
                                info!(dir = %dir.display(), "serving the renewed webhook certificate");
                                material = new;
                            }
                            // Half-written files (a rotation in progress) or a broken pair:
                            // keep serving the last good one and look again.
                            Err(e) => {
                                warn!(dir = %dir.display(), error = %e, "cannot use the webhook certificate files yet")
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(dir = %dir.display(), error = %e, "cannot re-read the webhook certificate")
                    }
                }
            }
        });
        Ok(serving)
    }

    /// Serves `material` from now on.
    pub fn replace(&self, material: &Material) -> anyhow::Result<()> {
        let key = material.certified_key()?;
        *self.current.write().expect("the lock is never poisoned") = key;
        // Renewing the certificate alone leaves the CA, and the registration, as they are.
        self.ca.send_if_modified(|ca| {
            let changed = *ca != material.ca_pem;
            if changed {
                ca.clone_from(&material.ca_pem);
            }
            changed
        });
        Ok(())
    }

    /// The CA that clients must trust now, and its changes.
    pub fn ca(&self) -> watch::Receiver<String> {
        self.ca.subscribe()
    }

    /// A rustls server configuration that serves the current certificate to any client.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        self.server_config_for_clients(None)
            .expect("without client authentication nothing can fail")
    }

    /// A rustls server configuration that serves the current certificate and, with
    /// `client_ca_pem`, completes a handshake only with clients whose certificate that CA
    /// signed (the API server, given one through its admission configuration).
    pub fn server_config_for_clients(
        self: &Arc<Self>,
        client_ca_pem: Option<&str>,
    ) -> anyhow::Result<Arc<ServerConfig>> {
        let provider = Arc::new(provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(cert.context("the client CA is not PEM")?)?;
                }
                anyhow::ensure!(!roots.is_empty(), "the client CA file holds no certificate");
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        Ok(Arc::new(builder.with_cert_resolver(self.clone())))
    }
}

impl ResolvesServerCert for Serving {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .expect("the lock is never poisoned")
                .clone(),
        )
    }
}
