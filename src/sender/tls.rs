//! rustls client configuration: Mozilla's roots (webpki-roots) or a CA file, an optional client
//! certificate (APNs certificate auth), ALPN h2, and certificate verification that is only ever
//! turned off by an explicit `insecure` flag.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A client certificate chain and its private key (APNs certificate auth).
pub struct ClientIdentity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certs", &self.certs.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Trust only the CA certificates in this PEM file instead of the public roots.
    pub ca_file: Option<PathBuf>,
    /// Skip server certificate verification. Only for tests against self-signed fakes.
    pub insecure: bool,
    pub client_identity: Option<ClientIdentity>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("CA file {path} holds no certificate")]
    EmptyCaFile { path: PathBuf },
    #[error("CA file {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("client certificate rejected by rustls: {0}")]
    ClientCert(rustls::Error),
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn read_pem_certs(
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, rustls_pki_types::pem::Error> {
    CertificateDer::pem_file_iter(path)?.collect()
}

/// Builds the client config. ALPN offers h2 only: every endpoint we talk to is HTTP/2.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?;
    let builder = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        builder.with_root_certificates(roots(opts.ca_file.as_deref())?)
    };
    let mut config = match &opts.client_identity {
        Some(id) => builder
            .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
            .map_err(TlsError::ClientCert)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let Some(path) = ca_file else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let certs = read_pem_certs(path).map_err(|e| TlsError::CaFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::EmptyCaFile {
            path: path.to_path_buf(),
        });
    }
    let mut store = RootCertStore::empty();
    for cert in certs {
        store.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(store)
}

/// Accepts any server certificate (still checks the handshake signatures). `--insecure` only.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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
