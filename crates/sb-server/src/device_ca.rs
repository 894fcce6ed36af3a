//! The device CA: an ECDSA P-256 certificate authority generated into `<data_dir>/tls/` at
//! first start, which issues each device a client certificate for MQTT over TLS (mTLS).
//!
//! A certificate names the device (common name = its id); the server accepts only the one it
//! issued last to a device (by SHA-256), so issuing again replaces it, and revoking the device
//! refuses it. The CA key never leaves the data directory (mode 0600).

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sb_core::UnixMillis;
use std::path::Path;

pub struct DeviceCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
}

/// A device's new certificate and key (the key is shown once and kept nowhere).
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the certificate, as `sb_proto::cert_fingerprint` writes it.
    pub fingerprint: String,
    pub expires_at: UnixMillis,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Switchboard device CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn at(ms: UnixMillis) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(ms.0 / 1000).context("a date out of range")
}

impl DeviceCa {
    /// Loads the CA from `dir`, or makes one there.
    pub fn load_or_generate(dir: &Path, now: UnixMillis) -> anyhow::Result<DeviceCa> {
        let cert_path = dir.join("device-ca.pem");
        let key_path = dir.join("device-ca.key");
        if !(cert_path.exists() && key_path.exists()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = KeyPair::generate()?;
            let mut params = ca_params();
            params.not_before = at(UnixMillis(now.0 - 86_400_000))?;
            params.not_after = at(UnixMillis(now.0 + 100 * 365 * 86_400_000))?;
            let cert = params.self_signed(&key)?;
            crate::tls::write_private(&key_path, key.serialize_pem().as_bytes())?;
            std::fs::write(&cert_path, cert.pem())?;
        }
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("parsing {}", key_path.display()))?;
        let cert_pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .with_context(|| format!("parsing {}", cert_path.display()))?;
        // Signing needs only the CA's name and key: the same as in its certificate.
        Ok(DeviceCa {
            issuer: Issuer::new(ca_params(), key),
            cert_pem,
            cert_der,
        })
    }

    /// A client certificate for `device` (its id as the common name), valid `days` from now.
    pub fn issue(&self, device: &str, now: UnixMillis, days: u32) -> anyhow::Result<Issued> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let expires_at = UnixMillis(now.0 + i64::from(days) * 86_400_000);
        params.not_before = at(UnixMillis(now.0 - 3_600_000))?;
        params.not_after = at(expires_at)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            fingerprint: sb_proto::cert_fingerprint(cert.der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_survives_a_restart_and_issues_client_certificates_that_verify() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let now = UnixMillis(1_790_000_000_000);
        let ca = DeviceCa::load_or_generate(dir.path(), now).unwrap_or_else(|e| panic!("{e}"));
        let again = DeviceCa::load_or_generate(dir.path(), now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ca.cert_pem, again.cert_pem, "generated once, then reused");
        // Issued by the reloaded CA, verified against the certificate written at first start.
        let issued = again
            .issue("0190-device", now, 30)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.cert_der.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
        let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let when = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            (now.0 / 1000) as u64,
        ));
        verifier
            .verify_client_cert(&leaf, &[], when)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(issued.fingerprint, sb_proto::cert_fingerprint(&leaf));
        // Not after its days are up.
        let later = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            (now.0 / 1000 + 31 * 86_400) as u64,
        ));
        assert!(verifier.verify_client_cert(&leaf, &[], later).is_err());
    }
}
