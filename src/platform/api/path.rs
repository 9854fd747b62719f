//! Path parameters, refused as every other bad input is: a 400 whose JSON names the parameter
//! (axum's own `Path` rejection is plain text: `GET /api/v1/notifications/%FF`).

use super::error::ApiError;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, MatchedPath, Path};
use axum::http::request::Parts;

/// A route's path parameter(s), as axum's `Path`.
#[derive(Debug)]
pub struct Param<T>(pub T);

impl<S, T> FromRequestParts<S> for Param<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Param(value)),
            Err(e) => Err(ApiError::BadRequest {
                field: parameter(parts, &e),
                message: e.body_text(),
            }),
        }
    }
}

/// The parameter a rejection is about: the one it names, else the route's only one.
fn parameter(parts: &Parts, e: &PathRejection) -> Option<String> {
    if let PathRejection::FailedToDeserializePathParams(f) = e {
        match f.kind() {
            ErrorKind::ParseErrorAtKey { key, .. }
            | ErrorKind::InvalidUtf8InPathParam { key }
            | ErrorKind::DeserializeError { key, .. } => return Some(key.clone()),
            _ => {}
        }
    }
    let route = parts.extensions.get::<MatchedPath>()?.as_str();
    let mut names = route
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'));
    match (names.next(), names.next()) {
        (Some(only), None) => Some(only.trim_start_matches('*').to_owned()),
        _ => None,
    }
}
