//! The registry API: `PUT /api/v1/devices`, `GET /api/v1/users/{id}/devices`,
//! `DELETE /api/v1/devices/{token}`, and browsers' `PUT|DELETE /api/v1/webpush/subscriptions`,
//! for the caller's app. Written straight to PostgreSQL
//! (a registration is answered once it is stored); logins arriving as Pushkin events take the
//! same path through `pusher route`.

use super::error::ApiError;
use super::gorush::MAX_TOKEN_LEN;
use super::path::Param;
use super::{body, parse_json, read_error, store_error, ApiState, Caller};
use crate::platform::registry::{platform_of_pushkin_id, Device, Login};
use crate::push::webpush::{check_subscription, Keys, Subscription};
use crate::push::Platform;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

/// A registration. `platform` is gorush's number (1 iOS, 2 Android) or a name (`apns`,
/// `gcm`, `webpush`); Pushkin's `platform_id` (1, 2, 5, 6) may be given instead. A browser
/// gives its `subscription` instead of a token (its endpoint becomes the token).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub user_id: i64,
    #[serde(default)]
    pub token: String,
    pub subscription: Option<Subscription>,
    pub platform: Option<serde_json::Value>,
    pub platform_id: Option<i64>,
    #[serde(default)]
    pub device_id: String,
    pub language_id: Option<i32>,
    #[serde(default)]
    pub app_version: String,
}

fn platform(r: &Registration) -> Result<Platform, ApiError> {
    use serde_json::Value;
    let from_platform = match &r.platform {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(1) => Some(Platform::Apns),
            Some(2) => Some(Platform::Gcm),
            Some(WEBPUSH_PLATFORM) => Some(Platform::WebPush),
            _ => {
                return Err(ApiError::bad(
                    "platform",
                    format!(
                        "{n}: 1 is iOS, 2 is Android, {WEBPUSH_PLATFORM} is a browser (web push)"
                    ),
                ))
            }
        },
        Some(Value::String(s)) => Some(
            s.parse()
                .map_err(|e: String| ApiError::bad("platform", e))?,
        ),
        Some(other) => return Err(ApiError::bad("platform", format!("{other}: 1 or 2"))),
    };
    let from_id = match r.platform_id {
        None => None,
        Some(id) => Some(platform_of_pushkin_id(id).ok_or_else(|| {
            ApiError::bad(
                "platform_id",
                format!("{id}: Pushkin's 1 Android phone, 2 iPhone, 5 iPad, 6 Android tablet"),
            )
        })?),
    };
    match (from_platform, from_id) {
        (Some(a), Some(b)) if a != b => Err(ApiError::bad(
            "platform_id",
            format!("a {b} device, but platform says {a}"),
        )),
        (Some(p), _) | (None, Some(p)) => Ok(p),
        (None, None) if r.subscription.is_some() => Ok(Platform::WebPush),
        (None, None) => Err(ApiError::bad(
            "platform",
            "required: 1 is iOS, 2 is Android, 4 is a browser (web push)",
        )),
    }
}

pub(super) async fn put_device(
    State(state): State<ApiState>,
    caller: Caller,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body(raw, state.settings.max_body_bytes)?;
    let mut r: Registration = parse_json(&raw)?;
    if r.user_id <= 0 {
        return Err(ApiError::bad("user_id", "a positive integer"));
    }
    let platform = platform(&r)?;
    let keys = match (platform, r.subscription.take()) {
        (Platform::WebPush, Some(subscription)) => {
            let keys = checked(&state, &subscription)?;
            r.token = subscription.endpoint;
            Some(keys)
        }
        (Platform::WebPush, None) => {
            return Err(ApiError::bad(
                "subscription",
                "required for a browser: {\"endpoint\", \"keys\": {\"p256dh\", \"auth\"}}",
            ))
        }
        (_, Some(_)) => {
            return Err(ApiError::bad(
                "subscription",
                format!("only browsers (web push) have one; this is a {platform} device"),
            ))
        }
        (_, None) => None,
    };
    if let Some(problem) = crate::platform::registry::token_problem(platform, &r.token) {
        return Err(ApiError::bad("token", problem));
    }
    let now = crate::clock::unix_ms();
    let device = Device {
        user_id: r.user_id,
        platform,
        token: r.token,
        device_id: r.device_id,
        platform_id: r.platform_id.and_then(|id| i32::try_from(id).ok()),
        app_version: r.app_version,
        registered_ms: now,
        keys,
    };
    // A registration is a login, with its language or without (the user keeps theirs): a
    // segment's `last_login_*` conditions match it. Seen: a device registered without a
    // language matched none of them, not even `last_login_after: 0`.
    let logins = [Login {
        user_id: r.user_id,
        language_id: r.language_id,
        at_ms: now,
    }];
    state
        .registry
        .register(&caller.app, std::slice::from_ref(&device), &logins)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"registered": device})).into_response())
}

/// Gorush's platform number for a browser is ours: gorush has 1 (iOS), 2 (Android) and 3
/// (Huawei), no web push.
pub const WEBPUSH_PLATFORM: i64 = 4;

/// A browser subscription that passes the sender's checks, so nothing is stored that could
/// never be sent to (a private or plain-http endpoint, a key of the wrong length).
fn checked(state: &ApiState, s: &Subscription) -> Result<Keys, ApiError> {
    check_subscription(s, state.settings.webpush_rules)
        .map_err(|e| ApiError::bad("subscription", e.to_string()))?;
    if s.endpoint.len() > MAX_TOKEN_LEN {
        return Err(ApiError::bad(
            "subscription.endpoint",
            format!("longer than {MAX_TOKEN_LEN} characters"),
        ));
    }
    Ok(s.keys.clone())
}

/// `PUT /api/v1/webpush/subscriptions`: a browser's subscription for a user,
/// `{"user_id", "subscription": PushSubscription.toJSON(), "device_id"?, "language_id"?,
/// "app_version"?}`. The same as `PUT /api/v1/devices` with platform `webpush`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRegistration {
    pub user_id: i64,
    pub subscription: Subscription,
    #[serde(default)]
    pub device_id: String,
    pub language_id: Option<i32>,
    #[serde(default)]
    pub app_version: String,
}

pub(super) async fn put_subscription(
    state: State<ApiState>,
    caller: Caller,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body(raw, state.settings.max_body_bytes)?;
    let s: SubscriptionRegistration = parse_json(&raw)?;
    let registration = json!({"user_id": s.user_id, "subscription": s.subscription,
        "platform": "webpush", "device_id": s.device_id, "language_id": s.language_id,
        "app_version": s.app_version});
    put_device(state, caller, Ok(Bytes::from(registration.to_string()))).await
}

/// `DELETE /api/v1/webpush/subscriptions` with `{"endpoint"}`: the browser unsubscribed.
pub(super) async fn delete_subscription(
    State(state): State<ApiState>,
    caller: Caller,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    struct Unsubscribe {
        endpoint: String,
    }
    let raw = body(raw, state.settings.max_body_bytes)?;
    let u: Unsubscribe = parse_json(&raw)?;
    delete_device(State(state), caller, Param(u.endpoint)).await
}

pub(super) async fn user_devices(
    State(state): State<ApiState>,
    caller: Caller,
    Param(user): Param<i64>,
) -> Result<Response, ApiError> {
    let devices = state
        .registry
        .devices_of(&caller.app, &[user])
        .await
        .map_err(read_error)?;
    let language = state
        .registry
        .language_of(&caller.app, user)
        .await
        .map_err(read_error)?;
    Ok(Json(json!({"user_id": user, "language_id": language, "devices": devices})).into_response())
}

pub(super) async fn delete_device(
    State(state): State<ApiState>,
    caller: Caller,
    Param(token): Param<String>,
) -> Result<Response, ApiError> {
    let now = crate::clock::unix_ms();
    let removed = state
        .registry
        .remove(&caller.app, &token, now)
        .await
        .map_err(store_error)?;
    if removed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound)
    }
}
