//! The protocol-neutral core of the fake servers: listeners (TLS and h2c, HTTP/2 and
//! HTTP/1.1 via hyper-util's auto builder), connection tracking, faults from the profile,
//! counters and the admin endpoint. A protocol plugs in as a [`Handler`].

use super::profile::{Disruption, Faults, Profile};
use super::stats::Stats;
use super::tls::{self, ServerCert};
use super::MockError;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long `shutdown` lets open connections finish after their GOAWAY.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/1.1 request head that takes longer than this closes the connection (slow-loris
/// clients would otherwise hold connections open forever).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in flight for this long is closed (`MockConfig::idle_timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One protocol (APNs, FCM, web push): turns a request into a response. Runs after the fault layer has
/// decided not to reset, drop or stall the request; asks `env.faults.scripted()` for scripted
/// errors once the request is known to be valid.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        req: Request<Incoming>,
        conn: &'a ConnState,
        env: &'a Env,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send + 'a;
}

/// What every handler can use: the counters and the profile in action.
#[derive(Debug)]
pub struct Env {
    pub stats: Arc<Stats>,
    pub faults: Faults,
}

/// Per-connection state a handler may need.
#[derive(Debug)]
pub struct ConnState {
    /// The TLS peer presented a certificate that chains to the configured client CA.
    pub client_cert: bool,
    /// The connection came in on the TLS listener (`https` origins), not the cleartext one.
    pub tls: bool,
    /// The last credential verified on this connection, so a connection reusing its token
    /// (the normal case) costs one signature check, not one per request.
    pub credential: Mutex<Option<Credential>>,
    streams: AtomicU64,
    goaway: Notify,
    drop_now: Notify,
    opened: Instant,
    /// Requests being handled now.
    in_flight: AtomicU64,
    /// When a request last began or ended, in milliseconds after `opened`.
    last_active_ms: AtomicU64,
}

/// A verified bearer token and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub token: String,
    /// The issuer (APNs team id) of the first token verified on the connection.
    pub issuer: String,
    /// Issued-at, Unix seconds.
    pub issued_at: u64,
    /// The fake answered ExpiredProviderToken on this connection since this token was
    /// verified: the next new token is a forced renewal, not a token update.
    pub renewal_due: bool,
}

impl ConnState {
    fn new(client_cert: bool, tls: bool) -> ConnState {
        ConnState {
            client_cert,
            tls,
            credential: Mutex::new(None),
            streams: AtomicU64::new(0),
            goaway: Notify::new(),
            drop_now: Notify::new(),
            opened: Instant::now(),
            in_flight: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
        }
    }

    /// How long no request has been in flight; `None` while one is.
    fn quiet_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Acquire));
        Some(self.opened.elapsed().saturating_sub(last))
    }

    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.store(now, Ordering::Release);
    }
}

/// A request in flight on its connection, from head to answer (or to its stream's end).
struct InFlight<'a>(&'a ConnState);

impl<'a> InFlight<'a> {
    fn new(conn: &'a ConnState) -> InFlight<'a> {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.touch();
        InFlight(conn)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where and how a fake server listens, and how it behaves.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// HTTP/2 (and HTTP/1.1) over TLS; `None` = no TLS listener.
    pub tls_listen: Option<SocketAddr>,
    /// Cleartext: HTTP/2 with prior knowledge (h2c) and HTTP/1.1; `None` = none.
    pub h2c_listen: Option<SocketAddr>,
    /// Admin HTTP/1.1 endpoint (`GET /stats`, `POST /reset`); `None` = none.
    pub admin_listen: Option<SocketAddr>,
    /// When set, the admin endpoint answers only requests with `Authorization: Bearer
    /// <token>` (401 otherwise).
    pub admin_token: Option<String>,
    pub server_cert: ServerCert,
    /// PEM of the CA that signs client (provider) certificates: enables mutual TLS.
    pub client_ca_pem: Option<Vec<u8>>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to HTTP/2 clients.
    pub max_streams: u32,
    pub profile: Profile,
    /// Hold up to this many distinct delivered tokens for tests (0 = off).
    pub record_tokens: usize,
    /// APNs specifics (JWT keys, clock).
    pub apns: super::apns::ApnsOptions,
    /// A connection with no request in flight for this long is closed gracefully (GOAWAY
    /// on HTTP/2), as APNs closes idle ones; this includes a client that connects and never
    /// sends a byte. HTTP/1.1 keep-alive connections close sooner: 10 s without a request.
    pub idle_timeout: Duration,
}

impl Default for MockConfig {
    /// 127.0.0.1 port 0 for TLS and h2c, no admin port, generated certificate, happy
    /// profile, no auth, 1000 streams.
    fn default() -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        MockConfig {
            tls_listen: Some(loopback),
            h2c_listen: Some(loopback),
            admin_listen: None,
            admin_token: None,
            server_cert: ServerCert::Generate,
            client_ca_pem: None,
            max_streams: 1000,
            profile: Profile::default(),
            record_tokens: 0,
            apns: Default::default(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// A running fake server. Dropping it stops the listeners; `shutdown` also waits for open
/// connections to finish (bounded).
#[derive(Debug)]
pub struct MockServer {
    tls_addr: Option<SocketAddr>,
    h2c_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    ca_pem: String,
    stats: Arc<Stats>,
    stop: CancellationToken,
    listeners: Vec<JoinHandle<()>>,
}

impl MockServer {
    /// Starts a fake APNs server on the current tokio runtime.
    pub async fn start(config: MockConfig) -> Result<MockServer, MockError> {
        let handler = super::apns::ApnsHandler::new(&config.apns, config.client_ca_pem.is_some())?;
        MockServer::start_with(config, handler).await
    }

    /// Starts a fake server for any protocol.
    pub async fn start_with<H: Handler>(
        config: MockConfig,
        handler: H,
    ) -> Result<MockServer, MockError> {
        config.profile.validate()?;
        let stats = Arc::new(
            Stats::new(config.record_tokens).map_err(|e| MockError::Config(e.to_string()))?,
        );
        let shared = Arc::new(Shared {
            handler,
            env: Env {
                stats: stats.clone(),
                faults: Faults::new(config.profile.clone()),
            },
            idle_timeout: config.idle_timeout,
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // No `date` header on HTTP/2 answers: APNs clients ignore it, and it costs a clock read
        // and an HPACK literal per response.
        builder
            .http2()
            .max_concurrent_streams(config.max_streams)
            .auto_date_header(false);
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let builder = Arc::new(builder);
        let stop = CancellationToken::new();
        let identity = tls::identity(&config.server_cert)?;
        let ca_pem = identity.ca_pem.clone();
        let mut listeners = Vec::new();

        let mut tls_addr = None;
        if let Some(addr) = config.tls_listen {
            let listener = bind(addr).await?;
            tls_addr = Some(local_addr(&listener, addr)?);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(
                &identity,
                config.client_ca_pem.as_deref(),
            )?);
            let (shared, builder, stop) = (shared.clone(), builder.clone(), stop.clone());
            listeners.push(tokio::spawn(accept_loop(
                listener,
                stop.clone(),
                move |tcp| {
                    let (shared, builder, stop, acceptor) = (
                        shared.clone(),
                        builder.clone(),
                        stop.clone(),
                        acceptor.clone(),
                    );
                    async move {
                        let Ok(Ok(tls)) =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                        else {
                            return;
                        };
                        let client_cert = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .is_some_and(|c| !c.is_empty());
                        serve_connection(tls, client_cert, true, shared, builder, stop).await;
                    }
                },
            )));
        }

        let mut h2c_addr = None;
        if let Some(addr) = config.h2c_listen {
            let listener = bind(addr).await?;
            h2c_addr = Some(local_addr(&listener, addr)?);
            let (shared, builder, stop) = (shared.clone(), builder.clone(), stop.clone());
            listeners.push(tokio::spawn(accept_loop(
                listener,
                stop.clone(),
                move |tcp| {
                    serve_connection(
                        tcp,
                        false,
                        false,
                        shared.clone(),
                        builder.clone(),
                        stop.clone(),
                    )
                },
            )));
        }

        let mut admin_addr = None;
        if let Some(addr) = config.admin_listen {
            let listener = bind(addr).await?;
            admin_addr = Some(local_addr(&listener, addr)?);
            let stats = stats.clone();
            let token: Option<Arc<str>> = config.admin_token.as_deref().map(Arc::from);
            listeners.push(tokio::spawn(accept_loop(
                listener,
                stop.clone(),
                move |tcp| serve_admin(tcp, stats.clone(), token.clone()),
            )));
        }

        Ok(MockServer {
            tls_addr,
            h2c_addr,
            admin_addr,
            ca_pem,
            stats,
            stop,
            listeners,
        })
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }
    pub fn h2c_addr(&self) -> Option<SocketAddr> {
        self.h2c_addr
    }
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }
    /// PEM a client must trust to reach the TLS listener.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Stops accepting, sends GOAWAY on every open connection, and waits up to 2 s for them
    /// to finish their streams.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for listener in self.listeners.drain(..) {
            let _ = listener.await;
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE + Duration::from_millis(200);
        while self.stats.snapshot().connections_active > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Shared<H> {
    handler: H,
    env: Env,
    idle_timeout: Duration,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, MockError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MockError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, MockError> {
    listener
        .local_addr()
        .map_err(|source| MockError::Bind { addr, source })
}

async fn accept_loop<F, Fut>(listener: TcpListener, stop: CancellationToken, on_connection: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, _peer)) => {
                // Small requests and responses: never wait for Nagle.
                let _ = tcp.set_nodelay(true);
                tokio::spawn(on_connection(tcp));
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, "mock: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The error a service returns to make hyper reset the stream (or drop the connection).
#[derive(Debug, thiserror::Error)]
#[error("fault injected by the mock profile")]
struct Injected;

async fn serve_connection<H, I>(
    io: I,
    client_cert: bool,
    tls: bool,
    shared: Arc<Shared<H>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: CancellationToken,
) where
    H: Handler,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stats = shared.env.stats.clone();
    stats.connection_opened();
    let idle_timeout = shared.idle_timeout;
    let conn_state = Arc::new(ConnState::new(client_cert, tls));
    let service = {
        let conn_state = conn_state.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (shared, conn) = (shared.clone(), conn_state.clone());
            // Boxed: hyper spawns a task per stream holding this future (~1.7 KB), and tokio
            // moves a spawned future by value several times before it is in place; boxed,
            // those moves are of a pointer (memmove per request: 94 copies and 31.8 KB before).
            Box::pin(async move { handle_one(req, &conn, &shared).await })
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    // Idle connections are closed, silent ones included (hyper-util's protocol detection
    // waits for the first bytes forever); the wait is re-armed while requests come.
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut idled = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                match result {
                    // Closing a connection that never sent its first bytes ends it in an
                    // error: ours, not the client's.
                    Err(_) if idled => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "mock: connection ended with an error");
                        stats.protocol_error();
                    }
                    Ok(()) => {}
                }
                break;
            }
            // A zero timeout turns the close off (a connection closing still gets its grace).
            () = &mut idle, if closing || !idle_timeout.is_zero() => {
                // Once closing (for idleness or a GOAWAY), a peer that keeps the connection
                // open, quiet, for the grace after is dropped.
                let wait = if closing { SHUTDOWN_GRACE } else { idle_timeout };
                let now = tokio::time::Instant::now();
                match conn_state.quiet_for() {
                    Some(quiet) if quiet >= wait && closing => break,
                    Some(quiet) if quiet >= wait => {
                        closing = true;
                        idled = true;
                        stats.idle_closed();
                        conn.as_mut().graceful_shutdown();
                        idle.as_mut().reset(now + SHUTDOWN_GRACE);
                    }
                    Some(quiet) => idle.as_mut().reset(now + (wait - quiet)),
                    None => idle.as_mut().reset(now + wait),
                }
            }
            _ = conn_state.drop_now.notified() => break,
            _ = conn_state.goaway.notified(), if !closing => {
                closing = true;
                stats.goaway_sent();
                conn.as_mut().graceful_shutdown();
            }
            _ = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
                break;
            }
        }
    }
    stats.connection_closed();
}

async fn handle_one<H: Handler>(
    req: Request<Incoming>,
    conn: &ConnState,
    shared: &Shared<H>,
) -> Result<Response<Full<Bytes>>, Injected> {
    let started = Instant::now();
    let _in_flight = InFlight::new(conn);
    let env = &shared.env;
    env.stats.request();
    let streams = conn.streams.fetch_add(1, Ordering::Relaxed) + 1;
    if env.faults.goaway_after() == Some(streams) {
        conn.goaway.notify_one();
    }
    match env.faults.disruption() {
        Some(Disruption::ResetStream) => {
            env.stats.stream_reset();
            return Err(Injected);
        }
        Some(Disruption::DropConnection) => {
            env.stats.connection_dropped();
            conn.drop_now.notify_one();
            return Err(Injected);
        }
        Some(Disruption::Stall(pause)) => {
            env.stats.stall();
            tokio::time::sleep(pause).await;
        }
        None => {}
    }
    let response = shared.handler.handle(req, conn, env).await;
    if let Some(pause) = env.faults.latency() {
        tokio::time::sleep(pause).await;
    }
    let body_len = response.body().size_hint().exact().unwrap_or(0) as usize;
    env.stats
        .response(response.status().as_u16(), body_len, started.elapsed());
    Ok(response)
}

async fn serve_admin(tcp: TcpStream, stats: Arc<Stats>, token: Option<Arc<str>>) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let stats = stats.clone();
        let allowed = token
            .as_deref()
            .is_none_or(|t| crate::telemetry::bearer_matches(req.headers(), t));
        async move {
            Ok::<_, std::convert::Infallible>(if allowed {
                admin_response(&req, &stats)
            } else {
                unauthorized()
            })
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}

fn admin_response(req: &Request<Incoming>, stats: &Stats) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats") => match serde_json::to_vec(&stats.snapshot()) {
            Ok(json) => (StatusCode::OK, json),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json_error(&e.to_string()),
            ),
        },
        (&Method::POST, "/reset") => {
            stats.reset();
            (StatusCode::OK, br#"{"reset":true}"#.to_vec())
        }
        (_, "/stats" | "/reset") => (
            StatusCode::METHOD_NOT_ALLOWED,
            json_error("use GET /stats or POST /reset"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            json_error("not found: GET /stats, POST /reset"),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// 401 for a missing or wrong admin token (which one is not said).
fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(json_error(
        "admin token required: Authorization: Bearer <token>",
    ))));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    response
}

fn json_error(message: &str) -> Vec<u8> {
    serde_json::json!({ "error": message })
        .to_string()
        .into_bytes()
}
