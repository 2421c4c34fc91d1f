//! The HTTP API: routes, limits on bodies, and the fallback responses.

mod attach;
mod attach_browser;
mod attach_browser_files;
mod audit;
mod browser_files;
mod browser_transfer;
mod body;
pub mod caller;
mod console;
mod devtools;
mod meta;
mod sessions;
mod tokens;
mod web;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::Router;

use crate::app::App;
use crate::problem::Problem;

pub use meta::OPENAPI;

/// Every API route, as `(method, path)` in OpenAPI's path syntax; a test
/// checks that the OpenAPI document lists exactly these. The web console's
/// page (`/`) and files (`/assets/...`) are not part of the API.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/pools"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/me"),
    ("post", "/v1/auth/session"),
    ("delete", "/v1/auth/session"),
    ("get", "/v1/profiles"),
    ("post", "/v1/sessions"),
    ("get", "/v1/sessions"),
    ("get", "/v1/sessions/{id}"),
    ("delete", "/v1/sessions/{id}"),
    ("get", "/v1/sessions/{id}/events"),
    ("post", "/v1/sessions/{id}/attach-token"),
    ("get", "/v1/sessions/{id}/attach"),
    ("get", "/v1/sessions/{id}/devtools"),
    ("get", "/v1/sessions/{id}/recording"),
    ("get", "/v1/sessions/{id}/downloads"),
    ("get", "/v1/sessions/{id}/downloads/{download_id}"),
    ("post", "/v1/sessions/{id}/print"),
    ("post", "/v1/tokens"),
    ("get", "/v1/tokens"),
    ("delete", "/v1/tokens/{id}"),
    ("get", "/v1/audit"),
    ("get", "/v1/audit/verify"),
];

async fn not_found() -> Problem {
    Problem::not_found("no such endpoint; the API is described at /v1/openapi.json")
}

async fn method_not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed", "this endpoint does not accept that method; see /v1/openapi.json")
}

pub fn router(app: Arc<App>) -> Router {
    let max_body = app.config.limits.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/openapi.json", get(meta::openapi))
        .route("/v1/me", get(meta::me))
        .route("/v1/auth/session", post(web::sign_in).delete(web::sign_out))
        .route("/v1/profiles", get(meta::list_profiles))
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route("/v1/sessions/{id}", get(sessions::get).delete(sessions::delete))
        .route("/v1/sessions/{id}/events", get(sessions::events))
        .route("/v1/sessions/{id}/attach-token", post(sessions::attach_token))
        .route("/v1/sessions/{id}/attach", get(attach::attach))
        .route("/v1/sessions/{id}/devtools", get(devtools::devtools))
        .route("/v1/sessions/{id}/recording", get(sessions::recording))
        .route("/v1/sessions/{id}/downloads", get(browser_files::list_downloads))
        .route("/v1/sessions/{id}/downloads/{download_id}", get(browser_files::fetch_download))
        .route("/v1/sessions/{id}/print", post(browser_files::print))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .route("/v1/audit", get(audit::records))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/metrics", get(meta::metrics))
        .route("/v1/pools", get(meta::pools))
        .route("/", get(console::page))
        .route("/assets/{*path}", get(console::asset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(caller::protect_cookies))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&app), caller::limit_source))
        .layer(DefaultBodyLimit::max(max_body));
    Router::new()
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .method_not_allowed_fallback(method_not_allowed)
        .merge(v1)
        .layer(axum::middleware::from_fn(console::security_headers))
        .with_state(app)
}
