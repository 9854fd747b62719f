//! A plain HTTP/1.1 client: one connection per request over the same TLS settings as the pool.
//! Used for the OAuth token endpoint (a form POST every ~55 minutes) and as the FCM transport
//! when HTTP/2 is not wanted (`--http1`). Hyper's connection-level client is used directly
//! (hyper-util's pooled client would need its `client-legacy` feature and a connector for our
//! rustls config, which is more code than this for a path that is not hot).

use crate::sender::endpoint::Target;
use crate::sender::pool::{PoolError, TransportError, MAX_RESPONSE};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Clone)]
pub struct Http1Client {
    target: Target,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl std::fmt::Debug for Http1Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Client")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Http1Client {
    /// `tls` must be given for an https target; its ALPN is replaced by `http/1.1`.
    pub fn new(
        target: Target,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Http1Client, PoolError> {
        let tls = match tls {
            Some(config) if target.tls => {
                let mut config = (*config).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|_| PoolError::ServerName(target.host.clone()))?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
            _ => None,
        };
        Ok(Http1Client {
            target,
            tls,
            timeout,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// One exchange on a new connection. `request` carries the path only; `Host` is added.
    pub async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<(http::response::Parts, Bytes), TransportError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }

    async fn exchange(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<(http::response::Parts, Bytes), TransportError> {
        let target = &self.target;
        let addr = format!("{}:{}", target.host, target.port);
        let tcp = target
            .connect()
            .await
            .map_err(|e| TransportError::Connect {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                    TransportError::Connect {
                        addr,
                        reason: format!("TLS: {e}"),
                    }
                })?;
                self.exchange_on(tls, request).await
            }
            None => self.exchange_on(tcp, request).await,
        }
    }

    async fn exchange_on<T>(
        &self,
        io: T,
        request: http::Request<Bytes>,
    ) -> Result<(http::response::Parts, Bytes), TransportError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| TransportError::Io(e.to_string()))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let (mut parts, body) = request.into_parts();
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(self.target.authority.as_str())
                .map_err(|e| TransportError::Io(e.to_string()))?,
        );
        let request = http::Request::from_parts(parts, Full::new(body));
        let result = async {
            let response = send
                .send_request(request)
                .await
                .map_err(|e| TransportError::Io(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| TransportError::Io(format!("reading the response: {e}")))?
                .to_bytes();
            Ok((parts, body))
        }
        .await;
        driver.abort();
        result
    }
}
