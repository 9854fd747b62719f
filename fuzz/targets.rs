//! The fuzz targets: the Kafka message parsers (and what the sender builds from a parsed
//! message), the APNs and FCM response parsers, the config loader, and the fake servers'
//! request handling (structured requests over HTTP/2, and raw bytes on their sockets).

use super::engine::Target;
use super::h2raw;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pusher::mock::{FcmHandler, FcmOptions, MockConfig, MockServer};
use pusher::push::apns::payload_limit;
use pusher::push::message::{parse_apns, parse_gcm};
use pusher::sender::apns::request::{build_request, RequestContext};
use pusher::sender::fcm::{legacy_body, v1_body, FcmResponse, LegacyReply};
use pusher::sender::ApnsResponse;
use serde::de::IgnoredAny;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every target, by name (the names are the corpus directories under fixtures/fuzz/).
pub fn all() -> Vec<&'static str> {
    vec![
        "kafka_apns",
        "kafka_gcm",
        "apns_response",
        "fcm_response",
        "config",
        "mock_apns",
        "mock_fcm",
        "mock_raw",
    ]
}

pub fn make(name: &str) -> Box<dyn Target> {
    match name {
        "kafka_apns" => Box::new(KafkaApns),
        "kafka_gcm" => Box::new(KafkaGcm),
        "apns_response" => Box::new(ApnsResponseTarget),
        "fcm_response" => Box::new(FcmResponseTarget),
        "config" => Box::new(ConfigTarget),
        "mock_apns" => Box::new(MockRequests::new(Fake::Apns)),
        "mock_fcm" => Box::new(MockRequests::new(Fake::Fcm)),
        "mock_raw" => Box::new(MockRaw::new()),
        other => panic!("no fuzz target {other:?}; targets: {:?}", all()),
    }
}

const APNS_TOKEN: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";

// ---------------------------------------------------------------------------------------
// Kafka messages

struct KafkaApns;

impl Target for KafkaApns {
    fn name(&self) -> &'static str {
        "kafka_apns"
    }
    fn run(&mut self, data: &[u8]) -> String {
        let m = match parse_apns(data) {
            Ok(m) => m,
            Err(e) => return format!("err:{}", e.reason()),
        };
        // What a parsed message promises the sender.
        assert!(!m.notification.token.is_empty(), "empty token accepted");
        let limit = payload_limit(m.notification.push_type);
        assert!(
            m.notification.payload.len() <= limit,
            "payload over the limit"
        );
        serde_json::from_slice::<IgnoredAny>(&m.notification.payload)
            .expect("a parsed message's payload is JSON");
        let ctx = RequestContext {
            scheme: http::uri::Scheme::HTTPS,
            authority: http::uri::Authority::from_static("api.push.apple.com"),
            default_topic: Some(HeaderValue::from_static("com.example.app")),
            topic_required: true,
        };
        match build_request(&m.notification, &ctx, None) {
            Ok(_) => "ok".into(),
            Err(e) => format!("ok:request_err:{}", variant(&format!("{e:?}"))),
        }
    }
    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"\"DeviceToken\"",
            b"\"deviceToken\"",
            b"\"Payload\"",
            b"\"metadata\"",
            b"\"push_expiry\"",
            b"\"collapse_id\"",
            b"\"push_type\"",
            b"\"priority\"",
            b"\"expiration\"",
            b"\"topic\"",
            b"\"M\"",
            b"\"aps\"",
            b"\"voip\"",
            b"\"background\"",
            b"\"0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a\"",
        ]
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            format!(r#"{{"DeviceToken":"{APNS_TOKEN}","Payload":{{"aps":{{"alert":"hi"}}}},"metadata":{{"jobId":"j1"}},"push_expiry":0}}"#).into_bytes(),
            format!(r#"{{"deviceToken":"{APNS_TOKEN}","Payload":{{"aps":{{}},"M":{{"a":1}}}},"metadata":{{"b":[1,2]}},"push_type":"voip","priority":5,"expiration":1,"collapse_id":"c","topic":"t"}}"#).into_bytes(),
        ]
    }
}

struct KafkaGcm;

impl Target for KafkaGcm {
    fn name(&self) -> &'static str {
        "kafka_gcm"
    }
    fn run(&mut self, data: &[u8]) -> String {
        let m = match parse_gcm(data) {
            Ok(m) => m,
            Err(e) => return format!("err:{}", e.reason()),
        };
        assert!(!m.to.is_empty(), "empty token accepted");
        let v1 = match v1_body(&m, None, std::time::Duration::from_secs(1_700_000_000)) {
            Ok(body) => {
                serde_json::from_slice::<IgnoredAny>(&body).expect("the v1 body is JSON");
                "v1"
            }
            Err(_) => "v1_err",
        };
        let legacy = match legacy_body(&m, std::slice::from_ref(&m.to), None) {
            Ok(body) => {
                serde_json::from_slice::<IgnoredAny>(&body).expect("the legacy body is JSON");
                "legacy"
            }
            Err(_) => "legacy_err",
        };
        format!("ok:{v1}:{legacy}:{}", m.v1_message.is_some())
    }
    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"\"to\"",
            b"\"message\"",
            b"\"token\"",
            b"\"data\"",
            b"\"notification\"",
            b"\"title\"",
            b"\"body\"",
            b"\"metadata\"",
            b"\"push_expiry\"",
            b"\"dry_run\"",
            b"\"validate_only\"",
            b"\"time_to_live\"",
            b"\"collapse_key\"",
            b"\"priority\"",
            b"\"high\"",
            b"\"content_available\"",
        ]
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            br#"{"to":"dXk0:APA91b-x","notification":{"title":"t","body":"b"},"data":{"k":"v","n":3},"time_to_live":3600,"collapse_key":"c","priority":"high","dry_run":true,"metadata":{"jobId":"j"},"push_expiry":0}"#.to_vec(),
            br#"{"message":{"token":"dXk0:APA91b-x","data":{"a":"b"}},"metadata":{"m":1}}"#.to_vec(),
        ]
    }
}

// ---------------------------------------------------------------------------------------
// Responses: "STATUS\nname: value\n...\n\nbody"

/// Splits a response-shaped input: the first line (words), headers, body. Lines that are not
/// valid headers are skipped: the parsers only ever see what `http` lets through.
fn split_response(data: &[u8]) -> (Vec<String>, HeaderMap, &[u8]) {
    let (head, body) = match find(data, b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &b""[..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let first = String::from_utf8_lossy(lines.next().unwrap_or_default())
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some(i) = find(line, b":") {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..i]),
                HeaderValue::from_bytes(trim(&line[i + 1..])),
            ) {
                headers.append(name, value);
            }
        }
    }
    (first, headers, body)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| *c != b' ').unwrap_or(b.len());
    &b[start..]
}

fn status(word: Option<&String>) -> u16 {
    word.and_then(|w| w.parse().ok()).unwrap_or(400)
}

/// The statuses the parsers treat specially, else the class (`4xx`): a signature per status
/// would keep thousands of equivalent inputs.
fn status_class(status: u16) -> String {
    match status {
        200 | 400 | 401 | 403 | 404 | 410 | 413 | 429 | 500 | 503 => status.to_string(),
        100..=599 => format!("{}xx", status / 100),
        _ => "other".into(),
    }
}

/// The enum variant of a Debug string: `Retry(RetryHint { .. })` -> `Retry`.
fn variant(debug: &str) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default()
        .to_owned()
}

struct ApnsResponseTarget;

impl Target for ApnsResponseTarget {
    fn name(&self) -> &'static str {
        "apns_response"
    }
    fn run(&mut self, data: &[u8]) -> String {
        let (first, headers, body) = split_response(data);
        let status = status(first.first());
        let r = ApnsResponse::from_parts(status, &headers, body);
        assert_eq!(r.status, status);
        // Success is 200 and only 200; every other status has a reason.
        assert_eq!(r.reason.is_none(), status == 200, "{r:?}");
        format!(
            "{}:{}",
            status_class(status),
            variant(&format!("{:?}", r.verdict))
        )
    }
    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"\"reason\"",
            b"\"timestamp\"",
            b"apns-id: ",
            b"retry-after: ",
            b"\"Unregistered\"",
            b"\"TooManyRequests\"",
            b"\"ExpiredProviderToken\"",
            b"\"Shutdown\"",
            b"410",
            b"429",
            b"503",
        ]
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            b"200\napns-id: 123e4567-e89b-12d3-a456-426614174000\n\n".to_vec(),
            b"410\n\n{\"reason\":\"Unregistered\",\"timestamp\":1700000000123}".to_vec(),
            b"429\nretry-after: 7\n\n{\"reason\":\"TooManyRequests\"}".to_vec(),
            b"502\n\n<html>bad gateway</html>".to_vec(),
        ]
    }
}

struct FcmResponseTarget;

impl Target for FcmResponseTarget {
    fn name(&self) -> &'static str {
        "fcm_response"
    }
    fn run(&mut self, data: &[u8]) -> String {
        let (first, headers, body) = split_response(data);
        let status = status(first.get(1));
        if first.first().map(String::as_str) == Some("legacy") {
            let tokens = first
                .get(2)
                .and_then(|w| w.parse::<usize>().ok())
                .unwrap_or(1)
                .min(1000);
            let reply = LegacyReply::parse(status, &headers, body, tokens, tokens == 1);
            // One result per token sent, whatever came back.
            assert_eq!(reply.results.len(), tokens);
            let first = reply
                .results
                .first()
                .map(|r| variant(&format!("{:?}", r.verdict)));
            format!("legacy:{}:{first:?}", status_class(status))
        } else {
            let r = FcmResponse::v1(status, &headers, body);
            assert_eq!(r.status, status);
            format!(
                "v1:{}:{}",
                status_class(status),
                variant(&format!("{:?}", r.verdict))
            )
        }
    }
    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"\"error\"",
            b"\"details\"",
            b"\"@type\"",
            b"\"type.googleapis.com/google.firebase.fcm.v1.FcmError\"",
            b"\"type.googleapis.com/google.rpc.ErrorInfo\"",
            b"\"errorCode\"",
            b"\"reason\"",
            b"\"status\"",
            b"\"message\"",
            b"\"results\"",
            b"\"multicast_id\"",
            b"\"registration_id\"",
            b"\"message_id\"",
            b"\"UNREGISTERED\"",
            b"\"NotRegistered\"",
            b"\"ACCESS_TOKEN_EXPIRED\"",
            b"legacy 200 3",
            b"v1 401",
        ]
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            b"v1 200\n\n{\"name\":\"projects/p/messages/0:1\"}".to_vec(),
            br#"v1 404

{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#.to_vec(),
            b"v1 503\nretry-after: 3\n\n<html/>".to_vec(),
            br#"legacy 200 2

{"multicast_id":9223372036854775807,"success":1,"failure":1,"canonical_ids":1,"results":[{"message_id":"0:1","registration_id":"c0de"},{"error":"NotRegistered"}]}"#.to_vec(),
        ]
    }
}

// ---------------------------------------------------------------------------------------
// Config: YAML, then optionally a line "---env---" and NAME=value lines.

struct ConfigTarget;

impl Target for ConfigTarget {
    fn name(&self) -> &'static str {
        "config"
    }
    fn run(&mut self, data: &[u8]) -> String {
        let text = String::from_utf8_lossy(data);
        let (yaml, env) = match text.split_once("---env---") {
            Some((yaml, env)) => (yaml, env),
            None => (&*text, ""),
        };
        let env: Vec<(String, String)> = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        match pusher::config::Config::load_yaml(yaml, "fuzz.yaml", env.into_iter(), &[]) {
            Err(e) => format!("load_err:{}", variant(&format!("{e:?}"))),
            Ok(config) => match config.validate() {
                Ok(_) => "valid".into(),
                // The key at fault, without the app name the input made up.
                Err(e) => {
                    let message = e.to_string();
                    let key = message.split(':').next().unwrap_or("");
                    let section: Vec<&str> = key.split('.').take(2).collect();
                    format!("invalid:{}", section.join("."))
                }
            },
        }
    }
    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"queue:\n  ",
            b"apns:\n  ",
            b"gcm:\n  ",
            b"certs:\n    ",
            b"apps: ",
            b"topics: ",
            b"invalidToken:\n  pg:\n    pass: ",
            b"stats:\n  ",
            b"reporters: ",
            b"&a ",
            b"*a",
            b"!!binary ",
            b"<<: *a",
            b"- ",
            b"---env---\n",
            b"PUSHER_APNS_APPS=",
            b"PUSHER_QUEUE_TOPICS=",
            b"PUSHER_APNS_CERTS_GAME_TOPIC=",
            b"PUSHER_INVALIDTOKEN_PG_PORT=",
            b"PUSHER_GRACEFULLSHUTDOWNTIMEOUT=",
        ]
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut seeds =
            vec![b"queue:\n  topics: [\"^push-[^-_]+_(apns|gcm)\"]\n  brokers: localhost:9092\napns:\n  apps: game\n  certs:\n    game:\n      authKeyPath: fixtures/apns/AuthKey_TESTKEY001.p8\n      keyID: K\n      teamID: T\n      topic: com.example.app\n---env---\nPUSHER_GCM_APPS=a,b\nPUSHER_INVALIDTOKEN_PG_PORT=5432\n".to_vec()];
        if let Ok(default) = std::fs::read("config/default.yaml") {
            seeds.push(default);
        }
        seeds
    }
    fn max_len(&self) -> usize {
        32 * 1024
    }
}

// ---------------------------------------------------------------------------------------
// The fake servers, in process on 127.0.0.1 port 0, driven from a current-thread runtime on
// the fuzzing thread (so a panic in a server task is seen by the engine).

#[derive(Clone, Copy, PartialEq)]
enum Fake {
    Apns,
    Fcm,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn start(fake: Fake) -> MockServer {
    let config = MockConfig {
        tls_listen: None,
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..MockConfig::default()
    };
    match fake {
        Fake::Apns => MockServer::start(config).await,
        Fake::Fcm => {
            // No auth on v1: the checks after it are the interesting part (the /token
            // endpoint is fuzzed all the same).
            let options = FcmOptions {
                require_auth: false,
                ..FcmOptions::default()
            };
            MockServer::start_with(config, FcmHandler::new(options)).await
        }
    }
    .expect("the fake server starts")
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the fake accepts connections");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("the fake speaks HTTP/2");
    tokio::spawn(conn);
    sender
}

/// Sends one request; `Ok(status)` or why there was no answer.
async fn send(sender: &mut Sender, req: Request<Full<Bytes>>) -> Result<u16, String> {
    let answer = async {
        sender
            .ready()
            .await
            .map_err(|e| format!("not ready: {e}"))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = response.status().as_u16();
        Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| format!("broken body: {e}"))?;
        Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .map_err(|_| "timeout".to_string())?
}

fn good_request(fake: Fake, addr: SocketAddr) -> Request<Full<Bytes>> {
    let (path, body): (String, &[u8]) = match fake {
        Fake::Apns => (
            format!("/3/device/{APNS_TOKEN}"),
            br#"{"aps":{"alert":"hi"}}"#,
        ),
        Fake::Fcm => (
            "/v1/projects/p/messages:send".into(),
            br#"{"message":{"token":"dXk0:APA91b-x","data":{"k":"v"}}}"#,
        ),
    };
    Request::post(format!("http://{addr}{path}"))
        .header("apns-topic", "com.example.app")
        .header("apns-push-type", "alert")
        .body(Full::new(Bytes::from_static(body)))
        .expect("a valid request")
}

/// Structured requests: "METHOD PATH\nname: value\n...\n\nbody".
struct MockRequests {
    fake: Fake,
    rt: tokio::runtime::Runtime,
    server: MockServer,
    addr: SocketAddr,
    sender: Option<Sender>,
    unanswered: u64,
}

impl MockRequests {
    fn new(fake: Fake) -> MockRequests {
        let rt = runtime();
        let server = rt.block_on(start(fake));
        let addr = server.h2c_addr().expect("an h2c listener");
        MockRequests {
            fake,
            rt,
            server,
            addr,
            sender: None,
            unanswered: 0,
        }
    }

    fn request(&self, data: &[u8]) -> Option<Request<Full<Bytes>>> {
        let (first, headers, body) = split_response(data);
        let method = first.first().map(String::as_str).unwrap_or("POST");
        let path = first.get(1).map(String::as_str).unwrap_or("/");
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in &headers {
            req = req.header(name, value);
        }
        req.body(Full::new(Bytes::copy_from_slice(body))).ok()
    }

    /// The server still answers a good request on a new connection.
    fn assert_alive(&mut self) {
        let (fake, addr) = (self.fake, self.addr);
        let status = self.rt.block_on(async {
            let mut sender = connect(addr).await;
            send(&mut sender, good_request(fake, addr)).await
        });
        assert_eq!(status, Ok(200), "the fake stopped answering good requests");
    }
}

impl Target for MockRequests {
    fn name(&self) -> &'static str {
        match self.fake {
            Fake::Apns => "mock_apns",
            Fake::Fcm => "mock_fcm",
        }
    }
    fn run(&mut self, data: &[u8]) -> String {
        let Some(req) = self.request(data) else {
            return "unbuildable".into();
        };
        let addr = self.addr;
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.rt.block_on(connect(addr)),
        };
        let result = self.rt.block_on(send(&mut sender, req));
        self.sender = Some(sender);
        match result {
            Ok(status) => format!("status:{status}"),
            Err(e) => {
                // The client refused to send it (hyper checks HTTP/2's rules too), or the
                // server reset it: either way the server must still be fine.
                self.unanswered += 1;
                self.sender = None;
                self.assert_alive();
                format!("unanswered:{}", e.split(':').next().unwrap_or(""))
            }
        }
    }
    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            b"POST ",
            b"GET ",
            b"/3/device/",
            b"/v1/projects/p/messages:send",
            b"/token",
            b"/fcm/send",
            b"\napns-topic: com.example.app",
            b"\napns-id: 123e4567-e89b-12d3-a456-426614174000",
            b"\napns-push-type: voip",
            b"\napns-priority: 5",
            b"\napns-expiration: 0",
            b"\napns-collapse-id: ",
            b"\nauthorization: bearer a.b.c",
            b"\nauthorization: key=k",
            b"\ncontent-length: 99999999",
            b"\ncontent-type: application/x-www-form-urlencoded",
            b"grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=",
            b"\"registration_ids\"",
            b"\"android\"",
            b"\"ttl\"",
            b"\"3600s\"",
        ]
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        match self.fake {
            Fake::Apns => vec![
                format!("POST /3/device/{APNS_TOKEN}\napns-topic: com.example.app\napns-push-type: alert\napns-priority: 10\n\n{{\"aps\":{{\"alert\":\"hi\"}}}}").into_bytes(),
                format!("POST /3/device/dead{}\napns-topic: t\napns-id: 123e4567-e89b-12d3-a456-426614174000\n\n{{}}", &APNS_TOKEN[4..]).into_bytes(),
                b"GET /3/device/\n\n".to_vec(),
            ],
            Fake::Fcm => vec![
                br#"POST /v1/projects/p/messages:send
content-type: application/json

{"message":{"token":"dXk0:APA91b-x","notification":{"title":"t"},"data":{"k":"v"},"android":{"ttl":"3600s","priority":"HIGH"}}}"#.to_vec(),
                b"POST /token\ncontent-type: application/x-www-form-urlencoded\n\ngrant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJhIiwiaWF0IjoxLCJleHAiOjJ9.c2ln".to_vec(),
                br#"POST /fcm/send
authorization: key=k

{"registration_ids":["ca11x","dead1","4290a"],"data":{"a":"b"}}"#.to_vec(),
            ],
        }
    }
    fn finish(&mut self) {
        self.sender = None;
        self.assert_alive();
        // Let connections close, then the counters must add up: every request answered.
        self.rt
            .block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        let s = self.server.stats().snapshot();
        assert_eq!(
            s.requests,
            s.responses + s.streams_reset + s.connections_dropped,
            "requests unaccounted for: {s:?}"
        );
        assert_eq!(s.responses, s.by_status.values().sum::<u64>(), "{s:?}");
    }
}

/// Raw bytes on a socket: byte 0 picks the fake APNs's cleartext port (HTTP/2 prior
/// knowledge and HTTP/1.1), the fake FCM's, or the admin port; the rest is written as is.
struct MockRaw {
    rt: tokio::runtime::Runtime,
    apns: MockServer,
    fcm: MockServer,
    runs: u64,
}

impl MockRaw {
    fn new() -> MockRaw {
        let rt = runtime();
        let (apns, fcm) = rt.block_on(async { (start(Fake::Apns).await, start(Fake::Fcm).await) });
        MockRaw {
            rt,
            apns,
            fcm,
            runs: 0,
        }
    }

    fn assert_alive(&mut self) {
        for (fake, server) in [(Fake::Apns, &self.apns), (Fake::Fcm, &self.fcm)] {
            let addr = server.h2c_addr().expect("an h2c listener");
            let status = self.rt.block_on(async {
                let mut sender = connect(addr).await;
                send(&mut sender, good_request(fake, addr)).await
            });
            assert_eq!(status, Ok(200), "a fake stopped answering good requests");
        }
    }
}

impl Target for MockRaw {
    fn name(&self) -> &'static str {
        "mock_raw"
    }
    fn run(&mut self, data: &[u8]) -> String {
        let (which, bytes) = data.split_first().unwrap_or((&0, &[]));
        let addr = match which % 3 {
            0 => self.apns.h2c_addr(),
            1 => self.fcm.h2c_addr(),
            _ => self.apns.admin_addr(),
        }
        .expect("the listener is on");
        let outcome = self.rt.block_on(async {
            let mut tcp = tokio::net::TcpStream::connect(addr)
                .await
                .expect("the fake accepts connections");
            // The server may close before reading everything: not an error here.
            let _ = tcp.write_all(bytes).await;
            let _ = tcp.shutdown().await;
            let mut total = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            let read = async {
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return total,
                        Ok(n) => total += n,
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(5), read).await
        });
        self.runs += 1;
        let sig = match outcome {
            Ok(0) => "closed".to_string(),
            Ok(n) => format!("answered:{}", n.min(1000) / 100),
            Err(_) => {
                // The server kept a half-closed connection open: only a bug if it stopped
                // serving others.
                self.assert_alive();
                "timeout".into()
            }
        };
        if self.runs % 16 == 0 {
            self.assert_alive();
        }
        format!("{}:{sig}", which % 3)
    }
    fn dictionary(&self) -> &'static [&'static [u8]] {
        &[
            h2raw::PREFACE,
            b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            b"\x00\x00\x08\x07\x00\x00\x00\x00\x00",
            b"\x00\x40\x00\x00\x00\x00\x00\x00\x01",
            b"\xff\xff\xff\x09\x00\x00\x00\x00\x01",
            b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x7f\xff\xff\xff",
            b"POST /fcm/send HTTP/1.1\r\nHost: x\r\n",
            b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Content-Length: 18446744073709551615\r\n",
            b"ffffffffffffffff\r\n",
        ]
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        let apns = h2raw::one_request(
            &format!("/3/device/{APNS_TOKEN}"),
            &[(b"apns-topic", b"com.example.app")],
            br#"{"aps":{"alert":"hi"}}"#,
        );
        let fcm = h2raw::one_request(
            "/v1/projects/p/messages:send",
            &[],
            br#"{"message":{"token":"dXk0:APA91b-x"}}"#,
        );
        let mut seeds = vec![
            [&[0u8][..], &apns].concat(),
            [&[1u8][..], &fcm].concat(),
            b"\x01POST /fcm/send HTTP/1.1\r\nHost: x\r\nAuthorization: key=k\r\nContent-Length: 17\r\n\r\n{\"to\":\"dead123\"}".to_vec(),
            b"\x02GET /stats HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"\x02POST /reset HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ];
        // Chunked HTTP/1.1 to the FCM legacy endpoint.
        seeds.push(b"\x01POST /fcm/send HTTP/1.1\r\nHost: x\r\nAuthorization: key=k\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"to\"\r\n0\r\n\r\n".to_vec());
        seeds
    }
    fn max_len(&self) -> usize {
        64 * 1024
    }
    fn finish(&mut self) {
        self.assert_alive();
    }
}
