//! Health, readiness, metrics, the OpenAPI document, profiles and `me`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::caller::{bearer, session_cookie, Peer};
use crate::app::App;
use crate::policy::{Action, Resource};
use crate::problem::Problem;
use crate::profiles;
use crate::tokens::{self, Authenticated};

pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Reports liveness: the process responds. Needs no token.
pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Reports readiness: recovery has finished, the audit log is writable, the
/// database responds and the server is not shutting down. Needs no token.
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let database = app.store.ping().await.is_ok();
    let checks = json!({
        "recovered": app.recovered(),
        "audit_writable": app.audit.writable(),
        "database": database,
        "accepting_sessions": !app.draining(),
    });
    let ready = app.recovered() && app.audit.writable() && database && !app.draining();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready, "checks": checks }))).into_response()
}

pub async fn metrics(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>, headers: HeaderMap) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    app.authorize(&who, Action::ReadMetrics, &Resource::Server, None).await?;
    let counts = app.store.count_by_state().await.map_err(|e| Problem::store_failed(&e))?;
    let states: Vec<(&str, i64)> = mayfly_core::SessionState::ALL
        .iter()
        .map(|state| (state.as_str(), counts.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n)))
        .collect();
    let body = app.metrics.render(&states, app.audit.appended(), &app.pools.status());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

/// Returns the state of every warm pool, to those allowed to read metrics.
pub async fn pools(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>, headers: HeaderMap) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    app.authorize(&who, Action::ReadMetrics, &Resource::Server, None).await?;
    Ok(axum::Json(json!({ "pools": app.pools.status() })).into_response())
}

/// Returns the OpenAPI document of this API. Needs no token.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Returns the caller, what the policy lets them do beyond their own
/// sessions, the server's clock, and for a signed-in browser its CSRF token.
pub async fn me(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>, headers: HeaderMap) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    // Unrecorded probes: they decide what the console offers, not what is allowed.
    let may = |action| app.policies.authorize(&who.principal, action, &Resource::Server, None).allowed;
    let may = json!({
        "list_all_sessions": may(Action::ListAllSessions),
        "read_audit": may(Action::ReadAudit),
        "read_metrics": may(Action::ReadMetrics),
    });
    let csrf = match (bearer(&headers), session_cookie(&headers)) {
        (None, Some(cookie)) => app.store.web_session(&tokens::hash(cookie)).await.map_err(|e| Problem::store_failed(&e))?.map(|web| web.csrf),
        _ => None,
    };
    let mut body = json!({
        "principal": who.principal.name,
        "groups": who.principal.groups,
        "token": who.token_prefix,
        "may": may,
        "now_unix_ms": crate::app::now_ms(),
    });
    if let Some(csrf) = csrf {
        body["csrf"] = json!(csrf);
    }
    Ok(Json(body).into_response())
}

pub async fn list_profiles(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>, headers: HeaderMap) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    app.authorize(&who, Action::ListProfiles, &Resource::Server, None).await?;
    let directory = app.config.profiles_dir.as_deref();
    let mut list = Vec::new();
    for name in profiles::names(directory) {
        match profiles::load(&name, directory) {
            Ok(profile) => list.push(json!({
                "may_launch": may_launch(&app, &who, &profile),
                "name": profile.name,
                "kind": profile.kind,
                "description": profile.description,
                "default_ttl": profile.default_ttl.to_string(),
                "max_ttl": profile.max_ttl.to_string(),
                "limits": profile.limits,
            })),
            Err(_) => list.push(json!({ "name": name, "error": profiles::unusable_message(&name) })),
        }
    }
    Ok(Json(json!({ "profiles": list })).into_response())
}

/// Checks whether the policy lets the caller launch the profile with its
/// default TTL. The console's launch list uses it, so it is not audited.
fn may_launch(app: &App, who: &Authenticated, profile: &mayfly_core::Profile) -> bool {
    let kind = profile.kind.as_str();
    let resource = Resource::Profile { name: &profile.name, kind };
    app.policies.authorize(&who.principal, Action::CreateSession, &resource, Some(profile.default_ttl.as_duration().as_secs() as i64)).allowed
}
