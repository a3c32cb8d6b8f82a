//! TLS for the Postgres listener, from a PEM certificate and key named in config.
//!
//! Loading happens at bind, before the banner: a missing or unreadable file, or a key that
//! does not match the certificate, stops start-up with the path in the message. There is no
//! fallback to plaintext.

use std::path::Path;
use std::sync::Arc;

use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSettings;
use crate::error::{C360Error, Result};

pub fn acceptor(settings: &TlsSettings) -> Result<TlsAcceptor> {
    let failed = |path: &Path, message: String| C360Error::Tls {
        path: path.to_path_buf(),
        message,
    };
    let cert_pem =
        std::fs::read(&settings.cert).map_err(|e| failed(&settings.cert, e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| failed(&settings.cert, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(failed(
            &settings.cert,
            "no certificate in the file".to_string(),
        ));
    }
    let key_pem = std::fs::read(&settings.key).map_err(|e| failed(&settings.key, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| failed(&settings.key, format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(&settings.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| failed(&settings.key, format!("does not fit the certificate: {e}")))?;
    // PostgreSQL 17 clients may open with TLS directly and then require this ALPN name.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
