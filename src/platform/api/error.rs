//! Every refusal of `pusher api` as one type, answered as JSON that says what is wrong:
//! `{"error":"notifications[0].platform: 3 (Huawei) is not supported here ...",
//! "field":"notifications[0].platform"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown API key: send Authorization: Bearer <key>")]
    Unauthorized,
    /// Known, but not allowed this (a `/ui` form without its session's token).
    #[error("{message}")]
    Forbidden { message: String },
    #[error("{}", field_message(field, message))]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    #[error("request body over {limit} bytes (api.maxBodyBytes)")]
    TooLarge { limit: usize },
    /// The body did not arrive within `api.bodyTimeout`: answered, and the connection closed.
    #[error("the request body did not arrive within {} s (api.bodyTimeout)", timeout.as_secs_f64())]
    BodyTimeout { timeout: std::time::Duration },
    #[error("rate limit of this API key reached: retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The request collides with another one (the same key in flight, a notif_id taken);
    /// `retry_after_secs`: when a retry may find it free (None: never).
    #[error("{message}")]
    Conflict {
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// An Idempotency-Key (or notif_id) reused with other content (the IETF
    /// Idempotency-Key draft's 422).
    #[error("{field}: {message}")]
    KeyReused { field: String, message: String },
    /// Kafka or PostgreSQL failed: nothing of the request is reported as accepted.
    #[error("{message}")]
    Unavailable { message: String },
    #[error("not found")]
    NotFound,
    /// The path exists, the method does not (axum adds the `Allow` header).
    #[error("this path does not take that method")]
    MethodNotAllowed,
}

fn field_message(field: &Option<String>, message: &str) -> String {
    match field {
        Some(f) => format!("{f}: {message}"),
        None => message.to_owned(),
    }
}

impl ApiError {
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::KeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            ApiError::Conflict {
                retry_after_secs, ..
            } => *retry_after_secs,
            ApiError::Unavailable { .. } => Some(1),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // `code` and `message` are gorush's names for the same (its `abortWithError`), so a
        // client written for gorush reads our refusals too.
        let text = self.to_string();
        let mut body = json!({ "error": text, "code": self.status().as_u16(), "message": text });
        if let ApiError::BadRequest { field: Some(f), .. } | ApiError::KeyReused { field: f, .. } =
            &self
        {
            body["field"] = json!(f);
        }
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::BodyTimeout { .. }) {
            // The rest of the body may still come: the connection cannot serve another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self, ApiError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON body's error with the path of the field it is about (`notifications[0].badge`).
/// `body` is the JSON it came from.
pub fn json_error(e: serde_path_to_error::Error<serde_json::Error>, body: &[u8]) -> ApiError {
    use serde_json::error::Category;
    let path = e.path().to_string();
    let inner = e.into_inner();
    let message = match inner.classify() {
        Category::Data => inner.to_string(),
        // serde_json says "expected value" (a syntax error) for a name field (`platform`,
        // `priority`) given another type, in a body that is valid JSON.
        Category::Syntax
            if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() && path != "." =>
        {
            "invalid type for this field (a name, such as a platform or a priority, is a string)"
                .to_owned()
        }
        _ => format!("malformed JSON: {inner}"),
    };
    // A missing field is about the field, not the object that lacks it (serde's path
    // ends at the object: "." for the body itself).
    let field = match missing_field(&message) {
        Some(name) if path == "." => Some(name.to_owned()),
        Some(name) => Some(format!("{path}.{name}")),
        None => (path != ".").then_some(path),
    };
    ApiError::BadRequest { field, message }
}

/// `user_id` of serde's "missing field `user_id` at line 1 column 2".
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split_once('`')
        .map(|(name, _)| name)
}
