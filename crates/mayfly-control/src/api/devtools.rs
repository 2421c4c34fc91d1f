//! `GET /v1/sessions/{id}/devtools`: a DevTools protocol WebSocket to a
//! browser session's browser, for Playwright's `connectOverCDP` and
//! Puppeteer's `connect`, when the session's profile sets
//! `transfer.automation`.
//!
//! Authentication is the attach endpoint's. Authorization needs
//! `automate_session` on the session. The messages are the DevTools
//! protocol's, passed through [`mayfly_browser::Automation`]. It gives the
//! client a browser session of its own on the pipe that Mayfly's driver
//! also uses, so the viewer keeps its frames.
//!
//! Close codes: 1000 when the session ends, 1007 for a binary message that
//! is not UTF-8, and 1009 for a message above [`MAX_CLIENT_MESSAGE`].
//! [`FLOODED`] closes a client with too many commands in flight, and
//! [`STALLED`] one that does not read the browser's messages in time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use mayfly_audit::Entry;
use mayfly_browser::automation::{Permissions, MAX_CLIENT_MESSAGE};
use mayfly_browser::Automation;
use serde::Deserialize;
use tracing::Instrument;

use super::attach_browser::STALLED;
use super::caller::{client_ip, Peer};
use super::sessions::{gone, resource};
use crate::app::App;
use crate::policy::Action;
use crate::problem::Problem;
use crate::sessions::output::{Output, Read};
use crate::tokens::Authenticated;

/// The close code for a client with more commands in flight than
/// [`mayfly_browser::automation::MAX_IN_FLIGHT`] allows.
pub const FLOODED: u16 = 4029;

/// How long one send to the client may take before it counts as stalled.
/// Longer than the viewer's, because a screenshot can be megabytes.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevtoolsQuery {
    token: Option<String>,
}

pub async fn devtools(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<DevtoolsQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, Problem> {
    let query = super::body::query(query)?;
    // No web page of another origin may connect, whatever credential it
    // carries. This is stricter than the cookie check of every route, and
    // matches Chromium's own DevTools server, which rejects other origins.
    if !super::caller::same_origin(&headers) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "cross-origin",
            "Cross-origin request",
            "the DevTools endpoint does not accept connections from web pages of other origins; connect from a program that sends no Origin header",
        ));
    }
    let who = super::attach::attach_caller(&app, &headers, peer, &id, query.token.as_deref()).await?;
    let session = app.session_or_404(&id).await?;
    app.authorize(&who, Action::AutomateSession, &resource(&session), None).await?;
    if session.kind != "browser" {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "not-a-browser-session",
            "Not a browser session",
            format!("session {id} is a {} session; the DevTools endpoint exists only for browser sessions", session.kind),
        ));
    }
    if session.state.is_final() {
        return Err(gone(&session));
    }
    let live = app.live.lock().unwrap_or_else(|e| e.into_inner()).get(&id).map(|l| (l.browser_settings.clone(), l.browser.clone(), Arc::clone(&l.output), Arc::clone(&l.automation_clients)));
    let Some((settings, Some(mut slot), output, clients)) = live else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "not-attachable",
            "Session not attachable here",
            format!("session {id} is {} but this server process does not run it; its browser cannot be reached from here", session.state),
        ));
    };
    let transfer = settings.map(|s| s.transfer.clone()).unwrap_or_default();
    if !transfer.automation {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "automation-not-allowed",
            "Automation not allowed",
            format!("the profile {:?} of session {id} does not allow automation; an operator can set transfer.automation = true in that profile", session.profile),
        )
        .with("profile", session.profile.clone()));
    }
    let upgrade = upgrade.map_err(|e| Problem::bad_request(format!("this endpoint needs a WebSocket upgrade: {}", e.body_text())))?;

    let Some(browser) = super::attach_browser::wait_for_browser(&mut slot, &output).await else {
        let session = app.session_or_404(&id).await?;
        if session.state.is_final() {
            return Err(gone(&session));
        }
        return Err(browser_unavailable(&id, "its browser did not start in time"));
    };
    let permissions = Permissions { printing: transfer.printing, uploads: transfer.uploads };
    let automation = Automation::open(&browser, permissions).await.map_err(|error| {
        tracing::error!(session_id = %id, error = %error, "an automation client could not attach to the browser");
        browser_unavailable(&id, &error.to_string())
    })?;
    let client = client_ip(&headers, peer.0.ip(), &app.config.trusted_proxies);
    let attached = Entry::new("browser.automation_attached", &crate::sessions::actor(&who))
        .session(&id)
        .field("token", who.token_prefix.clone())
        .field("client", client.to_string());
    app.audit.one(attached).await.map_err(|e| Problem::audit_failed(&e))?;
    let connected = Connected::new(Arc::clone(&app), &who, &id, clients);
    tracing::info!(session_id = %id, principal = %who.principal.name, "an automation client connected");
    // The span adds the session id to the connection's logs at info level
    // and below, the bridge's included. The default level is warn, which
    // disables the span, so warnings name the session themselves.
    let span = tracing::info_span!("automation", session_id = %id);
    Ok(upgrade.max_message_size(MAX_CLIENT_MESSAGE).max_frame_size(MAX_CLIENT_MESSAGE).on_upgrade(move |mut socket| {
        async move {
            let mut automation = automation;
            let reason = pump(&mut socket, &mut automation, &output, &id).await;
            tracing::info!(reason, commands = automation.forwarded(), rejected = automation.rejected(), "an automation client left");
            connected.finish(reason, &automation).await;
        }
        .instrument(span)
    }))
}

fn browser_unavailable(id: &str, reason: &str) -> Problem {
    Problem::unavailable("browser-unavailable", format!("the browser of session {id} cannot be automated now: {reason}; try again"), Some(5))
}

/// An automation client counted among the session's controllers. The
/// detach record is written by [`Connected::finish`], or on drop when the
/// WebSocket upgrade never completed.
struct Connected {
    app: Arc<App>,
    actor: String,
    id: String,
    clients: Arc<AtomicUsize>,
    finished: bool,
}

impl Connected {
    fn new(app: Arc<App>, who: &Authenticated, id: &str, clients: Arc<AtomicUsize>) -> Connected {
        clients.fetch_add(1, Ordering::SeqCst);
        Connected { app, actor: crate::sessions::actor(who), id: id.to_string(), clients, finished: false }
    }

    fn record(&self, reason: &str, forwarded: u64, rejected: u64) -> Entry {
        Entry::new("browser.automation_detached", &self.actor).session(&self.id).field("reason", reason).field("commands", forwarded).field("rejected", rejected)
    }

    async fn finish(mut self, reason: &str, automation: &Automation) {
        self.finished = true;
        let entry = self.record(reason, automation.forwarded(), automation.rejected());
        if let Err(error) = self.app.audit.one(entry).await {
            tracing::error!(session_id = %self.id, error = %error, "failed to record the end of an automation connection");
        }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.clients.fetch_sub(1, Ordering::SeqCst);
        if self.finished {
            return;
        }
        let (app, id, entry) = (Arc::clone(&self.app), self.id.clone(), self.record("the WebSocket upgrade did not complete", 0, 0));
        tokio::spawn(async move {
            if let Err(error) = app.audit.one(entry).await {
                tracing::error!(session_id = %id, error = %error, "failed to record the end of an automation connection");
            }
        });
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: String) {
    let frame = CloseFrame { code, reason: reason.into() };
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(Some(frame)))).await;
}

/// Sends one message, closing the connection when the client does not
/// accept it within [`SEND_TIMEOUT`].
async fn send(socket: &mut WebSocket, text: String) -> Result<(), &'static str> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("client gone"),
        Err(_) => {
            close(socket, STALLED, format!("the client did not accept a message within {} s", SEND_TIMEOUT.as_secs())).await;
            Err("client stalled")
        }
    }
}

/// Passes messages both ways until the client leaves, the browser closes
/// or a bound is passed; returns why the connection ended.
async fn pump(socket: &mut WebSocket, automation: &mut Automation, output: &Output, id: &str) -> &'static str {
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let text = match incoming {
                    None | Some(Ok(Message::Close(_))) => return "client closed",
                    // tungstenite reports a message above the size limit as
                    // "Space limit exceeded: Message too long: ..."; the
                    // error type is not part of axum's API.
                    Some(Err(error)) if error.to_string().contains("Space limit exceeded") => {
                        close(socket, 1009, format!("a message may be at most {} MiB", MAX_CLIENT_MESSAGE >> 20)).await;
                        return "message too large";
                    }
                    Some(Err(_)) => return "client gone",
                    Some(Ok(Message::Text(text))) => text.to_string(),
                    Some(Ok(Message::Binary(bytes))) => match String::from_utf8(bytes.to_vec()) {
                        Ok(text) => text,
                        Err(_) => {
                            close(socket, 1007, "messages must be DevTools protocol JSON in UTF-8".into()).await;
                            return "message not UTF-8";
                        }
                    },
                    Some(Ok(_)) => continue,
                };
                match automation.from_client(&text) {
                    Ok(None) => {}
                    Ok(Some(reply)) => {
                        if let Err(reason) = send(socket, reply).await {
                            return reason;
                        }
                    }
                    Err(flood) => {
                        tracing::warn!(session_id = %id, error = %flood, "disconnected an automation client that flooded the browser");
                        close(socket, FLOODED, flood.0).await;
                        return "client flooded";
                    }
                }
            }
            message = automation.to_client() => match message {
                Some(text) => {
                    if let Err(reason) = send(socket, text).await {
                        return reason;
                    }
                }
                None if automation.overflowed() => {
                    close(socket, STALLED, "the client did not read the browser's messages in time; reconnect".into()).await;
                    return "client fell behind";
                }
                None => {
                    // The browser goes before the session's end is recorded.
                    let _ = tokio::time::timeout(Duration::from_secs(20), output.changed(u64::MAX - 1)).await;
                    if matches!(output.read_after(u64::MAX - 1), Read::Ended(_)) {
                        close(socket, 1000, "session ended".into()).await;
                        return "session ended";
                    }
                    close(socket, 1011, "the browser closed".into()).await;
                    return "browser closed";
                }
            },
        }
    }
}
