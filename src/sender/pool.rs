//! A protocol-neutral HTTP/2 connection pool over the raw `h2` crate (hyper's client dispatch
//! costs ~40 % per request: reference/h2-ceiling.md). N connections, each carrying as many
//! streams as the server's SETTINGS_MAX_CONCURRENT_STREAMS allows (h2 enforces the limit:
//! `SendRequest::ready` waits). A task per connection drives it; a dead connection is replaced
//! lazily on the next request, with a back-off after a failed connect. Requests in flight on a
//! connection that dies fail with a `TransportError`, which the protocol layer retries.
//!
//! No HTTP/2 PING keepalive: the h2 crate has none built in. Idle closes by the server are
//! handled by reconnecting on the next request, and a connection that has answered nothing
//! for longer than the request timeout when a request times out is replaced (a silently dead
//! peer would otherwise keep swallowing requests).

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use parking_lot::Mutex;
use rustls_pki_types::ServerName;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::endpoint::Target;

/// Largest response body read, over HTTP/2 and HTTP/1.1 alike (APNs, FCM and push services
/// answer a few hundred bytes): a server streaming more cannot make us buffer it.
pub const MAX_RESPONSE: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Connections to open (lazily). Default 2; the real APNs needs more for high volume.
    pub connections: usize,
    pub connect_timeout: Duration,
    /// One exchange once a connection is up: waiting for a stream slot, sending, reading the
    /// response. (Opening a connection is bounded by `connect_timeout` on top.)
    pub request_timeout: Duration,
    /// How long a slot waits after a failed connect before it tries again.
    pub reconnect_backoff: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            connections: 2,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(20),
            reconnect_backoff: Duration::from_millis(200),
        }
    }
}

/// Why one exchange got no response. Every variant is worth a retry on a healthy connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("not reconnecting yet after a failed connect ({last})")]
    Backoff { last: String },
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("connection closed by GOAWAY: {0}")]
    GoAway(String),
    #[error("stream reset: {0}")]
    Reset(String),
    #[error("HTTP/2: {0}")]
    Http2(String),
    #[error("I/O: {0}")]
    Io(String),
    /// The peer ended the TLS session with an alert (TLS 1.3 servers refuse a client
    /// certificate this way, after the client thinks the handshake is done).
    #[error("TLS: {0}")]
    TlsAlert(String),
}

impl TransportError {
    /// What went wrong, without the address connected to: a push service's many hosts under
    /// one gate made each probe's retry cause "another cause", logged.
    pub fn detail(&self) -> String {
        match self {
            TransportError::Connect { reason, .. } => reason.clone(),
            TransportError::ConnectTimeout { after, .. } => {
                format!("connect timed out after {after:?}")
            }
            // The failed connect's own words ("connect to ADDR: REASON").
            TransportError::Backoff { last } => last
                .strip_prefix("connect to ")
                .and_then(|rest| rest.split_once(": "))
                .map_or_else(|| last.clone(), |(_, reason)| reason.to_string()),
            other => other.to_string(),
        }
    }

    /// A short, bounded label (for `GaveUp` reasons and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Connect { .. } => "connect_error",
            TransportError::ConnectTimeout { .. } => "connect_timeout",
            TransportError::Backoff { .. } => "connect_backoff",
            TransportError::Timeout(_) => "timeout",
            TransportError::GoAway(_) => "goaway",
            TransportError::Reset(_) => "stream_reset",
            TransportError::Http2(_) => "http2_error",
            TransportError::Io(_) => "io_error",
            TransportError::TlsAlert(_) => "tls_alert",
        }
    }

    /// No connection could be opened at all (refused, unreachable, TLS verification failed,
    /// or waiting out such a failure): the endpoint's or the configuration's fault, not the
    /// message's (sender/gate.rs).
    pub fn is_endpoint_fault(&self) -> bool {
        matches!(
            self,
            TransportError::Connect { .. }
                | TransportError::ConnectTimeout { .. }
                | TransportError::Backoff { .. }
                | TransportError::TlsAlert(_)
        )
    }

    fn from_h2(e: h2::Error) -> TransportError {
        if e.is_go_away() {
            TransportError::GoAway(e.to_string())
        } else if e.is_reset() {
            TransportError::Reset(e.to_string())
        } else if e.is_io() {
            let text = e.to_string();
            // h2 hands I/O errors on as text: rustls' "received fatal alert: UnknownCA" (a
            // refused client certificate) is recognised by its words.
            if text.contains("received fatal alert") {
                TransportError::TlsAlert(text)
            } else {
                TransportError::Io(text)
            }
        } else {
            TransportError::Http2(e.to_string())
        }
    }
}

/// Which connection carried a response (`Pool::send_tracked`), so the protocol layer can ask
/// for that connection to be replaced (`Pool::discard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    pub slot: usize,
    pub generation: u64,
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("target", &self.inner.target)
            .field("config", &self.inner.config)
            .finish()
    }
}

struct PoolInner {
    target: Target,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    config: PoolConfig,
    slots: Vec<Slot>,
    next: AtomicUsize,
    /// Time base of `Slot::last_response_ms`.
    epoch: Instant,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Held while connecting, so concurrent requests wait for one connect instead of racing.
    connect_lock: tokio::sync::Mutex<()>,
    /// A background reconnect is under way (at most one per slot).
    reconnecting: AtomicBool,
    /// When the slot's connection last answered (ms since `PoolInner::epoch`).
    last_response_ms: AtomicU64,
}

#[derive(Default)]
struct SlotState {
    live: Option<SendRequest<Bytes>>,
    generation: u64,
    retry_connect_at: Option<Instant>,
    last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("host {0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("pool needs at least one connection")]
    NoConnections,
}

impl Pool {
    /// A pool to `target`; TLS when `tls` is given (the target must be https then).
    pub fn new(
        target: Target,
        tls: Option<Arc<rustls::ClientConfig>>,
        config: PoolConfig,
    ) -> Result<Pool, PoolError> {
        if config.connections == 0 {
            return Err(PoolError::NoConnections);
        }
        let tls = match tls {
            Some(cfg) => {
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|_| PoolError::ServerName(target.host.clone()))?;
                Some((tokio_rustls::TlsConnector::from(cfg), name))
            }
            None => None,
        };
        let slots = (0..config.connections).map(|_| Slot::default()).collect();
        Ok(Pool {
            inner: Arc::new(PoolInner {
                target,
                tls,
                config,
                slots,
                next: AtomicUsize::new(0),
                epoch: Instant::now(),
            }),
        })
    }

    pub fn target(&self) -> &Target {
        &self.inner.target
    }

    /// Number of connections currently up.
    pub fn live_connections(&self) -> usize {
        (0..self.inner.slots.len())
            .filter(|&i| self.live(i).is_some())
            .count()
    }

    /// One exchange: sends `request` with `body` and returns the response head and whole body.
    pub async fn send(
        &self,
        request: http::Request<()>,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes), TransportError> {
        let (parts, body, _) = self.send_tracked(request, body).await?;
        Ok((parts, body))
    }

    /// `send`, also returning which connection carried the exchange, so the caller can have it
    /// replaced (`discard`) when the answer says so. (Returned beside the response rather than
    /// in its extensions: that map costs two allocations per response.)
    pub async fn send_tracked(
        &self,
        request: http::Request<()>,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes, ConnId), TransportError> {
        let (conn, id) = self.checkout().await?;
        let timeout = self.inner.config.request_timeout;
        // Dropping the exchange on timeout drops its h2 stream, which sends RST_STREAM.
        let result = match tokio::time::timeout(timeout, exchange_on(conn, request, body)).await {
            Ok(result) => result,
            Err(_) => {
                self.on_timeout(id, timeout);
                return Err(TransportError::Timeout(timeout));
            }
        };
        match result {
            Ok((parts, body)) => {
                self.inner.slots[id.slot]
                    .last_response_ms
                    .store(self.now_ms(), Ordering::Relaxed);
                Ok((parts, body, id))
            }
            Err(e) => {
                // A reset affects one stream; anything else means the connection is unusable.
                if !e.is_reset() || e.is_go_away() {
                    self.discard(id);
                }
                Err(TransportError::from_h2(e))
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// One request timing out says little (the server may be slow for that one); a connection
    /// that has answered nothing for a whole timeout is presumed dead and replaced.
    fn on_timeout(&self, id: ConnId, timeout: Duration) {
        let last = self.inner.slots[id.slot]
            .last_response_ms
            .load(Ordering::Relaxed);
        if self.now_ms().saturating_sub(last) >= timeout.as_millis() as u64 {
            tracing::debug!(
                slot = id.slot,
                "No answer on the connection for a whole timeout; replacing it."
            );
            self.discard(id);
        }
    }

    /// Drops connection `id` from the pool (if it is still the slot's current one): the next
    /// request opens a new one. Streams already on it finish; then it closes.
    pub fn discard(&self, id: ConnId) {
        if let Some(slot) = self.inner.slots.get(id.slot) {
            let mut state = slot.state.lock();
            if state.generation == id.generation {
                state.live = None;
            }
        }
    }

    fn live(&self, slot: usize) -> Option<(SendRequest<Bytes>, ConnId)> {
        let state = self.inner.slots[slot].state.lock();
        state.live.clone().map(|conn| {
            (
                conn,
                ConnId {
                    slot,
                    generation: state.generation,
                },
            )
        })
    }

    /// Round-robin over the slots. A dead slot is reconnected in the background while another
    /// live connection takes the request; only when none is up does the request wait.
    async fn checkout(&self) -> Result<(SendRequest<Bytes>, ConnId), TransportError> {
        let n = self.inner.slots.len();
        let first = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
        if let Some(found) = self.live(first) {
            return Ok(found);
        }
        for offset in 1..n {
            if let Some(found) = self.live((first + offset) % n) {
                let slot = &self.inner.slots[first];
                if !slot.reconnecting.swap(true, Ordering::AcqRel) {
                    let pool = self.clone();
                    tokio::spawn(async move {
                        let _ = pool.connect_slot(first).await;
                        pool.inner.slots[first]
                            .reconnecting
                            .store(false, Ordering::Release);
                    });
                }
                return Ok(found);
            }
        }
        // Boxed: connecting (TCP, TLS and HTTP/2 handshakes) is a future of ~4 KB; inline, it
        // made every request's future that big (a push's 10 KB, 2.8 KB without it), and that
        // future is copied into place on every push.
        Box::pin(self.connect_slot(first)).await
    }

    async fn connect_slot(
        &self,
        index: usize,
    ) -> Result<(SendRequest<Bytes>, ConnId), TransportError> {
        let slot = &self.inner.slots[index];
        let _connecting = slot.connect_lock.lock().await;
        if let Some(found) = self.live(index) {
            return Ok(found);
        }
        {
            let state = slot.state.lock();
            if let Some(at) = state.retry_connect_at {
                if Instant::now() < at {
                    return Err(TransportError::Backoff {
                        last: state.last_error.clone().unwrap_or_default(),
                    });
                }
            }
        }
        match self.open().await {
            Ok((conn, driver)) => {
                let mut state = slot.state.lock();
                state.generation += 1;
                state.live = Some(conn.clone());
                state.retry_connect_at = None;
                slot.last_response_ms
                    .store(self.now_ms(), Ordering::Relaxed);
                let id = ConnId {
                    slot: index,
                    generation: state.generation,
                };
                // The driver task runs the connection; when it ends the slot is emptied. It
                // holds the pool weakly: a dropped pool (web push evicts idle origins) drops
                // its connections' handles, and h2 then closes them.
                let pool = Arc::downgrade(&self.inner);
                tokio::spawn(async move {
                    if let Err(e) = driver.await {
                        tracing::debug!(slot = index, error = %e, "Connection ended.");
                    }
                    if let Some(inner) = pool.upgrade() {
                        Pool { inner }.discard(id);
                    }
                });
                Ok((conn, id))
            }
            Err(e) => {
                let mut state = slot.state.lock();
                state.retry_connect_at = Some(Instant::now() + self.inner.config.reconnect_backoff);
                state.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// TCP (+ TLS) + HTTP/2 handshake.
    async fn open(&self) -> Result<(SendRequest<Bytes>, ConnectionDriver), TransportError> {
        let target = &self.inner.target;
        let addr = format!("{}:{}", target.host, target.port);
        let after = self.inner.config.connect_timeout;
        let connect = async {
            let tcp = target
                .connect()
                .await
                .map_err(|e| TransportError::Connect {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            match &self.inner.tls {
                Some((connector, name)) => {
                    let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                        TransportError::Connect {
                            addr: addr.clone(),
                            reason: format!("TLS: {e}"),
                        }
                    })?;
                    handshake(NoVec(tls)).await
                }
                None => handshake(NoVec(tcp)).await,
            }
        };
        match tokio::time::timeout(after, connect).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::ConnectTimeout { addr, after }),
        }
    }
}

type ConnectionDriver = Pin<Box<dyn std::future::Future<Output = Result<(), h2::Error>> + Send>>;

async fn handshake<T>(io: T) -> Result<(SendRequest<Bytes>, ConnectionDriver), TransportError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = h2::client::Builder::new()
        // Responses are small; generous windows keep flow control out of the way.
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        // One stream until the server's SETTINGS arrive: APNs allows only one on a fresh token
        // connection and answers a burst over its limit with GOAWAY. Once the SETTINGS are
        // in, h2 follows the server's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited if absent).
        .initial_max_send_streams(1)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(TransportError::from_h2)?;
    Ok((send, Box::pin(connection)))
}

async fn exchange_on(
    conn: SendRequest<Bytes>,
    request: http::Request<()>,
    body: Bytes,
) -> Result<(http::response::Parts, Bytes), h2::Error> {
    let mut conn = conn.ready().await?;
    let end_of_stream = body.is_empty();
    let (response, mut stream) = conn.send_request(request, end_of_stream)?;
    if !end_of_stream {
        // h2 buffers the data and sends it as the peer's flow-control window allows.
        stream.send_data(body, true)?;
    }
    let (parts, mut recv) = response.await?.into_parts();
    if recv.is_end_stream() {
        return Ok((parts, Bytes::new()));
    }
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut read = 0;
    while let Some(chunk) = recv.data().await {
        let mut chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        let over = chunk.len() > MAX_RESPONSE - read;
        chunk.truncate(MAX_RESPONSE - read);
        read += chunk.len();
        match &first {
            None => first = Some(chunk),
            Some(f) => {
                if rest.is_empty() {
                    rest.extend_from_slice(f);
                }
                rest.extend_from_slice(&chunk);
            }
        }
        if over {
            // Past the cap the rest is refused (the stream reset, the connection kept); what
            // came is enough for the reason.
            stream.send_reset(h2::Reason::CANCEL);
            break;
        }
    }
    let body = if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    };
    Ok((parts, body))
}

/// Hides vectored writes from h2. With `is_write_vectored() == true` (TCP, tokio-rustls) h2
/// chains DATA payloads over 256 bytes instead of copying them, and flushes one `writev` per
/// request; without it, h2 copies up to 1024 bytes and coalesces many frames per write
/// (reference/h2-ceiling.md, "The 256-byte cliff": ~2x throughput over TLS).
struct NoVec<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for NoVec<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for NoVec<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A retry's cause names no address: the hosts of one push service differ from probe to
    /// probe, and each was logged as another cause.
    #[test]
    fn details_leave_the_address_out() {
        let refused = TransportError::Connect {
            addr: "10.0.0.7:443".into(),
            reason: "TLS: invalid peer certificate: UnknownIssuer".into(),
        };
        assert_eq!(
            refused.detail(),
            "TLS: invalid peer certificate: UnknownIssuer"
        );
        let backoff = TransportError::Backoff {
            last: refused.to_string(),
        };
        assert_eq!(backoff.detail(), refused.detail());
        let slow = TransportError::ConnectTimeout {
            addr: "10.0.0.8:443".into(),
            after: Duration::from_secs(3),
        };
        assert!(!slow.detail().contains("10.0.0"), "{}", slow.detail());
    }
    use crate::sender::endpoint::Endpoint;
    use std::sync::atomic::AtomicU64;
    use tokio::net::TcpListener;

    /// A bare h2c server: answers 200 with the request body echoed, and after `goaway_after`
    /// requests on a connection sends GOAWAY and stops taking new streams there.
    async fn stub(goaway_after: Option<u64>) -> (String, Arc<AtomicU64>) {
        stub_with(goaway_after, None).await
    }

    async fn stub_with(
        goaway_after: Option<u64>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> (String, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let io: Box<dyn Io> = match tls {
                        Some(config) => {
                            match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                                Ok(stream) => Box::new(stream),
                                Err(_) => return,
                            }
                        }
                        None => Box::new(tcp),
                    };
                    let mut conn = h2::server::handshake(io).await.unwrap();
                    let mut served = 0;
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        served += 1;
                        tokio::spawn(async move {
                            let mut body = request.into_body();
                            let mut echo = Vec::new();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                echo.extend_from_slice(&chunk);
                            }
                            let response = http::Response::builder().status(200).body(()).unwrap();
                            let mut stream = respond.send_response(response, false).unwrap();
                            let _ = stream.send_data(echo.into(), true);
                        });
                        if Some(served) == goaway_after {
                            conn.graceful_shutdown();
                        }
                    }
                });
            }
        });
        (format!("{scheme}://localhost:{}", addr.port()), connections)
    }

    trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

    /// A self-signed certificate for `localhost`: (server config, the certificate as PEM).
    fn self_signed() -> (Arc<rustls::ServerConfig>, String) {
        use rustls_pki_types::pem::PemObject;
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_pem = key.cert.pem();
        let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(
            key.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![key.cert.der().clone()], der)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        (Arc::new(config), cert_pem)
    }

    #[tokio::test]
    async fn tls_verifies_with_the_ca_file_and_fails_without_it() {
        use crate::sender::tls::{client_config, TlsOptions};
        let (server, cert_pem) = self_signed();
        let (url, _) = stub_with(None, Some(server)).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert_pem).unwrap();
        let target = Endpoint::Custom(url.clone()).target().unwrap();
        let cases = [
            (Some(ca.clone()), false, true),
            (None, false, false),
            (None, true, true),
        ];
        for (ca_file, insecure, works) in cases {
            let tls = client_config(&TlsOptions {
                ca_file: ca_file.clone(),
                insecure,
                client_identity: None,
            })
            .unwrap();
            let pool = Pool::new(target.clone(), Some(tls), PoolConfig::default()).unwrap();
            let result = pool.send(request(&url), Bytes::from_static(b"{}")).await;
            match (works, result) {
                (true, Ok((parts, body))) => {
                    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"{}"[..]))
                }
                (false, Err(TransportError::Connect { reason, .. })) => {
                    assert!(reason.contains("TLS"), "{reason}")
                }
                (_, other) => panic!("ca {ca_file:?} insecure {insecure}: {other:?}"),
            }
        }
    }

    fn pool(url: &str, connections: usize) -> Pool {
        let target = Endpoint::Custom(url.into()).target().unwrap();
        let config = PoolConfig {
            connections,
            request_timeout: Duration::from_secs(5),
            reconnect_backoff: Duration::ZERO,
            ..PoolConfig::default()
        };
        Pool::new(target, None, config).unwrap()
    }

    fn request(url: &str) -> http::Request<()> {
        http::Request::post(format!("{url}/echo")).body(()).unwrap()
    }

    /// Connecting is boxed: inline, its handshakes' state (~4 KB) would be part of every
    /// request's future, and each push copies that future into place (README, "Smaller
    /// futures").
    #[test]
    fn a_request_future_does_not_carry_the_connect() {
        let url = "http://127.0.0.1:9";
        let pool = pool(url, 1);
        let send = pool.send_tracked(request(url), Bytes::new());
        let size = std::mem::size_of_val(&send);
        assert!(size < 2048, "send_tracked's future is {size} bytes");
    }

    /// A dropped pool closes its connections (web push drops idle origins' pools): the
    /// server sees the connection end without a request to provoke it.
    #[tokio::test]
    async fn a_dropped_pool_closes_its_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            while let Some(Ok((_, mut respond))) = conn.accept().await {
                let response = http::Response::builder().status(200).body(()).unwrap();
                let _ = respond.send_response(response, true);
            }
            let _ = closed_tx.send(());
        });
        let pool = pool(&url, 1);
        let (parts, _) = pool
            .send(request(&url), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(parts.status, 200);
        drop(pool);
        tokio::time::timeout(Duration::from_secs(5), closed_rx)
            .await
            .expect("the connection closes once its pool is gone")
            .unwrap();
    }

    /// A body past MAX_RESPONSE is cut there and its stream reset; the connection goes on.
    #[tokio::test]
    async fn a_huge_response_body_is_cut_at_the_cap() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let (reset_tx, reset_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            let mut reset_tx = Some(reset_tx);
            while let Some(Ok((request, mut respond))) = conn.accept().await {
                let huge = request.uri().path() == "/huge";
                let reset_tx = reset_tx.take().filter(|_| huge);
                tokio::spawn(async move {
                    let response = http::Response::builder().status(400).body(()).unwrap();
                    let mut stream = respond.send_response(response, false).unwrap();
                    if !huge {
                        let _ = stream.send_data(Bytes::from_static(b"small"), true);
                        return;
                    }
                    // 8 MiB and no end, sent as the client's window allows.
                    for _ in 0..128 {
                        let _ = stream.send_data(Bytes::from(vec![b'x'; 64 << 10]), false);
                    }
                    let reset = std::future::poll_fn(|cx| stream.poll_reset(cx)).await;
                    if let Some(tx) = reset_tx {
                        let _ = tx.send(reset.ok());
                    }
                });
            }
        });
        let pool = pool(&url, 1);
        let huge = http::Request::post(format!("{url}/huge")).body(()).unwrap();
        let (parts, body, first) = pool.send_tracked(huge, Bytes::new()).await.unwrap();
        assert_eq!(parts.status, 400);
        assert_eq!(body.len(), MAX_RESPONSE);
        assert!(body.iter().all(|&b| b == b'x'));
        let reset = tokio::time::timeout(Duration::from_secs(5), reset_rx)
            .await
            .expect("the server sees the stream reset")
            .unwrap();
        assert_eq!(reset, Some(h2::Reason::CANCEL));
        let (_, body, second) = pool
            .send_tracked(request(&url), Bytes::new())
            .await
            .unwrap();
        assert_eq!((&body[..], second), (&b"small"[..], first));
    }

    #[tokio::test]
    async fn concurrent_requests_share_the_connections() {
        let (url, connections) = stub(None).await;
        let pool = pool(&url, 2);
        let sends = (0..200u32).map(|i| {
            let pool = pool.clone();
            let url = url.clone();
            async move {
                let body = Bytes::from(format!("{i:0>300}"));
                let (parts, echoed, conn) = pool
                    .send_tracked(request(&url), body.clone())
                    .await
                    .unwrap();
                assert_eq!(parts.status, 200);
                assert_eq!(echoed, body);
                conn.slot
            }
        });
        let slots: std::collections::HashSet<usize> = futures_util::future::join_all(sends)
            .await
            .into_iter()
            .collect();
        assert_eq!(slots.len(), 2, "both connections carried requests");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        assert_eq!(pool.live_connections(), 2);
    }

    #[tokio::test]
    async fn goaway_leads_to_a_new_connection() {
        let (url, connections) = stub(Some(3)).await;
        let pool = pool(&url, 1);
        let mut ok = 0;
        for _ in 0..10 {
            // A request racing the GOAWAY may fail; it must be a transport error, and the pool
            // must recover on its own.
            match pool.send(request(&url), Bytes::from_static(b"x")).await {
                Ok((parts, _)) => {
                    assert_eq!(parts.status, 200);
                    ok += 1;
                }
                Err(e) => assert!(
                    matches!(
                        e,
                        TransportError::GoAway(_)
                            | TransportError::Http2(_)
                            | TransportError::Io(_)
                            | TransportError::Reset(_)
                    ),
                    "{e}"
                ),
            }
        }
        assert!(ok >= 8, "{ok} of 10");
        assert!(connections.load(Ordering::SeqCst) >= 3);
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_a_connect_error_then_backoff() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let target = Endpoint::Custom(url.clone()).target().unwrap();
        let config = PoolConfig {
            connections: 1,
            reconnect_backoff: Duration::from_secs(60),
            ..PoolConfig::default()
        };
        let pool = Pool::new(target, None, config).unwrap();
        let first = pool.send(request(&url), Bytes::new()).await.unwrap_err();
        assert!(matches!(first, TransportError::Connect { .. }), "{first}");
        let second = pool.send(request(&url), Bytes::new()).await.unwrap_err();
        assert!(matches!(second, TransportError::Backoff { .. }), "{second}");
    }
}
