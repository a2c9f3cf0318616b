//! TLS towards PostgreSQL and MySQL (rustls, ring), as libpq's `sslmode`:
//! `prefer` and `require` encrypt without verifying the certificate,
//! `verify-full` verifies it against `tls_ca_file` and the URL's host name.
//! With `prefer` a server without TLS is still reached, in plain text, and
//! the log says so once per catalog and process.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use weft_common::config::{DatabaseConfig, TlsMode};

use crate::error::SourceError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Encrypts without checking who answers (`prefer`, `require`): what libpq
/// does in those modes. Signatures are still checked, so the session keys
/// belong to the certificate presented.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls client configuration of a catalog; `None` for `disable`.
pub fn client_config(
    catalog: &str,
    config: &DatabaseConfig,
) -> Result<Option<ClientConfig>, SourceError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::TlsCa {
            catalog: catalog.to_string(),
            reason: e.to_string(),
        })?;
    let config = match config.tls {
        TlsMode::Disable => return Ok(None),
        TlsMode::Prefer | TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
            .with_no_client_auth(),
        TlsMode::VerifyFull => {
            let path = config
                .tls_ca_file
                .as_deref()
                .ok_or_else(|| SourceError::TlsCa {
                    catalog: catalog.to_string(),
                    reason: "verify-full needs tls_ca_file".to_string(),
                })?;
            let roots = weft_common::tls::roots(path).map_err(|reason| SourceError::TlsCa {
                catalog: catalog.to_string(),
                reason,
            })?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(config))
}
