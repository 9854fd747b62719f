//! Event mode's messages: `PUT/GET/DELETE /api/v1/messages/{name}` (a message with its
//! localizations) and `GET /api/v1/messages`, for the caller's app. Written straight to
//! PostgreSQL; `pusher route` reads them per batch, so a change applies to the next batch.

use super::error::ApiError;
use super::path::Param;
use super::{body, parse_json, read_error, store_error, ApiState, Caller};
use crate::platform::messages::{valid_name, Message};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

fn name_of(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad(
            "name",
            "1 to 100 characters of A-Z a-z 0-9 _ . -",
        ))
    }
}

/// Creates or replaces the message named in the path.
pub(super) async fn put_message(
    State(state): State<ApiState>,
    caller: Caller,
    Param(name): Param<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    name_of(&name)?;
    let raw = body(raw, state.settings.max_body_bytes)?;
    let mut message: Message = parse_json(&raw)?;
    if !message.name.is_empty() && message.name != name {
        return Err(ApiError::bad(
            "name",
            format!("{:?} in the body, {name:?} in the path", message.name),
        ));
    }
    message.name = name;
    message
        .validate()
        .map_err(|e| ApiError::bad(e.field, e.message))?;
    let stored = state
        .messages
        .put(&caller.app, &message)
        .await
        .map_err(store_error)?;
    Ok(Json(stored).into_response())
}

pub(super) async fn get_message(
    State(state): State<ApiState>,
    caller: Caller,
    Param(name): Param<String>,
) -> Result<Response, ApiError> {
    name_of(&name)?;
    match state
        .messages
        .get(&caller.app, &name)
        .await
        .map_err(read_error)?
    {
        Some(m) => Ok(Json(m).into_response()),
        None => Err(ApiError::NotFound),
    }
}

pub(super) async fn delete_message(
    State(state): State<ApiState>,
    caller: Caller,
    Param(name): Param<String>,
) -> Result<Response, ApiError> {
    name_of(&name)?;
    let removed = state
        .messages
        .delete(&caller.app, &name)
        .await
        .map_err(store_error)?;
    if removed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound)
    }
}

pub(super) async fn list_messages(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let messages = state.messages.list(&caller.app).await.map_err(read_error)?;
    Ok(Json(json!({"messages": messages})).into_response())
}
