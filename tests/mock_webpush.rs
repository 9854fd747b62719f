//! The fake web push service driven by clients written here by hand (the `h2` crate for
//! HTTP/2 over h2c and TLS, hyper for HTTP/1.1) and by pywebpush (a third-party sender, when
//! installed), never by pusher's own sender: a sender bug cannot hide here. The test encrypts
//! with its own RFC 8291 code on RustCrypto and signs VAPID with jsonwebtoken.
//! Also `pusher mock webpush` and `pusher mock all` as processes.

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use pusher::clock::ManualClock;
use pusher::mock::profile::ErrorRate;
use pusher::mock::{MockConfig, MockServer, Profile, WebPushHandler, WebPushOptions};
use pusher::push::webpush::{generated_subscription, Subscription};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Request headers: (name, value).
type Headers = Vec<(&'static str, String)>;

const PAYLOAD: &[u8] = br#"{"title":"Come play!","body":"Helena miss you! come play!"}"#;

/// Every test is bounded in time: a hung server fails the test instead of hanging CI.
async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("test took longer than 60 s");
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

fn now_s() -> u64 {
    pusher::clock::system().now().as_secs()
}

// ---------------------------------------------------------------------------------------
// RFC 8291 encryption and RFC 8292 VAPID, written here independently of the pusher's sender.

fn random_key() -> p256::SecretKey {
    loop {
        if let Ok(key) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            return key;
        }
    }
}

/// aes128gcm (RFC 8188) with the web push key derivation (RFC 8291): a fresh key pair and
/// salt, one record ending in the 0x02 delimiter, header salt | rs | idlen=65 | as_public.
fn encrypt(sub: &Subscription, plaintext: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::{Aead, KeyInit};
    let ua_public = unb64(&sub.keys.p256dh);
    let auth = unb64(&sub.keys.auth);
    let as_secret = random_key();
    let as_public = as_secret.public_key().to_encoded_point(false);
    let ua = p256::PublicKey::from_sec1_bytes(&ua_public).unwrap();
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua.as_affine());
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(&ua_public);
    info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(&auth), shared.raw_secret_bytes())
        .expand(&info, &mut ikm)
        .unwrap();
    let salt: [u8; 16] = rand::random();
    let prk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), &ikm);
    let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .unwrap();
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .unwrap();
    let mut record = plaintext.to_vec();
    record.push(2);
    let cipher = aes_gcm::Aes128Gcm::new_from_slice(&cek).unwrap();
    let nonce = aes_gcm::Nonce::try_from(&nonce[..]).unwrap();
    let ciphertext = cipher.encrypt(&nonce, record.as_slice()).unwrap();
    let mut body = salt.to_vec();
    body.extend_from_slice(&4096u32.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(&ciphertext);
    body
}

/// An application server's VAPID key pair.
struct Vapid {
    secret: p256::SecretKey,
}

impl Vapid {
    fn new() -> Vapid {
        Vapid {
            secret: random_key(),
        }
    }

    /// `k`: the public key, uncompressed, base64url.
    fn k(&self) -> String {
        b64(self.secret.public_key().to_encoded_point(false).as_bytes())
    }

    /// The raw private key, base64url (what pywebpush's `vapid_private_key` takes).
    fn raw(&self) -> String {
        b64(&self.secret.to_bytes())
    }

    /// An ES256 JWT over `claims`, signed with jsonwebtoken.
    fn jwt(&self, claims: &Value) -> String {
        use p256::pkcs8::EncodePrivateKey;
        let pem = self
            .secret
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// `vapid t=<jwt>, k=<key>` with claims for `aud`, valid 12 hours.
    fn header(&self, aud: &str) -> String {
        self.header_with(&claims(aud))
    }

    fn header_with(&self, claims: &Value) -> String {
        format!("vapid t={}, k={}", self.jwt(claims), self.k())
    }
}

fn claims(aud: &str) -> Value {
    json!({"aud": aud, "exp": now_s() + 12 * 3600, "sub": "mailto:ops@example.com"})
}

// ---------------------------------------------------------------------------------------
// Clients

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    fn errno(&self) -> Value {
        self.json()["errno"].clone()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// An HTTP/2 connection (h2c or TLS) made with the `h2` crate.
#[derive(Clone)]
struct H2 {
    send: h2::client::SendRequest<Bytes>,
    /// `scheme://authority` the requests are addressed to (`:scheme`, `:authority`).
    base: String,
}

impl H2 {
    async fn handshake<T>(io: T, base: String) -> H2
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H2 { send, base }
    }

    async fn h2c(addr: SocketAddr) -> H2 {
        H2::handshake(
            TcpStream::connect(addr).await.unwrap(),
            format!("http://{addr}"),
        )
        .await
    }

    /// Over TLS to `localhost:port`, trusting the fake's CA, ALPN h2.
    async fn tls(addr: SocketAddr, ca_pem: &str) -> H2 {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        H2::handshake(tls, format!("https://localhost:{}", addr.port())).await
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        let mut send = self.send.clone().ready().await.unwrap();
        let (response, mut stream) = send
            .send_request(req.body(()).unwrap(), body.is_empty())
            .unwrap();
        if !body.is_empty() {
            stream
                .send_data(Bytes::copy_from_slice(body), true)
                .unwrap();
        }
        let (parts, mut recv) = response.await.unwrap().into_parts();
        let mut buf = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.unwrap();
            let _ = recv.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
        }
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: Bytes::from(buf),
        }
    }

    async fn post(&mut self, path: &str, headers: &[(&str, String)], body: &[u8]) -> Answer {
        self.request(Method::POST, path, headers, body).await
    }
}

/// One HTTP/1.1 request on a fresh connection (hyper's client), `Host: addr`.
async fn http1(addr: SocketAddr, path: &str, headers: &[(&str, String)], body: &[u8]) -> Answer {
    use http_body_util::{BodyExt, Full};
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    let response = sender
        .send_request(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------------------
// The fake and valid pushes

struct Fake {
    server: MockServer,
    vapid: Vapid,
}

async fn start(options: WebPushOptions, profile: Profile) -> Fake {
    let config = MockConfig {
        profile,
        record_tokens: 1000,
        ..MockConfig::default()
    };
    let server = MockServer::start_with(config, WebPushHandler::new(options))
        .await
        .expect("fake starts");
    Fake {
        server,
        vapid: Vapid::new(),
    }
}

async fn start_default() -> Fake {
    start(WebPushOptions::default(), Profile::default()).await
}

impl Fake {
    fn h2c_origin(&self) -> String {
        format!("http://{}", self.server.h2c_addr().unwrap())
    }

    /// A subscription the generator would make for `id`, on the h2c listener.
    fn subscription(&self, id: &str) -> Subscription {
        generated_subscription(&self.h2c_origin(), id)
    }

    /// The headers of a valid push with VAPID for `aud`.
    fn headers(&self, aud: &str) -> Headers {
        headers_with(self.vapid.header(aud))
    }

    /// A valid push to `id` over h2c: (path, headers, body).
    fn push(&self, id: &str) -> (String, Headers, Vec<u8>) {
        let sub = self.subscription(id);
        (
            format!("/wpush/{id}"),
            self.headers(&self.h2c_origin()),
            encrypt(&sub, PAYLOAD),
        )
    }

    fn stats(&self) -> pusher::mock::StatsSnapshot {
        self.server.stats().snapshot()
    }

    fn delivered(&self, id: &str) -> u64 {
        self.server
            .stats()
            .delivered_tokens()
            .get(id)
            .copied()
            .unwrap_or(0)
    }
}

fn headers_with(authorization: String) -> Headers {
    vec![
        ("authorization", authorization),
        ("ttl", "60".into()),
        ("content-encoding", "aes128gcm".into()),
        ("content-type", "application/octet-stream".into()),
    ]
}

/// `headers` without `name`.
fn without(headers: &[(&'static str, String)], name: &str) -> Headers {
    headers
        .iter()
        .filter(|(n, _)| *n != name)
        .cloned()
        .collect()
}

/// `headers` with `name` set to `value`.
fn with(headers: &[(&'static str, String)], name: &'static str, value: &str) -> Headers {
    let mut out = without(headers, name);
    out.push((name, value.to_string()));
    out
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_valid_push_is_created_decrypted_and_counted() {
    bounded(async {
        let fake = start_default().await;
        let mut client = H2::h2c(fake.server.h2c_addr().unwrap()).await;
        let (path, headers, body) = fake.push("a1b2c3");
        let answer = client.post(&path, &headers, &body).await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        assert!(answer.header("location").unwrap().starts_with("/m/"));
        assert_eq!(answer.header("ttl"), Some("60"));
        assert!(answer.body.is_empty());
        // The same JWT again (the cached verification), and a second message id.
        let again = client
            .post(
                &path,
                &headers,
                &encrypt(&fake.subscription("a1b2c3"), b"2"),
            )
            .await;
        assert_eq!(again.status, 201);
        assert_ne!(again.header("location"), answer.header("location"));
        assert_eq!(fake.delivered("a1b2c3"), 2);
        let stats = fake.stats();
        assert_eq!(stats.by_status.get(&201), Some(&2));
        assert_eq!(stats.decrypted, 2);
        assert_eq!(stats.decrypted_bytes, PAYLOAD.len() as u64 + 1);
        assert_eq!(
            fake.server.stats().recent_plaintexts(),
            vec![PAYLOAD.to_vec(), b"2".to_vec()]
        );
        // Urgency and Topic when valid; a tickle push (no body, no encoding).
        let full = with(&with(&headers, "urgency", "high"), "topic", "game-update_1");
        assert_eq!(client.post(&path, &full, &body).await.status, 201);
        let tickle = without(&headers, "content-encoding");
        assert_eq!(client.post(&path, &tickle, b"").await.status, 201);
    })
    .await
}

#[tokio::test]
async fn http1_and_tls_work_as_well_as_h2c() {
    bounded(async {
        let fake = start_default().await;
        // HTTP/1.1 on the cleartext listener: the origin comes from Host.
        let h2c = fake.server.h2c_addr().unwrap();
        let (path, headers, body) = fake.push("c0ffee01");
        let answer = http1(h2c, &path, &headers, &body).await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        let bad = http1(h2c, &path, &without(&headers, "ttl"), &body).await;
        assert_eq!((bad.status, bad.errno()), (400, json!(111)));

        // HTTP/2 over TLS: the origin is https://localhost:port; http:// is another origin.
        let tls = fake.server.tls_addr().unwrap();
        let mut client = H2::tls(tls, fake.server.ca_pem()).await;
        let origin = format!("https://localhost:{}", tls.port());
        let sub = generated_subscription(&origin, "c0ffee02");
        let body = encrypt(&sub, PAYLOAD);
        let answer = client
            .post("/wpush/c0ffee02", &fake.headers(&origin), &body)
            .await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        let plain_http = format!("http://localhost:{}", tls.port());
        let answer = client
            .post("/wpush/c0ffee02", &fake.headers(&plain_http), &body)
            .await;
        assert_eq!(answer.status, 403, "{:?}", answer.body);
        assert_eq!(fake.stats().decrypted, 2);
    })
    .await
}

#[tokio::test]
async fn headers_and_bodies_are_checked() {
    bounded(async {
        let fake = start_default().await;
        let mut client = H2::h2c(fake.server.h2c_addr().unwrap()).await;
        let (path, headers, body) = fake.push("b0b0");
        let cases: Vec<(&str, Headers, Vec<u8>, u16, Value)> = vec![
            (
                "no TTL",
                without(&headers, "ttl"),
                body.clone(),
                400,
                json!(111),
            ),
            (
                "TTL not a number",
                with(&headers, "ttl", "soon"),
                body.clone(),
                400,
                json!(111),
            ),
            (
                "negative TTL",
                with(&headers, "ttl", "-5"),
                body.clone(),
                400,
                json!(114),
            ),
            (
                "bad Topic",
                with(&headers, "topic", "has space"),
                body.clone(),
                400,
                json!(113),
            ),
            (
                "long Topic",
                with(&headers, "topic", &"a".repeat(33)),
                body.clone(),
                400,
                json!(113),
            ),
            (
                "bad Urgency",
                with(&headers, "urgency", "urgent"),
                body.clone(),
                400,
                Value::Null,
            ),
            (
                "no Content-Encoding",
                without(&headers, "content-encoding"),
                body.clone(),
                400,
                json!(110),
            ),
            (
                "aesgcm",
                with(&headers, "content-encoding", "aesgcm"),
                body.clone(),
                400,
                json!(110),
            ),
            (
                "empty aes128gcm",
                headers.clone(),
                Vec::new(),
                400,
                json!(110),
            ),
            (
                "short body",
                headers.clone(),
                body[..40].to_vec(),
                400,
                json!(110),
            ),
        ];
        for (what, headers, body, status, errno) in cases {
            let answer = client.post(&path, &headers, &body).await;
            assert_eq!(answer.status, status, "{what}: {:?}", answer.body);
            let json = answer.json();
            assert_eq!(json["errno"], errno, "{what}: {json}");
            assert_eq!(json["code"], status, "{what}");
            assert!(
                json["error"].is_string() && json["message"].is_string(),
                "{json}"
            );
        }
        // Over 4096 bytes: 413.
        let big = encrypt(&fake.subscription("b0b0"), &[b'x'; 4000]);
        assert!(big.len() > 4096);
        let answer = client.post(&path, &headers, &big).await;
        assert_eq!((answer.status, answer.errno()), (413, json!(104)));
        // Exactly 4096 bytes is fine.
        let max = encrypt(&fake.subscription("b0b0"), &[b'x'; 4096 - 86 - 17]);
        assert_eq!(max.len(), 4096);
        assert_eq!(client.post(&path, &headers, &max).await.status, 201);
        // A corrupted ciphertext does not decrypt with the subscription's keys.
        let mut corrupted = body.clone();
        *corrupted.last_mut().unwrap() ^= 1;
        let answer = client.post(&path, &headers, &corrupted).await;
        assert_eq!(answer.status, 400);
        assert!(
            answer.json()["message"]
                .as_str()
                .unwrap()
                .contains("decrypt"),
            "{}",
            answer.json()
        );
        // Encrypted for another subscription: the keys do not match either.
        let other = encrypt(&fake.subscription("someone-else"), PAYLOAD);
        assert_eq!(client.post(&path, &headers, &other).await.status, 400);
        let stats = fake.stats();
        assert_eq!(stats.by_reason.get("decryption_failed"), Some(&2));
        assert_eq!(stats.by_reason.get("no_ttl"), Some(&2));
        assert_eq!(fake.delivered("b0b0"), 1);
    })
    .await
}

#[tokio::test]
async fn vapid_is_verified() {
    bounded(async {
        let fake = start_default().await;
        let mut client = H2::h2c(fake.server.h2c_addr().unwrap()).await;
        let (path, headers, body) = fake.push("ab12");
        let origin = fake.h2c_origin();
        let vapid = &fake.vapid;
        let now = now_s();
        let signed = |claims: Value| headers_with(vapid.header_with(&claims));
        let other = Vapid::new();
        let cases: Vec<(&str, Headers, u16)> = vec![
            ("no Authorization", without(&headers, "authorization"), 401),
            (
                "garbled",
                with(&headers, "authorization", "vapid garbage"),
                401,
            ),
            (
                "Bearer",
                with(
                    &headers,
                    "authorization",
                    &format!("Bearer {}", vapid.jwt(&claims(&origin))),
                ),
                401,
            ),
            (
                "t not a JWT",
                with(
                    &headers,
                    "authorization",
                    &format!("vapid t=abc, k={}", vapid.k()),
                ),
                401,
            ),
            (
                "k of another key",
                with(
                    &headers,
                    "authorization",
                    &format!("vapid t={}, k={}", vapid.jwt(&claims(&origin)), other.k()),
                ),
                401,
            ),
            (
                "k not a key",
                with(
                    &headers,
                    "authorization",
                    &format!("vapid t={}, k=AAAA", vapid.jwt(&claims(&origin))),
                ),
                401,
            ),
            ("wrong aud", fake.headers("https://push.example.com"), 403),
            ("aud without port", fake.headers("http://127.0.0.1"), 403),
            (
                "aud with a path",
                fake.headers(&format!("{origin}/wpush/ab12")),
                403,
            ),
            (
                "exp > 24 h",
                signed(json!({"aud": origin, "exp": now + 25 * 3600, "sub": "mailto:a@b.c"})),
                403,
            ),
            (
                "expired",
                signed(json!({"aud": origin, "exp": now - 3600, "sub": "mailto:a@b.c"})),
                403,
            ),
            (
                "no exp",
                signed(json!({"aud": origin, "sub": "mailto:a@b.c"})),
                403,
            ),
            (
                "bad sub",
                signed(json!({"aud": origin, "exp": now + 60, "sub": "ops@example.com"})),
                403,
            ),
            (
                "no sub",
                signed(json!({"aud": origin, "exp": now + 60})),
                403,
            ),
        ];
        for (what, headers, status) in cases {
            let answer = client.post(&path, &headers, &body).await;
            assert_eq!(answer.status, status, "{what}: {:?}", answer.body);
            assert_eq!(answer.errno(), json!(109), "{what}");
        }
        // Lenient spelling: scheme case, no space after the comma, k first, https: sub.
        let t = vapid.jwt(&json!({"aud": origin, "exp": now + 60, "sub": "https://example.com"}));
        for authorization in [
            format!("VAPID t={t},k={}", vapid.k()),
            format!("vapid k={}, t={t}", vapid.k()),
        ] {
            let answer = client
                .post(
                    &path,
                    &with(&headers, "authorization", &authorization),
                    &body,
                )
                .await;
            assert_eq!(answer.status, 201, "{authorization}: {:?}", answer.body);
        }
        assert_eq!(fake.stats().by_reason.get("vapid_signature"), Some(&1));
        assert_eq!(fake.delivered("ab12"), 2);
    })
    .await
}

#[tokio::test]
async fn expiry_follows_the_clock() {
    bounded(async {
        let clock = ManualClock::new();
        let options = WebPushOptions {
            clock: Arc::new(clock.clone()),
            ..WebPushOptions::default()
        };
        let fake = start(options, Profile::default()).await;
        let mut client = H2::h2c(fake.server.h2c_addr().unwrap()).await;
        let (path, headers, body) = fake.push("ee01");
        assert_eq!(client.post(&path, &headers, &body).await.status, 201);
        // The token said 12 hours; 13 hours later the cached verification is not enough.
        clock.advance(Duration::from_secs(13 * 3600));
        assert_eq!(client.post(&path, &headers, &body).await.status, 403);
    })
    .await
}

#[tokio::test]
async fn token_rules_decide_valid_pushes() {
    bounded(async {
        let fake = start_default().await;
        let mut client = H2::h2c(fake.server.h2c_addr().unwrap()).await;
        for (id, status, errno) in [
            ("dead0001", 410, json!(106)),
            ("gone0001", 404, json!(102)),
            ("bad00001", 404, json!(102)),
            ("0ff00001", 404, json!(102)),
        ] {
            let (path, headers, body) = fake.push(id);
            for _ in 0..2 {
                let answer = client.post(&path, &headers, &body).await;
                assert_eq!(
                    (answer.status, answer.errno()),
                    (status, errno.clone()),
                    "{id}"
                );
            }
        }
        for (id, first) in [("42900001", 429), ("50300001", 503)] {
            let (path, headers, body) = fake.push(id);
            let answer = client.post(&path, &headers, &body).await;
            assert_eq!(answer.status, first, "{id}");
            assert_eq!(answer.header("retry-after"), Some("1"), "{id}");
            assert_eq!(
                client.post(&path, &headers, &body).await.status,
                201,
                "{id}"
            );
            assert_eq!(fake.delivered(id), 1);
        }
        // The rules apply only to valid requests: a dead subscription without TTL is a 400.
        let (path, headers, body) = fake.push("dead0002");
        let answer = client.post(&path, &without(&headers, "ttl"), &body).await;
        assert_eq!(answer.status, 400);
        assert_eq!(fake.stats().by_reason.get("no_subscription"), Some(&2));
    })
    .await
}

#[tokio::test]
async fn routes_and_methods() {
    bounded(async {
        let fake = start_default().await;
        let mut client = H2::h2c(fake.server.h2c_addr().unwrap()).await;
        let (_, headers, body) = fake.push("aa11");
        for path in ["/", "/wpush/", "/wpush/a/b", "/v1/projects/p/messages:send"] {
            let answer = client.post(path, &headers, &body).await;
            assert_eq!((answer.status, answer.errno()), (404, json!(102)), "{path}");
        }
        let answer = client.request(Method::GET, "/wpush/aa11", &[], b"").await;
        assert_eq!(answer.status, 405);
        assert_eq!(answer.header("allow"), Some("POST"));
    })
    .await
}

#[tokio::test]
async fn decrypt_every_samples_and_profiles_script_errors() {
    bounded(async {
        // decrypt_every 0: framing is checked, the ciphertext is not.
        let fake = start(
            WebPushOptions {
                decrypt_every: 0,
                ..WebPushOptions::default()
            },
            Profile::default(),
        )
        .await;
        let mut client = H2::h2c(fake.server.h2c_addr().unwrap()).await;
        let (path, headers, mut body) = fake.push("cc01");
        *body.last_mut().unwrap() ^= 1;
        assert_eq!(client.post(&path, &headers, &body).await.status, 201);
        assert_eq!(client.post(&path, &headers, &body[..50]).await.status, 400);
        assert_eq!(fake.stats().decrypted, 0);

        // decrypt_every 2: one message in two.
        let fake = start(
            WebPushOptions {
                decrypt_every: 2,
                ..WebPushOptions::default()
            },
            Profile::default(),
        )
        .await;
        let mut client = H2::h2c(fake.server.h2c_addr().unwrap()).await;
        let (path, headers, body) = fake.push("cc02");
        for _ in 0..4 {
            assert_eq!(client.post(&path, &headers, &body).await.status, 201);
        }
        assert_eq!(fake.stats().decrypted, 2);

        // A profile whose error mix always answers: APNs reason names map to web push statuses.
        for (reason, status) in [
            ("TooManyRequests", 429),
            ("InternalServerError", 500),
            ("Unregistered", 410),
        ] {
            let profile = Profile {
                errors: vec![ErrorRate {
                    reason: reason.into(),
                    rate: 1.0,
                }],
                ..Profile::default()
            };
            let fake = start(WebPushOptions::default(), profile).await;
            let mut client = H2::h2c(fake.server.h2c_addr().unwrap()).await;
            let (path, headers, body) = fake.push("cc03");
            let answer = client.post(&path, &headers, &body).await;
            assert_eq!(answer.status, status, "{reason}");
            assert_eq!(
                answer.header("retry-after").is_some(),
                status == 429,
                "{reason}"
            );
            assert_eq!(fake.stats().by_reason.get(reason), Some(&1));
            // Invalid requests are refused before the profile speaks.
            let answer = client.post(&path, &without(&headers, "ttl"), &body).await;
            assert_eq!(answer.status, 400, "{reason}");
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// A third-party sender: pywebpush (HTTP/1.1 over TLS with `requests`).

fn have_pywebpush() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import pywebpush"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs tests/support/webpush_send.py; its one line of JSON output.
async fn pywebpush(
    sub: &Subscription,
    vapid: &Vapid,
    ca: &std::path::Path,
    payload: &str,
) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/webpush_send.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(serde_json::to_string(sub).unwrap())
        .arg(vapid.raw())
        .arg("mailto:ops@example.com")
        .arg(payload)
        .arg(ca)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "webpush_send.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test]
async fn pywebpush_delivers_to_the_fake() {
    if !have_pywebpush() {
        println!("skipped: pywebpush is not installed (pip install pywebpush)");
        return;
    }
    bounded(async {
        let fake = start_default().await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, fake.server.ca_pem()).unwrap();
        // pywebpush takes `aud` from the endpoint as scheme://netloc: the port is kept.
        let origin = format!(
            "https://127.0.0.1:{}",
            fake.server.tls_addr().unwrap().port()
        );
        let payload = r#"{"title":"from pywebpush"}"#;
        let sub = generated_subscription(&origin, "0a0b0c0d");
        let answer = pywebpush(&sub, &fake.vapid, &ca, payload).await;
        assert_eq!(answer["status"], 201, "{answer}");
        assert_eq!(answer["aud"], origin.as_str(), "{answer}");
        assert!(answer["location"].as_str().unwrap().starts_with("/m/"));
        assert_eq!(
            fake.server.stats().recent_plaintexts(),
            vec![payload.as_bytes().to_vec()]
        );
        // A dead subscription: 410 with autopush's JSON.
        let sub = generated_subscription(&origin, "dead0a0b");
        let answer = pywebpush(&sub, &fake.vapid, &ca, payload).await;
        assert_eq!(answer["status"], 410, "{answer}");
        let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["errno"], 106);
        assert_eq!(fake.delivered("0a0b0c0d"), 1);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// The CLI

async fn spawn_mock(args: &[&str]) -> (tokio::process::Child, Value) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pusher"))
        .arg("mock")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .unwrap();
    (child, serde_json::from_str(&line).unwrap())
}

async fn stop(mut child: tokio::process::Child) {
    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn cli_mock_webpush_prints_its_addresses_and_serves() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let ca_arg = ca.display().to_string();
        let (child, ready) =
            spawn_mock(&["webpush", "--decrypt-every", "1", "--ca-out", &ca_arg]).await;
        let webpush = &ready["webpush"];
        assert_eq!(webpush["ca"].as_str().unwrap(), ca_arg);
        let tls: SocketAddr = webpush["tls"].as_str().unwrap().parse().unwrap();
        assert_eq!(webpush["origin"], format!("https://{tls}"));
        assert!(std::fs::read_to_string(&ca)
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        // One push over HTTP/1.1 to the cleartext listener.
        let h2c: SocketAddr = webpush["h2c"].as_str().unwrap().parse().unwrap();
        let origin = format!("http://{h2c}");
        let vapid = Vapid::new();
        let body = encrypt(&generated_subscription(&origin, "cli01"), PAYLOAD);
        let answer = http1(
            h2c,
            "/wpush/cli01",
            &headers_with(vapid.header(&origin)),
            &body,
        )
        .await;
        assert_eq!(answer.status, 201, "{:?}", answer.body);
        let admin: SocketAddr = ready["admin"].as_str().unwrap().parse().unwrap();
        let stream = TcpStream::connect(admin).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/stats")
            .header("host", admin.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        use http_body_util::BodyExt;
        let stats = sender
            .send_request(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
        let stats: Value = serde_json::from_slice(&stats.to_bytes()).unwrap();
        assert_eq!(
            (stats["requests"].clone(), stats["decrypted"].clone()),
            (json!(1), json!(1))
        );
        stop(child).await;

        // `mock all` runs the web push fake beside APNs and FCM.
        let (child, ready) = spawn_mock(&["all", "--decrypt-every", "0"]).await;
        for key in ["tls", "h2c", "admin", "ca", "origin"] {
            assert!(ready["webpush"][key].is_string(), "{key}: {ready}");
        }
        assert!(ready["apns"]["tls"].is_string() && ready["fcm"]["tls"].is_string());
        stop(child).await;
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Throughput (run by hand: cargo test --release --test mock_webpush -- --ignored --nocapture)

/// Pushes `total` copies of one valid message to the fake at `addr` over `connections` h2c
/// connections, `depth` in flight on each; returns pushes a second.
async fn blast(addr: SocketAddr, total: usize, connections: usize, depth: usize) -> f64 {
    let origin = format!("http://{addr}");
    let headers = headers_with(Vapid::new().header(&origin));
    let body = encrypt(&generated_subscription(&origin, "a0a0a0a0"), PAYLOAD);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = H2::h2c(addr).await;
        for _ in 0..depth {
            let (mut client, headers, body) = (client.clone(), headers.clone(), body.clone());
            let n = total / connections / depth;
            tasks.push(tokio::spawn(async move {
                for _ in 0..n {
                    let answer = client.post("/wpush/a0a0a0a0", &headers, &body).await;
                    assert_eq!(answer.status, 201);
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

#[ignore = "a measurement, not a check: run by hand, in release"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput() {
    for every in [0, 100, 10, 1] {
        // The fake on its own thread and current_thread runtime, as the bench runs it.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let options = WebPushOptions {
                    decrypt_every: every,
                    ..WebPushOptions::default()
                };
                let fake = start(options, Profile::default()).await;
                let _ = ready_tx.send(fake.server.h2c_addr().unwrap());
                let _ = stop_rx.await;
            });
        });
        let addr = ready_rx.await.unwrap();
        let rate = blast(addr, 100_000, 4, 50).await;
        println!("decrypt_every {every}: {rate:.0} pushes/s");
        let _ = stop_tx.send(());
        thread.join().unwrap();
    }
}
