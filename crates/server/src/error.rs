//! API errors: every failure a handler can meet, mapped to a status and an [`api::ErrorBody`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error answered to the caller. Nothing here panics: a bad request is an answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    BadRequest { message: String, field: Option<String> },
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    /// Past a tenant's limit: 429, with when to try again.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: std::time::Duration },
    #[error("{0}")]
    Internal(String),
    /// The request took longer than the server allows (a body that stopped coming).
    #[error("{0}")]
    Timeout(String),
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid { field: field.to_string(), message: message.into() }
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<String>) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::BadRequest { field, .. } => (StatusCode::BAD_REQUEST, "invalid_json", field.clone()),
            ApiError::Invalid { field, .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", Some(field.clone())),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
            ApiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout", None),
        }
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::Conflict { .. } => ApiError::Conflict(e.to_string()),
            store::StoreError::Fenced { .. } => {
                tracing::warn!(error = %e, "write refused: another server leads now");
                ApiError::Unavailable("this server no longer leads the control plane; retry on the leader".into())
            }
            e if e.is_disk_full() => {
                tracing::error!(error = %e, "the store cannot write: its disk is full or read-only");
                ApiError::Unavailable(
                    "the store's disk is full (or read-only): nothing new is accepted until the operator frees \
                     space; what was acknowledged is kept"
                        .into(),
                )
            }
            store::StoreError::Db(_) | store::StoreError::Closed => {
                tracing::error!(error = %e, "store call failed");
                ApiError::Unavailable("the store is unavailable, retry later".into())
            }
            other => {
                tracing::error!(error = %other, "store call failed");
                ApiError::Internal("internal error".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = self.parts();
        let body =
            api::ErrorBody { error: api::ErrorDetail { code: code.to_string(), message: self.to_string(), field } };
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            // Whole seconds, rounded up: a client that waits that long gets in.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        resp
    }
}
