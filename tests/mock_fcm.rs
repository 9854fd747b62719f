//! The fake FCM server driven by a client we did not write (curl: HTTP/2 over TLS, h2c with
//! prior knowledge, HTTP/1.1), never by pusher's own sender: a sender bug cannot hide here.
//! Also `pusher mock gcm` and `pusher mock all` as processes.

mod fcm_support;

use base64::Engine;
use fcm_support::*;
use pusher::clock::ManualClock;
use pusher::push::token_rules::TokenRule;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

/// One curl exchange: (HTTP version line, headers in lower case, body as JSON or text).
struct Answer {
    status_line: String,
    headers: String,
    body: String,
}

impl Answer {
    /// The status code from `HTTP/2 200` or `HTTP/1.1 200 OK`.
    fn status(&self) -> u16 {
        self.status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {:?}", self.status_line))
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn curl(args: &[String]) -> Answer {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap().replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap();
    let (status_line, headers) = head.split_once('\n').unwrap_or((head, ""));
    Answer {
        status_line: status_line.trim_end().to_string(),
        headers: headers.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// An RS256-shaped assertion (the fake checks shape and lifetime, not the signature).
fn assertion() -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b64.encode(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#),
        b64.encode(
            r#"{"iss":"someone@example.iam.gserviceaccount.com","scope":"https://www.googleapis.com/auth/firebase.messaging","aud":"https://oauth2.googleapis.com/token","iat":1700000000,"exp":1700003600}"#
        ),
        b64.encode("not-a-real-signature")
    )
}

/// Gets an access token from the fake's /token with curl.
async fn access_token(base: &str, extra: &[String]) -> String {
    let mut a = extra.to_vec();
    a.extend(args(&[
        "--data-urlencode",
        "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer",
        "--data-urlencode",
    ]));
    a.push(format!("assertion={}", assertion()));
    a.push(format!("{base}/token"));
    let answer = curl(&a).await;
    assert!(answer.status() == 200, "{}", answer.status_line);
    let reply = answer.json();
    assert_eq!(reply["token_type"], "Bearer");
    assert_eq!(reply["expires_in"], 3600);
    reply["access_token"].as_str().unwrap().to_string()
}

fn send_args(base: &str, bearer: Option<&str>, body: &Value) -> Vec<String> {
    let mut a = args(&["-H", "Content-Type: application/json", "--data-binary"]);
    a.push(body.to_string());
    if let Some(token) = bearer {
        a.push("-H".into());
        a.push(format!("Authorization: Bearer {token}"));
    }
    a.push(format!("{base}/v1/projects/p1/messages:send"));
    a
}

fn fcm_error(code: u16, status: &str, message: &str, error_code: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status, "details": [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]}})
}

#[tokio::test]
async fn curl_gets_correct_v1_answers_over_tls_h2c_and_http1() {
    if !have("curl") {
        return;
    }
    bounded(async {
        let clock = ManualClock::new();
        let fake = start_fake(FakeOptions {
            clock: Arc::new(clock.clone()),
            ..FakeOptions::default()
        })
        .await;
        let tls = format!(
            "https://localhost:{}",
            fake.server.tls_addr().unwrap().port()
        );
        let h2c = fake.h2c_url();
        let ca = fake.ca_file.display().to_string();
        let tls_opts = args(&["--http2", "--cacert", &ca]);
        let h2c_opts = args(&["--http2-prior-knowledge"]);
        let h1_opts = args(&["--http1.1"]);

        let bearer = access_token(&tls, &tls_opts).await;
        let msg = |token: String| {
            json!({"message": {"token": token, "data": {"k": "v"},
            "notification": {"title": "t"}, "android": {"ttl": "3600s", "priority": "HIGH"}}})
        };

        // Delivered, over each transport.
        for (base, opts, version) in [
            (&tls, &tls_opts, "HTTP/2 200"),
            (&h2c, &h2c_opts, "HTTP/2 200"),
            (&h2c, &h1_opts, "HTTP/1.1 200"),
        ] {
            let mut a = opts.clone();
            a.extend(send_args(base, Some(&bearer), &msg(token(1))));
            let answer = curl(&a).await;
            assert!(
                answer.status_line.starts_with(version),
                "{}",
                answer.status_line
            );
            let name = answer.json()["name"].as_str().unwrap().to_string();
            assert!(name.starts_with("projects/p1/messages/0:"), "{name}");
        }

        // Token rules, with Google's exact error JSON.
        let cases = [
            (
                TokenRule::Unregistered,
                fcm_error(
                    404,
                    "NOT_FOUND",
                    "Requested entity was not found.",
                    "UNREGISTERED",
                ),
            ),
            (
                TokenRule::BadToken,
                fcm_error(
                    400,
                    "INVALID_ARGUMENT",
                    "The registration token is not a valid FCM registration token",
                    "INVALID_ARGUMENT",
                ),
            ),
            (
                TokenRule::WrongTopic,
                fcm_error(
                    403,
                    "PERMISSION_DENIED",
                    "SenderId mismatch",
                    "SENDER_ID_MISMATCH",
                ),
            ),
        ];
        for (rule, want) in cases {
            let mut a = h2c_opts.clone();
            a.extend(send_args(&h2c, Some(&bearer), &msg(rule.apply(&token(2)))));
            let answer = curl(&a).await;
            assert_eq!(answer.json(), want, "{rule:?}");
            let code = want["error"]["code"].as_u64().unwrap();
            assert!(u64::from(answer.status()) == code, "{}", answer.status_line);
        }

        // Fail once, with Retry-After; then through.
        for (rule, status, code) in [
            (TokenRule::ThrottledOnce, 429, "QUOTA_EXCEEDED"),
            (TokenRule::UnavailableOnce, 503, "UNAVAILABLE"),
        ] {
            let mut a = h1_opts.clone();
            a.extend(send_args(&h2c, Some(&bearer), &msg(rule.apply(&token(3)))));
            let answer = curl(&a).await;
            assert!(answer.status() == status, "{}", answer.status_line);
            assert!(
                answer.headers.contains("retry-after: 1"),
                "{}",
                answer.headers
            );
            assert_eq!(answer.json()["error"]["details"][0]["errorCode"], code);
            assert!(curl(&a).await.status() == 200);
        }

        // The fid target, topics, validate_only; 3000 bytes to one device.
        for body in [
            json!({"message": {"fid": "fid-123"}}),
            json!({"message": {"topic": "news"}}),
            json!({"message": {"token": token(4), "data": {"k": "x".repeat(3000)}}}),
            json!({"validate_only": true, "message": {"token": token(4)}}),
        ] {
            let mut a = h2c_opts.clone();
            a.extend(send_args(&h2c, Some(&bearer), &body));
            let answer = curl(&a).await;
            assert!(answer.status() == 200, "{body}: {}", answer.body);
        }

        // Bad requests.
        let big = "x".repeat(4097);
        let cases = [
            (
                json!({"message": {"token": token(5), "data": {"n": 12}}}),
                "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
            ),
            (
                json!({"message": {"token": token(5), "data": {"k": big}}}),
                "Message is too big",
            ),
            (
                json!({"message": {"token": token(5), "topic": "x"}}),
                "Invalid value at 'message' (oneof), oneof field 'target' is already set. Cannot set 'topic'",
            ),
            // Half the room for a topic or a condition: 3000 bytes fit a device only.
            (
                json!({"message": {"topic": "news", "data": {"k": "x".repeat(3000)}}}),
                "the limit is 2048",
            ),
            (
                json!({"message": {"condition": "'a' in topics", "data": {"k": "x".repeat(3000)}}}),
                "the limit is 2048",
            ),
            // Reserved data keys, at the top and for Android.
            (
                json!({"message": {"token": token(5), "data": {"from": "me"}}}),
                "Invalid data payload key: from",
            ),
            (
                json!({"message": {"token": token(5), "android": {"data": {"google.x": "1"}}}}),
                "Invalid data payload key: google.x",
            ),
            (
                json!({"message": {"token": token(5), "android": {"ttl": "3600"}}}),
                "message.android.ttl",
            ),
            (json!({"nomessage": 1}), "no message"),
        ];
        for (body, want) in cases {
            let mut a = h2c_opts.clone();
            a.extend(send_args(&h2c, Some(&bearer), &body));
            let answer = curl(&a).await;
            assert!(answer.status() == 400, "{}", answer.status_line);
            let e = answer.json();
            assert_eq!(e["error"]["status"], "INVALID_ARGUMENT");
            assert!(
                e["error"]["message"].as_str().unwrap().contains(want),
                "{e}"
            );
        }
        let violation = {
            let mut a = h2c_opts.clone();
            a.extend(send_args(
                &h2c,
                Some(&bearer),
                &json!({"message": {"token": "t", "data": {"n": 12}}}),
            ));
            curl(&a).await.json()
        };
        assert_eq!(
            violation["error"]["details"][0],
            json!({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
                {"field": "message.data[0].value",
                 "description": "Invalid value at 'message.data[0].value' (TYPE_STRING), 12"}]})
        );

        // Auth: missing, unknown, expired.
        for (bearer_token, reason) in [
            (None, Some("CREDENTIALS_MISSING")),
            (Some("ya29.nope"), None),
        ] {
            let mut a = h2c_opts.clone();
            a.extend(send_args(&h2c, bearer_token, &msg(token(6))));
            let answer = curl(&a).await;
            assert!(answer.status() == 401);
            assert!(answer.headers.contains("www-authenticate: bearer"));
            let e = answer.json();
            assert_eq!(e["error"]["status"], "UNAUTHENTICATED");
            assert_eq!(e["error"]["details"][0]["reason"].as_str(), reason);
        }
        clock.advance(Duration::from_secs(3601));
        let mut a = h2c_opts.clone();
        a.extend(send_args(&h2c, Some(&bearer), &msg(token(7))));
        let e = curl(&a).await.json();
        assert_eq!(e["error"]["code"], 401);
        assert_eq!(
            e["error"]["details"][0]["@type"],
            "type.googleapis.com/google.rpc.ErrorInfo"
        );
        assert_eq!(e["error"]["details"][0]["reason"], "ACCESS_TOKEN_EXPIRED");
        // A new token works again.
        let fresh = access_token(&h2c, &h1_opts).await;
        let mut a = h2c_opts.clone();
        a.extend(send_args(&h2c, Some(&fresh), &msg(token(7))));
        assert!(curl(&a).await.status() == 200);

        // Wrong routes and methods.
        let answer = curl(&args(&[
            "--http2-prior-knowledge",
            &format!("{h2c}/v1/projects/p1/messages:send"),
        ]))
        .await;
        assert!(answer.status() == 405, "{}", answer.status_line);
        let answer = curl(&args(&[
            "--http2-prior-knowledge",
            "-d",
            "{}",
            &format!("{h2c}/v2/nothing"),
        ]))
        .await;
        assert!(answer.status() == 404);
        assert_eq!(answer.json()["error"]["status"], "NOT_FOUND");
    })
    .await
}

#[tokio::test]
async fn curl_token_endpoint_refuses_bad_grants() {
    if !have("curl") {
        return;
    }
    bounded(async {
        let fake = start_fake(FakeOptions::default()).await;
        let h2c = fake.h2c_url();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let hs256 = format!(
            "{}.{}.c2ln",
            b64.encode(r#"{"alg":"HS256"}"#),
            b64.encode(r#"{"iss":"a","iat":1,"exp":2}"#)
        );
        let cases = [
            (
                "grant_type=client_credentials".to_string(),
                "unsupported_grant_type",
            ),
            (
                "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer".to_string(),
                "invalid_request",
            ),
            (
                "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=x.y".to_string(),
                "invalid_grant",
            ),
            (
                format!("grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion={hs256}"),
                "invalid_grant",
            ),
        ];
        for (form, error) in cases {
            let answer = curl(&args(&["--http1.1", "-d", &form, &format!("{h2c}/token")])).await;
            assert!(answer.status() == 400, "{form}");
            assert_eq!(answer.json()["error"], error, "{form}");
        }
    })
    .await
}

#[tokio::test]
async fn curl_gets_legacy_answers() {
    if !have("curl") {
        return;
    }
    bounded(async {
        let fake = start_fake(FakeOptions {
            api_keys: vec!["server-key".into()],
            ..FakeOptions::default()
        })
        .await;
        let url = format!("{}/fcm/send", fake.h2c_url());
        let legacy = |key: &str, body: Value| {
            let mut a = args(&[
                "--http2-prior-knowledge",
                "-H",
                "Content-Type: application/json",
            ]);
            a.extend([
                "-H".into(),
                format!("Authorization: key={key}"),
                "--data-binary".into(),
            ]);
            a.push(body.to_string());
            a.push(url.clone());
            a
        };
        let ids = json!([
            token(1),
            TokenRule::Unregistered.apply(&token(2)),
            "ca11xyz",
            TokenRule::WrongTopic.apply(&token(3)),
            "not valid!"
        ]);
        let answer = curl(&legacy(
            "server-key",
            json!({"registration_ids": ids, "data": {"k": "v"}}),
        ))
        .await;
        assert!(answer.status() == 200);
        let r = answer.json();
        // multicast_id is above 2^53: read it from the text as an integer.
        let id_text = answer.body.split("\"multicast_id\":").nth(1).unwrap();
        let id: u64 = id_text
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(id > 1 << 53);
        assert_eq!(
            (
                r["success"].as_u64(),
                r["failure"].as_u64(),
                r["canonical_ids"].as_u64()
            ),
            (Some(2), Some(3), Some(1))
        );
        let results = r["results"].as_array().unwrap();
        assert!(results[0]["message_id"].as_str().unwrap().starts_with("0:"));
        assert_eq!(results[1], json!({"error": "NotRegistered"}));
        assert_eq!(results[2]["registration_id"], "c0dexyz");
        assert_eq!(results[3], json!({"error": "MismatchSenderId"}));
        assert_eq!(results[4], json!({"error": "InvalidRegistration"}));

        let answer = curl(&legacy("wrong", json!({"to": token(1)}))).await;
        assert!(answer.status() == 401);
        let answer = curl(&legacy("server-key", json!({"data": {}}))).await;
        assert!(answer.status() == 400);
        let big = json!({"to": token(1), "data": {"k": "x".repeat(4097)}});
        let answer = curl(&legacy("server-key", big)).await;
        assert_eq!(answer.json()["results"][0]["error"], "MessageTooBig");
        // A topic message is answered with one id or one error, no `results`
        // (protocols.md §3); a topic has half the room.
        let topic = json!({"to": "/topics/news", "data": {"k": "v"}});
        let answer = curl(&legacy("server-key", topic)).await;
        assert!(answer.status() == 200);
        let id_text = answer.body.split("{\"message_id\":").nth(1).unwrap();
        assert!(id_text.trim_end_matches('}').parse::<u64>().unwrap() > 1 << 53);
        let topic = json!({"to": "/topics/news", "data": {"k": "x".repeat(3000)}});
        let answer = curl(&legacy("server-key", topic)).await;
        assert_eq!(answer.json(), json!({"error": "MessageTooBig"}));
        // A reserved data key refuses the message, for every token.
        let reserved = json!({"registration_ids": [token(1), token(2)],
                              "data": {"message_type": "x"}});
        let r = curl(&legacy("server-key", reserved)).await.json();
        assert_eq!(r["failure"], 2);
        for result in r["results"].as_array().unwrap() {
            assert_eq!(result, &json!({"error": "InvalidDataKey"}));
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// The CLI

async fn spawn_mock(service: &[&str]) -> (tokio::process::Child, Value) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pusher"))
        .arg("mock")
        .args(service)
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
async fn cli_mock_gcm_prints_its_addresses_and_serves() {
    if !have("curl") {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let ca_arg = ca.display().to_string();
        let (child, ready) =
            spawn_mock(&["gcm", "--token-lifetime", "1h", "--ca-out", &ca_arg]).await;
        let fcm = &ready["fcm"];
        assert_eq!(fcm["ca"].as_str().unwrap(), ca_arg);
        let tls: SocketAddr = fcm["tls"].as_str().unwrap().parse().unwrap();
        assert_eq!(fcm["token_uri"], format!("https://{tls}/token"));
        let base = format!("https://localhost:{}", tls.port());
        let opts = args(&["--http2", "--cacert", &ca_arg]);
        let bearer = access_token(&base, &opts).await;
        let mut a = opts.clone();
        a.extend(send_args(
            &base,
            Some(&bearer),
            &json!({"message": {"token": token(1)}}),
        ));
        assert!(curl(&a).await.status_line.starts_with("HTTP/2 200"));
        let admin = ready["admin"].as_str().unwrap();
        let stats = curl(&args(&[&format!("http://{admin}/stats")]))
            .await
            .json();
        assert_eq!(stats["requests"], 2);
        stop(child).await;
    })
    .await
}

#[tokio::test]
async fn cli_mock_all_runs_both_fakes_in_one_process() {
    if !have("curl") {
        return;
    }
    bounded(async {
        let (child, ready) = spawn_mock(&["all", "--no-auth"]).await;
        let (apns, fcm) = (&ready["apns"], &ready["fcm"]);
        for key in ["tls", "h2c", "ca", "admin"] {
            assert!(
                apns[key].is_string() && fcm[key].is_string(),
                "{key}: {ready}"
            );
            assert_ne!(apns[key], fcm[key], "{key}");
        }
        assert!(fcm["token_uri"].as_str().unwrap().ends_with("/token"));
        let apns_h2c = apns["h2c"].as_str().unwrap();
        let answer = curl(&args(&[
            "--http2-prior-knowledge",
            "-H",
            "apns-topic: com.example.app",
            "-H",
            "apns-push-type: alert",
            "-d",
            r#"{"aps":{"alert":"hi"}}"#,
            &format!("http://{apns_h2c}/3/device/{}", "ab".repeat(32)),
        ]))
        .await;
        assert!(
            answer.status_line.starts_with("HTTP/2 200"),
            "{}",
            answer.status_line
        );
        let fcm_h2c = format!("http://{}", fcm["h2c"].as_str().unwrap());
        let mut a = args(&["--http2-prior-knowledge"]);
        a.extend(send_args(
            &fcm_h2c,
            None,
            &json!({"message": {"token": token(1)}}),
        ));
        assert!(curl(&a).await.status_line.starts_with("HTTP/2 200"));
        stop(child).await;
    })
    .await
}
