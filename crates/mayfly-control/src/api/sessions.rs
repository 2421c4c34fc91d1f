//! `/v1/sessions`: create, list, get, delete, events and attach tokens.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream::{self, Stream, StreamExt};
use mayfly_core::SessionState;
use serde::Deserialize;
use serde_json::json;

use super::body::JsonBody;
use super::caller::Peer;
use crate::app::App;
use crate::policy::{Action, Resource};
use crate::problem::Problem;
use crate::sessions::{actor, CreateRequest};
use crate::store::{EventRecord, SessionFilter, SessionRecord};

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;

pub fn resource(session: &SessionRecord) -> Resource<'_> {
    Resource::Session { id: &session.id, owner: &session.owner, profile: &session.profile, kind: &session.kind }
}

/// 410 Gone for a session that has ended, with its end reason and time.
pub fn gone(session: &SessionRecord) -> Problem {
    Problem::new(StatusCode::GONE, "session-gone", "Session gone", format!("session {} has ended and cannot be resumed", session.id))
        .with("state", session.state.as_str())
        .with("end", session.end.clone().unwrap_or_default())
        .with("exit_code", session.exit_code)
        .with("ended_unix_ms", session.ended_unix_ms)
}

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    let request: CreateRequest = body.parse()?;
    let created = app.create_session(&who, request).await?;
    let location = format!("/v1/sessions/{}", created.session.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(created)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    owner: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
    /// `oldest` (the default) or `newest` first.
    order: Option<String>,
}

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    let query = super::body::query(query)?;
    let state = match query.state.as_deref() {
        None => None,
        Some(text) => Some(SessionState::parse(text).ok_or_else(|| {
            let names: Vec<&str> = SessionState::ALL.iter().map(|s| s.as_str()).collect();
            Problem::bad_request(format!("state {text:?} is not a session state; use one of {}", names.join(", ")))
        })?),
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::bad_request(format!("limit = {limit} is out of range: allowed is 1 to {MAX_PAGE}")));
    }
    // Everyone may ask for their own sessions; other owners, or all of them,
    // need the matching permission.
    let owner = match query.owner {
        Some(owner) => {
            app.authorize(&who, Action::ListSessions, &Resource::User(&owner), None).await?;
            Some(owner)
        }
        None => {
            // An unrecorded probe chooses between the two. Only the decision
            // that decides the request is recorded.
            if app.policies.authorize(&who.principal, Action::ListAllSessions, &Resource::Server, None).allowed {
                app.authorize(&who, Action::ListAllSessions, &Resource::Server, None).await?;
                None
            } else {
                app.authorize(&who, Action::ListSessions, &Resource::User(&who.principal.name), None).await?;
                Some(who.principal.name.clone())
            }
        }
    };
    let newest_first = match query.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => return Err(Problem::bad_request(format!("order {other:?} is not known; use oldest or newest"))),
    };
    let filter = SessionFilter { state, owner, after: query.after, limit, newest_first };
    let sessions = app.store.sessions(&filter).await.map_err(|e| Problem::store_failed(&e))?;
    let next = (sessions.len() as i64 == limit).then(|| sessions.last().map(|s| s.id.clone())).flatten();
    Ok(Json(json!({ "sessions": sessions, "next": next })).into_response())
}

pub async fn get(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    let session = app.session_or_404(&id).await?;
    app.authorize(&who, Action::ReadSession, &resource(&session), None).await?;
    if session.state.is_final() {
        return Err(gone(&session).with("session", serde_json::to_value(&session).expect("serializes")));
    }
    Ok(Json(session).into_response())
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    let session = app.session_or_404(&id).await?;
    app.authorize(&who, Action::DeleteSession, &resource(&session), None).await?;
    let reason = format!("deleted by {}", who.principal.name);
    let session = app.destroy_session(&actor(&who), &id, &reason).await?;
    let status = if session.state.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(session)).into_response())
}

pub async fn attach_token(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    let session = app.session_or_404(&id).await?;
    app.authorize(&who, Action::AttachSession, &resource(&session), None).await?;
    if session.state.is_final() {
        return Err(gone(&session));
    }
    let grant = app.issue_attach_token(&session, &who.principal.name).await?;
    Ok((StatusCode::CREATED, Json(grant)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<i64>,
}

fn sse_event(event: &EventRecord) -> Event {
    Event::default().event(event.kind.clone()).id(event.seq.to_string()).data(serde_json::to_string(event).expect("events serialize"))
}

/// Returns the session's events: a JSON list, or with `Accept:
/// text/event-stream` a live stream that ends after the final event.
pub async fn events(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    let query = super::body::query(query)?;
    // A reconnecting EventSource sends the last id it saw.
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<i64>().ok());
    let after = query.after.or(last_event_id).unwrap_or(0);
    let session = app.session_or_404(&id).await?;
    app.authorize(&who, Action::ReadSession, &resource(&session), None).await?;
    let streaming = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"));
    // Subscribe first, so that nothing falls between the stored history and
    // the live stream.
    let live = app.events.subscribe();
    let stored = app.store.events(&id, after).await.map_err(|e| Problem::store_failed(&e))?;
    if !streaming {
        return Ok(Json(json!({ "events": stored })).into_response());
    }
    let ended = session.state.is_final() || stored.iter().any(|e| e.state.is_final());
    Ok(Sse::new(event_stream(app, id, stored, live, ended)).keep_alive(KeepAlive::default()).into_response())
}

fn event_stream(
    app: Arc<App>,
    id: String,
    stored: Vec<EventRecord>,
    live: tokio::sync::broadcast::Receiver<EventRecord>,
    ended: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    struct Follow {
        live: tokio::sync::broadcast::Receiver<EventRecord>,
        queue: std::collections::VecDeque<EventRecord>,
        last: i64,
        done: bool,
        app: Arc<App>,
        id: String,
    }
    let last = stored.last().map_or(0, |e| e.seq);
    let history = stream::iter(stored.iter().map(sse_event).map(Ok).collect::<Vec<_>>());
    let state = Follow { live, queue: Default::default(), last, done: ended, app, id };
    let follow = stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.queue.pop_front() {
                s.last = event.seq;
                s.done = event.state.is_final();
                return Some((Ok(sse_event(&event)), s));
            }
            if s.done {
                return None;
            }
            match s.live.recv().await {
                Ok(event) if event.session_id == s.id && event.seq > s.last => s.queue.push_back(event),
                Ok(_) => {}
                // Fell behind: take what was missed from the store, in order.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    s.queue.extend(s.app.store.events(&s.id, s.last).await.unwrap_or_default());
                }
                Err(_) => return None,
            }
        }
    });
    history.chain(follow)
}

/// `GET /v1/sessions/{id}/recording`: the asciicast v2 recording of a shell
/// session, while its retention lasts.
pub async fn recording(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let who = app.caller(&headers, peer).await?;
    let session = app.session_or_404(&id).await?;
    app.authorize(&who, Action::ReadRecording, &resource(&session), None).await?;
    if !session.state.is_final() {
        return Err(Problem::new(StatusCode::CONFLICT, "recording-in-progress", "Recording in progress", format!("session {id} still runs; its recording is complete when it ends")));
    }
    let path = crate::sessions::recording::path(&app.recordings_dir(), &session.id);
    let bytes = tokio::fs::read(&path).await.map_err(|_| {
        Problem::not_found(format!("session {id} has no recording: its profile does not record, or the recording's retention has passed"))
    })?;
    let entry = mayfly_audit::Entry::new("recording.downloaded", &actor(&who)).session(&id).field("bytes", bytes.len());
    app.audit.one(entry).await.map_err(|e| Problem::audit_failed(&e))?;
    Ok(([(header::CONTENT_TYPE, "application/x-asciicast")], bytes).into_response())
}
