//! A webhook per app (`results.webhooks.<app>`), called by `pusher results` once a
//! notification has a verdict for every record it was accepted with: `POST` of
//! `{"app","notif_id","targets","counts":{"delivered":…}}`. Never on the sender's hot path: a
//! task of its own, retried with the project's retry policy on a connection error or a non-2xx
//! answer: 10 attempts, each wait drawn from 0 to 1, 2, 4 … 64, 120, 120 s (full jitter), so a
//! hook that fails at once is given up after about 3 minutes (6 at most), plus the attempts'
//! own time. gorush logs its hook's failures
//! and never retries; here a call is retried, and one that still fails is logged with the
//! notification, whose results stay in `pusher_results`.
//!
//! A call outlives no process silently: it is claimed in PostgreSQL (`notified_at`), renewed
//! before each retry and ended with its result (`webhook`: ok or failed). A process that stops
//! gives up its calls in progress; one that dies leaves them to expire after `LEASE`. Either
//! way the next `pusher results` claims them again (`Store::claim_abandoned_webhooks`). So a
//! hook is called at least once, and, where a process died mid-call, possibly twice.

use super::store::Store;
use crate::sender::retry::RetryPolicy;
use crate::sender::tls::{client_config, TlsOptions};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Uri;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A call not renewed for this long belonged to a process that died. Longer than the most a
/// call goes unrenewed: one attempt (10 s to connect, 30 s to answer) after a wait of at
/// most the policy's cap (120 s), and after its last attempt a minute recording its end.
pub const LEASE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL itself is not shown: it may hold the hook's token.
    #[error("results.webhooks.{app}: not an http:// or https:// URL (without user:password@)")]
    BadUrl { app: String },
    #[error("webhook TLS: {0}")]
    Tls(#[from] crate::sender::tls::TlsError),
}

/// Calls in progress by `(app, notif_id)`, with how the call went once its end is being
/// recorded.
type OpenCalls = HashMap<(String, String), Option<bool>>;

/// The configured hooks, by app.
#[derive(Clone)]
pub struct Webhooks {
    urls: Arc<BTreeMap<String, Uri>>,
    tls: Arc<rustls::ClientConfig>,
    policy: RetryPolicy,
    /// Calls in progress in this process: given up when it stops, or recorded then.
    open: Arc<Mutex<OpenCalls>>,
    /// Cancelled by `stop`: the calls' tasks end without recording an end.
    stopped: CancellationToken,
    /// Calls in progress at most, per app ([`MAX_CALLS`] each): one app's hook that is down
    /// holds only its own. With one bound for all apps, a failing hook kept every slot and
    /// other apps' completed notifications waited, uncalled, until it recovered.
    slots: Arc<BTreeMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// Calls one process makes at once for one app. A hook that is down or slow keeps each call
/// for minutes (10 attempts, up to 2 min apart, each up to 40 s): unbounded, a few thousand
/// completions a second meant hundreds of thousands of tasks and tens of thousands of sockets
/// (the process's file descriptors, which Kafka and PostgreSQL need too: at most this many
/// per hooked app now). Past the bound a completed notification's call is handed back to
/// PostgreSQL and made when a slot frees.
pub const MAX_CALLS: usize = 256;

impl Webhooks {
    pub fn new(urls: &BTreeMap<String, String>) -> Result<Webhooks, WebhookError> {
        let mut parsed = BTreeMap::new();
        for (app, url) in urls.iter().filter(|(_, u)| !u.trim().is_empty()) {
            let uri: Uri = url
                .parse()
                .map_err(|_| WebhookError::BadUrl { app: app.clone() })?;
            // `user:password@` would go out as part of the Host header, never as credentials.
            let userinfo = uri.authority().is_some_and(|a| a.as_str().contains('@'));
            if !matches!(uri.scheme_str(), Some("http" | "https"))
                || uri.host().is_none()
                || userinfo
            {
                return Err(WebhookError::BadUrl { app: app.clone() });
            }
            parsed.insert(app.clone(), uri);
        }
        // HTTP/1.1 over TLS: a webhook is one small POST.
        let mut tls = (*client_config(&TlsOptions::default())?).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Webhooks {
            urls: Arc::new(parsed),
            tls: Arc::new(tls),
            policy: RetryPolicy {
                max_attempts: 10,
                base: Duration::from_secs(1),
                cap: Duration::from_secs(120),
                max_retry_after: Duration::from_secs(120),
            },
            open: Arc::default(),
            stopped: CancellationToken::new(),
            slots: Arc::new(BTreeMap::new()),
        }
        .with_max_calls(MAX_CALLS))
    }

    /// The same hooks with at most `calls` in progress at once per app (tests; [`MAX_CALLS`]
    /// else).
    pub fn with_max_calls(mut self, calls: usize) -> Webhooks {
        self.slots = Arc::new(
            self.urls
                .keys()
                .map(|app| (app.clone(), Arc::new(tokio::sync::Semaphore::new(calls))))
                .collect(),
        );
        self
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The apps that have a hook.
    pub fn apps(&self) -> impl Iterator<Item = &str> {
        self.urls.keys().map(String::as_str)
    }

    pub fn has(&self, app: &str) -> bool {
        self.urls.contains_key(app)
    }

    /// The hook configured for `app` under another case, if any: an environment variable
    /// (`PUSHER_RESULTS_WEBHOOKS_MYGAME`) names its app in lower case, which an app with
    /// capitals does not match.
    pub fn other_case(&self, app: &str) -> Option<&str> {
        self.urls
            .keys()
            .find(|k| k.as_str() != app && k.eq_ignore_ascii_case(app))
            .map(String::as_str)
    }

    /// Calls `app` may start now.
    pub fn free_slots(&self, app: &str) -> usize {
        self.slots
            .get(app)
            .map_or(0, |slots| slots.available_permits())
    }

    /// Calls `app`'s hook with `body` in a task of its own, retrying until it answers 2xx;
    /// the call was claimed in `store`, where it is renewed before each retry and ended.
    /// False when [`MAX_CALLS`] of the app's are in progress: the caller hands the claim back.
    pub fn spawn_call(&self, store: &Store, app: &str, notif_id: &str, body: Vec<u8>) -> bool {
        let (Some(uri), Some(slots)) = (self.urls.get(app).cloned(), self.slots.get(app)) else {
            return true;
        };
        let key = (app.to_owned(), notif_id.to_owned());
        let slot = {
            // Under the lock `stop` drains `open` with, after it cancels: a call is either
            // drained and given up, or never started.
            let mut open = self.open.lock();
            // Stopping, or already calling it (this process's claim expired and its sweep
            // claimed it again): before the bound, which would hand the call being made back.
            if self.stopped.is_cancelled() || open.contains_key(&key) {
                return true;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                return false;
            };
            open.insert(key.clone(), None);
            slot
        };
        let (tls, policy, open, store, stopped) = (
            self.tls.clone(),
            self.policy.clone(),
            self.open.clone(),
            store.clone(),
            self.stopped.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let (app, notif_id) = (key.0.as_str(), key.1.as_str());
            let body = Bytes::from(body);
            let ok = tokio::select! {
                ok = deliver(&uri, &tls, &policy, &store, app, notif_id, body) => ok,
                // `stop` gives the claim up.
                _ = stopped.cancelled() => return,
            };
            metrics::counter!(crate::telemetry::names::WEBHOOKS,
                              "result" => if ok { "ok" } else { "failed" })
            .increment(1);
            // How it went, for `stop` to record if it comes first (giving the claim up would
            // make a call that was made again). Gone: `stop` gave it up as it ended; recorded
            // once here all the same (an ended call is neither released nor claimed again).
            let stopping = match open.lock().get_mut(&key) {
                Some(ending) => {
                    *ending = Some(ok);
                    false
                }
                None => true,
            };
            if stopping {
                let _ = store.end_webhook(app, notif_id, ok).await;
                return;
            }
            tokio::select! {
                () = record_end(&store, app, notif_id, ok) => {}
                _ = stopped.cancelled() => return,
            }
            open.lock().remove(&key);
        });
        true
    }

    /// Ends the calls still in progress and gives up their claims, so that the next `pusher
    /// results` makes them at once instead of after the lease; the calls made whose end was
    /// being recorded are recorded. No call starts after it.
    pub async fn stop(&self, store: &Store) {
        self.stopped.cancel();
        let mut open = Vec::new();
        let drained: Vec<_> = self.open.lock().drain().collect();
        for ((app, notif_id), ending) in drained {
            match ending {
                Some(ok) => {
                    if let Err(e) = store.end_webhook(&app, &notif_id, ok).await {
                        tracing::warn!(app, notif_id, error = %e,
                            "Cannot record the webhook's end; it may be called again after its lease.");
                    }
                }
                None => open.push((app, notif_id)),
            }
        }
        if open.is_empty() {
            return;
        }
        match store.release_webhooks(&open, LEASE).await {
            Ok(()) => tracing::info!(
                calls = open.len(),
                "Webhook calls in progress given up; the next pusher results makes them."
            ),
            Err(e) => tracing::warn!(calls = open.len(), error = %e,
                "Cannot give up the webhook calls in progress; they are made again after their lease."),
        }
    }
}

/// Records how a call ended, retried for up to a minute: a call made and not recorded is
/// made again after its lease, so PostgreSQL failing for a moment (seen: 20 s) made every
/// hook called in that moment be called twice, five minutes later, with no process dying.
/// Within the minute the claim stays far from the lease (renewed before the last attempt).
async fn record_end(store: &Store, app: &str, notif_id: &str, ok: bool) {
    let policy = RetryPolicy::unbounded(Duration::from_millis(500), Duration::from_secs(8));
    let started = tokio::time::Instant::now();
    let mut failures = 0;
    loop {
        match store.end_webhook(app, notif_id, ok).await {
            Ok(()) => return,
            Err(e) if started.elapsed() >= Duration::from_secs(60) => {
                tracing::warn!(app, notif_id, error = %e,
                    "Cannot record the webhook's end; it may be called again after its lease.");
                return;
            }
            Err(_) => failures += 1,
        }
        let wait = policy.delay(failures, None, &mut rand::rng()); // the rng is not Send
        tokio::time::sleep(wait).await;
    }
}

async fn renew(store: &Store, app: &str, notif_id: &str) {
    if let Err(e) = store.renew_webhook(app, notif_id).await {
        tracing::warn!(app, notif_id, error = %e, "Cannot renew the webhook's claim.");
    }
}

/// Calls `uri` until it answers 2xx or the policy gives up; whether it answered.
async fn deliver(
    uri: &Uri,
    tls: &Arc<rustls::ClientConfig>,
    policy: &RetryPolicy,
    store: &Store,
    app: &str,
    notif_id: &str,
    body: Bytes,
) -> bool {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let problem = match call(uri, tls, body.clone()).await {
            Ok(status) if (200..300).contains(&status) => return true,
            Ok(status) => format!("HTTP {status}"),
            Err(e) => e,
        };
        if !policy.should_retry(attempt) {
            tracing::error!(
                app,
                notif_id,
                attempts = attempt,
                problem,
                "Webhook not delivered; the results stay in pusher_results."
            );
            return false;
        }
        tracing::warn!(app, notif_id, attempt, problem, "Webhook failed; retrying.");
        renew(store, app, notif_id).await;
        let wait = policy.delay(attempt, None, &mut rand::rng()); // the rng is not Send
        tokio::time::sleep(wait).await;
    }
}

/// One POST; the answer's status.
async fn call(uri: &Uri, tls: &Arc<rustls::ClientConfig>, body: Bytes) -> Result<u16, String> {
    // `[fd00::1]` in a URL is `fd00::1` to connect to.
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("connect to {host}:{port}: timed out"))?
    .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    // Origin form (`POST /hook?t=… HTTP/1.1`), as clients send to a server that is no proxy:
    // hyper's connection writes the URI as given, and the absolute form confused some servers.
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::post(target)
        .header("host", uri.authority().map(|a| a.as_str()).unwrap_or(&host))
        .header("content-type", "application/json")
        .header("user-agent", concat!("pusher/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let answer = async {
        if https {
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host}: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(stream, request).await
        } else {
            send(tcp, request).await
        }
    };
    let response = tokio::time::timeout(ANSWER_WITHIN, answer)
        .await
        .map_err(|_| "no answer within 30 s".to_owned())??;
    let status = response.status().as_u16();
    // Its status is the answer: the body is read (a bounded part) only so that a small one
    // ends the exchange cleanly, and for a moment at most, apart from the answer's deadline
    // (a 200 whose body came a byte a second was taken for no answer, and called again).
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BODY).collect(),
    )
    .await;
    Ok(status)
}

/// How long a hook has to answer a call with its status, from the connection's start.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// The most of an answer's body read: only its status is used, and a hook URL pointing at a
/// download or a stream held up to this many calls' bodies in memory ([`MAX_CALLS`]).
const MAX_ANSWER_BODY: usize = 64 * 1024;

async fn send<S>(
    stream: S,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A bad hook URL is named by its app, never echoed (it may hold the hook's token), and
    /// credentials in it are refused (they would go out in the Host header); apps configured
    /// in another case are found to be warned about.
    #[test]
    fn hook_urls_are_checked_and_never_echoed() {
        for url in [
            "ftp://hooks.example/x?token=secret1",
            "https://user:secret1@hooks.example/x",
            "not a url secret1",
        ] {
            let urls = BTreeMap::from([("game".to_owned(), url.to_owned())]);
            let e = Webhooks::new(&urls).err().unwrap().to_string();
            assert!(e.starts_with("results.webhooks.game:"), "{e}");
            assert!(!e.contains("secret1"), "{e}");
        }
        let urls = BTreeMap::from([("mygame".to_owned(), "http://[::1]:9/hook".to_owned())]);
        let hooks = Webhooks::new(&urls).unwrap();
        assert_eq!(hooks.other_case("MyGame"), Some("mygame"));
        assert_eq!(hooks.other_case("mygame"), None);
    }

    /// The request line names the path and query (origin form), the Host header the server.
    #[tokio::test]
    async fn a_call_sends_the_origin_form() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the head ended");
                head.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let uri: Uri = format!("http://{addr}/hook?t=secret").parse().unwrap();
        let tls = client_config(&TlsOptions::default()).unwrap();
        let status = call(&uri, &tls, Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(status, 204);
        let head = server.await.unwrap();
        assert!(
            head.starts_with("POST /hook?t=secret HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
    }

    /// A hook on port 0 that reads one request, writes `head`, then `chunk` after `chunk`
    /// (`pause` apart, at most `chunks`) until the client goes away: the status `call` got,
    /// which must come within 10 s, and the bytes of body written.
    async fn answer_with_body(
        head: &'static [u8],
        chunk: Vec<u8>,
        pause: Duration,
        chunks: usize,
    ) -> (u16, usize) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await.unwrap();
            stream.write_all(head).await.unwrap();
            let mut sent = 0usize;
            for _ in 0..chunks {
                if stream.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
                tokio::time::sleep(pause).await;
            }
            sent
        });
        let uri: Uri = format!("http://{addr}/hook").parse().unwrap();
        let tls = client_config(&TlsOptions::default()).unwrap();
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            call(&uri, &tls, Bytes::from_static(b"{}")),
        )
        .await
        .expect("answered once its status is in")
        .unwrap();
        let sent = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the client closes the connection")
            .unwrap();
        (status, sent)
    }

    /// A 200 whose body comes a byte a second is an answer: its status counts, not the
    /// body's pace. Before, the 30 s deadline covered the body: the call failed and was made
    /// again.
    #[tokio::test]
    async fn a_slow_body_after_the_status_is_an_answer() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 45\r\n\r\n";
        let (status, _) = answer_with_body(head, b"x".to_vec(), Duration::from_secs(1), 45).await;
        assert_eq!(status, 200);
    }

    /// A hook that answers 200 with a body without end (a URL pointing at a stream) is
    /// answered once its status is in, its body read no further than the bound. Before, the
    /// whole body was read: the call ran into its 30 s timeout and was failed and retried, each
    /// call holding what it had read.
    #[tokio::test]
    async fn an_endless_answer_is_not_read_to_its_end() {
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000)).into_bytes();
        let (status, sent) = answer_with_body(head, chunk, Duration::ZERO, usize::MAX).await;
        assert_eq!(status, 200);
        assert!(
            sent < 64 << 20,
            "{sent} bytes sent before the client went away"
        );
    }
}
