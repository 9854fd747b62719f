//! Hostile clients against the fake servers (in process, 127.0.0.1 port 0): oversize frames,
//! huge header lists, CONTINUATION floods, rapid resets, invalid UTF-8 in the request head,
//! 10 MB bodies, HTTP/1.1 header floods. Each is refused by the protocol layer or answered
//! with the protocol's error, never reaches a handler it should not, and afterwards the fake
//! still answers a good request and its counters still add up.

#[path = "common/h2raw.rs"]
mod h2raw;

use bytes::Bytes;
use h2raw::{frame, CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS};
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pusher::mock::{FcmHandler, FcmOptions, MockConfig, MockServer};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
const TEN_MB: usize = 10 * 1024 * 1024;

async fn apns() -> MockServer {
    MockServer::start(MockConfig::default()).await.unwrap()
}

async fn fcm() -> MockServer {
    let options = FcmOptions {
        require_auth: false,
        ..FcmOptions::default()
    };
    MockServer::start_with(MockConfig::default(), FcmHandler::new(options))
        .await
        .unwrap()
}

/// Writes `bytes` (the server may hang up first: fine), half-closes, and reads what the
/// server says until it closes (at most 1 MB, at most 10 s).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.split();
    let write = async {
        let _ = wr.write_all(bytes).await;
        let _ = wr.shutdown().await;
    };
    let read = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) if out.len() < 1 << 20 => out.extend_from_slice(&buf[..n]),
                Ok(_) => {}
            }
        }
        out
    };
    let (_, out) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(write, read) })
            .await
            .expect("the fake closes a hostile connection within 10 s");
    out
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn client(addr: SocketAddr) -> Sender {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

async fn post(sender: &mut Sender, req: Request<Full<Bytes>>) -> u16 {
    sender.ready().await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .expect("an answer within 20 s")
        .expect("an answer");
    let status = response.status().as_u16();
    let _ = Limited::new(response.into_body(), 1 << 20).collect().await;
    status
}

fn apns_request(addr: SocketAddr, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}/3/device/{TOKEN}"))
        .header("apns-topic", "com.example.app")
        .header("apns-push-type", "alert")
        .body(Full::new(body))
        .unwrap()
}

/// A good request on a new connection gets its 200, and every request the handler saw was
/// answered.
async fn assert_alive_and_counted(server: &MockServer, good: Request<Full<Bytes>>) {
    let addr = server.h2c_addr().unwrap();
    assert_eq!(post(&mut client(addr).await, good).await, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = server.stats().snapshot();
    assert_eq!(s.requests, s.responses, "{s:?}");
    assert_eq!(s.responses, s.by_status.values().sum::<u64>());
}

async fn alive_apns(server: &MockServer) {
    let addr = server.h2c_addr().unwrap();
    let good = apns_request(addr, Bytes::from_static(br#"{"aps":{}}"#));
    assert_alive_and_counted(server, good).await;
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test finished within 60 s")
}

#[tokio::test]
async fn an_oversize_frame_is_a_frame_size_error() {
    bounded(async {
        let server = apns().await;
        let addr = server.h2c_addr().unwrap();
        // A DATA frame header announcing 1 MiB, over the 16 KiB SETTINGS_MAX_FRAME_SIZE: the
        // header alone must get the GOAWAY, nothing is buffered.
        let mut bytes = h2raw::PREFACE.to_vec();
        bytes.extend(frame(h2raw::SETTINGS, 0, 0, &[]));
        let head = h2raw::post_head(
            &format!("/3/device/{TOKEN}"),
            &[(b"apns-topic", b"com.example.app")],
        );
        bytes.extend(frame(HEADERS, END_HEADERS, 1, &head));
        let mut oversize = frame(DATA, END_STREAM, 1, &[]);
        oversize[..3].copy_from_slice(&(1u32 << 20).to_be_bytes()[1..]);
        bytes.extend(oversize);
        let out = exchange(addr, &bytes).await;
        assert_eq!(
            h2raw::goaway_code(&out),
            Some(h2raw::FRAME_SIZE_ERROR),
            "{:?}",
            h2raw::parse_frames(&out)
        );
        // Counted as a protocol error; the stream whose body never came is not a request.
        let s = server.stats().snapshot();
        assert_eq!((s.protocol_errors, s.requests), (1, 0), "{s:?}");
        alive_apns(&server).await;
    })
    .await;
}

#[tokio::test]
async fn a_huge_header_list_never_reaches_the_handler() {
    bounded(async {
        let server = apns().await;
        let addr = server.h2c_addr().unwrap();
        // 1 MiB of header fields: HEADERS + CONTINUATION frames of 16 KiB.
        let value = vec![b'v'; 100];
        let names: Vec<Vec<u8>> = (0..10_000)
            .map(|i| format!("x-h{i}").into_bytes())
            .collect();
        let mut fields: Vec<(&[u8], &[u8])> = vec![(b"apns-topic", b"com.example.app")];
        fields.extend(names.iter().map(|n| (n.as_slice(), value.as_slice())));
        let block = [
            h2raw::post_head(&format!("/3/device/{TOKEN}"), &[]),
            h2raw::header_block(&fields),
        ]
        .concat();
        let mut bytes = h2raw::PREFACE.to_vec();
        bytes.extend(frame(h2raw::SETTINGS, 0, 0, &[]));
        let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let (kind, flags) = match (i, last) {
                (0, true) => (HEADERS, END_HEADERS | END_STREAM),
                (0, false) => (HEADERS, END_STREAM),
                (_, true) => (CONTINUATION, END_HEADERS),
                (_, false) => (CONTINUATION, 0),
            };
            bytes.extend(frame(kind, flags, 1, chunk));
        }
        let out = exchange(addr, &bytes).await;
        // Over the 16 KiB SETTINGS_MAX_HEADER_LIST_SIZE the fake advertises: the connection
        // is closed with a GOAWAY, and the request never reaches the handler.
        let code = h2raw::goaway_code(&out);
        eprintln!("huge header list: GOAWAY {code:?}");
        assert!(code.is_some(), "{:?}", h2raw::parse_frames(&out));
        let s = server.stats().snapshot();
        assert_eq!((s.protocol_errors, s.requests), (1, 0), "{s:?}");
        alive_apns(&server).await;
    })
    .await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    bounded(async {
        let server = apns().await;
        let addr = server.h2c_addr().unwrap();
        // A header block that never ends: 100,000 empty CONTINUATION frames (900 KB).
        let mut bytes = h2raw::PREFACE.to_vec();
        bytes.extend(frame(h2raw::SETTINGS, 0, 0, &[]));
        let head = h2raw::post_head(&format!("/3/device/{TOKEN}"), &[]);
        bytes.extend(frame(HEADERS, 0, 1, &head));
        let empty = frame(CONTINUATION, 0, 1, &[]);
        for _ in 0..100_000 {
            bytes.extend_from_slice(&empty);
        }
        let out = exchange(addr, &bytes).await;
        // h2 caps the CONTINUATION frames of one header block: GOAWAY ENHANCE_YOUR_CALM.
        assert_eq!(h2raw::goaway_code(&out), Some(0xb));
        let s = server.stats().snapshot();
        assert_eq!((s.protocol_errors, s.requests), (1, 0), "{s:?}");
        alive_apns(&server).await;
    })
    .await;
}

#[tokio::test]
async fn rapid_resets_are_cut_off() {
    bounded(async {
        let server = apns().await;
        let addr = server.h2c_addr().unwrap();
        // HEADERS then RST_STREAM(CANCEL) on 20,000 streams (the 2023 "rapid reset" attack).
        let mut bytes = h2raw::PREFACE.to_vec();
        bytes.extend(frame(h2raw::SETTINGS, 0, 0, &[]));
        let head = h2raw::post_head(
            &format!("/3/device/{TOKEN}"),
            &[(b"apns-topic", b"com.example.app")],
        );
        for i in 0..20_000u32 {
            let stream = 2 * i + 1;
            bytes.extend(frame(HEADERS, END_HEADERS, stream, &head));
            bytes.extend(frame(0x3, 0, stream, &8u32.to_be_bytes()));
        }
        let out = exchange(addr, &bytes).await;
        let s = server.stats().snapshot();
        eprintln!(
            "rapid reset: GOAWAY {:?}, {} requests reached the handler",
            h2raw::goaway_code(&out),
            s.requests
        );
        // h2 bounds the resets it accepts before answering GOAWAY ENHANCE_YOUR_CALM.
        assert_eq!(
            h2raw::goaway_code(&out),
            Some(0xb),
            "ENHANCE_YOUR_CALM expected"
        );
        // Cancelled streams are not answered: the handler saw at most a bounded few.
        assert!(s.requests < 20_000, "{s:?}");
        assert_eq!(s.protocol_errors, 1, "{s:?}");
        // Let the handlers of the cancelled streams be dropped, then check the fake.
        let good = apns_request(addr, Bytes::from_static(br#"{"aps":{}}"#));
        assert_eq!(post(&mut client(addr).await, good).await, 200);
    })
    .await;
}

#[tokio::test]
async fn invalid_utf8_in_the_head_is_refused_or_answered() {
    bounded(async {
        let server = apns().await;
        let addr = server.h2c_addr().unwrap();
        let cases: Vec<Vec<u8>> = vec![
            // Bytes that are not UTF-8 in the path, then in header values.
            h2raw::one_request("/3/device/\u{80}", &[], b"{}")
                .into_iter()
                .map(|b| if b == 0xc2 { 0xff } else { b })
                .collect(),
            h2raw::one_request(
                &format!("/3/device/{TOKEN}"),
                &[
                    (b"apns-topic", b"\xff\xfe"),
                    (b"apns-push-type", b"\xc0\xaf"),
                ],
                b"{}",
            ),
            h2raw::one_request(
                &format!("/3/device/{TOKEN}"),
                &[
                    (b"apns-topic", b"t"),
                    (b"authorization", b"bearer \xed\xa0\x80"),
                ],
                b"{\"aps\":\"\xff\"}",
            ),
        ];
        for (i, bytes) in cases.iter().enumerate() {
            let out = exchange(addr, bytes).await;
            // Stream 1 is refused (RST_STREAM or GOAWAY) or answered with an error: never
            // 200. A HEADERS block for `:status 200` starts with HPACK's static index 8 (0x88).
            let frames = h2raw::parse_frames(&out);
            let refused = frames
                .iter()
                .any(|f| f.0 == h2raw::GOAWAY || (f.0 == 0x3 && f.2 == 1));
            let answers: Vec<&Vec<u8>> = frames
                .iter()
                .filter(|f| f.0 == h2raw::HEADERS && f.2 == 1)
                .map(|f| &f.3)
                .collect();
            assert!(
                refused || !answers.is_empty(),
                "case {i}: no answer in {frames:?}"
            );
            assert!(
                answers.iter().all(|block| block.first() != Some(&0x88)),
                "case {i}: answered 200"
            );
        }
        alive_apns(&server).await;
        let s = server.stats().snapshot();
        assert!(s.by_status.get(&200).copied().unwrap_or(0) >= 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_bodies_are_refused_without_reading_them() {
    bounded(async {
        let apns = apns().await;
        let fcm = fcm().await;
        let big = Bytes::from(vec![b'x'; TEN_MB]);
        // APNs: with a content-length (refused from the header) and without (streamed; the
        // fake stops reading at the limit).
        let addr = apns.h2c_addr().unwrap();
        let mut c = client(addr).await;
        assert_eq!(post(&mut c, apns_request(addr, big.clone())).await, 413);
        let mut streamed = apns_request(addr, big.clone());
        streamed.headers_mut().remove(http::header::CONTENT_LENGTH);
        assert_eq!(post(&mut c, streamed).await, 413);
        let s = apns.stats().snapshot();
        assert_eq!(s.by_reason.get("PayloadTooLarge"), Some(&2), "{s:?}");
        // Refused bodies are not counted as read: nothing near 10 MB was taken in.
        assert!(s.bytes_in < 1 << 20, "{s:?}");
        alive_apns(&apns).await;

        // FCM: v1, legacy and the token endpoint all cap the body (64 KiB).
        let addr = fcm.h2c_addr().unwrap();
        let mut c = client(addr).await;
        for path in [
            "/v1/projects/p/messages:send",
            "/fcm/send",
            "/token",
            "/nowhere",
        ] {
            let req = Request::post(format!("http://{addr}{path}"))
                .header("authorization", "key=k")
                .body(Full::new(big.clone()))
                .unwrap();
            let status = post(&mut c, req).await;
            assert!(matches!(status, 400 | 404 | 413), "{path}: {status}");
        }
        let good = Request::post(format!("http://{addr}/v1/projects/p/messages:send"))
            .body(Full::new(Bytes::from_static(
                br#"{"message":{"token":"dXk0:APA91b-x","data":{"k":"v"}}}"#,
            )))
            .unwrap();
        assert_alive_and_counted(&fcm, good).await;
    })
    .await;
}

#[tokio::test]
async fn http1_header_floods_and_huge_request_lines_are_refused() {
    bounded(async {
        let server = fcm().await;
        // The cleartext port also speaks HTTP/1.1.
        let addr = server.h2c_addr().unwrap();
        let mut flood = b"POST /fcm/send HTTP/1.1\r\nHost: x\r\nAuthorization: key=k\r\n".to_vec();
        for i in 0..10_000 {
            flood.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        flood.extend_from_slice(b"Content-Length: 2\r\n\r\n{}");
        let out = exchange(addr, &flood).await;
        let head = String::from_utf8_lossy(&out[..out.len().min(40)]).to_string();
        assert!(
            out.is_empty() || head.starts_with("HTTP/1.1 431") || head.starts_with("HTTP/1.1 400"),
            "{head:?}"
        );
        let mut line = b"POST /".to_vec();
        line.extend(std::iter::repeat_n(b'a', 2 << 20));
        line.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = exchange(addr, &line).await;
        let head = String::from_utf8_lossy(&out[..out.len().min(40)]).to_string();
        assert!(out.is_empty() || head.starts_with("HTTP/1.1 4"), "{head:?}");
        assert_eq!(server.stats().snapshot().requests, 0);
        let good = Request::post(format!("http://{addr}/v1/projects/p/messages:send"))
            .body(Full::new(Bytes::from_static(
                br#"{"message":{"token":"dXk0:APA91b-x","data":{"k":"v"}}}"#,
            )))
            .unwrap();
        assert_alive_and_counted(&server, good).await;
    })
    .await;
}

#[tokio::test]
async fn a_slow_http1_head_is_dropped() {
    bounded(async {
        let server = fcm().await;
        let addr = server.h2c_addr().unwrap();
        // Half a request head, then nothing (a slow-loris client): closed after the fake's
        // 10 s header timeout instead of being held forever.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST /fcm/send HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the fake kept a slow head open for 30 s");
        assert_eq!(server.stats().snapshot().requests, 0);
    })
    .await;
}
