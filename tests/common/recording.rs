//! A fake APNs server that also logs every answer it gives (when, to which token, which
//! status), so tests can check retry timing: `Retry-After` honoured, back-off jittered,
//! throughput after a fault. Wraps the real APNs handler; the profile's resets, drops and
//! stalls happen before the handler, so only answered requests are logged.

use super::{fixture, Fake, KEY_ID, TEAM_ID};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use pusher::mock::apns::ApnsHandler;
use pusher::mock::server::{ConnState, Env, Handler};
use pusher::mock::{ApnsOptions, JwtKey, MockConfig, MockServer, Profile};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One answer: time since the server started, the token, the HTTP status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub at: Duration,
    pub token: String,
    pub status: u16,
}

#[derive(Debug, Clone)]
pub struct AnswerLog {
    started: Instant,
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl AnswerLog {
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }
    /// Time since the server started (the profile's clock origin, within a millisecond).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

struct Recording {
    inner: ApnsHandler,
    log: AnswerLog,
}

impl Handler for Recording {
    async fn handle<'a>(
        &'a self,
        req: Request<Incoming>,
        conn: &'a ConnState,
        env: &'a Env,
    ) -> Response<Full<Bytes>> {
        let token = req
            .uri()
            .path()
            .strip_prefix("/3/device/")
            .unwrap_or_default()
            .to_string();
        let response = self.inner.handle(req, conn, env).await;
        let answer = Answer {
            at: self.log.started.elapsed(),
            token,
            status: response.status().as_u16(),
        };
        self.log.answers.lock().unwrap().push(answer);
        response
    }
}

/// A fake APNs server (JWT checked, `profile`, delivered tokens recorded) that logs answers.
pub async fn start_recording_fake(profile: Profile, record_tokens: usize) -> (Fake, AnswerLog) {
    let pem = std::fs::read_to_string(fixture("AuthKey_TESTKEY001.pub.pem")).unwrap();
    let options = ApnsOptions {
        jwt_keys: vec![JwtKey::from_pem(KEY_ID, TEAM_ID, &pem).unwrap()],
        ..ApnsOptions::default()
    };
    let config = MockConfig {
        profile,
        record_tokens,
        apns: options.clone(),
        ..MockConfig::default()
    };
    let log = AnswerLog {
        started: Instant::now(),
        answers: Arc::new(Mutex::new(Vec::new())),
    };
    let handler = Recording {
        inner: ApnsHandler::new(&options, false).unwrap(),
        log: log.clone(),
    };
    let server = MockServer::start_with(config, handler).await.unwrap();
    (Fake::new(server), log)
}
