//! Where the sender connects: Apple's production or sandbox host, or a custom base URL (a fake
//! server, a proxy). The URL scheme picks TLS (`https`) or cleartext HTTP/2 (`http`, h2c).

use http::uri::{Authority, Scheme};

pub const APNS_PRODUCTION_HOST: &str = "api.push.apple.com";
pub const APNS_SANDBOX_HOST: &str = "api.sandbox.push.apple.com";

/// An APNs (or, later, FCM) endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Production,
    Sandbox,
    /// A base URL such as `https://127.0.0.1:8443` or `http://localhost:8080` (h2c).
    Custom(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {url:?} is not a valid URL: {reason}")]
    Invalid { url: String, reason: String },
    #[error("endpoint {url:?}: scheme must be https (TLS) or http (cleartext h2c)")]
    Scheme { url: String },
    #[error("endpoint {url:?} has a path; give only scheme://host[:port]")]
    HasPath { url: String },
}

/// An endpoint resolved to what a connection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// TLS (`https`) or h2c (`http`).
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `:scheme` and `:authority` of every request, parsed once.
    pub scheme: Scheme,
    pub authority: Authority,
}

impl Endpoint {
    /// The production or sandbox endpoint, as the global `-p` flag chooses.
    pub fn apple(production: bool) -> Endpoint {
        if production {
            Endpoint::Production
        } else {
            Endpoint::Sandbox
        }
    }

    pub fn target(&self) -> Result<Target, EndpointError> {
        let url = match self {
            Endpoint::Production => format!("https://{APNS_PRODUCTION_HOST}"),
            Endpoint::Sandbox => format!("https://{APNS_SANDBOX_HOST}"),
            Endpoint::Custom(url) => url.trim_end_matches('/').to_string(),
        };
        let invalid = |reason: String| EndpointError::Invalid {
            url: url.clone(),
            reason,
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(EndpointError::Scheme { url }),
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(EndpointError::HasPath { url });
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid("no host".into()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target {
            tls,
            host,
            port,
            scheme: if tls { Scheme::HTTPS } else { Scheme::HTTP },
            authority,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve() {
        let cases: &[(Endpoint, bool, &str, u16)] = &[
            (Endpoint::Production, true, "api.push.apple.com", 443),
            (Endpoint::Sandbox, true, "api.sandbox.push.apple.com", 443),
            (
                Endpoint::Custom("https://127.0.0.1:8443".into()),
                true,
                "127.0.0.1",
                8443,
            ),
            (
                Endpoint::Custom("http://localhost:8080/".into()),
                false,
                "localhost",
                8080,
            ),
            (
                Endpoint::Custom("https://example.com".into()),
                true,
                "example.com",
                443,
            ),
            (
                Endpoint::Custom("http://[::1]:9000".into()),
                false,
                "::1",
                9000,
            ),
        ];
        for (endpoint, tls, host, port) in cases {
            let t = endpoint.target().unwrap();
            assert_eq!(
                (t.tls, t.host.as_str(), t.port),
                (*tls, *host, *port),
                "{endpoint:?}"
            );
        }
        assert_eq!(Endpoint::apple(true), Endpoint::Production);
        assert_eq!(Endpoint::apple(false), Endpoint::Sandbox);
    }

    #[test]
    fn bad_endpoints_are_clear_errors() {
        for url in [
            "ftp://x",
            "127.0.0.1:80",
            "https://x/3/device",
            "not a url",
            "",
        ] {
            let err = Endpoint::Custom(url.into()).target().unwrap_err();
            assert!(err.to_string().contains("endpoint"), "{url}: {err}");
        }
    }
}
