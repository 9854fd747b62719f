//! The registry API: `PUT /api/v1/devices`, `GET /api/v1/users/{id}/devices`,
//! `DELETE /api/v1/devices/{token}`, for the caller's app. Written straight to PostgreSQL
//! (a registration is answered once it is stored); logins arriving as Pushkin events take the
//! same path through `pusher route`.

use super::error::ApiError;
use super::gorush::MAX_TOKEN_LEN;
use super::{body, parse_json, store_error, ApiState, Caller};
use crate::platform::registry::{platform_of_pushkin_id, Device, Login};
use crate::push::Platform;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

/// A registration. `platform` is gorush's number (1 iOS, 2 Android) or a name (`apns`,
/// `gcm`); Pushkin's `platform_id` (1, 2, 5, 6) may be given instead.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub user_id: i64,
    pub token: String,
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
            _ => {
                return Err(ApiError::bad(
                    "platform",
                    format!("{n}: 1 is iOS, 2 is Android"),
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
        (None, None) => Err(ApiError::bad(
            "platform",
            "required: 1 is iOS, 2 is Android",
        )),
    }
}

pub(super) async fn put_device(
    State(state): State<ApiState>,
    caller: Caller,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body(raw, state.settings.max_body_bytes)?;
    let r: Registration = parse_json(&raw)?;
    if r.user_id <= 0 {
        return Err(ApiError::bad("user_id", "a positive integer"));
    }
    if r.token.is_empty()
        || r.token.len() > MAX_TOKEN_LEN
        || r.token.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::bad(
            "token",
            format!("not a device token (1 to {MAX_TOKEN_LEN} characters, no spaces)"),
        ));
    }
    let platform = platform(&r)?;
    let now = {
        use crate::clock::Clock;
        i64::try_from(crate::clock::SystemClock.now().as_millis()).unwrap_or(i64::MAX)
    };
    let device = Device {
        user_id: r.user_id,
        platform,
        token: r.token,
        device_id: r.device_id,
        platform_id: r.platform_id.and_then(|id| i32::try_from(id).ok()),
        app_version: r.app_version,
        registered_ms: now,
    };
    let logins: Vec<Login> = r
        .language_id
        .map(|language_id| Login {
            user_id: r.user_id,
            language_id,
            at_ms: now,
        })
        .into_iter()
        .collect();
    state
        .registry
        .register(&caller.app, std::slice::from_ref(&device), &logins)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"registered": device})).into_response())
}

pub(super) async fn user_devices(
    State(state): State<ApiState>,
    caller: Caller,
    user: Result<Path<i64>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(user) = user.map_err(|e| ApiError::bad("user_id", e.body_text()))?;
    let devices = state
        .registry
        .devices_of(&caller.app, &[user])
        .await
        .map_err(store_error)?;
    let language = state
        .registry
        .language_of(&caller.app, user)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"user_id": user, "language_id": language, "devices": devices})).into_response())
}

pub(super) async fn delete_device(
    State(state): State<ApiState>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let removed = state
        .registry
        .remove(&caller.app, &token)
        .await
        .map_err(store_error)?;
    if removed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound)
    }
}
