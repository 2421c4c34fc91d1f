//! The attach WebSocket of a browser session: screencast frames to the
//! viewer, the viewer's input to the browser.
//!
//! Binary messages to the viewer hold one JPEG frame after the byte
//! [`FRAME`]. Only the newest frame is sent, so a slow viewer skips frames
//! instead of queueing them, and a viewer that accepts nothing for
//! [`STALL_TIMEOUT`] is closed with code [`STALLED`] and may reconnect to
//! the current frame. Text messages to the viewer are JSON: `session`
//! first (with the profile's `transfer` policy and the `watermark` text,
//! if any), then `browser` (`status` of `running` with the page's `url`
//! and `title`, `renderer_crashed` or `closed`), `tabs`, `clipboard` with
//! copied text, `warning`, `error` for refused input, and `end` last.
//! Between them come the file messages. `downloads` lists every download
//! once the browser runs, when the profile keeps downloads, and `download`
//! carries one that began or changed its state. `download_refused` reports
//! a refused one. The viewer in control also gets `file_chooser`,
//! `upload_refused`, `upload_ready`, `upload_done` and `upload_failed`.
//! The viewer's text messages are [`mayfly_browser::Input`], or `upload`
//! and `upload_cancel`, and its binary messages carry upload bytes.
//! [`super::attach_browser_files`] describes the upload steps.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use mayfly_browser::{Browser, DownloadMode, Input, Status, Tabs};
use mayfly_core::browser::BrowserSettings;
use serde_json::json;

use super::attach_browser_files::{downloads_message, notice_message, Uploads};
use crate::audit::Auditor;
use crate::sessions::browser::BrowserSlot;
use crate::sessions::output::{Output, Read};

/// The first byte of a frame message.
pub const FRAME: u8 = 0x10;
/// How long one send to a viewer may take before it counts as stalled.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The close code for a stalled viewer.
pub const STALLED: u16 = 4008;
/// How long the attach waits for Chromium to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

async fn send(socket: &mut WebSocket, message: Message) -> Result<(), &'static str> {
    match tokio::time::timeout(STALL_TIMEOUT, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("client gone"),
        Err(_) => {
            let close = CloseFrame { code: STALLED, reason: "the viewer did not accept frames in time; reconnect".into() };
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(Some(close)))).await;
            Err("viewer stalled")
        }
    }
}

fn status_message(status: &Status) -> String {
    match status {
        Status::Running { url, title } => json!({ "type": "browser", "status": "running", "url": url, "title": title }),
        Status::RendererCrashed => json!({ "type": "browser", "status": "renderer_crashed" }),
        Status::Closed => json!({ "type": "browser", "status": "closed" }),
    }
    .to_string()
}

/// Waits for the browser to be ready, or for the session to end.
pub(super) async fn wait_for_browser(slot: &mut BrowserSlot, output: &Output) -> Option<Arc<Browser>> {
    let started = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(browser) = slot.borrow_and_update().clone() {
            return Some(browser);
        }
        if matches!(output.read_after(u64::MAX - 1), Read::Ended(_)) {
            return None;
        }
        tokio::select! {
            changed = slot.changed() => if changed.is_err() { return None },
            () = tokio::time::sleep_until(started) => return None,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// One viewer of a browser session.
pub struct Viewer {
    pub output: Arc<Output>,
    pub slot: BrowserSlot,
    /// The first message, which describes the session.
    pub summary: serde_json::Value,
    /// Whether the viewer's input counts.
    pub writer: bool,
    pub warnings: super::attach::Warnings,
    pub settings: Arc<BrowserSettings>,
    pub audit: Auditor,
    pub actor: String,
    pub session_id: String,
    /// The viewer's uploads, which only the viewer in control may send.
    pub uploads: Uploads,
}

fn tabs_message(tabs: &Tabs) -> String {
    json!({ "type": "tabs", "tabs": tabs.tabs, "active": tabs.active }).to_string()
}

/// Streams a browser session until it ends or the viewer leaves; returns
/// why the attach ended.
pub async fn stream(mut socket: WebSocket, viewer: Viewer) -> &'static str {
    let Viewer { output, mut slot, summary, writer, mut warnings, mut uploads, .. } = viewer;
    let mut transfers = super::browser_transfer::Transfers::new(Arc::clone(&viewer.settings), viewer.audit.clone(), viewer.actor.clone(), viewer.session_id.clone());
    if let Err(reason) = send(&mut socket, Message::Text(summary.to_string().into())).await {
        return reason;
    }
    let Some(browser) = wait_for_browser(&mut slot, &output).await else {
        return finish(&mut socket, &output).await;
    };
    let reason = run(&mut socket, &browser, &output, writer, &mut warnings, &mut transfers, &mut uploads).await;
    if writer {
        // No key, button or finger stays pressed after the viewer leaves.
        let _ = browser.release_all().await;
    }
    reason
}

async fn run(
    socket: &mut WebSocket,
    browser: &Browser,
    output: &Output,
    writer: bool,
    warnings: &mut super::attach::Warnings,
    transfers: &mut super::browser_transfer::Transfers,
    uploads: &mut Uploads,
) -> &'static str {
    let mut frames = browser.frames();
    let mut status = browser.status();
    let mut tabs = browser.tabs();
    let mut notices = browser.notices();
    frames.mark_changed();
    status.mark_changed();
    tabs.mark_changed();
    if browser.file_settings().downloads != DownloadMode::Deny {
        if let Err(reason) = send(socket, Message::Text(downloads_message(browser).to_string().into())).await {
            return reason;
        }
    }
    loop {
        for seconds in warnings.take_due() {
            let warning = json!({ "type": "warning", "remaining_seconds": seconds });
            if let Err(reason) = send(socket, Message::Text(warning.to_string().into())).await {
                return reason;
            }
        }
        if matches!(output.read_after(u64::MAX - 1), Read::Ended(_)) {
            return finish(socket, output).await;
        }
        tokio::select! {
            changed = frames.changed() => {
                if changed.is_err() {
                    return finish(socket, output).await;
                }
                let frame = frames.borrow_and_update().clone();
                if let Some(frame) = frame {
                    let mut message = Vec::with_capacity(frame.jpeg.len() + 1);
                    message.push(FRAME);
                    message.extend_from_slice(&frame.jpeg);
                    if let Err(reason) = send(socket, Message::Binary(message.into())).await {
                        return reason;
                    }
                }
            }
            changed = status.changed() => {
                if changed.is_ok() {
                    let text = status_message(&status.borrow_and_update());
                    if let Err(reason) = send(socket, Message::Text(text.into())).await {
                        return reason;
                    }
                }
            }
            changed = tabs.changed() => {
                if changed.is_ok() {
                    let text = tabs_message(&tabs.borrow_and_update());
                    if let Err(reason) = send(socket, Message::Text(text.into())).await {
                        return reason;
                    }
                }
            }
            notice = notices.recv() => {
                if let Some(message) = notice.ok().and_then(|notice| notice_message(&notice, writer, uploads.context())) {
                    if let Err(reason) = send(socket, Message::Text(message.to_string().into())).await {
                        return reason;
                    }
                }
            }
            () = output.changed(u64::MAX - 1) => {}
            () = tokio::time::sleep(warnings.next_in()) => {}
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return "client closed",
                Some(Ok(Message::Text(text))) if writer => {
                    if let Some(replies) = uploads.text(&text, browser).await {
                        for reply in replies {
                            if let Err(reason) = send(socket, Message::Text(reply.to_string().into())).await {
                                return reason;
                            }
                        }
                        continue;
                    }
                    let reply = match serde_json::from_str::<Input>(&text) {
                        Ok(input) => transfers.input(browser, input).await,
                        Err(error) => Err(format!("the message is not a known input: {error}")),
                    };
                    let reply = match reply {
                        Ok(None) => None,
                        Ok(Some(message)) => Some(message),
                        Err(message) => Some(json!({ "type": "error", "message": message })),
                    };
                    if let Some(message) = reply {
                        if let Err(reason) = send(socket, Message::Text(message.to_string().into())).await {
                            return reason;
                        }
                    }
                }
                Some(Ok(Message::Binary(bytes))) if writer => {
                    for reply in uploads.binary(&bytes, browser).await {
                        if let Err(reason) = send(socket, Message::Text(reply.to_string().into())).await {
                            return reason;
                        }
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

/// How long the attach waits for the session's end to be recorded after
/// the browser has gone.
const END_WAIT: Duration = Duration::from_secs(20);

/// Sends the end message, when the session has ended, and closes. The
/// browser goes before the session's end is recorded, so this waits for it.
async fn finish(socket: &mut WebSocket, output: &Output) -> &'static str {
    let _ = tokio::time::timeout(END_WAIT, output.changed(u64::MAX - 1)).await;
    let mut message = json!({ "type": "end" });
    if let Read::Ended(serde_json::Value::Object(fields)) = output.read_after(u64::MAX - 1) {
        if let Some(target) = message.as_object_mut() {
            target.extend(fields);
        }
        let _ = send(socket, Message::Text(message.to_string().into())).await;
        let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: "session ended".into() }))).await;
        return "session ended";
    }
    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1011, reason: "the browser did not start".into() }))).await;
    "browser did not start"
}
