//! Certificate trust: a verifier that accepts exactly one pinned leaf fingerprint, and the
//! probe that reads a server's fingerprint for the first-contact prompt.

use crate::{ClientError, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks the leaf certificate's fingerprint instead of a chain; records what it saw so a
/// mismatch can be reported precisely. With no `expected` it accepts anything (probe only).
#[derive(Debug)]
struct FingerprintVerifier {
    expected: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = sb_proto::cert_fingerprint(end_entity);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp.clone());
        match &self.expected {
            Some(expected) if *expected != fp => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    // The handshake signature is still checked: it proves the server holds the pinned key.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn fingerprint_config(
    expected: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
) -> Result<ClientConfig> {
    let provider = provider();
    let verifier = FingerprintVerifier {
        expected,
        seen,
        provider: provider.clone(),
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

pub(crate) fn pinned(fingerprint: &str, seen: Arc<Mutex<Option<String>>>) -> Result<ClientConfig> {
    fingerprint_config(Some(fingerprint.to_string()), seen)
}

pub(crate) fn with_ca(path: &Path) -> Result<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ClientError::Tls(format!("reading {}: {e}", path.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| ClientError::Tls(format!("parsing {}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Connects to `url`'s host and port, completes a TLS handshake accepting any certificate, and
/// returns the leaf's fingerprint. Sends no request and no credential.
pub async fn probe_fingerprint(url: &str) -> Result<String> {
    let key = crate::server_key(url)?;
    let u = crate::parse_url(url)?;
    let host = u.host_str().unwrap_or_default().to_string();
    let seen = Arc::new(Mutex::new(None));
    let config = fingerprint_config(None, seen.clone())?;
    let transport = |e: String| ClientError::Transport {
        url: url.to_string(),
        detail: e,
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&key),
    )
    .await
    .map_err(|_| transport("timed out".into()))?
    .map_err(|e| transport(e.to_string()))?;
    let name = ServerName::try_from(host).map_err(|e| ClientError::Tls(e.to_string()))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| transport(e.to_string()))?;
    let fp = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    fp.ok_or_else(|| ClientError::Tls("server sent no certificate".into()))
}
