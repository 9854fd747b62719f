//! Where the sender connects: Apple's production or sandbox host, or a custom base URL (a fake
//! server, a proxy). The URL scheme picks TLS (`https`) or cleartext HTTP/2 (`http`, h2c).

use http::uri::{Authority, Scheme};
use std::net::SocketAddr;
use tokio::net::TcpStream;

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
    /// Connect only to public addresses: a web push subscription names its own host, and a
    /// name may resolve into our network (checking the name as written catches literals only).
    pub public_only: bool,
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
            public_only: false,
        })
    }
}

impl Target {
    /// A TCP connection to the target, with Nagle off. With `public_only`, the name is
    /// resolved here and only its public addresses are tried.
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        let host = (self.host.as_str(), self.port);
        let tcp = if self.public_only {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host(host).await?.collect();
            TcpStream::connect(&public_addresses(&self.host, resolved)?[..]).await?
        } else {
            TcpStream::connect(host).await?
        };
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

/// The public addresses among those `host` resolved to; an error when there are none.
fn public_addresses(host: &str, resolved: Vec<SocketAddr>) -> std::io::Result<Vec<SocketAddr>> {
    let public: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|a| !crate::push::webpush::is_private_ip(a.ip()))
        .collect();
    if public.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{host} resolves to no public address (allowLocalEndpoints allows private ones)"
            ),
        ));
    }
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_kept() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("address");
        let kept = public_addresses(
            "h",
            vec![
                addr("10.0.0.7:443"),
                addr("93.184.216.34:443"),
                addr("[::1]:443"),
            ],
        )
        .expect("one public");
        assert_eq!(kept, [addr("93.184.216.34:443")]);
        for private in [
            "127.0.0.1:443",
            "[fd00::1]:443",
            "[64:ff9b::a00:1]:443",
            "[::a00:1]:443",
        ] {
            assert!(
                public_addresses("h", vec![addr(private)]).is_err(),
                "{private}"
            );
        }
    }

    /// A name (not a literal) that resolves to loopback is refused when only public addresses
    /// may be reached, and reached otherwise. `localhost` itself is refused by name earlier,
    /// so this uses the machine's own name, which resolves to loopback here.
    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_not_connected_to() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let name = name.trim();
        let resolved: Vec<SocketAddr> = match tokio::net::lookup_host((name, port)).await {
            Ok(addrs) => addrs.collect(),
            Err(_) => Vec::new(),
        };
        assert!(
            !name.is_empty() && resolved.iter().any(|a| a.ip().is_loopback()),
            "this test needs the machine's name ({name:?}) to resolve to 127.0.0.1, as /etc/hosts has it"
        );
        let mut target = Endpoint::Custom(format!("https://{name}:{port}"))
            .target()
            .expect("target");
        assert!(target.connect().await.is_ok());
        target.public_only = true;
        let refused = target.connect().await.expect_err("refused");
        assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
    }

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
