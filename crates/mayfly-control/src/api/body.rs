//! Request bodies: JSON only, size-limited, unknown fields refused by name.
//! The body is read by the extractor but judged only when the handler asks,
//! after authentication, so that a caller without a valid token learns
//! nothing from how its body would have been treated.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::problem::Problem;

pub struct JsonBody {
    is_json: bool,
    bytes: Result<Bytes, Problem>,
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(rejection.status(), "body-too-large", "Request body too large", "the request body is larger than the server's limits.max_body")
            } else {
                Problem::bad_request(format!("the request body could not be read: {rejection}"))
            }
        });
        Ok(JsonBody { is_json, bytes })
    }
}

impl JsonBody {
    /// Checks the media type and size, and parses the body as `T`.
    pub fn parse<T: DeserializeOwned>(self) -> Result<T, Problem> {
        if !self.is_json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = self.bytes?;
        serde_json::from_slice(&bytes).map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Turns a query string that does not parse into a 400 naming the problem.
pub fn query<T>(parsed: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, Problem> {
    parsed.map(|axum::extract::Query(value)| value).map_err(|e| Problem::bad_request(format!("invalid query: {}", e.body_text())))
}
