//! APNs certificate auth: the provider certificate and key as PEM (one file or two) or as
//! PKCS#12 with a password, turned into a rustls client identity.

use crate::sender::tls::ClientIdentity;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read certificate file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (give it with --key)")]
    NoKey { path: PathBuf },
    #[error("{path}: bad PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("cannot open PKCS#12 file {path}: wrong password or corrupt file ({reason})")]
    Pkcs12 { path: PathBuf, reason: String },
    #[error("PKCS#12 file {path} holds no private key with a certificate")]
    Pkcs12Empty { path: PathBuf },
}

/// Loads a provider identity. `.p12`/`.pfx` files (or any file that is not PEM) are read as
/// PKCS#12 with `password`; otherwise PEM, with the key in `key_file` or in the same file.
pub fn load_identity(
    certificate: &Path,
    key_file: Option<&Path>,
    password: Option<&str>,
) -> Result<ClientIdentity, CertError> {
    let data = read(certificate)?;
    if is_pkcs12(certificate, &data) {
        return load_pkcs12(certificate, &data, password.unwrap_or(""));
    }
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            path: certificate.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: certificate.to_path_buf(),
        });
    }
    let (key_path, key_data) = match key_file {
        Some(path) => (path, read(path)?),
        None => (certificate, data),
    };
    let key = PrivateKeyDer::from_pem_slice(&key_data).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoKey {
            path: key_path.to_path_buf(),
        },
        e => CertError::Pem {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    Ok(ClientIdentity { certs, key })
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn is_pkcs12(path: &Path, data: &[u8]) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    ext.eq_ignore_ascii_case("p12")
        || ext.eq_ignore_ascii_case("pfx")
        || !data.starts_with(b"-----")
}

fn load_pkcs12(path: &Path, data: &[u8], password: &str) -> Result<ClientIdentity, CertError> {
    let store = p12_keystore::KeyStore::from_pkcs12(
        data,
        password,
        p12_keystore::Pkcs12ImportPolicy::Relaxed,
    )
    .map_err(|e| CertError::Pkcs12 {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or_else(|| CertError::Pkcs12Empty {
            path: path.to_path_buf(),
        })?;
    if chain.certs().is_empty() {
        return Err(CertError::Pkcs12Empty {
            path: path.to_path_buf(),
        });
    }
    let certs = chain
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().as_der().to_vec()));
    Ok(ClientIdentity { certs, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/apns")
            .join(name)
    }

    #[test]
    fn every_fixture_form_loads_the_same_certificate() {
        let pem =
            load_identity(&fixture("client.pem"), Some(&fixture("client.key")), None).unwrap();
        for p12 in ["client.p12", "client-legacy.p12"] {
            let id = load_identity(&fixture(p12), None, Some("test")).unwrap();
            assert_eq!(id.certs[0], pem.certs[0], "{p12}");
            assert_eq!(id.key.secret_der(), pem.key.secret_der(), "{p12}");
        }
    }

    #[test]
    fn cert_and_key_in_one_pem_file() {
        let dir = tempfile::tempdir().unwrap();
        let both = dir.path().join("both.pem");
        let mut data = std::fs::read(fixture("client.pem")).unwrap();
        data.extend(std::fs::read(fixture("client.key")).unwrap());
        std::fs::write(&both, data).unwrap();
        let id = load_identity(&both, None, None).unwrap();
        assert_eq!(id.certs.len(), 1);
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let wrong_password = load_identity(&fixture("client.p12"), None, Some("nope")).unwrap_err();
        assert!(
            wrong_password.to_string().contains("wrong password"),
            "{wrong_password}"
        );
        let legacy_wrong =
            load_identity(&fixture("client-legacy.p12"), None, Some("nope")).unwrap_err();
        assert!(
            legacy_wrong.to_string().contains("wrong password"),
            "{legacy_wrong}"
        );
        let missing = load_identity(Path::new("/nonexistent/cert.pem"), None, None).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/cert.pem"),
            "{missing}"
        );
        let no_key = load_identity(&fixture("client.pem"), None, None).unwrap_err();
        assert!(matches!(no_key, CertError::NoKey { .. }), "{no_key}");
        let not_a_cert = load_identity(&fixture("client.key"), None, None).unwrap_err();
        assert!(
            matches!(not_a_cert, CertError::NoCertificate { .. }),
            "{not_a_cert}"
        );
    }
}
