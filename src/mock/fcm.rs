//! The fake FCM: HTTP v1 `POST /v1/projects/{p}/messages:send`, its own OAuth token endpoint
//! `POST /token`, and the legacy `POST /fcm/send`, plugged into the shared server core (so
//! TLS and h2c, HTTP/2 and HTTP/1.1, profiles, faults, counters and admin are the APNs fake's).
//!
//! v1 checks, first failure wins: bearer token (401 UNAUTHENTICATED; an expired token carries
//! the google.rpc.ErrorInfo reason ACCESS_TOKEN_EXPIRED), JSON body, exactly one target
//! (`token`, `fid`, `topic`, `condition`; two are FCM's oneof error, which names no token),
//! token format, string-only `data` (BadRequest fieldViolations) under no reserved key
//! (`from`, `message_type`, `google.*`, `gcm.notification.*`), `android.ttl` and
//! `android.priority`, the payload limit (4096 bytes, 2048 to a topic or condition); then
//! the token rules (`crate::push::token_rules`), `validate_only`, and the profile's scripted
//! answers. Errors are Google's JSON: `error.code`, `error.status`, `error.message`,
//! `error.details` with the FcmError `@type`; 429 and 503 carry `Retry-After`.
//!
//! The token endpoint accepts the JWT-bearer grant signed by any key and does not check `aud`
//! (google-auth always sends Google's own, protocols.md §2.3); it checks the assertion's
//! shape and lifetime only. Legacy `/fcm/send` accepts any non-empty `key=` (or only the
//! configured keys), answers in the legacy shape, and gives tokens starting `ca11` a
//! canonical `registration_id`.

use super::apns::{OnceMemory, ONCE_MEMORY};
use super::profile::Scripted;
use super::server::{ConnState, Env, Handler};
use crate::clock::{self, SharedClock};
use crate::push::fcm::{
    json_len, legacy, FcmErrorCode, ACCESS_TOKEN_EXPIRED, BAD_REQUEST_TYPE, ERROR_INFO_TYPE,
    FCM_ERROR_TYPE, MAX_TTL_SECS,
};
use crate::push::gcm::{is_topic_address, payload_limit, reserved_data_key};
use crate::push::token_rules::TokenRule;
use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Largest request body read; bigger ones are refused before parsing.
const MAX_BODY: usize = 64 * 1024;
/// Access tokens remembered at most; expired ones are forgotten first.
const MAX_ISSUED: usize = 100_000;
/// Legacy tokens starting with this get a canonical `registration_id` back.
pub const CANONICAL_PREFIX: &str = "ca11";
/// Most `registration_ids` one legacy request may carry.
const LEGACY_MAX_TOKENS: usize = 1000;
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const AUTH_MESSAGE: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";

/// FCM options of a fake server.
#[derive(Debug, Clone)]
pub struct FcmOptions {
    /// v1 requests need a bearer token issued by this server's `/token`.
    pub require_auth: bool,
    /// Lifetime of issued access tokens (`expires_in`).
    pub token_lifetime: Duration,
    /// Legacy server keys accepted; any non-empty key when empty.
    pub api_keys: Vec<String>,
    /// FCM's project quota, off when `None` (FCM's default is 600,000 a minute): a bucket of
    /// this many v1 sends, refilled a minute after its window opened ("minutes are not aligned
    /// to the clock"). Over it: 429 QUOTA_EXCEEDED with `Retry-After` until the refill. Every
    /// authenticated send counts, 4xx answers included; 429s do not (protocols.md §2.5).
    pub quota_per_minute: Option<u64>,
    /// The clock token expiry and the quota window are judged by.
    pub clock: SharedClock,
}

impl Default for FcmOptions {
    fn default() -> Self {
        FcmOptions {
            require_auth: true,
            token_lifetime: Duration::from_secs(3599),
            api_keys: Vec::new(),
            quota_per_minute: None,
            clock: clock::system(),
        }
    }
}

/// The FCM protocol handler.
#[derive(Debug)]
pub struct FcmHandler {
    options: FcmOptions,
    /// Access token -> when it expires (clock time).
    issued: Mutex<HashMap<String, Duration>>,
    once: Mutex<OnceMemory>,
    ids: AtomicU64,
    quota: Mutex<QuotaWindow>,
}

/// The current quota window: when it opened (clock time) and the sends counted in it.
#[derive(Debug, Default)]
struct QuotaWindow {
    opened: Duration,
    used: u64,
}

/// An error answer in Google's JSON.
struct GoogleError {
    code: u16,
    status: &'static str,
    message: String,
    details: Vec<Value>,
    retry_after: Option<u64>,
    /// What `by_reason` counts it as.
    label: String,
}

impl GoogleError {
    fn fcm(code: &FcmErrorCode, message: impl Into<String>) -> GoogleError {
        let retry_after = matches!(code.status(), 429 | 503).then_some(1);
        GoogleError {
            code: code.status(),
            status: code.canonical_status(),
            message: message.into(),
            details: vec![json!({"@type": FCM_ERROR_TYPE, "errorCode": code.as_str()})],
            retry_after,
            label: code.as_str().to_string(),
        }
    }

    fn invalid(message: impl Into<String>) -> GoogleError {
        GoogleError::fcm(&FcmErrorCode::InvalidArgument, message)
    }

    fn unauthenticated(reason: Option<&str>) -> GoogleError {
        GoogleError {
            code: 401,
            status: "UNAUTHENTICATED",
            message: AUTH_MESSAGE.into(),
            details: reason
                .map(|r| {
                    vec![
                        json!({"@type": ERROR_INFO_TYPE, "reason": r, "domain": "googleapis.com",
                        "metadata": {"service": "fcm.googleapis.com",
                                     "method": "google.firebase.fcm.v1.FcmService.SendMessage"}}),
                    ]
                })
                .unwrap_or_default(),
            retry_after: None,
            label: reason.unwrap_or("UNAUTHENTICATED").to_string(),
        }
    }

    fn render(self, env: &Env) -> Response<Full<Bytes>> {
        env.stats.reason(&self.label);
        let body = json!({"error": {"code": self.code, "message": self.message,
            "status": self.status, "details": self.details}});
        let mut response = json_response(self.code, &body);
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if self.code == 401 {
            response.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static(
                    "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"",
                ),
            );
        }
        response
    }
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

fn text_response(status: u16, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// The profile's error mix names reasons; APNs names (the shipped profiles use them) are
/// mapped to the FCM code that means the same, FCM codes are taken as they are.
pub fn profile_code(reason: &str) -> FcmErrorCode {
    match FcmErrorCode::parse(reason) {
        FcmErrorCode::Other(_) => match reason {
            "InternalServerError" => FcmErrorCode::Internal,
            "ServiceUnavailable" | "Shutdown" => FcmErrorCode::Unavailable,
            "TooManyRequests" => FcmErrorCode::QuotaExceeded,
            "Unregistered" | "ExpiredToken" => FcmErrorCode::Unregistered,
            "DeviceTokenNotForTopic" => FcmErrorCode::SenderIdMismatch,
            "BadDeviceToken" | "PayloadTooLarge" => FcmErrorCode::InvalidArgument,
            other => FcmErrorCode::Other(other.to_string()),
        },
        known => known,
    }
}

/// A registration token or FID as FCM would accept it: non-empty, URL-safe characters.
fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 4096
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
}

/// `"3600s"` / `"1.5s"` within four weeks.
fn valid_ttl(ttl: &str) -> bool {
    let Some(number) = ttl.strip_suffix('s') else {
        return false;
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 9
        && frac.bytes().all(|b| b.is_ascii_digit())
        && whole.parse::<u64>().is_ok_and(|s| s <= MAX_TTL_SECS)
}

impl FcmHandler {
    pub fn new(options: FcmOptions) -> FcmHandler {
        FcmHandler {
            options,
            issued: Mutex::new(HashMap::new()),
            once: Mutex::new(OnceMemory::new(ONCE_MEMORY)),
            ids: AtomicU64::new(rand::random::<u32>() as u64),
            quota: Mutex::new(QuotaWindow::default()),
        }
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts one send against the quota; `Some(seconds to the refill)` when over it.
    fn over_quota(&self) -> Option<u64> {
        const MINUTE: Duration = Duration::from_secs(60);
        let limit = self.options.quota_per_minute?;
        let now = self.options.clock.now();
        let mut window = self.quota.lock();
        if window.used == 0 || now >= window.opened + MINUTE {
            window.opened = now;
            window.used = 0;
        }
        if window.used >= limit {
            let left = (window.opened + MINUTE).saturating_sub(now);
            return Some(left.as_secs_f64().ceil().max(1.0) as u64);
        }
        window.used += 1;
        None
    }

    fn first_time(&self, token: &str) -> bool {
        self.once.lock().first_time(token)
    }

    /// The v1 error a token rule gives, if any.
    fn token_rule(&self, token: &str) -> Option<GoogleError> {
        match TokenRule::of(token)? {
            TokenRule::Unregistered => Some(GoogleError::fcm(
                &FcmErrorCode::Unregistered,
                "Requested entity was not found.",
            )),
            TokenRule::BadToken => Some(GoogleError::invalid(
                "The registration token is not a valid FCM registration token",
            )),
            TokenRule::WrongTopic => Some(GoogleError::fcm(
                &FcmErrorCode::SenderIdMismatch,
                "SenderId mismatch",
            )),
            TokenRule::UnavailableOnce => self.first_time(token).then(|| {
                GoogleError::fcm(
                    &FcmErrorCode::Unavailable,
                    "The service is currently unavailable.",
                )
            }),
            TokenRule::ThrottledOnce => self.first_time(token).then(|| {
                GoogleError::fcm(
                    &FcmErrorCode::QuotaExceeded,
                    "Quota exceeded for quota metric 'Send requests'.",
                )
            }),
        }
    }

    /// The v1 error the profile scripts for this request, if any.
    fn scripted(env: &Env) -> Option<GoogleError> {
        match env.faults.scripted()? {
            Scripted::Unavailable => Some(GoogleError::fcm(
                &FcmErrorCode::Unavailable,
                "The service is currently unavailable.",
            )),
            Scripted::Throttled { retry_after_s } => {
                let mut e = GoogleError::fcm(&FcmErrorCode::QuotaExceeded, "Quota exceeded.");
                e.retry_after = Some(retry_after_s);
                Some(e)
            }
            Scripted::Error(reason) => {
                let code = profile_code(&reason);
                Some(GoogleError::fcm(&code, format!("Scripted error {code}.")))
            }
        }
    }

    fn check_bearer(&self, parts: &http::request::Parts) -> Result<(), GoogleError> {
        if !self.options.require_auth {
            return Ok(());
        }
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| GoogleError::unauthenticated(Some("CREDENTIALS_MISSING")))?;
        let issued = self.issued.lock();
        match issued.get(token) {
            None => Err(GoogleError::unauthenticated(None)),
            Some(expires) if *expires <= self.options.clock.now() => {
                Err(GoogleError::unauthenticated(Some(ACCESS_TOKEN_EXPIRED)))
            }
            Some(_) => Ok(()),
        }
    }

    async fn v1(&self, req: Request<Incoming>, env: &Env, project: &str) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        // The body is read before any answer: answering an HTTP/2 request mid-upload resets
        // the stream, which some clients (curl) report as an error instead of the answer.
        let body = read_body(&parts, body).await;
        if let Err(e) = self.check_bearer(&parts) {
            return e.render(env);
        }
        if let Some(retry_after_s) = self.over_quota() {
            let mut e = GoogleError::fcm(
                &FcmErrorCode::QuotaExceeded,
                "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute'.",
            );
            e.retry_after = Some(retry_after_s);
            return e.render(env);
        }
        let body = match body {
            Ok(b) => b,
            Err(e) => return e.render(env),
        };
        env.stats.bytes_in(body.len());
        let request: Value = match serde_json::from_slice(&body) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return bad_request(
                    "Invalid JSON payload received. Expected an object.",
                    "",
                    "Invalid JSON payload received.",
                )
                .render(env)
            }
        };
        let validate_only = match request.get("validate_only") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return bad_request(
                    "Invalid value at 'validate_only' (TYPE_BOOL)",
                    "validate_only",
                    "Invalid value at 'validate_only' (TYPE_BOOL)",
                )
                .render(env)
            }
        };
        let Some(message) = request.get("message").and_then(Value::as_object) else {
            return GoogleError::invalid("Request contains an invalid argument: no message.")
                .render(env);
        };
        let target = match check_message(message) {
            Ok(t) => t,
            Err(e) => return e.render(env),
        };
        if let Some(token) = target {
            if let Some(e) = self.token_rule(token) {
                return e.render(env);
            }
        }
        if validate_only {
            env.stats.reason("validate_only");
            return json_response(
                200,
                &json!({"name": format!("projects/{project}/messages/fake_message_id")}),
            );
        }
        if let Some(e) = Self::scripted(env) {
            return e.render(env);
        }
        if let Some(token) = target {
            env.stats.delivered(token);
        }
        // The hot path: the answer is written directly, not built as a JSON tree.
        let name = format!(
            "projects/{project}/messages/0:{}%{:016x}",
            self.options.clock.now().as_micros(),
            self.next_id()
        );
        let mut body = Vec::with_capacity(name.len() + 12);
        body.extend_from_slice(b"{\"name\":");
        // A project id from the path is plain text, but escape it anyway.
        let _ = serde_json::to_writer(&mut body, &name);
        body.push(b'}');
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        );
        response
    }

    /// `POST /token`: the JWT-bearer grant.
    async fn token(&self, req: Request<Incoming>, env: &Env) -> Response<Full<Bytes>> {
        env.stats.token_request();
        let (parts, body) = req.into_parts();
        let oauth_error = |error: &str, description: &str| {
            env.stats.reason(&format!("oauth_{error}"));
            json_response(
                400,
                &json!({"error": error, "error_description": description}),
            )
        };
        let Ok(body) = read_body(&parts, body).await else {
            return oauth_error("invalid_request", "Unreadable or oversized body.");
        };
        let mut grant_type = None;
        let mut assertion = None;
        for (k, v) in form_urlencoded::parse(&body) {
            match k.as_ref() {
                "grant_type" => grant_type = Some(v.into_owned()),
                "assertion" => assertion = Some(v.into_owned()),
                _ => {}
            }
        }
        if grant_type.as_deref() != Some(JWT_BEARER) {
            return oauth_error(
                "unsupported_grant_type",
                &format!("Invalid grant_type: {}", grant_type.unwrap_or_default()),
            );
        }
        let Some(assertion) = assertion else {
            return oauth_error("invalid_request", "Missing required parameter: assertion");
        };
        if let Err(problem) = check_assertion(&assertion) {
            return oauth_error("invalid_grant", problem);
        }
        let token = format!(
            "ya29.fake-{:016x}{:016x}",
            rand::random::<u64>(),
            self.next_id()
        );
        let now = self.options.clock.now();
        {
            let mut issued = self.issued.lock();
            if issued.len() >= MAX_ISSUED {
                issued.retain(|_, expires| *expires > now);
                if issued.len() >= MAX_ISSUED {
                    issued.clear();
                }
            }
            issued.insert(token.clone(), now + self.options.token_lifetime);
        }
        json_response(
            200,
            &json!({"access_token": token, "expires_in": self.options.token_lifetime.as_secs(),
                    "token_type": "Bearer"}),
        )
    }

    /// `POST /fcm/send`: the legacy API.
    async fn legacy(&self, req: Request<Incoming>, env: &Env) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = read_body(&parts, body).await;
        let key = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.get(..4)
                    .filter(|p| p.eq_ignore_ascii_case("key="))
                    .map(|_| v[4..].trim())
            })
            .filter(|k| !k.is_empty());
        let accepted = key.is_some_and(|k| {
            self.options.api_keys.is_empty() || self.options.api_keys.iter().any(|a| a == k)
        });
        if !accepted {
            env.stats.reason("Unauthorized");
            return text_response(401, "Unauthorized\n");
        }
        let Ok(body) = body else {
            env.stats.reason("JSON_PARSING_ERROR");
            return text_response(400, "Request body too large\n");
        };
        env.stats.bytes_in(body.len());
        let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
            env.stats.reason("JSON_PARSING_ERROR");
            return text_response(400, "JSON_PARSING_ERROR: Unexpected token in the request\n");
        };
        let tokens: Vec<String> = match (request.get("to"), request.get("registration_ids")) {
            (Some(Value::String(to)), None) => vec![to.clone()],
            (None, Some(Value::Array(ids)))
                if (1..=LEGACY_MAX_TOKENS).contains(&ids.len())
                    && ids.iter().all(Value::is_string) =>
            {
                ids.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            }
            _ => {
                env.stats.reason("MissingRegistration");
                return text_response(
                    400,
                    "Give \"to\" (a string) or \"registration_ids\" (1 to 1000 strings)\n",
                );
            }
        };
        let size: usize = ["data", "notification"]
            .iter()
            .filter_map(|k| request.get(*k))
            .map(json_len)
            .sum();
        // A topic or condition message has half the room.
        let topic = request.contains_key("condition")
            || matches!(tokens.as_slice(), [one] if is_topic_address(one));
        let too_big = size > payload_limit(topic);
        // Every result says so: the message is refused, not a token.
        let bad_key = request
            .get("data")
            .and_then(Value::as_object)
            .is_some_and(|data| data.keys().any(|k| reserved_data_key(k)));
        let dry_run = request.get("dry_run") == Some(&Value::Bool(true));
        // One scripted draw per request, as for v1.
        let scripted = if too_big || bad_key {
            None
        } else {
            Self::scripted(env)
        };
        if let Some(e) = &scripted {
            if e.code == 503 {
                env.stats.reason(legacy::UNAVAILABLE);
                let mut response = text_response(503, "Service Unavailable\n");
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(e.retry_after.unwrap_or(1)));
                return response;
            }
        }
        let scripted_error = scripted.map(|e| legacy::from_code(&FcmErrorCode::parse(&e.label)));
        if let [address] = tokens.as_slice() {
            if is_topic_address(address) {
                // A topic message is answered with one id or one error and no `results`
                // (protocols.md §3).
                let error = if too_big {
                    Some(legacy::MESSAGE_TOO_BIG)
                } else if bad_key {
                    Some(legacy::INVALID_DATA_KEY)
                } else {
                    scripted_error
                };
                return match error {
                    Some(error) => {
                        env.stats.reason(error);
                        json_response(200, &json!({ "error": error }))
                    }
                    None => {
                        if !dry_run {
                            env.stats.delivered(address);
                        }
                        // An int64 here, above 2^53 as the multicast id below.
                        let id = (1u64 << 62) + self.next_id();
                        json_response(200, &json!({ "message_id": id }))
                    }
                };
            }
        }
        let mut results = Vec::with_capacity(tokens.len());
        let (mut success, mut failure, mut canonical) = (0, 0, 0);
        for token in &tokens {
            let error = if too_big {
                Some(legacy::MESSAGE_TOO_BIG)
            } else if bad_key {
                Some(legacy::INVALID_DATA_KEY)
            } else if token.is_empty() {
                Some(legacy::MISSING_REGISTRATION)
            } else if !valid_token(token) {
                Some(legacy::INVALID_REGISTRATION)
            } else {
                self.token_rule(token)
                    .map(|e| legacy::from_code(&FcmErrorCode::parse(&e.label)))
                    .or(scripted_error)
            };
            match error {
                Some(error) => {
                    failure += 1;
                    env.stats.reason(error);
                    results.push(json!({ "error": error }));
                }
                None => {
                    success += 1;
                    let message_id = if dry_run {
                        "fake_message_id".to_string()
                    } else {
                        env.stats.delivered(token);
                        format!(
                            "0:{}%{:016x}",
                            self.options.clock.now().as_micros(),
                            self.next_id()
                        )
                    };
                    if token
                        .get(..4)
                        .is_some_and(|p| p.eq_ignore_ascii_case(CANONICAL_PREFIX))
                    {
                        canonical += 1;
                        results.push(json!({"message_id": message_id,
                            "registration_id": canonical_id(token)}));
                    } else {
                        results.push(json!({ "message_id": message_id }));
                    }
                }
            }
        }
        // Above 2^53 on purpose: clients must read it as an integer, not a double.
        let multicast_id = (1u64 << 62) + self.next_id();
        json_response(
            200,
            &json!({"multicast_id": multicast_id, "success": success, "failure": failure,
                    "canonical_ids": canonical, "results": results}),
        )
    }
}

/// The canonical token the fake hands out for a `ca11...` token.
pub fn canonical_id(token: &str) -> String {
    format!("c0de{}", token.get(4..).unwrap_or(""))
}

fn bad_request(message: &str, field: &str, description: &str) -> GoogleError {
    GoogleError {
        code: 400,
        status: "INVALID_ARGUMENT",
        message: message.into(),
        details: vec![json!({"@type": BAD_REQUEST_TYPE,
            "fieldViolations": [{"field": field, "description": description}]})],
        retry_after: None,
        label: "INVALID_ARGUMENT".into(),
    }
}

async fn read_body(parts: &http::request::Parts, body: Incoming) -> Result<Bytes, GoogleError> {
    let too_big = || {
        GoogleError::invalid(format!(
            "Request payload size exceeds the limit: {MAX_BODY} bytes."
        ))
    };
    if parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY)
    {
        return Err(too_big());
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(_) => Err(too_big()),
    }
}

/// Validates a v1 `message`; returns the token or FID it targets (`None` for topic/condition).
fn check_message(message: &Map<String, Value>) -> Result<Option<&str>, GoogleError> {
    let targets: Vec<&str> = ["token", "fid", "topic", "condition"]
        .into_iter()
        .filter(|k| message.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    let target = match targets.as_slice() {
        [one] => *one,
        // A target names no field: "message.token" in the text would read as a bad token.
        [] => {
            return Err(GoogleError::invalid(
                "Request contains an invalid argument: no target (token, fid, topic or condition).",
            ))
        }
        // FCM's own words for a protobuf oneof set twice.
        [_, second, ..] => {
            let message = format!(
                "Invalid value at 'message' (oneof), oneof field 'target' is already set. Cannot set '{second}'"
            );
            return Err(bad_request(&message, "message", &message));
        }
    };
    let Some(value) = message.get(target).and_then(Value::as_str) else {
        return Err(bad_request(
            &format!("Invalid value at 'message.{target}' (TYPE_STRING)"),
            &format!("message.{target}"),
            "must be a string",
        ));
    };
    let device = match target {
        "token" | "fid" if !valid_token(value) => {
            return Err(GoogleError::invalid(
                "The registration token is not a valid FCM registration token",
            ))
        }
        "token" | "fid" => Some(value),
        "topic" if value.starts_with("/topics/") || value.is_empty() => {
            return Err(GoogleError::invalid(
                "Invalid topic name (no /topics/ prefix).",
            ))
        }
        _ => None,
    };
    check_data(message.get("data"), "message.data")?;
    let mut size = ["data", "notification"]
        .iter()
        .filter_map(|k| message.get(*k))
        .map(json_len)
        .sum::<usize>();
    if let Some(android) = message.get("android") {
        let Some(android) = android.as_object() else {
            return Err(GoogleError::invalid("message.android must be an object."));
        };
        check_data(android.get("data"), "message.android.data")?;
        if let Some(ttl) = android.get("ttl") {
            if !ttl.as_str().is_some_and(valid_ttl) {
                return Err(GoogleError::invalid(format!(
                    "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), {ttl}"
                )));
            }
        }
        if let Some(p) = android.get("priority") {
            if !matches!(p.as_str(), Some("NORMAL" | "HIGH")) {
                return Err(GoogleError::invalid(format!(
                    "Invalid value at 'message.android.priority' (type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), {p}"
                )));
            }
        }
        size += ["data", "notification"]
            .iter()
            .filter_map(|k| android.get(*k))
            .map(json_len)
            .sum::<usize>();
    }
    if let Some(apns) = message.get("apns") {
        let Some(apns) = apns.as_object() else {
            return Err(GoogleError::invalid("message.apns must be an object."));
        };
        // `ApnsConfig.headers` is a map<string, string>, as `data` is.
        string_map(apns.get("headers"), "message.apns.headers")?;
    }
    // A topic or condition message has half a device message's room (protocols.md §2.2).
    let limit = payload_limit(device.is_none());
    if size > limit {
        return Err(GoogleError::invalid(format!(
            "Message is too big: {size} bytes of data and notification, the limit is {limit}."
        )));
    }
    Ok(device)
}

/// `data` maps take string values only (see [`string_map`]), under keys FCM does not reserve
/// (its wording: "Invalid data payload key: from").
fn check_data(data: Option<&Value>, field: &str) -> Result<(), GoogleError> {
    match string_map(data, field)?.and_then(|map| map.keys().find(|k| reserved_data_key(k))) {
        None => Ok(()),
        Some(key) => Err(GoogleError::invalid(format!(
            "Invalid data payload key: {key}"
        ))),
    }
}

/// A protobuf `map<string, string>` field (`data`, `apns.headers`): string values only, in
/// FCM's own wording and BadRequest detail.
fn string_map<'a>(
    map: Option<&'a Value>,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, GoogleError> {
    match map {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => match map.iter().enumerate().find(|(_, (_, v))| !v.is_string())
        {
            None => Ok(Some(map)),
            Some((i, (_, v))) => {
                let at = format!("{field}[{i}].value");
                let message = format!("Invalid value at '{at}' (TYPE_STRING), {v}");
                Err(bad_request(&message, &at, &message))
            }
        },
        Some(other) => {
            let message = format!("Invalid value at '{field}' (Map), {other}");
            Err(bad_request(&message, field, &message))
        }
    }
}

/// The shape of an RS256 JWT assertion: header `alg` RS256, claims with `iss`, and a lifetime
/// (`exp - iat`) of at most an hour. The signature and `aud` are not checked.
fn check_assertion(jwt: &str) -> Result<(), &'static str> {
    #[derive(serde::Deserialize)]
    struct Head {
        alg: String,
    }
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
        iat: u64,
        exp: u64,
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = jwt.split('.');
    let (Some(head), Some(claims), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("Invalid JWT: expected header.claims.signature");
    };
    let head: Head = b64
        .decode(head.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("Invalid JWT header.")?;
    if head.alg != "RS256" {
        return Err("Invalid JWT: alg must be RS256.");
    }
    let claims: Claims = b64
        .decode(claims.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("Invalid JWT claims: need iss, iat and exp.")?;
    if claims.iss.is_empty() || sig.is_empty() {
        return Err("Invalid JWT Signature.");
    }
    if claims.exp <= claims.iat || claims.exp - claims.iat > 3600 {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.");
    }
    Ok(())
}

impl Handler for FcmHandler {
    async fn handle<'a>(
        &'a self,
        req: Request<Incoming>,
        _conn: &'a ConnState,
        env: &'a Env,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let project = path
            .strip_prefix("/v1/projects/")
            .and_then(|rest| rest.strip_suffix("/messages:send"))
            .filter(|p| !p.is_empty() && !p.contains('/'))
            .map(str::to_owned);
        let known = project.is_some() || path == "/token" || path == "/fcm/send";
        if !known || req.method() != Method::POST {
            // Read the body before answering (see `v1`); its content does not matter.
            let _ = Limited::new(req.into_body(), MAX_BODY).collect().await;
            return wrong_route(env, &path, known);
        }
        match project {
            Some(project) => self.v1(req, env, &project).await,
            None if path == "/token" => self.token(req, env).await,
            None => self.legacy(req, env).await,
        }
    }
}

/// 404 for an unknown path, 405 for a known one asked with another method than POST.
fn wrong_route(env: &Env, path: &str, known: bool) -> Response<Full<Bytes>> {
    let (code, status, message, label) = if known {
        (
            405,
            "UNIMPLEMENTED",
            format!("Use POST for {path}."),
            "METHOD_NOT_ALLOWED",
        )
    } else {
        (
            404,
            "NOT_FOUND",
            format!("The requested URL {path} was not found on this server."),
            "NOT_FOUND",
        )
    };
    GoogleError {
        code,
        status,
        message,
        details: Vec::new(),
        retry_after: None,
        label: label.into(),
    }
    .render(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_and_tokens_are_checked() {
        for ok in ["0s", "3600s", "1.5s", "2419200s", "3.000000001s"] {
            assert!(valid_ttl(ok), "{ok}");
        }
        for bad in ["3600", "s", "-1s", "2419201s", "1.0000000001s", "1e3s", ""] {
            assert!(!valid_ttl(bad), "{bad}");
        }
        assert!(valid_token("dXk0:APA91bH-x_y.z"));
        assert!(!valid_token("") && !valid_token("a b") && !valid_token("a/b"));
    }

    #[test]
    fn profile_reasons_map_to_fcm_codes() {
        let cases = [
            ("InternalServerError", FcmErrorCode::Internal),
            ("ServiceUnavailable", FcmErrorCode::Unavailable),
            ("TooManyRequests", FcmErrorCode::QuotaExceeded),
            ("Unregistered", FcmErrorCode::Unregistered),
            ("UNAVAILABLE", FcmErrorCode::Unavailable),
            ("SENDER_ID_MISMATCH", FcmErrorCode::SenderIdMismatch),
            ("Whatever", FcmErrorCode::Other("Whatever".into())),
        ];
        for (reason, code) in cases {
            assert_eq!(profile_code(reason), code, "{reason}");
        }
    }

    #[test]
    fn assertions_are_checked_for_shape_not_signature() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwt =
            |head: &str, claims: &str| format!("{}.{}.c2ln", b64.encode(head), b64.encode(claims));
        let good = jwt(
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"iss":"a@b","aud":"anything","iat":100,"exp":3700}"#,
        );
        assert_eq!(check_assertion(&good), Ok(()));
        for bad in [
            "x.y".to_string(),
            jwt(r#"{"alg":"HS256"}"#, r#"{"iss":"a","iat":1,"exp":2}"#),
            jwt(r#"{"alg":"RS256"}"#, r#"{"iat":1,"exp":2}"#),
            jwt(r#"{"alg":"RS256"}"#, r#"{"iss":"a","iat":1,"exp":7200}"#),
        ] {
            assert!(check_assertion(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_are_validated() {
        let check = |v: Value| {
            check_message(v.as_object().unwrap())
                .map(|t| t.map(str::to_owned))
                .map_err(|e| e.message)
        };
        assert_eq!(check(json!({"token":"abc"})), Ok(Some("abc".into())));
        assert_eq!(check(json!({"fid":"f1"})), Ok(Some("f1".into())));
        assert_eq!(check(json!({"topic":"news"})), Ok(None));
        assert!(check(json!({})).unwrap_err().contains("no target"));
        // FCM's oneof wording, which names no token field (it must not read as a bad token).
        assert_eq!(
            check(json!({"token":"a","topic":"b"})).unwrap_err(),
            "Invalid value at 'message' (oneof), oneof field 'target' is already set. Cannot set 'topic'"
        );
        for two in [
            json!({"token":"a","topic":"b"}),
            json!({"token":"a","condition":"'b' in topics"}),
            json!({"fid":"a","topic":"b"}),
            json!({"token":"a","fid":"b"}),
        ] {
            let e = check(two.clone()).unwrap_err();
            assert!(
                e.contains("oneof") && !crate::push::fcm::message_names_token(&e),
                "{two}: {e}"
            );
        }
        assert!(check(json!({"token":"a b"}))
            .unwrap_err()
            .contains("registration token"));
        assert_eq!(
            check(json!({"token":"a","data":{"k":"v","n":12}})).unwrap_err(),
            "Invalid value at 'message.data[1].value' (TYPE_STRING), 12"
        );
        assert!(check(json!({"token":"a","data":"x"})).is_err());
        assert_eq!(
            check(json!({"token":"a","apns":{"headers":{"apns-priority":5}}})).unwrap_err(),
            "Invalid value at 'message.apns.headers[0].value' (TYPE_STRING), 5"
        );
        assert!(check(json!({"token":"a","apns":{"headers":{"apns-priority":"5"}}})).is_ok());
        assert!(check(json!({"token":"a","android":{"ttl":"10"}}))
            .unwrap_err()
            .contains("ttl"));
        assert!(check(json!({"token":"a","android":{"priority":"high"}}))
            .unwrap_err()
            .contains("priority"));
        let big = "x".repeat(crate::push::gcm::MAX_PAYLOAD);
        assert!(check(json!({"token":"a","data":{"k":big}}))
            .unwrap_err()
            .contains("too big"));
        // 3000 bytes: a device's message, not a topic's or a condition's.
        let mid = "x".repeat(3000);
        assert_eq!(
            check(json!({"token":"a","data":{"k":mid}})),
            Ok(Some("a".into()))
        );
        for target in [
            json!({"topic":"news"}),
            json!({"condition":"'a' in topics"}),
        ] {
            let mut m = target.clone();
            m["data"] = json!({ "k": mid });
            assert!(
                check(m).unwrap_err().contains("the limit is 2048"),
                "{target}"
            );
        }
        // Reserved data keys, in data and in android.data; near misses pass.
        for key in [
            "from",
            "message_type",
            "google.c.a.e",
            "gcm.notification.title",
        ] {
            assert_eq!(
                check(json!({"token":"a","data":{(key):"v"}})).unwrap_err(),
                format!("Invalid data payload key: {key}")
            );
            assert!(check(json!({"token":"a","android":{"data":{(key):"v"}}})).is_err());
        }
        assert!(check(json!({"token":"a","data":{"From":"v","googled":"v","gcm_x":"v"}})).is_ok());
    }
}
