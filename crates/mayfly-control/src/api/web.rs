//! Browser sign-in: an API token is exchanged for a short-lived, HttpOnly,
//! SameSite=Strict session cookie and a CSRF token that state-changing
//! requests repeat. Sign-out deletes the session.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mayfly_audit::Entry;
use serde::Deserialize;
use serde_json::json;

use super::body::JsonBody;
use super::caller::{bearer, session_cookie, Peer, COOKIE};
use crate::app::{now_ms, App};
use crate::problem::Problem;
use crate::sessions::actor;
use crate::store::WebSessionRecord;
use crate::tokens;

/// How long a browser stays signed in, at most; never past its API token.
const LIFETIME_MS: i64 = 8 * 3600 * 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    token: String,
}

fn cookie(value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}")).expect("cookie text is ASCII")
}

pub async fn sign_in(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>, headers: HeaderMap, body: JsonBody) -> Result<Response, Problem> {
    let request: SignIn = body.parse()?;
    // Authenticate the presented API token exactly as a bearer token.
    let mut presented = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {}", request.token.trim())).map_err(|_| Problem::unauthenticated())?;
    presented.insert(header::AUTHORIZATION, value);
    if let Some(forwarded) = headers.get("x-forwarded-for") {
        presented.insert("x-forwarded-for", forwarded.clone());
    }
    let who = app.caller(&presented, peer).await?;
    let token = app.store.token(&who.token_id).await.map_err(|e| Problem::store_failed(&e))?;
    let now = now_ms();
    let expires = token.and_then(|t| t.expires_unix_ms).map_or(now + LIFETIME_MS, |e| e.min(now + LIFETIME_MS));
    let (value, hash) = tokens::new_web_session();
    let csrf = tokens::random_text(40);
    let record = WebSessionRecord { hash, principal: who.principal.name.clone(), token_id: who.token_id.clone(), csrf: csrf.clone(), created_unix_ms: now, expires_unix_ms: expires };
    let entry = Entry::new("auth.signed_in", &actor(&who)).field("token", who.token_prefix.clone()).field("expires_unix_ms", expires);
    app.audit.one(entry).await.map_err(|e| Problem::audit_failed(&e))?;
    app.store.insert_web_session(&record).await.map_err(|e| Problem::store_failed(&e))?;
    let secure = !matches!(app.config.tls, crate::config::TlsMode::Off);
    let body = Json(json!({ "principal": who.principal.name, "groups": who.principal.groups, "csrf": csrf, "expires_unix_ms": expires }));
    let mut response = (StatusCode::CREATED, body).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie(&value, (expires - now) / 1000, secure));
    Ok(response)
}

pub async fn sign_out(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>, headers: HeaderMap) -> Result<Response, Problem> {
    if bearer(&headers).is_some() {
        return Err(Problem::bad_request("sign-out ends a browser session; a request with a bearer token has none"));
    }
    let who = app.caller(&headers, peer).await?;
    if let Some(value) = session_cookie(&headers) {
        app.store.delete_web_sessions(Some(&tokens::hash(value)), now_ms()).await.map_err(|e| Problem::store_failed(&e))?;
    }
    let entry = Entry::new("auth.signed_out", &actor(&who)).field("token", who.token_prefix.clone());
    app.audit.one(entry).await.map_err(|e| Problem::audit_failed(&e))?;
    let secure = !matches!(app.config.tls, crate::config::TlsMode::Off);
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie("", 0, secure));
    Ok(response)
}
