//! The fake APNs server driven by a raw HTTP/2 client (the `h2` crate) and by third-party
//! tools (curl), never by pusher's own sender: a sender bug cannot hide here.

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use pusher::clock::ManualClock;
use pusher::mock::profile::{ErrorRate, Resets, Stall, Throttle, Window};
use pusher::mock::{ApnsOptions, JwtKey, MockConfig, MockServer, Profile};
use pusher::push::token_rules::TokenRule;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPIC: &str = "com.example.app";
const VOIP_TOPIC: &str = "com.example.app.voip";
const KEY_ID: &str = "TESTKEY001";
const TEAM_ID: &str = "TEAM000001";
const PAYLOAD: &[u8] = br#"{"aps":{"alert":"Helena miss you! come play!"}}"#;

/// Every test is bounded in time: a hung server fails the test instead of hanging CI.
async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("test took longer than 60 s");
}

fn token() -> String {
    "ab".repeat(32)
}

fn device(token: &str) -> String {
    format!("/3/device/{token}")
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn reason(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        Some(v.get("reason")?.as_str()?.to_string())
    }
    fn apns_id(&self) -> &str {
        self.headers
            .get("apns-id")
            .expect("every answer carries apns-id")
            .to_str()
            .unwrap()
    }
}

struct Client {
    send: h2::client::SendRequest<Bytes>,
    /// `apns-push-type` added to requests that set none; `None` sends none.
    push_type: Option<&'static str>,
}

/// A TLS connection to the fake trusting `ca_pem`; `alpn` offers h2, `client_cert` presents
/// fixtures' client certificate.
async fn tls_stream(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: bool,
    client_cert: bool,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = if client_cert {
        let chain = CertificateDer::pem_file_iter("fixtures/apns/client.pem")
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file("fixtures/apns/client.key").unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    if alpn {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    if alpn {
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    }
    Ok(tls)
}

impl Client {
    async fn handshake<T>(io: T) -> Client
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client {
            send,
            push_type: Some("alert"),
        }
    }

    async fn h2c(addr: SocketAddr) -> Client {
        Client::handshake(TcpStream::connect(addr).await.unwrap()).await
    }

    async fn tls(
        addr: SocketAddr,
        ca_pem: &str,
        alpn: bool,
        client_cert: bool,
    ) -> Result<Client, std::io::Error> {
        let tls = tls_stream(addr, ca_pem, alpn, client_cert).await?;
        Ok(Client::handshake(tls).await)
    }

    async fn try_request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, h2::Error> {
        self.try_request_frames(method, path, headers, &[body])
            .await
    }

    /// Sends the body as one DATA frame per element of `frames` (no content-length).
    async fn try_request_frames(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        frames: &[&[u8]],
    ) -> Result<Answer, h2::Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        // Every request carries a push type (the fake requires one) unless the test sets its
        // own or asks for none.
        if let Some(push_type) = self.push_type {
            if !headers.iter().any(|(n, _)| *n == "apns-push-type") {
                req = req.header("apns-push-type", push_type);
            }
        }
        let req = req.body(()).unwrap();
        let mut send = self.send.clone().ready().await?;
        let empty = frames.iter().all(|f| f.is_empty());
        let (response, mut stream) = send.send_request(req, empty)?;
        if !empty {
            for (i, frame) in frames.iter().enumerate() {
                stream.send_data(Bytes::copy_from_slice(frame), i + 1 == frames.len())?;
            }
        }
        let (parts, mut recv) = response.await?.into_parts();
        let mut buf = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: Bytes::from(buf),
        })
    }

    async fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        self.try_request(Method::POST, path, headers, body)
            .await
            .expect("an HTTP/2 answer")
    }

    /// A valid push to `token` with the default topic.
    async fn push(&mut self, token: &str) -> Answer {
        self.post(&device(token), &[("apns-topic", TOPIC)], PAYLOAD)
            .await
    }
}

async fn start(config: MockConfig) -> MockServer {
    MockServer::start(config).await.expect("mock starts")
}

async fn start_with_profile(profile: Profile) -> MockServer {
    start(MockConfig {
        profile,
        ..MockConfig::default()
    })
    .await
}

fn assert_rejected(answer: &Answer, status: u16, reason: &str, what: &str) {
    assert_eq!(
        (answer.status, answer.reason().as_deref()),
        (status, Some(reason)),
        "{what}: body {:?}",
        answer.body
    );
    // APNs' exact body: {"reason":"..."} and nothing else (410 adds timestamp).
    if status != 410 {
        assert_eq!(answer.body, format!(r#"{{"reason":"{reason}"}}"#), "{what}");
    }
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "{what}"
    );
    assert!(
        pusher::push::apns::valid_apns_id(answer.apns_id()),
        "{what}"
    );
}

/// method, path, headers, body, expected status, expected reason.
type Case<'a> = (
    Method,
    String,
    Vec<(&'a str, &'a str)>,
    &'a [u8],
    u16,
    &'a str,
);

#[tokio::test]
async fn validation_follows_apns_order_with_exact_statuses_and_reasons() {
    bounded(async {
        let server = start(MockConfig::default()).await;
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        let tok = token();
        let path = device(&tok);
        let long_collapse = "c".repeat(65);
        let big = vec![b'x'; 4097];
        // Each case also breaks a later rule, so the answer proves which check comes first.
        let cases: Vec<Case> = vec![
            (
                Method::GET,
                "/4/device/x".into(),
                vec![],
                b"",
                405,
                "MethodNotAllowed",
            ),
            (
                Method::POST,
                "/4/device/x".into(),
                vec![],
                b"",
                404,
                "BadPath",
            ),
            (
                Method::POST,
                "/3/device/".into(),
                vec![],
                b"",
                400,
                "MissingDeviceToken",
            ),
            (
                Method::POST,
                "/3/device/xyz".into(),
                vec![("apns-id", "nope")],
                b"",
                400,
                "BadDeviceToken",
            ),
            (
                Method::POST,
                path.clone(),
                vec![
                    ("apns-topic", TOPIC),
                    ("apns-topic", "other"),
                    ("apns-id", "nope"),
                ],
                b"",
                400,
                "DuplicateHeaders",
            ),
            (
                Method::POST,
                path.clone(),
                vec![("apns-id", "nope")],
                b"",
                400,
                "BadMessageId",
            ),
            (
                Method::POST,
                path.clone(),
                vec![("apns-push-type", "nope")],
                b"",
                400,
                "MissingTopic",
            ),
            (
                Method::POST,
                path.clone(),
                vec![
                    ("apns-topic", TOPIC),
                    ("apns-push-type", "nope"),
                    ("apns-priority", "7"),
                ],
                b"",
                400,
                "InvalidPushType",
            ),
            (
                Method::POST,
                path.clone(),
                vec![
                    ("apns-topic", TOPIC),
                    ("apns-priority", "7"),
                    ("apns-expiration", "soon"),
                ],
                b"",
                400,
                "BadPriority",
            ),
            (
                Method::POST,
                path.clone(),
                vec![
                    ("apns-topic", TOPIC),
                    ("apns-expiration", "soon"),
                    ("apns-collapse-id", &long_collapse),
                ],
                b"",
                400,
                "BadExpirationDate",
            ),
            (
                Method::POST,
                path.clone(),
                vec![("apns-topic", TOPIC), ("apns-collapse-id", &long_collapse)],
                b"",
                400,
                "BadCollapseId",
            ),
            (
                Method::POST,
                path.clone(),
                vec![("apns-topic", TOPIC)],
                b"",
                400,
                "PayloadEmpty",
            ),
            (
                Method::POST,
                path.clone(),
                vec![("apns-topic", TOPIC)],
                &big,
                413,
                "PayloadTooLarge",
            ),
            (
                Method::POST,
                path.clone(),
                vec![("apns-topic", TOPIC), ("apns-push-type", "voip")],
                &[b'x'; 5121],
                413,
                "PayloadTooLarge",
            ),
            // Apple wants `<bundle>.voip` for voip: the bare bundle id is not the token's
            // topic (our sender once sent it, and real APNs' answer deleted the token).
            (
                Method::POST,
                path.clone(),
                vec![("apns-topic", TOPIC), ("apns-push-type", "voip")],
                PAYLOAD,
                400,
                "DeviceTokenNotForTopic",
            ),
            (
                Method::POST,
                path.clone(),
                vec![
                    ("apns-topic", "com.example.app.voip"),
                    ("apns-push-type", "pushtotalk"),
                ],
                PAYLOAD,
                400,
                "DeviceTokenNotForTopic",
            ),
        ];
        let n = cases.len() as u64;
        for (method, path, headers, body, status, reason) in cases {
            let answer = c.try_request(method, &path, &headers, body).await.unwrap();
            assert_rejected(&answer, status, reason, reason);
        }
        // The limits' edges are accepted: 4096 bytes, 5120 for voip, a 64-byte collapse id,
        // every documented header value.
        let edge = [
            (vec![("apns-topic", TOPIC)], vec![b'x'; 4096]),
            (
                vec![("apns-topic", VOIP_TOPIC), ("apns-push-type", "voip")],
                vec![b'x'; 5120],
            ),
            (
                vec![
                    ("apns-topic", TOPIC),
                    ("apns-collapse-id", &long_collapse[..64]),
                    ("apns-priority", "5"),
                    ("apns-expiration", "0"),
                    ("apns-push-type", "background"),
                ],
                PAYLOAD.to_vec(),
            ),
        ];
        for (headers, body) in &edge {
            let answer = c.post(&path, headers, body).await;
            assert_eq!(answer.status, 200, "{headers:?}: {:?}", answer.body);
            assert!(answer.body.is_empty());
        }
        let stats = server.stats().snapshot();
        assert_eq!(stats.requests, n + 3);
        assert_eq!(stats.by_status.values().sum::<u64>(), n + 3);
        assert_eq!(stats.by_status.get(&200), Some(&3));
        assert_eq!(stats.by_reason.values().sum::<u64>(), n);
        assert_eq!(stats.by_reason.get("PayloadTooLarge"), Some(&2));
        // The topic is judged after the body is read, as the token rules are.
        assert_eq!(stats.bytes_in, 4096 + 5120 + 3 * PAYLOAD.len() as u64);
    })
    .await
}

/// A request without `apns-push-type` is refused as strict APNs servers do (our own sender
/// once sent none, and only independent servers caught it); `--push-type-optional` accepts it.
#[tokio::test]
async fn a_missing_push_type_is_refused_unless_the_fake_is_told_otherwise() {
    bounded(async {
        for (require, want) in [(true, 400), (false, 200)] {
            let mut config = MockConfig::default();
            config.apns.require_push_type = require;
            let server = start(config).await;
            let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
            c.push_type = None;
            let answer = c.push(&token()).await;
            assert_eq!(answer.status, want, "require_push_type {require}");
            if require {
                assert_eq!(answer.reason().as_deref(), Some("InvalidPushType"));
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_body_in_several_frames_is_joined_and_its_limit_enforced_without_content_length() {
    bounded(async {
        let server = start(MockConfig::default()).await;
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        let path = device(&token());
        let headers = [("apns-topic", TOPIC)];
        let chunk = [b'x'; 1000];
        let ok = c
            .try_request_frames(
                Method::POST,
                &path,
                &headers,
                &[&chunk, &chunk, &chunk, &chunk, &chunk[..96]],
            )
            .await
            .unwrap();
        assert_eq!(ok.status, 200, "4096 bytes in 5 frames");
        let big = c
            .try_request_frames(
                Method::POST,
                &path,
                &headers,
                &[&chunk, &chunk, &chunk, &chunk, &chunk[..97]],
            )
            .await
            .unwrap();
        assert_rejected(&big, 413, "PayloadTooLarge", "4097 bytes in 5 frames");
        assert_eq!(server.stats().snapshot().bytes_in, 4096);
    })
    .await
}

#[tokio::test]
async fn apns_id_is_echoed_or_generated() {
    bounded(async {
        let server = start(MockConfig::default()).await;
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        let id = "123e4567-e89b-12d3-a456-426614174000";
        let answer = c
            .post(
                &device(&token()),
                &[("apns-topic", TOPIC), ("apns-id", id)],
                PAYLOAD,
            )
            .await;
        assert_eq!((answer.status, answer.apns_id()), (200, id));
        let a = c.push(&token()).await;
        let b = c.push(&token()).await;
        assert!(pusher::push::apns::valid_apns_id(a.apns_id()));
        assert_ne!(a.apns_id(), b.apns_id());
        // An error answer echoes the id too.
        let bad = c.post(&device("xyz"), &[("apns-id", id)], PAYLOAD).await;
        assert_eq!((bad.status, bad.apns_id()), (400, id));
    })
    .await
}

#[tokio::test]
async fn token_rules_answer_as_documented() {
    bounded(async {
        let server = start(MockConfig {
            record_tokens: 100,
            ..MockConfig::default()
        })
        .await;
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        let base = token();
        let now_ms = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };

        let before = now_ms();
        let dead = c.push(&TokenRule::Unregistered.apply(&base)).await;
        assert_rejected(&dead, 410, "Unregistered", "dead token");
        let body: serde_json::Value = serde_json::from_slice(&dead.body).unwrap();
        let ts = body["timestamp"]
            .as_u64()
            .expect("410 carries a timestamp in ms");
        assert!(ts >= before && ts <= now_ms(), "timestamp {ts} is ms now");
        assert_eq!(body.as_object().unwrap().len(), 2);

        assert_rejected(
            &c.push(&TokenRule::BadToken.apply(&base)).await,
            400,
            "BadDeviceToken",
            "bad0",
        );
        assert_rejected(
            &c.push(&TokenRule::WrongTopic.apply(&base)).await,
            400,
            "DeviceTokenNotForTopic",
            "0ff0",
        );

        let unavailable = TokenRule::UnavailableOnce.apply(&base);
        assert_rejected(
            &c.push(&unavailable).await,
            503,
            "ServiceUnavailable",
            "5030 first",
        );
        assert_eq!(
            c.push(&unavailable).await.status,
            200,
            "5030 second attempt"
        );

        let throttled = TokenRule::ThrottledOnce.apply(&base);
        let first = c.push(&throttled).await;
        assert_rejected(&first, 429, "TooManyRequests", "4290 first");
        assert_eq!(first.headers.get("retry-after").unwrap(), "1");
        assert_eq!(c.push(&throttled).await.status, 200, "4290 second attempt");
        assert_eq!(
            c.push(&throttled.to_uppercase()).await.status,
            200,
            "tokens are case-blind"
        );

        // Validation still comes first: a dead token with no topic is MissingTopic.
        let no_topic = c
            .post(&device(&TokenRule::Unregistered.apply(&base)), &[], PAYLOAD)
            .await;
        assert_rejected(&no_topic, 400, "MissingTopic", "rules after validation");

        let delivered = server.stats().delivered_tokens();
        assert_eq!(delivered.len(), 3, "{delivered:?}");
        assert_eq!(delivered.get(&unavailable), Some(&1));
        assert_eq!(delivered.get(&throttled), Some(&1));
        assert_eq!(server.stats().snapshot().tokens_recorded, 3);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// JWT

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT signed by jsonwebtoken: raw r||s, the JWS encoding.
fn jwt_raw(p8: &str, kid: &str, team: &str, iat: u64) -> String {
    let key =
        jsonwebtoken::EncodingKey::from_ec_pem(std::fs::read(p8).unwrap().as_slice()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &serde_json::json!({"iss": team, "iat": iat}), &key).unwrap()
}

/// A JWT with a DER signature, as Java's SHA256withECDSA and `openssl dgst -sign` make.
fn jwt_der(p8: &str, kid: &str, team: &str, iat: u64) -> String {
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::DecodePrivateKey;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key =
        p256::ecdsa::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(p8).unwrap()).unwrap();
    let head =
        b64.encode(serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"}).to_string());
    let claims = b64.encode(serde_json::json!({"iss": team, "iat": iat}).to_string());
    let input = format!("{head}.{claims}");
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    let der = sig.to_der();
    assert_ne!(der.as_bytes().len(), 64);
    format!("{input}.{}", b64.encode(der.as_bytes()))
}

const KEY: &str = "fixtures/apns/AuthKey_TESTKEY001.p8";
const UNKNOWN_KEY: &str = "fixtures/apns/AuthKey_UNKNOWN001.p8";

fn jwt_config(clock: Option<ManualClock>) -> MockConfig {
    let key = JwtKey::from_spec(&format!(
        "{KEY_ID}:{TEAM_ID}:fixtures/apns/AuthKey_TESTKEY001.pub.pem"
    ))
    .unwrap();
    let mut apns = ApnsOptions {
        jwt_keys: vec![key],
        ..ApnsOptions::default()
    };
    if let Some(clock) = clock {
        apns.clock = Arc::new(clock);
    }
    MockConfig {
        apns,
        ..MockConfig::default()
    }
}

#[tokio::test]
async fn jwt_auth_accepts_raw_and_der_and_refuses_bad_tokens() {
    bounded(async {
        let server = start(jwt_config(None)).await;
        let addr = server.h2c_addr().unwrap();
        let good_raw = jwt_raw(KEY, KEY_ID, TEAM_ID, now_s());
        let good_der = jwt_der(KEY, KEY_ID, TEAM_ID, now_s());
        let cases: Vec<(String, u16, Option<&str>)> = vec![
            (format!("bearer {good_raw}"), 200, None),
            (format!("Bearer {good_der}"), 200, None),
            (format!("BEARER {good_raw}"), 200, None),
            (String::new(), 403, Some("MissingProviderToken")),
            (
                format!("Basic {good_raw}"),
                403,
                Some("MissingProviderToken"),
            ),
            (
                format!(
                    "bearer {}",
                    jwt_raw(UNKNOWN_KEY, "UNKNOWN001", TEAM_ID, now_s())
                ),
                403,
                Some("InvalidProviderToken"),
            ),
            // Right kid, wrong key: the signature does not verify.
            (
                format!("bearer {}", jwt_der(UNKNOWN_KEY, KEY_ID, TEAM_ID, now_s())),
                403,
                Some("InvalidProviderToken"),
            ),
            (
                format!("bearer {}", jwt_raw(KEY, KEY_ID, "OTHERTEAM1", now_s())),
                403,
                Some("InvalidProviderToken"),
            ),
            (
                format!("bearer {good_raw}x"),
                403,
                Some("InvalidProviderToken"),
            ),
            (
                "bearer not.a.jwt".to_string(),
                403,
                Some("InvalidProviderToken"),
            ),
            (
                format!("bearer {}", jwt_raw(KEY, KEY_ID, TEAM_ID, now_s() - 3700)),
                403,
                Some("ExpiredProviderToken"),
            ),
        ];
        for (auth, status, reason) in cases {
            // A fresh connection per case: a connection remembers its verified token and team.
            let mut c = Client::h2c(addr).await;
            let mut headers = vec![("apns-topic", TOPIC)];
            if !auth.is_empty() {
                headers.push(("authorization", &auth));
            }
            let answer = c.post(&device(&token()), &headers, PAYLOAD).await;
            match reason {
                None => assert_eq!(answer.status, 200, "{auth}: {:?}", answer.body),
                Some(reason) => assert_rejected(&answer, status, reason, &auth),
            }
        }
        // Auth is checked before the payload: no token and no body is MissingProviderToken.
        let mut c = Client::h2c(addr).await;
        let answer = c
            .post(&device(&token()), &[("apns-topic", TOPIC)], b"")
            .await;
        assert_rejected(&answer, 403, "MissingProviderToken", "auth before payload");
    })
    .await
}

#[tokio::test]
async fn a_connection_keeps_one_team_and_its_token_expires_after_an_hour() {
    bounded(async {
        let clock = ManualClock::new();
        let server = start(jwt_config(Some(clock.clone()))).await;
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        let iat = clock_now_s(&clock);
        let auth = format!("bearer {}", jwt_raw(KEY, KEY_ID, TEAM_ID, iat));
        let headers = [("apns-topic", TOPIC), ("authorization", auth.as_str())];
        for _ in 0..3 {
            assert_eq!(
                c.post(&device(&token()), &headers, PAYLOAD).await.status,
                200
            );
        }
        // The same (cached) token goes stale when the clock passes iat + 1 h.
        clock.advance(Duration::from_secs(3601));
        let stale = c.post(&device(&token()), &headers, PAYLOAD).await;
        assert_rejected(&stale, 403, "ExpiredProviderToken", "cached token past 1 h");
        // A fresh token from the same team works on the same connection.
        let fresh = format!(
            "bearer {}",
            jwt_der(KEY, KEY_ID, TEAM_ID, clock_now_s(&clock))
        );
        let answer = c
            .post(
                &device(&token()),
                &[("apns-topic", TOPIC), ("authorization", &fresh)],
                PAYLOAD,
            )
            .await;
        assert_eq!(answer.status, 200);
    })
    .await
}

/// Apple: a provider token renewed more often than every 20 minutes is refused (429
/// TooManyProviderTokenUpdates). Judged per connection, by `iat`: the first token on a
/// connection and the renewal an ExpiredProviderToken asked for are not updates.
#[tokio::test]
async fn provider_tokens_updated_within_20_minutes_are_too_many() {
    bounded(async {
        let clock = ManualClock::new();
        let server = start(jwt_config(Some(clock.clone()))).await;
        let addr = server.h2c_addr().unwrap();
        let bearer = |p8: &str, iat: u64| format!("bearer {}", jwt_raw(p8, KEY_ID, TEAM_ID, iat));
        let t0 = clock_now_s(&clock);
        let first = bearer(KEY, t0);
        let mut c = Client::h2c(addr).await;
        assert_eq!(send(&mut c, &first).await.status, 200);
        // A token minted a minute later, on the same connection: too soon.
        let early = bearer(KEY, t0 + 60);
        let answer = send(&mut c, &early).await;
        assert_rejected(
            &answer,
            429,
            "TooManyProviderTokenUpdates",
            "a minute later",
        );
        // The connection keeps its token: it still works.
        assert_eq!(send(&mut c, &first).await.status, 200);
        // The early token is the first on another connection (another process, another app).
        let mut other = Client::h2c(addr).await;
        assert_eq!(send(&mut other, &early).await.status, 200);
        // 20 minutes after the first was issued, it may be replaced.
        clock.advance(Duration::from_secs(20 * 60));
        let renewed = bearer(KEY, t0 + 20 * 60);
        assert_eq!(send(&mut c, &renewed).await.status, 200);
        assert_eq!(send(&mut c, &renewed).await.status, 200);
        assert_eq!(
            server
                .stats()
                .snapshot()
                .by_reason
                .get("TooManyProviderTokenUpdates"),
            Some(&1)
        );

        // After ExpiredProviderToken, any fresh token is welcome, however recent its `iat` is
        // to the old one's (a provider whose clock runs slow).
        let mut d = Client::h2c(addr).await;
        let now = clock_now_s(&clock);
        let old = bearer(KEY, now - 3590);
        assert_eq!(send(&mut d, &old).await.status, 200);
        clock.advance(Duration::from_secs(11));
        assert_rejected(
            &send(&mut d, &old).await,
            403,
            "ExpiredProviderToken",
            "past its hour",
        );
        let slow = bearer(KEY, now - 3590 + 600);
        assert_eq!(send(&mut d, &slow).await.status, 200);
    })
    .await
}

/// One push on `c` with `authorization: auth`.
async fn send(c: &mut Client, auth: &str) -> Answer {
    c.post(
        &device(&token()),
        &[("apns-topic", TOPIC), ("authorization", auth)],
        PAYLOAD,
    )
    .await
}

fn clock_now_s(clock: &ManualClock) -> u64 {
    use pusher::clock::Clock;
    clock.now().as_secs()
}

// ---------------------------------------------------------------------------------------
// TLS, client certificates, SETTINGS

/// Waits (bounded) until `done` holds.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads until the peer closes; panics if it has not within 5 s.
async fn closed_by_peer<S: tokio::io::AsyncRead + Unpin>(mut stream: S, what: &str) {
    let mut buf = [0u8; 256];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: still open after 5 s"));
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A connection with no request in flight for `idle_timeout` is closed, whether it never
/// sent a byte (TCP, or TLS and then nothing: before hyper knows its protocol) or went quiet
/// after its requests (GOAWAY); a busy one, and an answer slower than the timeout, are not.
#[tokio::test]
async fn idle_and_silent_connections_are_closed_busy_ones_are_not() {
    bounded(async {
        let server = start(MockConfig {
            // Long enough that a loaded machine's pauses (a connect, a poll) do not pass for
            // idleness; each answer takes longer still.
            idle_timeout: Duration::from_secs(1),
            profile: Profile::from_yaml("slow", "latency: {dist: fixed, ms: 1500}").unwrap(),
            ..MockConfig::default()
        })
        .await;
        let stats = || server.stats().snapshot();

        let tcp = TcpStream::connect(server.h2c_addr().unwrap())
            .await
            .unwrap();
        closed_by_peer(tcp, "silent TCP").await;
        let tls = tls_stream(server.tls_addr().unwrap(), server.ca_pem(), true, false)
            .await
            .unwrap();
        closed_by_peer(tls, "silent after TLS").await;
        wait_until("two idle closes", || stats().idle_closed == 2).await;

        // Three answers of 1.5 s back to back, each longer than the idle timeout: busy.
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        for _ in 0..3 {
            assert_eq!(c.push(&token()).await.status, 200);
        }
        let s = stats();
        assert_eq!((s.idle_closed, s.connections_active), (2, 1), "{s:?}");
        // Then quiet: closed with a GOAWAY the client sees.
        wait_until("the quiet connection closed", || {
            let s = stats();
            s.idle_closed == 3 && s.connections_active == 0
        })
        .await;
        assert!(
            c.send.clone().ready().await.is_err(),
            "the client saw the close"
        );
        let s = stats();
        assert_eq!((s.protocol_errors, s.responses), (0, 3), "{s:?}");
    })
    .await
}

#[tokio::test]
async fn tls_speaks_h2_with_and_without_alpn() {
    bounded(async {
        let server = start(MockConfig::default()).await;
        let addr = server.tls_addr().unwrap();
        for alpn in [true, false] {
            let mut c = Client::tls(addr, server.ca_pem(), alpn, false)
                .await
                .unwrap();
            let answer = c.push(&token()).await;
            assert_eq!(answer.status, 200, "alpn {alpn}");
        }
        assert_eq!(server.stats().snapshot().connections_opened, 2);
    })
    .await
}

#[tokio::test]
async fn client_certificates_authenticate_and_their_absence_is_bad_certificate() {
    bounded(async {
        let server = start(MockConfig {
            client_ca_pem: Some(std::fs::read("fixtures/apns/client-ca.pem").unwrap()),
            ..MockConfig::default()
        })
        .await;
        let addr = server.tls_addr().unwrap();
        let mut with_cert = Client::tls(addr, server.ca_pem(), true, true)
            .await
            .unwrap();
        assert_eq!(with_cert.push(&token()).await.status, 200);
        // The certificate names the topic: a certificate connection may omit apns-topic.
        assert_eq!(
            with_cert.post(&device(&token()), &[], PAYLOAD).await.status,
            200
        );

        let mut without = Client::tls(addr, server.ca_pem(), true, false)
            .await
            .unwrap();
        assert_rejected(
            &without.push(&token()).await,
            403,
            "BadCertificate",
            "no client cert",
        );
        // h2c has no certificate at all.
        let mut plain = Client::h2c(server.h2c_addr().unwrap()).await;
        assert_rejected(&plain.push(&token()).await, 403, "BadCertificate", "h2c");
    })
    .await
}

#[tokio::test]
async fn max_concurrent_streams_is_advertised() {
    bounded(async {
        for max in [7u32, 1000] {
            let server = start(MockConfig {
                max_streams: max,
                ..MockConfig::default()
            })
            .await;
            let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
            // After one exchange the server's SETTINGS have surely arrived.
            assert_eq!(c.push(&token()).await.status, 200);
            assert_eq!(c.send.current_max_send_streams(), max as usize);
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Profiles

#[tokio::test]
async fn seeded_error_mix_counts_are_within_bounds_and_add_up() {
    bounded(async {
        let server = start_with_profile(Profile {
            seed: Some(42),
            errors: vec![
                ErrorRate {
                    reason: "InternalServerError".into(),
                    rate: 0.2,
                },
                ErrorRate {
                    reason: "Unregistered".into(),
                    rate: 0.1,
                },
            ],
            ..Profile::default()
        })
        .await;
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        let (mut ok, mut e500, mut e410) = (0, 0, 0);
        for _ in 0..1000 {
            let a = c.push(&token()).await;
            match (a.status, a.reason().as_deref()) {
                (200, None) => ok += 1,
                (500, Some("InternalServerError")) => e500 += 1,
                (410, Some("Unregistered")) => e410 += 1,
                other => panic!("unexpected answer {other:?}"),
            }
        }
        assert!((150..250).contains(&e500), "500s: {e500}");
        assert!((60..140).contains(&e410), "410s: {e410}");
        let s = server.stats().snapshot();
        assert_eq!(s.requests, 1000);
        assert_eq!(s.by_status.get(&200), Some(&ok));
        assert_eq!(s.by_status.get(&500), Some(&e500));
        assert_eq!(s.by_reason.get("Unregistered"), Some(&e410));
        assert_eq!(s.by_status.values().sum::<u64>(), 1000);
    })
    .await
}

#[tokio::test]
async fn goaway_after_n_streams_closes_the_connection_gracefully() {
    bounded(async {
        let server = start_with_profile(Profile {
            goaway_after: Some(5),
            ..Profile::default()
        })
        .await;
        let addr = server.h2c_addr().unwrap();
        let mut c = Client::h2c(addr).await;
        let mut answered = 0;
        for _ in 0..10 {
            match c
                .try_request(
                    Method::POST,
                    &device(&token()),
                    &[("apns-topic", TOPIC)],
                    PAYLOAD,
                )
                .await
            {
                Ok(a) => {
                    assert_eq!(a.status, 200);
                    answered += 1;
                }
                Err(e) => {
                    assert!(
                        e.is_go_away() || e.is_io() || e.to_string().contains("closed"),
                        "{e}"
                    );
                    break;
                }
            }
        }
        assert_eq!(
            answered, 5,
            "the 5 streams before GOAWAY are answered, no more"
        );
        // A new connection carries on.
        assert_eq!(Client::h2c(addr).await.push(&token()).await.status, 200);
        let s = server.stats().snapshot();
        assert_eq!(s.goaways_sent, 1);
        assert_eq!(s.connections_opened, 2);
    })
    .await
}

#[tokio::test]
async fn outage_window_answers_503_then_recovers() {
    bounded(async {
        let server = start_with_profile(Profile {
            outages: vec![Window {
                start_ms: 0,
                duration_ms: 300,
                every_ms: None,
            }],
            ..Profile::default()
        })
        .await;
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        assert_rejected(
            &c.push(&token()).await,
            503,
            "ServiceUnavailable",
            "during outage",
        );
        // Invalid requests still get their own answer during the outage.
        assert_rejected(
            &c.push("xyz").await,
            400,
            "BadDeviceToken",
            "validation during outage",
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(c.push(&token()).await.status, 200, "after the window");
    })
    .await
}

#[tokio::test]
async fn throttle_burst_answers_429_with_retry_after() {
    bounded(async {
        let server = start_with_profile(Profile {
            throttle: Some(Throttle {
                window: Window {
                    start_ms: 0,
                    duration_ms: 60_000,
                    every_ms: None,
                },
                retry_after_s: 3,
            }),
            ..Profile::default()
        })
        .await;
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        let a = c.push(&token()).await;
        assert_rejected(&a, 429, "TooManyRequests", "throttled");
        assert_eq!(a.headers.get("retry-after").unwrap(), "3");
    })
    .await
}

#[tokio::test]
async fn stalls_hold_the_answer_back() {
    bounded(async {
        let server = start_with_profile(Profile {
            stall: Some(Stall {
                rate: 1.0,
                ms: 20_000,
            }),
            ..Profile::default()
        })
        .await;
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        let waited = tokio::time::timeout(Duration::from_millis(500), c.push(&token())).await;
        assert!(waited.is_err(), "a stalled request gets no answer");
        let s = server.stats().snapshot();
        assert_eq!((s.requests, s.responses, s.stalls), (1, 0, 1));
    })
    .await
}

#[tokio::test]
async fn resets_reset_the_stream_or_drop_the_connection() {
    bounded(async {
        let server = start_with_profile(Profile {
            resets: Resets {
                stream_rate: 1.0,
                connection_rate: 0.0,
            },
            ..Profile::default()
        })
        .await;
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        let err = c
            .try_request(
                Method::POST,
                &device(&token()),
                &[("apns-topic", TOPIC)],
                PAYLOAD,
            )
            .await
            .err()
            .expect("stream reset");
        assert_eq!(
            (err.is_remote(), err.reason()),
            (true, Some(h2::Reason::INTERNAL_ERROR)),
            "{err}"
        );
        assert_eq!(server.stats().snapshot().streams_reset, 1);
        // Only that stream: the connection carries on (and resets the next one too).
        assert!(c
            .try_request(
                Method::POST,
                &device(&token()),
                &[("apns-topic", TOPIC)],
                PAYLOAD
            )
            .await
            .is_err());
        assert_eq!(server.stats().snapshot().streams_reset, 2);
        assert_eq!(server.stats().snapshot().connections_opened, 1);

        let server = start_with_profile(Profile {
            resets: Resets {
                stream_rate: 0.0,
                connection_rate: 1.0,
            },
            ..Profile::default()
        })
        .await;
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        let first = c
            .try_request(
                Method::POST,
                &device(&token()),
                &[("apns-topic", TOPIC)],
                PAYLOAD,
            )
            .await;
        assert!(first.is_err(), "dropped connection gives no answer");
        let again = c
            .try_request(
                Method::POST,
                &device(&token()),
                &[("apns-topic", TOPIC)],
                PAYLOAD,
            )
            .await;
        let err = again.err().expect("the connection is gone");
        assert!(!err.is_remote(), "closed by TCP, not by an h2 frame: {err}");
        let s = server.stats().snapshot();
        assert_eq!((s.requests, s.connections_dropped), (1, 1));
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Admin endpoint

async fn http1(addr: SocketAddr, method: &str, path: &str) -> (u16, serde_json::Value) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn admin_stats_add_up_and_reset_clears_them() {
    bounded(async {
        let server = start(MockConfig {
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..MockConfig::default()
        })
        .await;
        let admin = server.admin_addr().unwrap();
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        for _ in 0..7 {
            assert_eq!(c.push(&token()).await.status, 200);
        }
        for _ in 0..3 {
            c.push(&TokenRule::Unregistered.apply(&token())).await;
        }
        let (status, stats) = http1(admin, "GET", "/stats").await;
        assert_eq!(status, 200);
        assert_eq!(stats["requests"], 10);
        assert_eq!(stats["responses"], 10);
        assert_eq!(stats["by_status"]["200"], 7);
        assert_eq!(stats["by_status"]["410"], 3);
        assert_eq!(stats["by_reason"]["Unregistered"], 3);
        assert_eq!(stats["bytes_in"], 10 * PAYLOAD.len() as u64);
        assert!(stats["bytes_out"].as_u64().unwrap() > 0);
        assert_eq!(stats["connections_opened"], 1);
        assert_eq!(stats["connections_active"], 1);
        assert_eq!(stats["latency_us"]["count"], 10);
        assert!(
            stats["latency_us"]["p99"].as_u64().unwrap()
                >= stats["latency_us"]["p50"].as_u64().unwrap()
        );
        // The same numbers in-process.
        assert_eq!(server.stats().snapshot().requests, 10);

        let (status, _) = http1(admin, "POST", "/reset").await;
        assert_eq!(status, 200);
        let (_, stats) = http1(admin, "GET", "/stats").await;
        assert_eq!(stats["requests"], 0);
        assert_eq!(stats["by_status"], serde_json::json!({}));
        assert_eq!(
            stats["connections_active"], 1,
            "the h2 connection is still open"
        );
        assert_eq!(http1(admin, "GET", "/nope").await.0, 404);
        assert_eq!(http1(admin, "DELETE", "/stats").await.0, 405);
    })
    .await
}

#[tokio::test]
async fn shutdown_sends_goaway_and_closes_connections() {
    bounded(async {
        let server = start(MockConfig::default()).await;
        let mut c = Client::h2c(server.h2c_addr().unwrap()).await;
        assert_eq!(c.push(&token()).await.status, 200);
        let stats = server.stats();
        server.shutdown().await;
        assert_eq!(stats.snapshot().connections_active, 0);
        assert!(
            c.send.clone().ready().await.is_err(),
            "the client saw the connection end"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Third-party clients and the CLI

fn have(tool: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("NOTICE: {tool} is not installed; skipping (ci/setup.sh installs it)");
    }
    found
}

async fn curl(args: Vec<String>) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn curl_gets_correct_answers_over_h2c_and_tls() {
    if !have("curl") {
        return;
    }
    bounded(async {
        let server = start(MockConfig::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, server.ca_pem()).unwrap();
        let h2c = server.h2c_addr().unwrap();
        let tls = server.tls_addr().unwrap();
        let common = |url: String| {
            vec![
                "-i".to_string(),
                "-H".into(),
                format!("apns-topic: {TOPIC}"),
                "-H".into(),
                "apns-push-type: alert".into(),
                "--data-binary".into(),
                String::from_utf8(PAYLOAD.to_vec()).unwrap(),
                url,
            ]
        };
        let mut args = common(format!("http://{h2c}{}", device(&token())));
        args.insert(0, "--http2-prior-knowledge".into());
        let out = curl(args).await;
        assert!(out.starts_with("HTTP/2 200"), "{out}");
        assert!(out.contains("apns-id: "), "{out}");

        let mut args = common(format!(
            "https://localhost:{}{}",
            tls.port(),
            device(&TokenRule::Unregistered.apply(&token()))
        ));
        args.splice(
            0..0,
            [
                "--http2".to_string(),
                "--cacert".into(),
                ca.display().to_string(),
            ],
        );
        let out = curl(args).await;
        assert!(out.starts_with("HTTP/2 410"), "{out}");
        assert!(
            out.contains(r#"{"reason":"Unregistered","timestamp":"#),
            "{out}"
        );

        // A refusal of the headers is answered once the body is read: answered before it,
        // the stream was reset after the answer, and curl 7.88 failed with "Stream error in
        // the HTTP/2 framing layer" in 3 to 9 tries of 10 over TLS instead of showing the 400.
        for _ in 0..20 {
            let args: Vec<String> = [
                "--http2",
                "--cacert",
                &ca.display().to_string(),
                "-i",
                "-H",
                &format!("apns-topic: {TOPIC}"),
                "--data-binary",
                std::str::from_utf8(PAYLOAD).unwrap(),
                &format!("https://localhost:{}{}", tls.port(), device(&token())),
            ]
            .map(String::from)
            .to_vec();
            let out = curl(args).await;
            assert!(out.starts_with("HTTP/2 400"), "{out}");
            assert!(out.contains(r#"{"reason":"InvalidPushType"}"#), "{out}");
        }
    })
    .await
}

#[tokio::test]
async fn h2load_runs_clean_against_the_fake() {
    if !have("h2load") {
        return;
    }
    bounded(async {
        let server = start(MockConfig::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let body = dir.path().join("body.json");
        std::fs::write(&body, PAYLOAD).unwrap();
        let url = format!("http://{}{}", server.h2c_addr().unwrap(), device(&token()));
        let out = tokio::process::Command::new("h2load")
            .args(["-n", "2000", "-c", "2", "-m", "50", "-H"])
            .arg(format!("apns-topic: {TOPIC}"))
            .args(["-H", "apns-push-type: alert"])
            .arg("-d")
            .arg(&body)
            .arg(&url)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("2000 succeeded, 0 failed, 0 errored"),
            "{text}"
        );
        assert!(text.contains("status codes: 2000 2xx"), "{text}");
        let s = server.stats().snapshot();
        assert_eq!(s.by_status.get(&200), Some(&2000));
        assert_eq!(s.connections_opened, 2);
    })
    .await
}

#[tokio::test]
async fn cli_mock_apns_prints_its_addresses_and_serves() {
    use tokio::io::AsyncBufReadExt;
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pusher"))
            .args([
                "mock",
                "apns",
                "--profile",
                "happy",
                "--idle-timeout",
                "0",
                "--ca-out",
            ])
            .arg(&ca)
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
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
        let h2c: SocketAddr = ready["apns"]["h2c"].as_str().unwrap().parse().unwrap();
        let tls: SocketAddr = ready["apns"]["tls"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            ready["apns"]["ca"].as_str().unwrap(),
            ca.display().to_string()
        );
        let admin: SocketAddr = ready["admin"].as_str().unwrap().parse().unwrap();
        // The binary runs without transparent huge pages (main.rs), where the kernel says.
        let proc_status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id().unwrap())).unwrap();
        if proc_status.contains("THP_enabled:") {
            assert!(proc_status.contains("THP_enabled:\t0"), "{proc_status}");
        }

        assert_eq!(Client::h2c(h2c).await.push(&token()).await.status, 200);
        let ca_pem = std::fs::read_to_string(&ca).unwrap();
        let mut c = Client::tls(tls, &ca_pem, true, false).await.unwrap();
        assert_rejected(&c.push("xyz").await, 400, "BadDeviceToken", "cli over TLS");
        assert_eq!(http1(admin, "GET", "/stats").await.1["requests"], 2);

        // SIGTERM: a clean exit 0.
        let pid = child.id().unwrap() as i32;
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
    })
    .await
}
