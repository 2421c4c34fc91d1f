//! `/v1/tokens`: create, list and revoke API tokens. A token's secret is
//! shown once, in the response that creates it.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use mayfly_audit::Entry;
use mayfly_core::Ttl;
use serde::Deserialize;
use serde_json::json;

use super::body::JsonBody;
use super::caller::Peer;
use crate::app::{now_ms, App};
use crate::policy::{Action, Resource};
use crate::problem::Problem;
use crate::sessions::actor;
use crate::tokens;

const DEFAULT_EXPIRY: Ttl = Ttl::from_secs(30 * 86_400);
const MAX_EXPIRY: Ttl = Ttl::from_secs(366 * 86_400);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Whose token; the caller's own when absent.
    principal: Option<String>,
    name: String,
    /// How long the token lives, such as `30d`; at most 366 days.
    expires_in: Option<String>,
    /// The principal's groups; setting them needs the `set_groups` permission.
    groups: Option<Vec<String>>,
}

/// Principal and group names: 1 to 64 of letters, digits, `.`, `_`, `-`, `@`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

fn sorted(groups: &[String]) -> Vec<String> {
    let mut groups = groups.to_vec();
    groups.sort();
    groups.dedup();
    groups
}

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    let request: CreateToken = body.parse()?;
    let principal = request.principal.unwrap_or_else(|| who.principal.name.clone());
    if !valid_name(&principal) {
        return Err(Problem::bad_request(format!("principal {principal:?} is not a valid name: use 1 to 64 letters, digits, '.', '_', '-' or '@'")));
    }
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Problem::bad_request("name must be 1 to 64 printable characters, for example \"ci-runner\""));
    }
    let expires_in = match request.expires_in.as_deref() {
        None => DEFAULT_EXPIRY,
        Some(text) => Ttl::parse(text).map_err(|e| Problem::bad_request(format!("expires_in: {e}")))?,
    };
    if expires_in > MAX_EXPIRY || expires_in < Ttl::from_secs(60) {
        return Err(Problem::bad_request(format!("expires_in = {expires_in} is out of range: allowed is 1m to {MAX_EXPIRY}")));
    }
    if let Some(groups) = &request.groups {
        if let Some(bad) = groups.iter().find(|g| !valid_name(g)) {
            return Err(Problem::bad_request(format!("group {bad:?} is not a valid name: use 1 to 64 letters, digits, '.', '_', '-' or '@'")));
        }
    }
    app.authorize(&who, Action::CreateToken, &Resource::User(&principal), None).await?;
    let existing = app.store.principal(&principal).await.map_err(|e| Problem::store_failed(&e))?;
    // Making a new principal, or changing groups, is setting its groups.
    let groups_change = match (&existing, &request.groups) {
        (None, groups) => Some(groups.clone().unwrap_or_default()),
        (Some(p), Some(groups)) if sorted(&p.groups) != sorted(groups) => Some(groups.clone()),
        _ => None,
    };
    if let Some(groups) = &groups_change {
        app.authorize(&who, Action::SetGroups, &Resource::User(&principal), None).await?;
        let entry = Entry::new("principal.groups_set", &actor(&who)).field("principal", principal.clone()).field("groups", groups.clone());
        app.audit.one(entry).await.map_err(|e| Problem::audit_failed(&e))?;
        app.store.put_principal(&principal, groups, now_ms()).await.map_err(|e| Problem::store_failed(&e))?;
    }
    let now = now_ms();
    let token = tokens::new_api_token(&principal, name, now, Some(now + expires_in.as_duration().as_millis() as i64));
    let entry = Entry::new("token.created", &actor(&who))
        .field("principal", principal.clone())
        .field("token", token.record.prefix.clone())
        .field("name", name)
        .field("expires_unix_ms", token.record.expires_unix_ms);
    app.audit.one(entry).await.map_err(|e| Problem::audit_failed(&e))?;
    app.store.insert_token(&token.record).await.map_err(|e| Problem::store_failed(&e))?;
    Ok((StatusCode::CREATED, Json(json!({ "token": token.secret, "record": token.record }))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListTokens {
    principal: Option<String>,
}

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    query: Result<Query<ListTokens>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    let query = super::body::query(query)?;
    let principal = query.principal.unwrap_or_else(|| who.principal.name.clone());
    app.authorize(&who, Action::ListTokens, &Resource::User(&principal), None).await?;
    let tokens = app.store.tokens(Some(&principal)).await.map_err(|e| Problem::store_failed(&e))?;
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

pub async fn revoke(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    let token = app.store.token(&id).await.map_err(|e| Problem::store_failed(&e))?;
    let Some(token) = token else { return Err(Problem::not_found(format!("there is no token {id:?}"))) };
    app.authorize(&who, Action::RevokeToken, &Resource::User(&token.principal), None).await?;
    if token.revoked_unix_ms.is_none() {
        let entry = Entry::new("token.revoked", &actor(&who)).field("principal", token.principal.clone()).field("token", token.prefix.clone());
        app.audit.one(entry).await.map_err(|e| Problem::audit_failed(&e))?;
        app.store.revoke_token(&id, now_ms()).await.map_err(|e| Problem::store_failed(&e))?;
    }
    let token = app.store.token(&id).await.map_err(|e| Problem::store_failed(&e))?;
    Ok(Json(token).into_response())
}
