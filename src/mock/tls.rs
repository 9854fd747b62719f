//! TLS for the fake servers: a throw-away CA and server certificate made at start (rcgen),
//! or the operator's own files; optional client-certificate checking (mutual TLS).

use super::MockError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::PathBuf;
use std::sync::Arc;

/// Where the server certificate comes from.
#[derive(Debug, Clone, Default)]
pub enum ServerCert {
    /// A fresh CA and a leaf for localhost, 127.0.0.1, ::1 and Apple's / Google's host names.
    #[default]
    Generate,
    /// PEM files: certificate chain and private key.
    Files { cert: PathBuf, key: PathBuf },
}

/// Names the generated certificate is valid for: loopback, and the real hosts so that a
/// client pointed at the fake by DNS or `--resolve` also verifies.
const SERVER_NAMES: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "api.push.apple.com",
    "api.sandbox.push.apple.com",
    "fcm.googleapis.com",
    "oauth2.googleapis.com",
];

/// A server certificate ready for rustls, and the PEM a client should trust.
pub(crate) struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The CA (generated) or the chain's last certificate (files), PEM.
    pub ca_pem: String,
}

pub(crate) fn identity(source: &ServerCert) -> Result<Identity, MockError> {
    match source {
        ServerCert::Generate => generate(),
        ServerCert::Files { cert, key } => {
            let read = |p: &PathBuf| {
                std::fs::read(p)
                    .map_err(|e| MockError::Tls(format!("cannot read {}: {e}", p.display())))
            };
            let cert_pem = read(cert)?;
            let chain = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| MockError::Tls(format!("{}: {e}", cert.display())))?;
            let Some(last) = chain.last() else {
                return Err(MockError::Tls(format!(
                    "{}: no certificate in it",
                    cert.display()
                )));
            };
            let ca_pem = pem_of(last);
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| MockError::Tls(format!("{}: {e}", key.display())))?;
            Ok(Identity { chain, key, ca_pem })
        }
    }
}

fn generate() -> Result<Identity, MockError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| MockError::Tls(format!("cannot make a certificate: {e}"));

    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pusher mock CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().map_err(err)?;
    let names: Vec<String> = SERVER_NAMES.iter().map(|s| s.to_string()).collect();
    let mut leaf_params = CertificateParams::new(names).map_err(err)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "pusher mock");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).map_err(err)?;

    Ok(Identity {
        chain: vec![leaf.der().clone(), ca_cert.der().clone()],
        key: PrivateKeyDer::try_from(leaf_key.serialize_der())
            .map_err(|e| MockError::Tls(e.to_string()))?,
        ca_pem: ca_cert.pem(),
    })
}

fn pem_of(cert: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The rustls config: ALPN h2 then http/1.1 (a client offering no ALPN still gets HTTP/2 by
/// prior knowledge: the connection layer sniffs the preface). With `client_ca`, a client
/// certificate is verified when offered; connections without one are let in so that token
/// auth can still be used, and the handler answers them `BadCertificate` when it needs one.
pub(crate) fn server_config(
    identity: &Identity,
    client_ca: Option<&[u8]>,
) -> Result<Arc<ServerConfig>, MockError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| MockError::Tls(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| MockError::Tls(format!("client CA: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| MockError::Tls(format!("client CA: {e}")))?;
            }
            if roots.is_empty() {
                return Err(MockError::Tls("client CA: no certificate in it".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| MockError::Tls(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| MockError::Tls(format!("server certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
