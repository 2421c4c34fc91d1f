//! `/v1/audit`: read and verify the audit log.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::caller::Peer;
use crate::app::App;
use crate::policy::{Action, Resource};
use crate::problem::Problem;

const MAX_RECORDS: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

pub async fn records(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    query: Result<Query<RecordsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    let query = super::body::query(query)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_RECORDS).contains(&limit) {
        return Err(Problem::bad_request(format!("limit = {limit} is out of range: allowed is 1 to {MAX_RECORDS}")));
    }
    app.authorize(&who, Action::ReadAudit, &Resource::Server, None).await?;
    let log = Arc::clone(app.audit.log());
    let since = query.since.unwrap_or(1);
    let page = tokio::task::spawn_blocking(move || log.records_page(since, limit))
        .await
        .map_err(|e| Problem::internal(e.to_string()))?
        .map_err(|e| Problem::internal(format!("the audit log cannot be read: {e}")))?;
    let next = (page.len() == limit).then(|| page.last().map(|r| r.seq + 1)).flatten();
    Ok(Json(json!({ "records": page, "next": next })).into_response())
}

pub async fn verify(State(app): State<Arc<App>>, Extension(peer): Extension<Peer>, headers: HeaderMap) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    app.authorize(&who, Action::ReadAudit, &Resource::Server, None).await?;
    let log = Arc::clone(app.audit.log());
    let result = tokio::task::spawn_blocking(move || log.verify()).await.map_err(|e| Problem::internal(e.to_string()))?;
    Ok(match result {
        Ok(verified) => Json(json!({ "intact": true, "verified": verified })).into_response(),
        Err(mayfly_audit::AuditError::Broken(at)) => Json(json!({ "intact": false, "line": at.line, "reason": at.reason })).into_response(),
        Err(error) => Problem::internal(format!("the audit log cannot be read: {error}")).into_response(),
    })
}
