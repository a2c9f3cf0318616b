//! TLS for Weft's gRPC endpoints: the coordinator's Flight SQL endpoint
//! (server certificate; clients authenticate with passwords or JWTs) and
//! mutual TLS between nodes (each presents a certificate issued by the
//! cluster's CA and verifies the other's).
//!
//! Certificates and keys are PEM files (`--tls-cert-file`, `--tls-key-file`,
//! `--tls-ca-file`); a server re-reads its certificate and key when either
//! file changes, so a rotated certificate is served to the next connection
//! without a restart. `weft certs` makes a development CA and node
//! certificates. rustls with the ring provider throughout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::WatchedFile;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS flags shared by `weft-coordinator` and `weft-worker`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Certificate chain (PEM) this node serves with; with --tls-key-file it
    /// turns TLS on. Re-read when it changes.
    #[arg(
        long,
        env = "WEFT_TLS_CERT_FILE",
        value_name = "FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert-file.
    #[arg(
        long,
        env = "WEFT_TLS_KEY_FILE",
        value_name = "FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): nodes present their certificate
    /// to each other and accept only peers it issued (mutual TLS).
    #[arg(
        long,
        env = "WEFT_TLS_CA_FILE",
        value_name = "FILE",
        requires = "tls_cert_file"
    )]
    pub tls_ca_file: Option<PathBuf>,
}

impl TlsArgs {
    pub fn settings(&self) -> Option<TlsSettings> {
        Some(TlsSettings {
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
            ca: self.tls_ca_file.clone(),
        })
    }
}

/// A node's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster CA: mutual TLS between nodes when set.
    pub ca: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let certs = read_certs(cert)?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "the key in {} does not belong to the certificate in {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(certified)
}

/// The CA certificates of `path` as a root store.
pub fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in read_certs(path)? {
        store
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(store)
}

/// Serves the certificate and key of [`TlsSettings`], read again when
/// either file changes.
#[derive(Debug)]
struct ReloadingCert(WatchedFile<CertifiedKey>);

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

/// A server configuration for `settings`; with `mutual`, clients must
/// present a certificate issued by the CA (`settings.ca`, required).
pub fn server_config(settings: &TlsSettings, mutual: bool) -> Result<Arc<ServerConfig>, String> {
    let key = settings.key.clone();
    let cert = WatchedFile::open_with(
        &settings.cert,
        std::slice::from_ref(&settings.key),
        move |c| certified_key(c, &key),
    )?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (&settings.ca, mutual) {
        (Some(ca), true) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => return Err("mutual TLS needs --tls-ca-file".to_string()),
        (_, false) => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(ReloadingCert(cert)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Fails unless this node's certificate is issued by its CA and fit for
/// both ends of a node-to-node connection, naming the files and the reason.
pub fn check_own_certificate(settings: &TlsSettings) -> Result<(), String> {
    let Some(ca) = &settings.ca else {
        return Ok(());
    };
    let certs = read_certs(&settings.cert)?;
    certified_key(&settings.cert, &settings.key)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    verifier
        .verify_client_cert(&certs[0], &certs[1..], UnixTime::now())
        .map(|_| ())
        .map_err(|e| {
            format!(
                "the certificate in {} is not accepted by the CA in {}: {e} (nodes of one cluster \
                 need certificates of the same CA, with client and server usage, e.g. from `weft certs`)",
                settings.cert.display(),
                ca.display()
            )
        })
}

/// TLS connections accepted on `listener`, for tonic's
/// `serve_with_incoming`. A failed handshake is logged (peer and reason) and
/// dropped; it never stops the server.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    what: &'static str,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("{what}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, "{what}: TLS handshake failed: {e}")
                    }
                    Err(_) => tracing::warn!(%peer, "{what}: TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The client side of node-to-node connections: verify peers against the
/// CA and present this node's certificate.
pub fn client_config(settings: &TlsSettings) -> Result<tonic::transport::ClientTlsConfig, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let mut config = tonic::transport::ClientTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(&settings.cert)?, read(&settings.key)?),
    );
    if let Some(ca) = &settings.ca {
        config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(config)
}

/// Files `weft certs` writes.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The CA's parameters. Its name carries a fingerprint of its key, so two
/// development CAs never share a name (a verifier then tells "unknown
/// issuer" from "bad signature"), and the same key always gives the same name.
fn ca_params(key: &rcgen::KeyPair) -> Result<rcgen::CertificateParams, String> {
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key_raw());
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!(
            "Weft development CA {}",
            crate::auth::hex(&digest.as_ref()[..6])
        ),
    );
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `weft certs`: makes `dir/ca.crt` + `dir/ca.key` (a development CA) if
/// they are not there, then `dir/NAME.crt` + `dir/NAME.key`: a certificate
/// of that CA for `hosts` (DNS names or IP addresses), usable as server and
/// as client (node-to-node mutual TLS). Keys are written with mode 0600.
pub fn issue(dir: &Path, name: &str, hosts: &[String]) -> Result<IssuedFiles, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let ca_key_pair = if ca_key.exists() && ca_cert.exists() {
        let pem = std::fs::read_to_string(&ca_key)
            .map_err(|e| format!("cannot read {}: {e}", ca_key.display()))?;
        rcgen::KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", ca_key.display()))?
    } else {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = ca_params(&key)?
            .self_signed(&key)
            .map_err(|e| e.to_string())?;
        std::fs::write(&ca_cert, cert.pem())
            .map_err(|e| format!("cannot write {}: {e}", ca_cert.display()))?;
        write_private(&ca_key, &key.serialize_pem())?;
        key
    };
    let issuer = rcgen::Issuer::new(ca_params(&ca_key_pair)?, ca_key_pair);
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())
        .map_err(|e| format!("not a usable host name in {hosts:?}: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok(IssuedFiles {
        ca_cert,
        cert: cert_path,
        key: key_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(files: &IssuedFiles) -> TlsSettings {
        TlsSettings {
            cert: files.cert.clone(),
            key: files.key.clone(),
            ca: Some(files.ca_cert.clone()),
        }
    }

    #[test]
    fn issued_certificates_pass_their_own_ca_and_fail_another() {
        let dir = tempfile::tempdir().unwrap();
        let node = issue(
            dir.path(),
            "node",
            &["localhost".into(), "127.0.0.1".into()],
        )
        .unwrap();
        check_own_certificate(&settings(&node)).unwrap();
        assert!(server_config(&settings(&node), true).is_ok());
        // A second node of the same CA.
        let other = issue(dir.path(), "other", &["127.0.0.2".into()]).unwrap();
        check_own_certificate(&settings(&other)).unwrap();
        // A node of another CA, with this cluster's CA file.
        let foreign_dir = tempfile::tempdir().unwrap();
        let foreign = issue(foreign_dir.path(), "node", &["127.0.0.3".into()]).unwrap();
        let mixed = TlsSettings {
            ca: Some(node.ca_cert.clone()),
            ..settings(&foreign)
        };
        let err = check_own_certificate(&mixed).unwrap_err();
        assert!(
            err.contains("not accepted by the CA") && err.contains("UnknownIssuer"),
            "{err}"
        );
        // A key that is not the certificate's.
        let wrong_key = TlsSettings {
            key: foreign.key.clone(),
            ..settings(&node)
        };
        let err = check_own_certificate(&wrong_key).unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&node.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn missing_or_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let s = TlsSettings {
            cert: empty.clone(),
            key: empty.clone(),
            ca: None,
        };
        let err = server_config(&s, false).unwrap_err();
        assert!(err.contains("empty.pem"), "{err}");
        assert!(server_config(&s, true).is_err());
    }
}
