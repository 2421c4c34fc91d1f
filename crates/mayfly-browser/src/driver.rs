//! The browser of one session: the page it shows, the screencast of that
//! page, and the viewer's input.
//!
//! Frames are acknowledged as they arrive and only the newest is kept, so
//! a slow viewer gets fewer, newer frames rather than a growing queue.

use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::base64;
use crate::cdp::{CdpError, Connection, PIPE_CLOSED};

/// One screencast frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Counts frames from 1 in the order they arrived.
    pub seq: u64,
    pub jpeg: Arc<Vec<u8>>,
}

/// The browser's state, as viewers get it beside the frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Running { url: String, title: String },
    /// The page's renderer crashed; the viewer shows it and may reload.
    RendererCrashed,
    /// The browser process is gone.
    Closed,
}

/// Something the session's owner and the audit log should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A page started a download, which the browser refused.
    DownloadRefused { url: String, filename: String },
    /// A page's renderer process crashed.
    RendererCrashed,
}

/// Receives the browser's notices; called from the driver's task.
pub type Notify = Arc<dyn Fn(Notice) + Send + Sync>;

/// Returns a download's suggested name as it may be shown and recorded:
/// control characters and path separators replaced, at most 120 characters.
pub fn sanitize_filename(name: &str) -> String {
    let cleaned: String = name.chars().map(|c| if c.is_control() || c == '/' || c == '\\' { '_' } else { c }).take(120).collect();
    let trimmed = cleaned.trim_matches(|c: char| c == '.' || c.is_whitespace());
    if trimmed.is_empty() { "download".into() } else { trimmed.to_string() }
}

/// A viewer's input, as the attach WebSocket carries it.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    Mouse { action: MouseAction, x: f64, y: f64, #[serde(default)] button: Button, #[serde(default)] buttons: u32, #[serde(default)] click_count: u32, #[serde(default)] modifiers: u32 },
    Wheel { x: f64, y: f64, delta_x: f64, delta_y: f64, #[serde(default)] modifiers: u32 },
    Key { action: KeyAction, key: String, code: String, #[serde(default)] text: String, #[serde(default)] key_code: u32, #[serde(default)] modifiers: u32 },
    /// Text to insert at the caret: a paste or a finished IME composition.
    Text { text: String },
    Navigate { url: String },
    /// The viewer's screen area changed: the page's viewport follows it.
    Viewport { width: u32, height: u32 },
    Back,
    Forward,
    Reload,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MouseAction {
    Move,
    Down,
    Up,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Button {
    #[default]
    None,
    Left,
    Middle,
    Right,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    Down,
    Up,
}

/// The smallest and largest viewport side a viewer may set, in pixels.
pub const VIEWPORT: (u32, u32) = (200, 4096);

/// The largest text one input message may insert.
pub const MAX_TEXT: usize = 64 * 1024;

/// Checks an address the viewer asks to open: http, https or about:blank.
pub fn check_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    if url == "about:blank" {
        return Ok(url.to_string());
    }
    if url.len() > 2048 || url.chars().any(char::is_control) {
        return Err("the address is longer than 2048 characters or contains control characters".into());
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(url.to_string());
    }
    if url.contains("://") || url.starts_with("javascript:") || url.starts_with("data:") || url.starts_with("file:") {
        return Err(format!("only http and https addresses can be opened, not {url:?}"));
    }
    Ok(format!("https://{url}"))
}

/// A running browser.
pub struct Browser {
    connection: Connection,
    page: String,
    frames: watch::Receiver<Option<Frame>>,
    status: watch::Receiver<Status>,
    notices: tokio::sync::broadcast::Sender<Notice>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
    }
}

impl Browser {
    /// Attaches to the browser's first page and starts its screencast at
    /// the given size.
    pub async fn start(connection: Connection, width: u32, height: u32, locale: &str, notify: Notify) -> Result<Browser, CdpError> {
        let mut events = connection.events();
        // Downloads are refused, and their start is reported.
        connection.call("Browser.setDownloadBehavior", json!({ "behavior": "deny", "eventsEnabled": true }), None).await?;
        let targets = connection.call("Target.getTargets", json!({}), None).await?;
        let existing = targets["targetInfos"].as_array().and_then(|list| list.iter().find(|t| t["type"] == "page")).and_then(|t| t["targetId"].as_str()).map(str::to_string);
        let target = match existing {
            Some(target) => target,
            None => connection.call("Target.createTarget", json!({ "url": "about:blank" }), None).await?["targetId"].as_str().unwrap_or_default().to_string(),
        };
        let attached = connection.call("Target.attachToTarget", json!({ "targetId": target, "flatten": true }), None).await?;
        let page = attached["sessionId"].as_str().unwrap_or_default().to_string();
        connection.call("Page.enable", json!({}), Some(&page)).await?;
        // Headless Chromium sends no Accept-Language of its own, and its user
        // agent names it headless, which sites treat as a robot.
        let version = connection.call("Browser.getVersion", json!({}), None).await?;
        let user_agent = version["userAgent"].as_str().unwrap_or_default().replace("HeadlessChrome", "Chrome");
        connection.call("Network.enable", json!({}), Some(&page)).await?;
        connection.call("Network.setUserAgentOverride", json!({ "userAgent": user_agent, "acceptLanguage": locale }), Some(&page)).await?;
        // The window of headless Chromium includes room for its hidden
        // toolbars, so the page's viewport is set to the profile's size.
        connection
            .call("Emulation.setDeviceMetricsOverride", json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }), Some(&page))
            .await?;
        connection.call("Inspector.enable", json!({}), Some(&page)).await.ok();
        connection
            .call("Page.startScreencast", json!({ "format": "jpeg", "quality": 75, "maxWidth": width, "maxHeight": height, "everyNthFrame": 1 }), Some(&page))
            .await?;

        // The start page may have loaded before Page.enable, so its address
        // comes from the history rather than from an event.
        let history = connection.call("Page.getNavigationHistory", json!({}), Some(&page)).await?;
        let current = history["currentIndex"].as_u64().and_then(|i| history["entries"].get(i as usize)).and_then(|e| e["url"].as_str()).unwrap_or_default().to_string();
        let (frame_sender, frames) = watch::channel(None);
        let (status_sender, status) = watch::channel(Status::Running { url: current, title: String::new() });
        let (notices, _) = tokio::sync::broadcast::channel(16);
        let events_notices = notices.clone();
        let events_connection = connection.clone();
        let events_page = page.clone();
        let task = tokio::spawn(async move {
            let mut seq = 0u64;
            let mut seen_downloads = std::collections::HashSet::new();
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::debug!(skipped, "the browser driver skipped events");
                        continue;
                    }
                    Err(_) => break,
                };
                if event.method == PIPE_CLOSED {
                    let _ = status_sender.send(Status::Closed);
                    break;
                }
                // Chromium reports a download on the browser, on the page, or
                // both, with the same guid.
                let download = matches!(event.method.as_str(), "Browser.downloadWillBegin" | "Page.downloadWillBegin");
                if download && !seen_downloads.insert(event.params["guid"].as_str().unwrap_or_default().to_string()) {
                    continue;
                }
                if download {
                    let url = event.params["url"].as_str().unwrap_or_default().chars().take(2048).collect();
                    let filename = sanitize_filename(event.params["suggestedFilename"].as_str().unwrap_or_default());
                    let notice = Notice::DownloadRefused { url, filename };
                    notify(notice.clone());
                    let _ = events_notices.send(notice);
                    continue;
                }
                if event.session_id.as_deref() != Some(events_page.as_str()) {
                    continue;
                }
                match event.method.as_str() {
                    "Page.screencastFrame" => {
                        // Acknowledge at once: the browser sends the next frame
                        // only after this, and viewers read the newest one.
                        events_connection.send("Page.screencastFrameAck", json!({ "sessionId": event.params["sessionId"] }), Some(&events_page));
                        let Some(jpeg) = event.params["data"].as_str().and_then(base64::decode) else { continue };
                        seq += 1;
                        let _ = frame_sender.send(Some(Frame { seq, jpeg: Arc::new(jpeg) }));
                    }
                    "Inspector.targetCrashed" => {
                        notify(Notice::RendererCrashed);
                        let _ = status_sender.send(Status::RendererCrashed);
                    }
                    "Page.frameNavigated" if event.params["frame"]["parentId"].is_null() => {
                        let url = event.params["frame"]["url"].as_str().unwrap_or_default().to_string();
                        let _ = status_sender.send(Status::Running { url, title: String::new() });
                    }
                    _ => {}
                }
            }
        });
        Ok(Browser { connection, page, frames, status, notices, tasks: Mutex::new(vec![task]) })
    }

    /// Subscribes to the frames. The receiver reads only the newest.
    pub fn frames(&self) -> watch::Receiver<Option<Frame>> {
        self.frames.clone()
    }

    /// Subscribes to the browser's notices from now on.
    pub fn notices(&self) -> tokio::sync::broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Subscribes to the browser's status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Passes one viewer input on to the page.
    pub async fn input(&self, input: Input) -> Result<(), String> {
        let page = Some(self.page.as_str());
        let call = |method: &'static str, params: Value| async move { self.connection.call(method, params, page).await.map(|_| ()).map_err(|e| e.to_string()) };
        match input {
            Input::Mouse { action, x, y, button, buttons, click_count, modifiers } => {
                let kind = match action {
                    MouseAction::Move => "mouseMoved",
                    MouseAction::Down => "mousePressed",
                    MouseAction::Up => "mouseReleased",
                };
                let button = match button {
                    Button::None => "none",
                    Button::Left => "left",
                    Button::Middle => "middle",
                    Button::Right => "right",
                };
                call("Input.dispatchMouseEvent", json!({ "type": kind, "x": x, "y": y, "button": button, "buttons": buttons, "clickCount": click_count, "modifiers": modifiers })).await
            }
            Input::Wheel { x, y, delta_x, delta_y, modifiers } => {
                call("Input.dispatchMouseEvent", json!({ "type": "mouseWheel", "x": x, "y": y, "deltaX": delta_x, "deltaY": delta_y, "modifiers": modifiers })).await
            }
            Input::Key { action, key, code, text, key_code, modifiers } => {
                if text.len() > 16 {
                    return Err("a key event carries at most a few characters; send longer text as a text message".into());
                }
                let kind = match action {
                    KeyAction::Down if text.is_empty() => "rawKeyDown",
                    KeyAction::Down => "keyDown",
                    KeyAction::Up => "keyUp",
                };
                let mut params = json!({ "type": kind, "key": key, "code": code, "windowsVirtualKeyCode": key_code, "modifiers": modifiers });
                if !text.is_empty() {
                    params["text"] = json!(text);
                    params["unmodifiedText"] = json!(text);
                }
                call("Input.dispatchKeyEvent", params).await
            }
            Input::Text { text } => {
                if text.len() > MAX_TEXT {
                    return Err(format!("the text is {} bytes; at most {MAX_TEXT} can be inserted at once", text.len()));
                }
                call("Input.insertText", json!({ "text": text })).await
            }
            Input::Navigate { url } => {
                let url = check_url(&url)?;
                call("Page.navigate", json!({ "url": url })).await
            }
            Input::Back | Input::Forward => {
                let history = self.connection.call("Page.getNavigationHistory", json!({}), page).await.map_err(|e| e.to_string())?;
                let current = history["currentIndex"].as_i64().unwrap_or(0);
                let target = if matches!(input, Input::Back) { current - 1 } else { current + 1 };
                let Some(entry) = history["entries"].as_array().and_then(|e| e.get(usize::try_from(target).ok()?)) else { return Ok(()) };
                call("Page.navigateToHistoryEntry", json!({ "entryId": entry["id"] })).await
            }
            Input::Reload => call("Page.reload", json!({})).await,
            Input::Viewport { width, height } => {
                let (low, high) = VIEWPORT;
                if !(low..=high).contains(&width) || !(low..=high).contains(&height) {
                    return Err(format!("a viewport of {width}x{height} is out of range: each side must be {low} to {high} pixels"));
                }
                call("Emulation.setDeviceMetricsOverride", json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false })).await?;
                // The screencast keeps its first size limit, so it restarts.
                call("Page.stopScreencast", json!({})).await?;
                call("Page.startScreencast", json!({ "format": "jpeg", "quality": 75, "maxWidth": width, "maxHeight": height, "everyNthFrame": 1 })).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_url_allows_only_web_addresses() {
        assert_eq!(check_url("about:blank").unwrap(), "about:blank");
        assert_eq!(check_url("http://127.0.0.1:8080/a").unwrap(), "http://127.0.0.1:8080/a");
        assert_eq!(check_url("example.com/path").unwrap(), "https://example.com/path");
        for bad in ["javascript:alert(1)", "file:///etc/passwd", "data:text/html,hi", "chrome://settings", "view-source:http://x"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sanitize_filename_keeps_names_inside() {
        assert_eq!(sanitize_filename("report.pdf"), "report.pdf");
        assert_eq!(sanitize_filename("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(sanitize_filename("a\nb\u{1b}[31m.txt"), "a_b_[31m.txt");
        assert_eq!(sanitize_filename(".."), "download");
        assert_eq!(sanitize_filename(&"x".repeat(500)).len(), 120);
    }

    #[test]
    fn input_messages_parse() {
        let mouse: Input = serde_json::from_str(r#"{"type":"mouse","action":"down","x":10.5,"y":20,"button":"left","buttons":1,"click_count":1}"#).unwrap();
        assert!(matches!(mouse, Input::Mouse { action: MouseAction::Down, button: Button::Left, .. }));
        let key: Input = serde_json::from_str(r#"{"type":"key","action":"down","key":"@","code":"KeyQ","text":"@","modifiers":6}"#).unwrap();
        assert!(matches!(key, Input::Key { modifiers: 6, .. }));
        assert!(serde_json::from_str::<Input>(r#"{"type":"eval","code":"x"}"#).is_err());
    }
}
