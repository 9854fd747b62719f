//! A plain HTTP/1.1 client with keep-alive over the same TLS settings as the pool. Used for
//! the OAuth token endpoint (a form POST every ~55 minutes), as the FCM transport when HTTP/2
//! is not wanted (`--http1`), and for web push services without HTTP/2. Hyper's
//! connection-level client is used directly, with a small stack of idle connections:
//! hyper-util's pooled client would need a connector for our rustls config and for
//! `Target::connect` (only public addresses for hosts that are no push service), which is
//! more code than this stack.

use crate::sender::endpoint::Target;
use crate::sender::pool::{PoolError, TransportError, MAX_RESPONSE};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};

/// Idle connections kept per client: enough for the requests one origin has in flight at a
/// time in steady state; a burst past it opens (and then closes) more.
const MAX_IDLE: usize = 32;
/// Idle connections kept by all clients together: each is a socket, and web push has a client
/// per origin (up to `webpush.maxOrigins`), whose endpoints subscribers choose.
const MAX_IDLE_TOTAL: usize = 1024;
static IDLE_TOTAL: AtomicUsize = AtomicUsize::new(0);
/// An idle connection older than this is closed, not reused: servers close idle keep-alive
/// connections (nginx after 75 s, many after 5-60 s), and one closed while we write to it
/// fails the request.
const IDLE_FOR: Duration = Duration::from_secs(30);

type Connection = SendRequest<Full<Bytes>>;

/// A client's idle connections, oldest first, each with when its last exchange ended; counted
/// in `IDLE_TOTAL` while held.
#[derive(Default)]
struct Idle(Vec<(Connection, Instant)>);

impl Idle {
    fn pop(&mut self) -> Option<(Connection, Instant)> {
        let newest = self.0.pop()?;
        IDLE_TOTAL.fetch_sub(1, Ordering::Relaxed);
        Some(newest)
    }

    /// Keeps `connection` unless this client or the process holds enough idle ones.
    fn push(&mut self, connection: Connection) {
        self.prune();
        if self.0.len() >= MAX_IDLE || IDLE_TOTAL.fetch_add(1, Ordering::Relaxed) >= MAX_IDLE_TOTAL
        {
            if self.0.len() < MAX_IDLE {
                IDLE_TOTAL.fetch_sub(1, Ordering::Relaxed);
            }
            return;
        }
        self.0.push((connection, Instant::now()));
    }

    /// Closes those idle too long or closed by their server (at each request of the client: a
    /// quiet origin's are closed by the server, or at its next request).
    fn prune(&mut self) {
        let before = self.0.len();
        self.0
            .retain(|(c, since)| since.elapsed() <= IDLE_FOR && !c.is_closed());
        IDLE_TOTAL.fetch_sub(before - self.0.len(), Ordering::Relaxed);
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        IDLE_TOTAL.fetch_sub(self.0.len(), Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub struct Http1Client {
    target: Target,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    /// Connections whose last exchange ended cleanly.
    idle: Arc<parking_lot::Mutex<Idle>>,
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
            idle: Arc::default(),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// One exchange, on an idle connection when one is open, else on a new one. `request`
    /// carries the path only; `Host` is added.
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
        let (mut parts, body) = request.into_parts();
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(self.target.authority.as_str())
                .map_err(|e| TransportError::Io(e.to_string()))?,
        );
        if let Some(mut connection) = self.take_idle().await {
            let request = http::Request::from_parts(parts.clone(), Full::new(body.clone()));
            match connection.send_request(request).await {
                Ok(response) => return self.read(connection, response).await,
                // Closed by the server before the request was written (its keep-alive ended
                // as we took it): nothing was sent, so a new connection may send it.
                Err(e) if e.is_canceled() => {}
                Err(e) => return Err(TransportError::Io(e.to_string())),
            }
        }
        let mut connection = self.connect().await?;
        let response = connection
            .send_request(http::Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(|e| TransportError::Io(e.to_string()))?;
        self.read(connection, response).await
    }

    /// The newest idle connection still open and ready, closing stale ones.
    async fn take_idle(&self) -> Option<Connection> {
        loop {
            let (mut connection, _) = {
                let mut idle = self.idle.lock();
                idle.prune();
                idle.pop()?
            };
            if connection.ready().await.is_ok() {
                return Some(connection);
            }
        }
    }

    /// Reads the answer's body, then keeps the connection for the next request when it can
    /// carry one (hyper closes it after `Connection: close` or a body not read to its end).
    async fn read(
        &self,
        connection: Connection,
        response: http::Response<hyper::body::Incoming>,
    ) -> Result<(http::response::Parts, Bytes), TransportError> {
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| TransportError::Io(format!("reading the response: {e}")))?
            .to_bytes();
        // Kept unless already closed; one the server closes meanwhile is found by `ready`.
        if !connection.is_closed() {
            self.idle.lock().push(connection);
        }
        Ok((parts, body))
    }

    async fn connect(&self) -> Result<Connection, TransportError> {
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
                handshake(tls).await
            }
            None => handshake(tcp).await,
        }
    }
}

/// HTTP/1.1 on `io`; its connection task ends when the connection closes or its last
/// `SendRequest` is dropped.
async fn handshake<T>(io: T) -> Result<Connection, TransportError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| TransportError::Io(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sender::endpoint::Endpoint;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP/1.1 server on port 0 answering 200 to everything; counts its connections.
    /// `keep_alive: false` closes each connection after its answer.
    async fn server(keep_alive: bool) -> (Target, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        let target = Endpoint::Custom(format!("http://{addr}")).target().unwrap();
        (target, accepted)
    }

    fn post() -> http::Request<Bytes> {
        http::Request::post("/p")
            .body(Bytes::from_static(b"body"))
            .unwrap()
    }

    /// One connection for a run of requests, not one each (a TCP, and over TLS a TLS,
    /// handshake per push before).
    #[tokio::test]
    async fn requests_in_turn_share_one_connection() {
        let (target, accepted) = server(true).await;
        let client = Http1Client::new(target, None, Duration::from_secs(5)).unwrap();
        for _ in 0..10 {
            let (parts, body) = client.send(post()).await.unwrap();
            assert_eq!(parts.status, 200);
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// Requests at once take a connection each, and those connections are kept for the next.
    #[tokio::test]
    async fn concurrent_requests_reuse_the_connections_they_opened() {
        let (target, accepted) = server(true).await;
        let client = Http1Client::new(target, None, Duration::from_secs(5)).unwrap();
        for _ in 0..3 {
            let answers = futures_util::future::join_all((0..4).map(|_| client.send(post()))).await;
            assert!(answers.iter().all(|a| a.as_ref().unwrap().0.status == 200));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    /// A server that closes each connection after its answer costs a connection a request,
    /// and no request fails on a closed one.
    #[tokio::test]
    async fn a_server_without_keep_alive_still_gets_every_request() {
        let (target, accepted) = server(false).await;
        let client = Http1Client::new(target, None, Duration::from_secs(5)).unwrap();
        for _ in 0..5 {
            assert_eq!(client.send(post()).await.unwrap().0.status, 200);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }
}
