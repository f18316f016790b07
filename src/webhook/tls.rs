//! The webhook's serving certificate: self-made (kept in a Secret) or cert-manager's.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

    /// A rustls server configuration.
    pub fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        Ok(Arc::new(config))
    }
}
