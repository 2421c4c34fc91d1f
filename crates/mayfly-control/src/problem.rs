//! Errors as RFC 9457 problem details: `application/problem+json` with a
//! type, a title, the status and a detail written for people.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// A short slug; the problem type is `urn:mayfly:problem:SLUG`.
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after_secs: Option<u64>,
    pub extra: Map<String, Value>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, slug, title, detail: detail.into(), retry_after_secs: None, extra: Map::new() }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Problem {
        self.extra.insert(key.into(), value.into());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.retry_after_secs = Some(seconds.max(1));
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid-request", "The request is invalid", detail)
    }

    /// The one answer to every authentication failure, whatever its cause.
    pub fn unauthenticated() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Authentication failed",
            "present a valid, unexpired API token as `Authorization: Bearer TOKEN`",
        )
    }

    pub fn forbidden(action: &str, resource: &str) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Denied by policy", format!("the policy does not allow {action} on {resource}"))
            .with("action", action)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn too_many(slug: &'static str, detail: impl Into<String>, retry_secs: u64) -> Problem {
        Problem::new(StatusCode::TOO_MANY_REQUESTS, slug, "Too many requests", detail).retry_after(retry_secs)
    }

    pub fn unavailable(slug: &'static str, detail: impl Into<String>, retry_secs: Option<u64>) -> Problem {
        let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, slug, "Service unavailable", detail);
        match retry_secs {
            Some(seconds) => problem.retry_after(seconds),
            None => problem,
        }
    }

    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", detail)
    }

    /// The audit log could not record what the request needed, so nothing
    /// was done.
    pub fn audit_failed(error: &mayfly_audit::AuditError) -> Problem {
        Problem::unavailable("audit-unavailable", format!("the audit log cannot be written, so the request was not carried out: {error}"), Some(5))
    }

    pub fn store_failed(error: &crate::store::StoreError) -> Problem {
        tracing::error!(error = %error, "store error");
        Problem::unavailable("store-unavailable", "the database did not answer; try again shortly", Some(2))
    }

    pub fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("urn:mayfly:problem:{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let map = body.as_object_mut().expect("an object");
        for (key, value) in &self.extra {
            map.insert(key.clone(), value.clone());
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body().to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"mayfly\""));
        }
        response
    }
}
