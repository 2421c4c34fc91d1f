//! The browser of one session: its tabs, the screencast of the tab in
//! front, and the viewer's input.
//!
//! Every page, including popups, is attached before it runs, so it gets
//! the session's user agent, language and viewport before its first
//! request. Frames are acknowledged as they arrive and only the newest is
//! kept, so a slow viewer gets fewer, newer frames rather than a queue.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::base64;
use crate::cdp::{CdpError, Connection, Event, PIPE_CLOSED};
use crate::files::{enable_file_chooser, Download, FileChooser, FileSettings, Files};
use crate::input::{check_point, check_url, Input, KeyAction, MouseAction, TouchAction, MAX_TOUCH_POINTS, MAX_TYPED_TEXT, VIEWPORT};
use crate::screencast::{self, metrics, Watchdog};
use crate::tabs::{Page, State, Tabs, MAX_TABS};

/// One screencast frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Counts frames from 1 in the order they arrived.
    pub seq: u64,
    pub jpeg: Arc<Vec<u8>>,
}

/// The state of the tab in front, as viewers get it beside the frames.
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
    /// A page opened more tabs than a session may have; the new one was closed.
    TabRefused,
    /// A download the browser keeps began or changed its state.
    Download(Download),
    /// A page opened a file chooser, which the viewer may fill with files.
    FileChooser(FileChooser),
    /// A page opened a file chooser, which the browser cancelled.
    UploadRefused { reason: String },
}

/// Receives the browser's notices; called from the driver's task.
pub type Notify = Arc<dyn Fn(Notice) + Send + Sync>;

/// Start settings of a browser.
#[derive(Debug, Clone)]
pub struct Options {
    /// The viewport in CSS pixels until the viewer sets its own.
    pub width: u32,
    pub height: u32,
    /// The `Accept-Language` of every page, such as `de-DE`.
    pub locale: String,
    /// The page the first tab opens once it is set up.
    pub start_url: Option<String>,
    /// The downloads and file choosers the profile allows.
    pub files: FileSettings,
}

/// Tells whether a character changes the direction of the text around it,
/// which could make `exe.txt` read as `txt.exe`.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Returns a download's suggested name as it may be shown and recorded:
/// control characters, bidirectional text controls and path separators
/// replaced, at most 120 characters.
pub fn sanitize_filename(name: &str) -> String {
    let cleaned: String = name.chars().map(|c| if c.is_control() || is_bidi_control(c) || c == '/' || c == '\\' { '_' } else { c }).take(120).collect();
    let trimmed = cleaned.trim_matches(|c: char| c == '.' || c.is_whitespace());
    if trimmed.is_empty() { "download".into() } else { trimmed.to_string() }
}

/// The largest text one paste may insert.
pub const MAX_PASTE: usize = 1024 * 1024;

/// How long the driver waits for the first page, or a new tab, to be ready.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// State shared by the driver's tasks.
struct Shared {
    connection: Connection,
    user_agent: String,
    locale: String,
    /// The parameters of `Browser.setDownloadBehavior` that every browser
    /// context of the session gets.
    download_behavior: Value,
    files: Arc<Files>,
    state: Mutex<State>,
    /// Held while the tab in front changes, so two changes do not interleave.
    switching: tokio::sync::Mutex<()>,
    watchdog: Mutex<Watchdog>,
    frames: watch::Sender<Option<Frame>>,
    status: watch::Sender<Status>,
    tabs: watch::Sender<Tabs>,
    notices: broadcast::Sender<Notice>,
    notify: Notify,
}

/// A running browser.
pub struct Browser {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watchdog(&self) -> std::sync::MutexGuard<'_, Watchdog> {
        self.watchdog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Restarts the screencast of the tab in front when it stayed silent
    /// too long (see [`Watchdog`]), until the browser's pipe closes.
    async fn watch_screencast(self: Arc<Self>) {
        loop {
            tokio::time::sleep(screencast::CHECK_EVERY).await;
            let Some((session, restart)) = self.watchdog().due(Instant::now()) else { continue };
            let _switching = self.switching.lock().await;
            if self.state().active_session().as_deref() != Some(session.as_str()) {
                continue;
            }
            let viewport = self.state().viewport;
            self.call("Page.stopScreencast", json!({}), &session).await.ok();
            let started = self.call("Page.startScreencast", screencast::params(viewport), &session).await;
            match started {
                Err(error) if error.contains(&CdpError::Closed.to_string()) => return,
                Err(error) => tracing::debug!(error = %error, restart, "a silent screencast did not restart"),
                Ok(_) if restart == screencast::MAX_RESTARTS => tracing::warn!(restart, "the tab in front sent no frame after its screencast restarted; waiting for its next navigation"),
                Ok(_) => tracing::debug!(restart, "restarted a silent screencast"),
            }
        }
    }

    fn notice(&self, notice: Notice) {
        (self.notify)(notice.clone());
        let _ = self.notices.send(notice);
    }

    /// Sends the tabs and the state of the one in front to viewers.
    fn publish(&self) {
        let (tabs, status) = {
            let state = self.state();
            let status = match state.active_page() {
                Some(page) if page.crashed => Status::RendererCrashed,
                Some(page) => Status::Running { url: page.url.clone(), title: page.title.clone() },
                None => return,
            };
            (state.tabs(), status)
        };
        self.tabs.send_if_modified(|current| std::mem::replace(current, tabs.clone()) != tabs);
        self.status.send_if_modified(|current| {
            if *current == Status::Closed || *current == status {
                return false;
            }
            *current = status.clone();
            true
        });
    }

    async fn call(&self, method: &str, params: Value, session: &str) -> Result<Value, String> {
        self.connection.call(method, params, Some(session)).await.map_err(|e| e.to_string())
    }

    /// Gives a new page the session's user agent, language and viewport,
    /// then lets it run and brings it to the front.
    async fn set_up(self: Arc<Self>, target: String, session: String) {
        let viewport = self.state().viewport;
        // The commands go out in this order and the browser handles them in
        // order, so the page runs only after the overrides apply. Some
        // reply only once the page runs, so all are awaited together.
        let agent_override = json!({ "userAgent": self.user_agent, "acceptLanguage": self.locale });
        // Crash reports need the Inspector domain, but a page without it
        // still works, so its result is not checked.
        let chooser = async { enable_file_chooser(&self.connection, &session, self.files.settings().uploads).await.map_err(|e| e.to_string()) };
        let (page, chooser, network, agent, size, _inspector, run) = tokio::join!(
            self.call("Page.enable", json!({}), &session),
            chooser,
            self.call("Network.enable", json!({}), &session),
            self.call("Network.setUserAgentOverride", agent_override, &session),
            // The window of headless Chromium includes room for its hidden
            // toolbars, so the viewport is set to the viewer's size.
            self.call("Emulation.setDeviceMetricsOverride", metrics(viewport), &session),
            self.call("Inspector.enable", json!({}), &session),
            self.call("Runtime.runIfWaitingForDebugger", json!({}), &session),
        );

        if let Err(error) = page.and(chooser).and(network).and(agent).and(size).and(run) {
            // A page that closed while it was set up is not an error.
            if self.state().page(&target).is_some() {
                tracing::warn!(target_id = %target, error = %error, "a browser tab could not be set up; closing it");
                self.connection.call("Target.closeTarget", json!({ "targetId": target }), None).await.ok();
            }
            return;
        }

        match self.state().page_mut(&target) {
            Some(page) => page.ready = true,
            None => return,
        }
        // A new tab comes to the front, as in a local browser.
        self.activate(&target).await;
    }

    /// Shows a tab: its screencast replaces the one in front.
    async fn activate(&self, target: &str) {
        let _switching = self.switching.lock().await;
        let (previous, session, viewport) = {
            let mut state = self.state();
            let Some(page) = state.page(target).filter(|p| p.ready) else { return };
            let session = page.session.clone();
            let previous = state.active_page().map(|p| p.session.clone());
            state.active = Some(target.to_string());
            (previous, session, state.viewport)
        };
        self.publish();
        if previous.as_deref() == Some(session.as_str()) {
            return;
        }
        if let Some(previous) = previous {
            self.call("Page.stopScreencast", json!({}), &previous).await.ok();
        }
        self.connection.call("Target.activateTarget", json!({ "targetId": target }), None).await.ok();
        // While a navigation swaps the page's renderer, Chromium rejects the
        // start with "Not attached to an active page", so it is tried again.
        for attempt in 1..=screencast::START_ATTEMPTS {
            let started = async {
                self.call("Emulation.setDeviceMetricsOverride", metrics(viewport), &session).await?;
                self.call("Page.startScreencast", screencast::params(viewport), &session).await
            };
            let Err(error) = started.await else {
                self.watchdog().started(&session, Instant::now());
                return;
            };
            if self.state().active_page().is_none_or(|p| p.session != session) {
                return;
            }
            if attempt == screencast::START_ATTEMPTS {
                tracing::warn!(target_id = %target, error = %error, attempts = attempt, "a tab's screencast did not start");
                return;
            }
            tokio::time::sleep(screencast::START_RETRY).await;
        }
    }

    /// Brings the newest remaining tab to the front, or opens a blank one
    /// when none is left.
    async fn replace_active(&self) {
        let successor = self.state().successor();
        match successor {
            Some(target) => self.activate(&target).await,
            None => {
                if self.state().pages.is_empty() {
                    self.connection.call("Target.createTarget", json!({ "url": "about:blank" }), None).await.ok();
                }
            }
        }
    }

    /// Handles one event; returns false when the browser is gone.
    fn on_event(self: &Arc<Self>, event: Event, seq: &mut u64) -> bool {
        if event.method == PIPE_CLOSED {
            let _ = self.status.send(Status::Closed);
            return false;
        }
        if let Some(notice) = self.files.on_event(&event, &self.connection) {
            self.notice(notice);
            return true;
        }
        let params = &event.params;
        match (event.method.as_str(), event.session_id.as_deref()) {
            ("Target.attachedToTarget", None) => {
                let target = params["targetInfo"]["targetId"].as_str().unwrap_or_default().to_string();
                let session = params["sessionId"].as_str().unwrap_or_default().to_string();
                // The driver attaches to pages only. Other attachments on the
                // pipe belong to automation clients, such as their browser
                // sessions, and are theirs to keep.
                if params["targetInfo"]["type"] != "page" {
                    return true;
                }
                let too_many = {
                    let mut state = self.state();
                    let too_many = state.pages.len() >= MAX_TABS;
                    if !too_many && state.page(&target).is_none() {
                        let url = params["targetInfo"]["url"].as_str().unwrap_or_default().to_string();
                        state.pages.push(Page { target: target.clone(), session: session.clone(), url, title: String::new(), ready: false, crashed: false });
                    }
                    too_many
                };
                if too_many {
                    self.notice(Notice::TabRefused);
                    self.connection.send("Target.closeTarget", json!({ "targetId": target }), None);
                    return true;
                }
                self.publish();
                tokio::spawn(Arc::clone(self).set_up(target, session));
            }
            ("Target.targetInfoChanged", None) => {
                let info = &params["targetInfo"];
                let target = info["targetId"].as_str().unwrap_or_default();
                if let Some(page) = self.state().page_mut(target) {
                    page.url = info["url"].as_str().unwrap_or_default().chars().take(2048).collect();
                    page.title = info["title"].as_str().unwrap_or_default().chars().take(300).collect();
                }
                self.publish();
            }
            ("Target.targetDestroyed" | "Target.detachedFromTarget", None) => {
                let target = match params["targetId"].as_str() {
                    Some(target) => Some(target.to_string()),
                    None => params["sessionId"].as_str().and_then(|s| self.state().by_session(s).map(|p| p.target.clone())),
                };
                let Some(target) = target else { return true };
                let was_active = self.state().remove(&target);
                self.publish();
                if was_active || self.state().pages.is_empty() {
                    let shared = Arc::clone(self);
                    tokio::spawn(async move { shared.replace_active().await });
                }
            }
            ("Page.screencastFrame", Some(session)) => {
                // Acknowledge at once: the browser sends the next frame only
                // after this, and viewers read the newest one.
                self.connection.send("Page.screencastFrameAck", json!({ "sessionId": params["sessionId"] }), Some(session));
                if self.state().active_session().as_deref() != Some(session) {
                    return true;
                }
                self.watchdog().frame(session);
                let Some(jpeg) = params["data"].as_str().and_then(base64::decode) else { return true };
                *seq += 1;
                let _ = self.frames.send(Some(Frame { seq: *seq, jpeg: Arc::new(jpeg) }));
            }
            ("Inspector.targetCrashed", Some(session)) => {
                if let Some(page) = self.state().by_session_mut(session) {
                    page.crashed = true;
                }
                self.notice(Notice::RendererCrashed);
                self.publish();
            }
            // Chromium does not report every title change, so a loaded
            // page's title is asked for.
            ("Page.loadEventFired" | "Page.domContentEventFired", Some(session)) => {
                let Some(target) = self.state().by_session(session).map(|p| p.target.clone()) else { return true };
                let shared = Arc::clone(self);
                tokio::spawn(async move {
                    let Ok(info) = shared.connection.call("Target.getTargetInfo", json!({ "targetId": target }), None).await else { return };
                    if let Some(page) = shared.state().page_mut(&target) {
                        page.title = info["targetInfo"]["title"].as_str().unwrap_or_default().chars().take(300).collect();
                    }
                    shared.publish();
                });
            }
            ("Page.frameNavigated", Some(session)) if params["frame"]["parentId"].is_null() => {
                if let Some(page) = self.state().by_session_mut(session) {
                    page.url = params["frame"]["url"].as_str().unwrap_or_default().chars().take(2048).collect();
                    page.crashed = false;
                }
                self.watchdog().navigated(session, Instant::now());
                self.publish();
            }
            _ => {}
        }
        true
    }
}

impl Browser {
    /// Attaches to every page the browser has or opens, shows the first
    /// one, and opens the start page in it.
    pub async fn start(connection: Connection, options: Options, notify: Notify) -> Result<Browser, CdpError> {
        let mut events = connection.events();
        let files = Files::new(options.files.clone());
        let download_behavior = files.download_behavior();
        connection.call("Browser.setDownloadBehavior", download_behavior.clone(), None).await?;
        // Headless Chromium sends no Accept-Language of its own, and its user
        // agent names it headless, which sites treat as a robot.
        let version = connection.call("Browser.getVersion", json!({}), None).await?;
        let user_agent = version["userAgent"].as_str().unwrap_or_default().replace("HeadlessChrome", "Chrome");
        let (frames, _) = watch::channel(None);
        let (status, _) = watch::channel(Status::Running { url: String::new(), title: String::new() });
        let (tabs, _) = watch::channel(Tabs::default());
        let (notices, _) = broadcast::channel(16);
        let shared = Arc::new(Shared {
            connection: connection.clone(),
            user_agent,
            locale: options.locale.clone(),
            download_behavior,
            files,
            state: Mutex::new(State::new((options.width, options.height))),
            switching: tokio::sync::Mutex::new(()),
            watchdog: Mutex::new(Watchdog::default()),
            frames,
            status,
            tabs,
            notices,
            notify,
        });
        let events_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                match events.recv().await {
                    Ok(event) => {
                        if !events_shared.on_event(event, &mut seq) {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => tracing::debug!(skipped, "the browser driver skipped events"),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let watching = tokio::spawn(Arc::clone(&shared).watch_screencast());
        let browser = Browser { shared: Arc::clone(&shared), tasks: Mutex::new(vec![task, watching]) };

        let filter = json!([{ "type": "page" }]);
        connection.call("Target.setDiscoverTargets", json!({ "discover": true, "filter": filter }), None).await?;
        connection.call("Target.setAutoAttach", json!({ "autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true, "filter": filter }), None).await?;
        if shared.state().pages.is_empty() {
            let targets = connection.call("Target.getTargets", json!({}), None).await?;
            let has_page = targets["targetInfos"].as_array().is_some_and(|list| list.iter().any(|t| t["type"] == "page"));
            if !has_page {
                connection.call("Target.createTarget", json!({ "url": "about:blank" }), None).await?;
            }
        }
        let first = browser.wait_for_front(None).await.ok_or_else(|| CdpError::Timeout { method: "attaching to the first page".into(), seconds: PAGE_TIMEOUT.as_secs() })?;
        if let Some(url) = options.start_url.filter(|u| u != "about:blank") {
            shared.call("Page.navigate", json!({ "url": url }), &first).await.map_err(|message| CdpError::Protocol { method: "Page.navigate".into(), message })?;
        }
        Ok(browser)
    }

    /// Waits until a tab other than `previous` is ready in front; returns
    /// its session.
    async fn wait_for_front(&self, previous: Option<&str>) -> Option<String> {
        let mut tabs = self.shared.tabs.subscribe();
        let deadline = tokio::time::Instant::now() + PAGE_TIMEOUT;
        loop {
            if let Some(session) = self.shared.state().active_session().filter(|s| Some(s.as_str()) != previous) {
                return Some(session);
            }
            match tokio::time::timeout_at(deadline, tabs.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Subscribes to the frames of the tab in front. The receiver reads
    /// only the newest.
    pub fn frames(&self) -> watch::Receiver<Option<Frame>> {
        self.shared.frames.subscribe()
    }

    /// Subscribes to the browser's notices from now on.
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.shared.notices.subscribe()
    }

    /// Subscribes to the state of the tab in front.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// Subscribes to the list of tabs.
    pub fn tabs(&self) -> watch::Receiver<Tabs> {
        self.shared.tabs.subscribe()
    }

    /// Returns the DevTools connection, which automation clients share
    /// with the driver through routes.
    pub fn connection(&self) -> &Connection {
        &self.shared.connection
    }

    /// Returns the parameters of `Browser.setDownloadBehavior` that the
    /// default browser context got, for the contexts that clients create.
    pub fn download_behavior(&self) -> &Value {
        &self.shared.download_behavior
    }

    /// Returns the text selected in the tab in front: in a text field if
    /// one has focus, otherwise in the page. Frames of other sites are not
    /// searched.
    pub async fn selected_text(&self) -> Result<String, String> {
        let session = self.front()?;
        let expression = "(() => { const a = document.activeElement; \
            if (a && (a.tagName === 'INPUT' || a.tagName === 'TEXTAREA') && typeof a.selectionStart === 'number') return a.value.slice(a.selectionStart, a.selectionEnd); \
            const s = document.getSelection(); return s ? s.toString() : ''; })()";
        let result = self.shared.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }), &session).await?;
        Ok(result["result"]["value"].as_str().unwrap_or_default().to_string())
    }

    /// Returns the download, file chooser and print state of the browser.
    pub(crate) fn files(&self) -> &Files {
        &self.shared.files
    }

    /// Returns the DevTools session of the tab in front.
    pub(crate) fn front(&self) -> Result<String, String> {
        self.shared.state().active_session().ok_or_else(|| "the browser has no page in front yet; try again in a moment".to_string())
    }

    /// Passes one viewer input on to the tab in front.
    pub async fn input(&self, input: Input) -> Result<(), String> {
        let shared = &self.shared;
        match input {
            Input::NewTab { url } => return self.new_tab(url).await,
            Input::SwitchTab { id } => {
                if shared.state().page(&id).is_none_or(|p| !p.ready) {
                    return Err(format!("no open tab has the id {id:?}; the tab list shows the open ones"));
                }
                shared.activate(&id).await;
                return Ok(());
            }
            Input::CloseTab { id } => {
                if shared.state().page(&id).is_none() {
                    return Err(format!("no open tab has the id {id:?}; the tab list shows the open ones"));
                }
                return shared.connection.call("Target.closeTarget", json!({ "targetId": id }), None).await.map(|_| ()).map_err(|e| e.to_string());
            }
            Input::ReleaseAll => return self.release_all().await,
            _ => {}
        }
        let session = self.front()?;
        let call = |method: &'static str, params: Value| {
            let session = session.clone();
            async move { shared.call(method, params, &session).await.map(|_| ()) }
        };
        match input {
            Input::Mouse { action, x, y, button, buttons, click_count, modifiers } => {
                check_point(x, y)?;
                let kind = match action {
                    MouseAction::Move => "mouseMoved",
                    MouseAction::Down => "mousePressed",
                    MouseAction::Up => "mouseReleased",
                };
                {
                    let mut state = shared.state();
                    state.held.mouse = (x, y);
                    let name = button.name();
                    match action {
                        MouseAction::Down if name != "none" && !state.held.buttons.contains(&name) => state.held.buttons.push(name),
                        MouseAction::Up => state.held.buttons.retain(|b| *b != name),
                        _ => {}
                    }
                }
                call("Input.dispatchMouseEvent", json!({ "type": kind, "x": x, "y": y, "button": button.name(), "buttons": buttons, "clickCount": click_count, "modifiers": modifiers })).await
            }
            Input::Wheel { x, y, delta_x, delta_y, modifiers } => {
                check_point(x, y)?;
                call("Input.dispatchMouseEvent", json!({ "type": "mouseWheel", "x": x, "y": y, "deltaX": delta_x, "deltaY": delta_y, "modifiers": modifiers })).await
            }
            Input::Touch { action, points, modifiers } => {
                if points.len() > MAX_TOUCH_POINTS {
                    return Err(format!("a touch carries {} points; at most {MAX_TOUCH_POINTS} fingers are followed", points.len()));
                }
                for point in &points {
                    check_point(point.x, point.y)?;
                }
                let touch_points: Vec<Value> = points.iter().map(|p| json!({ "x": p.x, "y": p.y, "id": p.id })).collect();
                // The browser takes the fingers still down: start and move
                // carry them all, and end and cancel release what is missing.
                let kind = match (action, touch_points.is_empty()) {
                    (TouchAction::Start | TouchAction::Move, true) => return Err("a touch start or move needs at least one point".into()),
                    (TouchAction::End | TouchAction::Cancel, false) => "touchMove",
                    (action, _) => action.event_type(),
                };
                shared.state().held.touching = !touch_points.is_empty();
                call("Input.dispatchTouchEvent", json!({ "type": kind, "touchPoints": touch_points, "modifiers": modifiers })).await
            }
            Input::Key { action, key, code, text, key_code, modifiers } => {
                if text.len() > 16 || key.len() > 64 || code.len() > 64 {
                    return Err("a key event carries at most a few characters; send longer text as a text message".into());
                }
                let kind = match action {
                    KeyAction::Down if text.is_empty() => "rawKeyDown",
                    KeyAction::Down => "keyDown",
                    KeyAction::Up => "keyUp",
                };
                {
                    let held = &mut shared.state().held.keys;
                    let name = if code.is_empty() { key.clone() } else { code.clone() };
                    match action {
                        KeyAction::Down => {
                            held.insert(name, (key.clone(), code.clone(), key_code));
                        }
                        KeyAction::Up => {
                            held.remove(&name);
                        }
                    }
                }
                let mut params = json!({ "type": kind, "key": key, "code": code, "windowsVirtualKeyCode": key_code, "modifiers": modifiers });
                if !text.is_empty() {
                    params["text"] = json!(text);
                    params["unmodifiedText"] = json!(text);
                }
                call("Input.dispatchKeyEvent", params).await
            }
            Input::Text { text } => {
                if text.len() > MAX_TYPED_TEXT {
                    return Err(format!("typed text is {} bytes; at most {MAX_TYPED_TEXT} come at once, and longer text is a paste", text.len()));
                }
                call("Input.insertText", json!({ "text": text })).await
            }
            Input::Compose { text, selection_start, selection_end } => {
                if text.len() > MAX_TYPED_TEXT {
                    return Err(format!("a composition is {} bytes; at most {MAX_TYPED_TEXT} are allowed", text.len()));
                }
                let length = text.encode_utf16().count() as u32;
                let (start, end) = (selection_start.min(length), selection_end.min(length).max(selection_start.min(length)));
                call("Input.imeSetComposition", json!({ "text": text, "selectionStart": start, "selectionEnd": end })).await
            }
            Input::Paste { text } => {
                if text.len() > MAX_PASTE {
                    return Err(format!("the pasted text is {} bytes; at most {MAX_PASTE} can be inserted at once", text.len()));
                }
                call("Input.insertText", json!({ "text": text })).await
            }
            Input::Navigate { url } => {
                let url = check_url(&url)?;
                call("Page.navigate", json!({ "url": url })).await
            }
            Input::Back | Input::Forward => {
                let history = shared.call("Page.getNavigationHistory", json!({}), &session).await?;
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
                shared.state().viewport = (width, height);
                call("Emulation.setDeviceMetricsOverride", metrics((width, height))).await?;
                // The screencast keeps its first size limit, so it restarts.
                call("Page.stopScreencast", json!({})).await?;
                let started = call("Page.startScreencast", screencast::params((width, height))).await?;
                shared.watchdog().started(&session, Instant::now());
                Ok(started)
            }
            Input::Copy | Input::NewTab { .. } | Input::SwitchTab { .. } | Input::CloseTab { .. } | Input::ReleaseAll => Ok(()),
        }
    }

    /// Opens a tab on a blank page, shows it, then opens `url` in it.
    async fn new_tab(&self, url: Option<String>) -> Result<(), String> {
        let url = url.map(|u| check_url(&u)).transpose()?;
        if self.shared.state().pages.len() >= MAX_TABS {
            return Err(format!("this session has {MAX_TABS} tabs open, the most it may have; close one first"));
        }
        let previous = self.shared.state().active_session();
        self.shared.connection.call("Target.createTarget", json!({ "url": "about:blank" }), None).await.map_err(|e| e.to_string())?;
        let session = self.wait_for_front(previous.as_deref()).await.ok_or("the new tab did not open in time")?;
        match url.filter(|u| u != "about:blank") {
            Some(url) => self.shared.call("Page.navigate", json!({ "url": url }), &session).await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// Releases every key, mouse button and finger the viewer holds down
    /// in the tab in front, so none stays pressed after the viewer loses
    /// focus or leaves.
    pub async fn release_all(&self) -> Result<(), String> {
        let Ok(session) = self.front() else { return Ok(()) };
        let held = std::mem::take(&mut self.shared.state().held);
        for (key, code, key_code) in held.keys.into_values() {
            self.shared.call("Input.dispatchKeyEvent", json!({ "type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": key_code, "modifiers": 0 }), &session).await?;
        }
        for button in held.buttons {
            let (x, y) = held.mouse;
            self.shared.call("Input.dispatchMouseEvent", json!({ "type": "mouseReleased", "x": x, "y": y, "button": button, "buttons": 0, "clickCount": 1, "modifiers": 0 }), &session).await?;
        }
        if held.touching {
            self.shared.call("Input.dispatchTouchEvent", json!({ "type": "touchCancel", "touchPoints": [] }), &session).await?;
        }
        self.shared.state().held.mouse = held.mouse;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_filename_keeps_names_inside() {
        assert_eq!(sanitize_filename("report.pdf"), "report.pdf");
        assert_eq!(sanitize_filename("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(sanitize_filename("a\nb\u{1b}[31m.txt"), "a_b_[31m.txt");
        assert_eq!(sanitize_filename(".."), "download");
        assert_eq!(sanitize_filename("invoice\u{202e}fdp.exe"), "invoice_fdp.exe");
        assert_eq!(sanitize_filename(&"x".repeat(500)).len(), 120);
    }
}
