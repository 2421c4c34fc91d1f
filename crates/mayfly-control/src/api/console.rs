//! The web console: its page at `/` and its files under `/assets/`, with the
//! security headers every response of the server carries.
//!
//! The page's Content-Security-Policy allows scripts only from this server
//! and style elements only with the nonce of that response. xterm.js creates
//! style elements at run time, so the console gives each one the nonce.

use axum::extract::{Path, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;
use crate::tokens;

/// The policy of every response that sets none of its own: nothing may load
/// and no other site may frame it.
const API_POLICY: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Builds the policy of the console's page, with its nonce.
fn page_policy(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; img-src 'self' blob:; font-src 'self'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'"
    )
}

/// `GET /`: the console's page.
pub async fn page() -> Response {
    let nonce = tokens::random_text(24);
    let mut response = mayfly_web::index_html(&nonce).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_str(&page_policy(&nonce)).expect("the nonce is alphanumeric"));
    response
}

/// `GET /assets/{path}`: a file of the console, revalidated by its entity tag.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    // index.html is served only at `/`, where it gets its nonce.
    let Some(asset) = mayfly_web::find(&path).filter(|a| a.path != "index.html") else {
        return Problem::not_found(format!("the console has no file {path:?}")).into_response();
    };
    let etag = HeaderValue::from_static(asset.etag);
    let fresh = headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii() == asset.etag.as_bytes()));
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    out.insert(header::ETAG, etag);
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Adds the headers that keep responses from being sniffed, framed or
/// leaking the address in a `Referer`, and the strict policy where a
/// handler set none.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let fixed = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
        (header::HeaderName::from_static("cross-origin-resource-policy"), "same-origin"),
        (header::HeaderName::from_static("permissions-policy"), "camera=(), microphone=(), geolocation=(), usb=(), payment=()"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(API_POLICY));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_policy_forbids_inline_code() {
        let policy = page_policy("abc123");
        assert!(policy.contains("script-src 'self';"), "{policy}");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert!(!policy.contains("unsafe-eval"), "{policy}");
        assert!(policy.contains("style-src 'self' 'nonce-abc123'"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    }
}
