//! A JSON body extractor whose refusals name the offending field: 400 for what is not JSON, 413
//! for a body over the limit, 422 for JSON of the wrong shape.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// A request body parsed as `T`.
pub struct ApiJson<T>(pub T);

/// The name between the first pair of backticks of a serde message (`missing field `x``).
fn quoted_name(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

/// Parses `bytes` as `T`, naming the offending field on failure.
/// Every request body of the API is a JSON object.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        return Err(ApiError::invalid("body", "expected a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path.is_empty() || path == "." {
                    quoted_name(&message).unwrap_or_else(|| "body".to_string())
                } else if message.starts_with("missing field") {
                    match quoted_name(&message) {
                        Some(name) => format!("{path}.{name}"),
                        None => path,
                    }
                } else {
                    path
                };
                ApiError::Invalid { field, message }
            }
            _ => ApiError::BadRequest { message: format!("the body is not valid JSON: {message}"), field: None },
        }
    })?;
    de.end().map_err(|e| ApiError::BadRequest { message: format!("the body is not valid JSON: {e}"), field: None })?;
    Ok(value)
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(format!("the body is larger than {} bytes", api::limits::MAX_BODY_BYTES))
            } else {
                ApiError::BadRequest { message: format!("cannot read the body: {}", e.body_text()), field: None }
            }
        })?;
        if bytes.is_empty() {
            return Err(ApiError::BadRequest { message: "the body is empty; JSON expected".into(), field: None });
        }
        parse(&bytes).map(ApiJson)
    }
}

/// A path's one parameter (a name or an id) as text; a segment that is not UTF-8 is refused
/// with the API's own error body, like every other refusal.
pub struct PathSegment(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathSegment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(segment)| PathSegment(segment))
            .map_err(|e| ApiError::BadRequest { message: e.body_text(), field: Some("path".into()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> (u16, Option<String>) {
        match parse::<api::JobSpec>(body.as_bytes()) {
            Ok(_) => (200, None),
            Err(ApiError::Invalid { field, .. }) => (422, Some(field)),
            Err(ApiError::BadRequest { .. }) => (400, None),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"gpus_per_node": "eight"}"#), (422, Some("gpus_per_node".into())));
        assert_eq!(field_of(r#"{"gpus_per_node": -1}"#), (422, Some("gpus_per_node".into())));
        assert_eq!(field_of(r#"{"comand": "x"}"#), (422, Some("comand".into())));
        assert_eq!(field_of(r#"{"env": {"A": 1}}"#), (422, Some("env.A".into())));
        assert_eq!(field_of(r#"{"args": ["a", 2]}"#), (422, Some("args[1]".into())));
        assert_eq!(field_of(r#"{"restart_policy": "sometimes"}"#), (422, Some("restart_policy".into())));
        assert_eq!(field_of(r#"{"command": "x""#), (400, None));
        assert_eq!(field_of(r#"{} {}"#), (400, None));
        assert_eq!(field_of(r#"[]"#), (422, Some("body".into())));
        assert_eq!(field_of(r#"{"command": "x"}"#), (200, None));
    }
}
