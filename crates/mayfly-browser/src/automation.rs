//! An automation client's share of a session's browser, for the DevTools
//! WebSocket that Playwright's `connectOverCDP` and Puppeteer's `connect`
//! speak.
//!
//! The client gets a browser-level target session of its own
//! (`Target.attachToBrowserTarget`) on the pipe that the driver uses. Its
//! messages without a `sessionId` go to that session, and a message with a
//! `sessionId` goes through only when the client's route owns that session
//! (see [`crate::cdp::Route`]). Each message gets a fresh id of the
//! connection, and the response gets the client's id back. Events on the
//! client's browser session reach it without their `sessionId`, events on
//! its other sessions as they are, and nothing else reaches it: not the
//! driver's screencast, not another client's messages.
//!
//! [`judge`] lists the methods that are rejected, or replied to here
//! without reaching the browser.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::cdp::{CdpError, Connection, Route};
use crate::Browser;

/// The largest message a client may send, in bytes. Playwright's injected
/// script and file payloads for `setInputFiles` travel in single messages,
/// so this is far above the viewer's limit. The server's WebSocket layer
/// enforces it.
pub const MAX_CLIENT_MESSAGE: usize = 16 * 1024 * 1024;

/// The maximum number of commands a client may have waiting for their
/// responses.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The maximum size, in bytes, of the commands a client may have waiting
/// for their responses.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 * 1024 * 1024;

/// The bounds of the queue of the browser's messages for one client. A
/// client that falls further behind is disconnected.
pub const MAX_QUEUED_MESSAGES: usize = 4096;
pub const MAX_QUEUED_BYTES: usize = 256 * 1024 * 1024;

/// How long attaching the client's browser session may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// JSON-RPC error codes, as Chromium uses them in its replies.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const SERVER_ERROR: i64 = -32000;
const UNKNOWN_SESSION: i64 = -32001;

/// The handling of a command that a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Sent to the browser.
    Forward,
    /// Replied to with an empty result and not sent to the browser.
    Ignore,
    /// Replied to with an error that gives the reason.
    Reject(&'static str),
}

/// Decides how a method is handled, whatever its target session.
///
/// Rejected are the methods that would end or crash the browser that the
/// session's viewer uses, look for targets on other hosts, open listening
/// sockets, hand a page's scripts an unchecked DevTools connection, or read
/// the host's hardware. So is `Target.sendMessageToTarget`, because these
/// checks would not see the command inside its string. The download
/// methods get an empty result and are ignored, because the profile
/// decides downloads. Playwright sets a download behavior on every context
/// it uses, so rejecting them would make its `connectOverCDP` fail.
pub fn judge(method: &str) -> Verdict {
    match method {
        "Target.sendMessageToTarget" => Verdict::Reject("its command travels inside a string that this endpoint does not check; attach with flatten: true and send on the session instead"),
        "Browser.close" => Verdict::Reject("it would end the browser of the session and its viewer; disconnect instead, or end the session with DELETE /v1/sessions/{id}"),
        "Browser.crash" | "Browser.crashGpuProcess" => Verdict::Reject("it would crash the browser of the session and its viewer"),
        "Browser.setDownloadBehavior" | "Page.setDownloadBehavior" => Verdict::Ignore,
        "Target.setRemoteLocations" => Verdict::Reject("it would make the browser look for targets on other hosts"),
        "Target.exposeDevToolsProtocol" => Verdict::Reject("it would give a page's scripts a DevTools connection that this endpoint does not check"),
        _ if method.starts_with("SystemInfo.") => Verdict::Reject("it reads the host's hardware and the browser's processes, which no page can see"),
        _ if method.starts_with("Tethering.") => Verdict::Reject("it opens listening sockets in the browser"),
        _ => Verdict::Forward,
    }
}

/// Checks whether a client may open an address: an `http`, `https` or
/// `data` address, or `about:blank`. Chromium quits or crashes when a
/// client opens some `chrome://` addresses, such as `chrome://quit` and
/// `chrome://inducebrowsercrashforrealz`. So every other scheme stays
/// closed, as it is to the viewer.
pub fn url_allowed(url: &str) -> bool {
    let url = url.trim();
    let scheme = url.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase());
    url.is_empty() || url.eq_ignore_ascii_case("about:blank") || matches!(scheme.as_deref(), Some("http" | "https" | "data"))
}

/// The data-transfer switches of the session's profile that the bridge
/// enforces on a client. A client reads and types into pages like a user,
/// so the clipboard switches do not apply to it. Downloads follow the
/// download behavior that every browser context of the session gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Whether `Page.printToPDF` reaches the browser.
    pub printing: bool,
    /// Whether `DOM.setFileInputFiles` reaches the browser.
    pub uploads: bool,
}

/// A client that sent more than its bounds allow; the server disconnects it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Flood(pub String);

/// A forwarded command that waits for its response.
struct Request {
    /// The id the client gave the command.
    client_id: Value,
    /// Sent without a `sessionId`, so the response goes back without one.
    root: bool,
    bytes: usize,
    /// Set for `Target.createBrowserContext`: the new context gets the
    /// session's download behavior before the client learns its id.
    creates_context: bool,
    /// The target of a `Target.attachToTarget`.
    target: Option<String>,
}

/// A response to `Target.createBrowserContext`, held back until the new
/// context has the session's download behavior.
struct HeldResponse {
    response: Value,
    client_id: Value,
    session: Option<String>,
    context: String,
}

/// One automation client's connection to the browser.
pub struct Automation {
    route: Route,
    /// The client's browser-level session.
    root: String,
    download_behavior: Value,
    permissions: Permissions,
    requests: HashMap<u64, Request>,
    /// Responses held back, by the id of the bridge's own
    /// `Browser.setDownloadBehavior` that releases them.
    held_responses: HashMap<u64, HeldResponse>,
    in_flight_bytes: usize,
    /// The target of each session the client attached.
    targets: HashMap<String, String>,
    forwarded: u64,
    rejected: u64,
}

impl Drop for Automation {
    fn drop(&mut self) {
        // Detaching the browser session also detaches the sessions attached
        // through it and ends their overrides and interceptions.
        self.route.connection().send("Target.detachFromTarget", json!({ "sessionId": self.root }), None);
    }
}

impl Automation {
    /// Attaches a browser-level session for a new client.
    pub async fn open(browser: &Browser, permissions: Permissions) -> Result<Automation, CdpError> {
        Automation::open_on(browser.connection(), browser.download_behavior(), permissions).await
    }

    async fn open_on(connection: &Connection, download_behavior: &Value, permissions: Permissions) -> Result<Automation, CdpError> {
        const METHOD: &str = "Target.attachToBrowserTarget";
        let mut route = connection.route(MAX_QUEUED_MESSAGES, MAX_QUEUED_BYTES);
        let id = route.send(json!({ "method": METHOD, "params": {} }))?;
        // The route owns no session yet, so the response is all it receives.
        let response = match tokio::time::timeout(OPEN_TIMEOUT, route.recv()).await {
            Ok(Some(response)) => response,
            Ok(None) => return Err(CdpError::Closed),
            Err(_) => return Err(CdpError::Timeout { method: METHOD.into(), seconds: OPEN_TIMEOUT.as_secs() }),
        };
        let failed = |message: String| CdpError::Protocol { method: METHOD.into(), message };
        if response["id"] != json!(id) {
            return Err(failed(format!("the browser returned an unexpected message: {response}")));
        }
        if let Some(error) = response.get("error") {
            return Err(failed(error["message"].as_str().unwrap_or("unknown error").to_string()));
        }
        let Some(root) = response["result"]["sessionId"].as_str().map(str::to_string) else {
            return Err(failed("the result has no sessionId".into()));
        };
        Ok(Automation {
            route,
            root,
            download_behavior: download_behavior.clone(),
            permissions,
            requests: HashMap::new(),
            held_responses: HashMap::new(),
            in_flight_bytes: 0,
            targets: HashMap::new(),
            forwarded: 0,
            rejected: 0,
        })
    }

    /// Returns the number of commands forwarded to the browser.
    pub fn forwarded(&self) -> u64 {
        self.forwarded
    }

    /// Returns the number of commands rejected.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Returns whether the client fell so far behind that its queue
    /// overflowed.
    pub fn overflowed(&self) -> bool {
        self.route.overflowed()
    }

    /// Handles one message from the client. Returns the reply to send at
    /// once when the message is rejected, ignored or invalid, and `None`
    /// when it went to the browser.
    pub fn from_client(&mut self, text: &str) -> Result<Option<String>, Flood> {
        let mut message = match serde_json::from_str::<Value>(text) {
            Ok(message) if message.is_object() => message,
            _ => return Ok(Some(reply_error(None, None, PARSE_ERROR, "the message is not a JSON object".into()))),
        };
        let Some(id) = message.get("id").filter(|id| id.is_i64() || id.is_u64()).cloned() else {
            return Ok(Some(reply_error(None, None, INVALID_REQUEST, "the message has no integer id".into())));
        };
        let session = match message.get("sessionId") {
            None => None,
            Some(Value::String(session)) => Some(session.clone()),
            Some(_) => return Ok(Some(reply_error(Some(id), None, INVALID_REQUEST, "sessionId must be a string".into()))),
        };
        let Some(method) = message.get("method").and_then(Value::as_str).map(str::to_string) else {
            return Ok(Some(reply_error(Some(id), session.as_deref(), INVALID_REQUEST, "the message has no method".into())));
        };
        if let Some(session) = &session {
            if !self.route.owns(session) {
                return Ok(Some(reply_error(Some(id), Some(session), UNKNOWN_SESSION, "Session with given id not found.".into())));
            }
        }
        // Indexing a missing key gives null, so absent params read as null.
        let params = &message["params"];
        let target = (method == "Target.attachToTarget").then(|| params["targetId"].as_str().map(str::to_string)).flatten();
        match self.verdict(&method, params) {
            Ok(Verdict::Forward) => {}
            Ok(Verdict::Ignore) => return Ok(Some(reply(id, session.as_deref(), json!({ "result": {} })))),
            Ok(Verdict::Reject(reason)) => {
                self.rejected += 1;
                tracing::info!(method = %method, "rejected a DevTools command of an automation client");
                return Ok(Some(reply_error(Some(id), session.as_deref(), SERVER_ERROR, format!("Mayfly rejects {method}: {reason}"))));
            }
            Err(unknown) => return Ok(Some(reply_error(Some(id), session.as_deref(), UNKNOWN_SESSION, unknown))),
        }

        if self.requests.len() >= MAX_IN_FLIGHT {
            return Err(Flood(format!("more than {MAX_IN_FLIGHT} commands were waiting for their responses")));
        }
        if self.in_flight_bytes + text.len() > MAX_IN_FLIGHT_BYTES {
            return Err(Flood(format!("more than {} MiB of commands were waiting for their responses", MAX_IN_FLIGHT_BYTES >> 20)));
        }
        let root = session.is_none();
        let Some(fields) = message.as_object_mut() else { return Ok(None) };
        if root {
            fields.insert("sessionId".into(), json!(self.root));
        }
        // A client's page opens in a window of its own, as Playwright and
        // Puppeteer expect of a new page. The driver shows it as a tab in
        // front, so the viewer watches what the client does. Params that
        // are not an object reach Chromium as they are, which rejects them.
        if method == "Target.createTarget" {
            let params = fields.entry("params").or_insert(Value::Null);
            if params.is_null() {
                *params = json!({});
            }
            if let Value::Object(params) = params {
                params.insert("newWindow".into(), json!(true));
            }
        }
        let request = Request { client_id: id, root, bytes: text.len(), creates_context: method == "Target.createBrowserContext", target };
        // A closed pipe ends the client's stream of messages as well, which
        // closes the connection, so the command needs no reply.
        let Ok(wire) = self.route.send(message) else { return Ok(None) };
        self.in_flight_bytes += request.bytes;
        self.requests.insert(wire, request);
        self.forwarded += 1;
        Ok(None)
    }

    /// Applies the rules about parameters and the session's
    /// [`Permissions`] on top of [`judge`]: only [`url_allowed`] addresses
    /// are opened, printing and file inputs need their switches, and a
    /// session named in the parameters must be the client's own.
    /// Returns the error message for an unknown session.
    fn verdict(&self, method: &str, params: &Value) -> Result<Verdict, String> {
        const OTHER_SCHEME: &str = "only http, https and data addresses and about:blank can be opened";
        const NO_PRINTING: &str = "the session's profile does not allow printing; an operator can set transfer.printing = true in that profile";
        const NO_UPLOADS: &str = "the session's profile does not allow uploads; an operator can set transfer.uploads = true in that profile";
        match method {
            "Page.navigate" | "Target.createTarget" if !url_allowed(params["url"].as_str().unwrap_or_default()) => Ok(Verdict::Reject(OTHER_SCHEME)),
            "Page.printToPDF" if !self.permissions.printing => Ok(Verdict::Reject(NO_PRINTING)),
            "DOM.setFileInputFiles" if !self.permissions.uploads => Ok(Verdict::Reject(NO_UPLOADS)),
            "Target.detachFromTarget" => match params["sessionId"].as_str() {
                Some(named) if !self.route.owns(named) => Err(format!("Session with given id not found: {named} is not a session of this client.")),
                _ => Ok(judge(method)),
            },
            _ => Ok(judge(method)),
        }
    }

    /// Waits for the next message for the client: a response with the
    /// client's id, or an event on one of its sessions. Returns `None` when
    /// the browser's pipe closed or the client's queue overflowed.
    ///
    /// Cancel-safe: the only await is the route's receive, so a caller may
    /// drop the future in a `select!` without losing a message.
    pub async fn to_client(&mut self) -> Option<String> {
        loop {
            let mut message = self.route.recv().await?;
            let Some(object) = message.as_object_mut() else { continue };
            if let Some(wire) = object.get("id").and_then(Value::as_u64) {
                if let Some(held) = self.held_responses.remove(&wire) {
                    return Some(self.release(held, &message));
                }
                // Responses to the bridge's own messages have no request.
                let Some(request) = self.requests.remove(&wire) else { continue };
                self.in_flight_bytes -= request.bytes;
                object.insert("id".into(), request.client_id.clone());
                if request.root {
                    object.remove("sessionId");
                }
                let result = object.get("result");
                let attached = result.and_then(|r| r.get("sessionId")).and_then(Value::as_str).map(str::to_string);
                let context = result.and_then(|r| r.get("browserContextId")).and_then(Value::as_str).map(str::to_string);
                if let (Some(target), Some(session)) = (&request.target, attached) {
                    self.targets.insert(session, target.clone());
                }
                if let (true, Some(context)) = (request.creates_context, context) {
                    let mut params = self.download_behavior.clone();
                    params["browserContextId"] = json!(context);
                    let Ok(fixup) = self.route.send(json!({ "method": "Browser.setDownloadBehavior", "params": params })) else { return None };
                    let session = object.get("sessionId").and_then(Value::as_str).map(str::to_string);
                    self.held_responses.insert(fixup, HeldResponse { response: message, client_id: request.client_id, session, context });
                    continue;
                }
                return Some(message.to_string());
            }
            let params = object.get("params").cloned().unwrap_or(Value::Null);
            if let Some(child) = params["sessionId"].as_str() {
                match object.get("method").and_then(Value::as_str) {
                    Some("Target.attachedToTarget") => {
                        if let Some(target) = params["targetInfo"]["targetId"].as_str() {
                            self.targets.insert(child.to_string(), target.to_string());
                        }
                    }
                    Some("Target.detachedFromTarget") => {
                        self.targets.remove(child);
                    }
                    _ => {}
                }
            }
            if object.get("sessionId").and_then(Value::as_str) == Some(self.root.as_str()) {
                object.remove("sessionId");
            }
            return Some(message.to_string());
        }
    }

    /// Returns a held response once the new context has the download
    /// behavior, or an error after disposing of a context that could not
    /// get it.
    fn release(&self, held: HeldResponse, outcome: &Value) -> String {
        let Some(error) = outcome.get("error") else { return held.response.to_string() };
        self.route.connection().send("Target.disposeBrowserContext", json!({ "browserContextId": held.context }), None);
        let reason = error["message"].as_str().unwrap_or("unknown error");
        let text = format!("the new browser context could not get the session's download behavior, so it was disposed: {reason}");
        reply_error(Some(held.client_id), held.session.as_deref(), SERVER_ERROR, text)
    }
}

/// Returns a response to a client's command.
fn reply(id: Value, session: Option<&str>, body: Value) -> String {
    let mut message = Map::new();
    message.insert("id".into(), id);
    if let Value::Object(fields) = body {
        message.extend(fields);
    }
    if let Some(session) = session {
        message.insert("sessionId".into(), json!(session));
    }
    Value::Object(message).to_string()
}

/// Returns an error response, without an id when the message had none.
fn reply_error(id: Option<Value>, session: Option<&str>, code: i64, text: String) -> String {
    let error = json!({ "error": { "code": code, "message": text } });
    match id {
        Some(id) => reply(id, session, error),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests;
