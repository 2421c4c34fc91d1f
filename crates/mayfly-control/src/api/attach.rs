//! `GET /v1/sessions/{id}/attach`: a WebSocket that carries a job's output
//! and, at the end, its exit status or end reason.
//!
//! Binary messages hold output: the first byte is the stream (1 standard
//! output, 2 standard error), the rest the bytes. Text messages are JSON:
//! `{"type":"session",...}` first, `{"type":"dropped","chunks":N}` when a
//! slow reader missed output the buffer no longer holds, and
//! `{"type":"end","state":...,"end":...,"exit_code":N}` last.
//!
//! A shell session takes input from one writer at a time: binary messages
//! are keystrokes, and `{"type":"resize","rows":R,"cols":C}` sets the window
//! size. With `?mode=observe` a client reads without writing, when the
//! profile allows observers. Before the deadline the server sends
//! `{"type":"warning","remaining_seconds":N}` at the profile's warnings.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use mayfly_audit::Entry;
use serde::Deserialize;
use serde_json::json;

use super::caller::{bearer, client_ip, Peer};
use super::sessions::{gone, resource};
use crate::app::{now_ms, App};
use crate::policy::Action;
use crate::problem::Problem;
use crate::sessions::output::{Output, Read};
use crate::sessions::terminal::{TerminalInput, WriterSlot};
use crate::tokens::{self, Authenticated, Refused};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachQuery {
    token: Option<String>,
    /// `write` (the default for shells) or `observe`.
    mode: Option<String>,
}

/// The part an attached client plays.
enum Role {
    /// Reads a job's output.
    Job,
    /// Types into a shell, with the writer slot while attached.
    /// The slot is held for its `Drop`, which frees it for the next writer.
    Writer(Arc<TerminalInput>, #[allow(dead_code)] WriterSlot),
    /// Watches a shell without typing.
    Observer,
}

/// Authenticates an attach: an attach token for this session (in the query
/// or as a bearer token), or an API token whose principal may attach.
pub(super) async fn attach_caller(app: &App, headers: &HeaderMap, peer: Peer, id: &str, query_token: Option<&str>) -> Result<Authenticated, Problem> {
    let client = client_ip(headers, peer.0.ip(), &app.config.trusted_proxies);
    let presented = query_token.or_else(|| bearer(headers));
    match presented {
        Some(text) if tokens::looks_like_attach_token(text) => {
            let record = app.store.attach_token(&tokens::hash(text)).await.map_err(|e| Problem::store_failed(&e))?;
            let Some(record) = record else { return Err(app.refuse(Refused::Unknown, client).await) };
            if record.session_id != id {
                return Err(app.refuse(Refused::Unknown, client).await);
            }
            if record.expires_unix_ms <= now_ms() {
                return Err(app.refuse(Refused::Expired, client).await);
            }
            let principal = app.store.principal(&record.principal).await.map_err(|e| Problem::store_failed(&e))?;
            let Some(principal) = principal else { return Err(app.refuse(Refused::Unknown, client).await) };
            if let Err(wait) = app.principal_limiter.check(&principal.name) {
                app.metrics.rate_limited_principal.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(Problem::too_many("rate-limited", format!("too many requests for {}; slow down", principal.name), super::caller::seconds_to_retry(wait)));
            }
            Ok(Authenticated { principal, token_id: "attach".into(), token_prefix: "attach-token".into() })
        }
        _ => app.caller(headers, peer).await,
    }
}

pub async fn attach(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<AttachQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, Problem> {
    let query = super::body::query(query)?;
    let who = attach_caller(&app, &headers, peer, &id, query.token.as_deref()).await?;
    let session = app.session_or_404(&id).await?;
    app.authorize(&who, Action::AttachSession, &resource(&session), None).await?;
    let upgrade = upgrade.map_err(|e| Problem::bad_request(format!("this endpoint needs a WebSocket upgrade: {}", e.body_text())))?;
    let browser = app.live.lock().unwrap_or_else(|e| e.into_inner()).get(&id).and_then(|l| {
        let (slot, settings) = (l.browser.clone()?, l.browser_settings.clone()?);
        Some(LiveBrowser { output: Arc::clone(&l.output), slot, writer_flag: Arc::clone(&l.browser_writer), settings, control: l.control.clone() })
    });
    if let Some(live) = browser {
        return attach_browser(&app, who, &session, live, query.mode.as_deref(), upgrade).await;
    }
    let live = app.live.lock().unwrap_or_else(|e| e.into_inner()).get(&id).map(|l| (Arc::clone(&l.output), l.terminal.clone(), l.shell.clone()));
    let (live_output, terminal, shell) = match live {
        Some((output, terminal, shell)) => (Some(output), terminal, shell),
        None => (None, None, None),
    };
    let role = match (&terminal, query.mode.as_deref()) {
        (_, Some(mode)) if mode != "write" && mode != "observe" => {
            return Err(Problem::bad_request(format!("mode {mode:?} is not known; use write or observe")));
        }
        (None, _) => Role::Job,
        (Some(_), Some("observe")) if shell.as_ref().is_some_and(|s| s.observers) => Role::Observer,
        (Some(_), Some("observe")) => {
            return Err(Problem::new(axum::http::StatusCode::FORBIDDEN, "observers-not-allowed", "Observers not allowed", format!("the profile of session {id} allows no observers")));
        }
        (Some(input), _) => match input.claim_writer() {
            Some(slot) => Role::Writer(Arc::clone(input), slot),
            None => {
                let hint = if shell.as_ref().is_some_and(|s| s.observers) {
                    "; watch as an observer instead (mode=observe, or mayfly attach --observe)"
                } else {
                    ""
                };
                return Err(Problem::new(
                    axum::http::StatusCode::CONFLICT,
                    "writer-attached",
                    "Another client is attached",
                    format!("another client is attached to session {id} as its writer{hint}"),
                ));
            }
        },
    };
    let output = live_output.or_else(|| app.finished.lock().unwrap_or_else(|e| e.into_inner()).get(&id));
    let Some(output) = output else {
        let session = app.session_or_404(&id).await?;
        if session.state.is_final() {
            return Err(gone(&session));
        }
        return Err(Problem::new(
            axum::http::StatusCode::CONFLICT,
            "not-attachable",
            "Session not attachable here",
            format!("session {id} is {} but this server process does not run it; its output cannot be streamed from here", session.state),
        ));
    };
    let role_name = match &role {
        Role::Job => "reader",
        Role::Writer(..) => "writer",
        Role::Observer => "observer",
    };
    let attached = Entry::new("session.attached", &crate::sessions::actor(&who))
        .session(&id)
        .field("token", who.token_prefix.clone())
        .field("role", role_name);
    app.audit.one(attached).await.map_err(|e| Problem::audit_failed(&e))?;
    let limit = app.config.limits.max_websocket_message_bytes;
    let summary = json!({
        "type": "session",
        "id": session.id,
        "kind": session.kind,
        "state": session.state,
        "deadline_unix_ms": session.deadline_unix_ms,
        "role": role_name,
    });
    let warnings: Vec<i64> = shell.as_ref().map(|s| s.warnings.iter().map(|w| w.as_duration().as_millis() as i64).collect()).unwrap_or_default();
    let idle = match (&terminal, shell.as_ref().and_then(|s| s.idle_timeout)) {
        (Some(input), Some(timeout)) => Some(IdleWarning { input: Arc::clone(input), timeout: timeout.as_duration(), warned_for: None }),
        _ => None,
    };
    let deadline = session.deadline_unix_ms;
    Ok(upgrade.max_message_size(limit).max_frame_size(limit).on_upgrade(move |socket| async move {
        let reason = stream(socket, output, summary, role, Warnings::new(deadline, warnings), idle).await;
        let detached = Entry::new("session.detached", &crate::sessions::actor(&who)).session(&id).field("reason", reason);
        if let Err(error) = app.audit.one(detached).await {
            tracing::error!(session_id = %id, error = %error, "failed to record a detach");
        }
    }))
}

/// Releases a browser session's writer claim when its viewer leaves.
struct BrowserWriter(Arc<std::sync::atomic::AtomicBool>);

impl Drop for BrowserWriter {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Parts of a live browser session that its attach uses.
struct LiveBrowser {
    output: Arc<Output>,
    slot: crate::sessions::browser::BrowserSlot,
    writer_flag: Arc<std::sync::atomic::AtomicBool>,
    settings: Arc<mayfly_core::browser::BrowserSettings>,
    control: mayfly_sandbox::session::SessionControl,
}

/// Attaches a viewer to a browser session: the first viewer drives it,
/// and `mode=observe` watches without input.
async fn attach_browser(app: &Arc<App>, who: Authenticated, session: &crate::store::SessionRecord, live: LiveBrowser, mode: Option<&str>, upgrade: WebSocketUpgrade) -> Result<Response, Problem> {
    let LiveBrowser { output, slot, writer_flag, settings, control } = live;
    let id = session.id.clone();
    let claim = match mode {
        Some("observe") => None,
        None | Some("write") => {
            if writer_flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Err(Problem::new(
                    axum::http::StatusCode::CONFLICT,
                    "writer-attached",
                    "Another client is attached",
                    format!("another viewer controls browser session {id}; watch instead with mode=observe"),
                ));
            }
            Some(BrowserWriter(writer_flag))
        }
        Some(other) => return Err(Problem::bad_request(format!("mode {other:?} is not known; use write or observe"))),
    };
    let role_name = if claim.is_some() { "writer" } else { "observer" };
    let attached = Entry::new("session.attached", &crate::sessions::actor(&who)).session(&id).field("token", who.token_prefix.clone()).field("role", role_name);
    app.audit.one(attached).await.map_err(|e| Problem::audit_failed(&e))?;
    let watermark = settings.watermark.then(|| format!("{} · {id}", who.principal.name));
    let transfer = &settings.transfer;
    let summary = json!({
        "type": "session", "id": id, "kind": session.kind, "state": session.state, "deadline_unix_ms": session.deadline_unix_ms, "role": role_name,
        "watermark": watermark,
        "transfer": {
            "downloads": transfer.downloads, "download_limit_bytes": transfer.download_limit.as_bytes(),
            "uploads": transfer.uploads, "upload_limit_bytes": transfer.upload_limit.as_bytes(),
            "clipboard_in": transfer.clipboard_in, "clipboard_out": transfer.clipboard_out,
            "clipboard_limit_bytes": transfer.clipboard_limit.as_bytes(), "printing": transfer.printing, "automation": transfer.automation,
        },
    });
    let warnings = Warnings::new(session.deadline_unix_ms, vec![300_000, 60_000]);
    let limit = app.config.limits.max_websocket_message_bytes;
    let uploads = (claim.is_some() && transfer.uploads).then(|| super::attach_browser_files::UploadContext {
        app: Arc::clone(app),
        control,
        session_id: id.clone(),
        actor: crate::sessions::actor(&who),
        limit: transfer.upload_limit.as_bytes(),
        max_message: limit,
    });

    let app = Arc::clone(app);
    Ok(upgrade.max_message_size(limit).max_frame_size(limit).on_upgrade(move |socket| async move {
        let viewer = super::attach_browser::Viewer {
            output,
            slot,
            summary,
            writer: claim.is_some(),
            warnings,
            settings,
            audit: app.audit.clone(),
            actor: crate::sessions::actor(&who),
            session_id: id.clone(),
            uploads: super::attach_browser_files::Uploads::new(uploads),
        };
        let reason = super::attach_browser::stream(socket, viewer).await;
        drop(claim);
        let detached = Entry::new("session.detached", &crate::sessions::actor(&who)).session(&id).field("reason", reason);
        if let Err(error) = app.audit.one(detached).await {
            tracing::error!(session_id = %id, error = %error, "failed to record a detach");
        }
    }))
}

/// The deadline warnings still to send, as `(at_unix_ms, remaining_seconds)`.
pub(super) struct Warnings(Vec<(i64, i64)>);

impl Warnings {
    pub(super) fn new(deadline_unix_ms: i64, before_ms: Vec<i64>) -> Warnings {
        let now = now_ms();
        let mut due: Vec<(i64, i64)> = before_ms.into_iter().map(|b| (deadline_unix_ms - b, b / 1000)).filter(|(at, _)| *at > now).collect();
        due.sort();
        Warnings(due)
    }

    /// Time until the next warning, or a long wait when none is left.
    pub(super) fn next_in(&self) -> std::time::Duration {
        match self.0.first() {
            Some((at, _)) => std::time::Duration::from_millis((at - now_ms()).max(0) as u64),
            None => std::time::Duration::from_secs(3600),
        }
    }

    /// Takes the warnings that are due and returns their remaining seconds.
    pub(super) fn take_due(&mut self) -> Vec<i64> {
        let now = now_ms();
        let due: Vec<i64> = self.0.iter().filter(|(at, _)| *at <= now).map(|(_, seconds)| *seconds).collect();
        self.0.retain(|(at, _)| *at > now);
        due
    }
}

/// The warning a shell's clients get a minute before its idle timeout, or
/// halfway there for a timeout under two minutes, once per quiet spell.
struct IdleWarning {
    input: Arc<TerminalInput>,
    timeout: std::time::Duration,
    /// The last input time the warning was sent for.
    warned_for: Option<std::time::Instant>,
}

impl IdleWarning {
    fn lead(&self) -> std::time::Duration {
        std::time::Duration::from_secs(60).min(self.timeout / 2)
    }

    /// Time until the warning is due, from the last input.
    fn next_in(&self) -> std::time::Duration {
        let due = self.input.last_input() + self.timeout - self.lead();
        due.saturating_duration_since(std::time::Instant::now())
    }

    /// Returns the seconds left when a warning is due now.
    fn take_due(&mut self) -> Option<u64> {
        let last = self.input.last_input();
        if self.warned_for == Some(last) || !self.next_in().is_zero() {
            return None;
        }
        self.warned_for = Some(last);
        Some((last + self.timeout).saturating_duration_since(std::time::Instant::now()).as_secs())
    }
}

#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Resize { rows: u16, cols: u16 },
}

/// Streams output until the session ends or the client leaves, and passes a
/// writer's input on; returns why the attach ended.
async fn stream(
    mut socket: WebSocket,
    output: Arc<Output>,
    summary: serde_json::Value,
    role: Role,
    mut warnings: Warnings,
    mut idle: Option<IdleWarning>,
) -> &'static str {
    if socket.send(Message::Text(summary.to_string().into())).await.is_err() {
        return "client gone";
    }
    let input = match &role {
        Role::Writer(input, _) => Some(Arc::clone(input)),
        _ => None,
    };
    let mut next = 0u64;
    loop {
        for seconds in warnings.take_due() {
            let warning = json!({ "type": "warning", "remaining_seconds": seconds });
            if socket.send(Message::Text(warning.to_string().into())).await.is_err() {
                return "client gone";
            }
        }
        if let Some(seconds) = idle.as_mut().and_then(IdleWarning::take_due) {
            let warning = json!({ "type": "idle_warning", "remaining_seconds": seconds });
            if socket.send(Message::Text(warning.to_string().into())).await.is_err() {
                return "client gone";
            }
        }
        match output.read_after(next) {
            Read::Chunks { chunks, skipped } => {
                if skipped > 0 && socket.send(Message::Text(json!({ "type": "dropped", "chunks": skipped }).to_string().into())).await.is_err() {
                    return "client gone";
                }
                for chunk in chunks {
                    next = chunk.seq + 1;
                    let mut frame = Vec::with_capacity(chunk.data.len() + 1);
                    frame.push(chunk.stream);
                    frame.extend_from_slice(&chunk.data);
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        return "client gone";
                    }
                }
            }
            Read::Ended(end) => {
                let mut message = json!({ "type": "end" });
                if let (Some(target), serde_json::Value::Object(fields)) = (message.as_object_mut(), end) {
                    target.extend(fields);
                }
                let _ = socket.send(Message::Text(message.to_string().into())).await;
                let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: "session ended".into() }))).await;
                return "session ended";
            }
            Read::Wait => {
                tokio::select! {
                    () = output.changed(next) => {}
                    () = tokio::time::sleep(warnings.next_in()) => {}
                    () = tokio::time::sleep(idle.as_ref().map_or(std::time::Duration::from_secs(3600), |i| i.next_in().max(std::time::Duration::from_millis(50)))) => {}
                    incoming = socket.recv() => match incoming {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return "client closed",
                        Some(Ok(Message::Binary(bytes))) => {
                            if let Some(input) = &input {
                                input.input(&bytes);
                            }
                        }
                        Some(Ok(Message::Text(text))) => {
                            if let (Some(input), Ok(ClientMessage::Resize { rows, cols })) = (&input, serde_json::from_str::<ClientMessage>(&text)) {
                                if let Some(size) = mayfly_sandbox::terminal::WindowSize::checked(rows, cols) {
                                    input.resize(size);
                                }
                            }
                        }
                        // Observers and job readers send nothing that matters.
                        Some(Ok(_)) => {}
                    },
                }
            }
        }
    }
}
