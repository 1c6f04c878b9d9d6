//! One rustls client configuration for both the WebSocket and the token exchange, so
//! `--ca` means the same trust everywhere. There is deliberately no way to skip
//! certificate verification: a test or staging server gets its CA passed with `--ca`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Which roots to trust.
#[derive(Debug, Clone, Default)]
pub struct Trust<'a> {
    /// PEM file with one or more CA certificates.
    pub ca_file: Option<&'a Path>,
    /// Also trust the Mozilla roots shipped in `webpki-roots`.
    pub webpki_roots: bool,
}

pub fn client_config(trust: &Trust<'_>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    if trust.webpki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = trust.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--ca {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--ca {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("--ca {}: no CERTIFICATE block found", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("--ca {}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no trusted roots: pass --ca FILE or keep the webpki roots".into());
    }
    // An explicit provider, so no process-wide default has to be installed first.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        crate::testkit::test_pki(name)
    }

    #[test]
    fn loads_a_ca_file_alone_or_beside_the_webpki_roots() {
        let ca = fixture("ca.pem");
        assert!(client_config(&Trust { ca_file: Some(&ca), webpki_roots: false }).is_ok());
        assert!(client_config(&Trust { ca_file: Some(&ca), webpki_roots: true }).is_ok());
        assert!(client_config(&Trust { ca_file: None, webpki_roots: true }).is_ok());
    }

    #[test]
    fn refuses_missing_files_files_without_certificates_and_no_roots_at_all() {
        let missing = fixture("nope.pem");
        assert!(client_config(&Trust { ca_file: Some(&missing), webpki_roots: true })
            .unwrap_err()
            .contains("nope.pem"));
        let key_only = fixture("server-key.pem");
        let err = client_config(&Trust { ca_file: Some(&key_only), webpki_roots: false }).unwrap_err();
        assert!(err.contains("no CERTIFICATE"), "{err}");
        assert!(client_config(&Trust::default()).is_err());
    }
}
