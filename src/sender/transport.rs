//! One origin's transport: the HTTP/2 pool, the HTTP/1.1 client, or both with a fallback
//! (`Auto`). FCM has one; web push has one per push-service origin. A POST goes over HTTP/2
//! while it works; an endpoint whose first exchanges fail at the HTTP/2 layer, before any
//! HTTP/2 answer, is spoken to over HTTP/1.1 from then on.

use super::endpoint::Target;
use super::http1::Http1Client;
use super::pool::{Pool, PoolConfig, PoolError, TransportError};
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Uri};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The HTTP version spoken to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersion {
    /// HTTP/2 over the shared pool; HTTP/1.1 for good if the endpoint turns out not to speak
    /// HTTP/2 (its first exchanges fail at the HTTP/2 layer before any HTTP/2 answer).
    #[default]
    Auto,
    /// Multiplexed over the shared HTTP/2 pool only.
    Http2,
    /// HTTP/1.1 with keep-alive, a connection per request in flight (for endpoints or
    /// proxies without HTTP/2).
    Http1,
}

#[derive(Debug)]
pub struct Transport {
    target: Target,
    h2: Option<Pool>,
    h1: Option<Http1Client>,
    /// HTTP/2 has answered at least once: its failures are never a reason to fall back.
    h2_answered: AtomicBool,
    /// The endpoint does not speak HTTP/2: HTTP/1.1 from now on.
    fell_back: AtomicBool,
}

/// A failure that says "this endpoint does not speak HTTP/2" when HTTP/2 never worked: the
/// HTTP/2 handshake or framing broke, or TLS found no common ALPN protocol.
fn not_http2(e: &TransportError) -> bool {
    match e {
        TransportError::Http2(_) | TransportError::Io(_) | TransportError::GoAway(_) => true,
        TransportError::Connect { reason, .. } => reason.contains("NoApplicationProtocol"),
        _ => false,
    }
}

impl Transport {
    /// Connects lazily: nothing happens until the first request.
    pub fn new(
        target: Target,
        tls: Option<Arc<rustls::ClientConfig>>,
        http: HttpVersion,
        pool: PoolConfig,
    ) -> Result<Transport, PoolError> {
        let timeout = pool.request_timeout;
        let h2 = match http {
            HttpVersion::Auto | HttpVersion::Http2 => {
                Some(Pool::new(target.clone(), tls.clone(), pool)?)
            }
            HttpVersion::Http1 => None,
        };
        let h1 = match http {
            HttpVersion::Auto | HttpVersion::Http1 => {
                Some(Http1Client::new(target.clone(), tls, timeout)?)
            }
            HttpVersion::Http2 => None,
        };
        Ok(Transport {
            target,
            h2,
            h1,
            h2_answered: AtomicBool::new(false),
            fell_back: AtomicBool::new(false),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The HTTP/2 pool, when HTTP/2 is configured.
    pub fn pool(&self) -> Option<&Pool> {
        self.h2.as_ref()
    }

    /// True when requests go over HTTP/1.1 (configured, or fallen back to).
    pub fn uses_http1(&self) -> bool {
        self.h2.is_none() || (self.h1.is_some() && self.fell_back.load(Ordering::Relaxed))
    }

    /// One POST of `body` to `path` with `headers` (`Content-Length` is added).
    pub async fn post(
        &self,
        path: &PathAndQuery,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes), TransportError> {
        let Some(pool) = self.h2.as_ref().filter(|_| !self.uses_http1()) else {
            return self.post_h1(path, headers, body).await;
        };
        match self.post_h2(pool, path, headers, body.clone()).await {
            Ok(answer) => {
                self.h2_answered.store(true, Ordering::Relaxed);
                Ok(answer)
            }
            // HTTP/2 never worked here: try HTTP/1.1, and keep it only if it answers (a
            // transient failure fails both ways and changes nothing).
            Err(e)
                if self.h1.is_some()
                    && !self.h2_answered.load(Ordering::Relaxed)
                    && not_http2(&e) =>
            {
                let answer = self.post_h1(path, headers, body).await;
                if answer.is_ok() && !self.fell_back.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint = %self.target.authority, error = %e,
                        "Endpoint does not speak HTTP/2; using HTTP/1.1.");
                }
                answer
            }
            Err(e) => Err(e),
        }
    }

    async fn post_h1(
        &self,
        path: &PathAndQuery,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes), TransportError> {
        let Some(client) = &self.h1 else {
            return Err(TransportError::Io(
                "no HTTP/1.1 transport configured".into(),
            ));
        };
        let mut request = Request::post(path.as_str())
            .body(body)
            .map_err(|e| TransportError::Io(e.to_string()))?;
        request.headers_mut().extend(headers.clone());
        client.send(request).await
    }

    async fn post_h2(
        &self,
        pool: &Pool,
        path: &PathAndQuery,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes), TransportError> {
        let uri = Uri::builder()
            .scheme(self.target.scheme.clone())
            .authority(self.target.authority.clone())
            .path_and_query(path.clone())
            .build()
            .map_err(|e| TransportError::Http2(e.to_string()))?;
        let mut request = Request::post(uri)
            .body(())
            .map_err(|e| TransportError::Http2(e.to_string()))?;
        let h = request.headers_mut();
        h.extend(headers.clone());
        h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        pool.send(request, body).await
    }
}
