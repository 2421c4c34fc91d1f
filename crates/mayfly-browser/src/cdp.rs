//! A DevTools protocol connection over a pipe pair. Messages are JSON
//! objects, each followed by a NUL byte. Two threads move the bytes, because
//! the pipes are blocking files, and callers await responses matched by id.
//!
//! Besides the driver's calls and events, the connection carries
//! [`Route`]s: an automation client's share of the pipe. A route owns a set
//! of flattened target sessions. The browser's messages on those sessions,
//! and the responses to the route's own messages, go to the route's bounded
//! queue and never to the driver's event stream.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot};

/// The largest message read from Chromium; a screencast frame of a large
/// window is a few megabytes of base64.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How long a command may wait for its response.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error)]
pub enum CdpError {
    #[error("the browser closed its DevTools pipe")]
    Closed,
    #[error("{method} timed out after {seconds} s")]
    Timeout { method: String, seconds: u64 },
    #[error("{method} failed: {message}")]
    Protocol { method: String, message: String },
}

/// An event from the browser: its method, parameters and the target
/// session it belongs to, if any.
#[derive(Debug, Clone)]
pub struct Event {
    pub method: String,
    pub params: Value,
    pub session_id: Option<String>,
}

/// The receiver of the response to a message id.
enum Waiter {
    /// A [`Connection::call`], for the result or the error message.
    Call(oneshot::Sender<Result<Value, String>>),
    /// A [`Route`], for the whole response. `attaches` is set for the
    /// methods whose result names a new target session, which the route
    /// then owns.
    Route { route: u64, attaches: bool },
}

type Pending = Arc<Mutex<HashMap<u64, Waiter>>>;

/// The reader's side of one route.
struct RouteEntry {
    /// The flattened target sessions whose messages go to this route.
    sessions: HashSet<String>,
    queue: mpsc::Sender<(Value, usize)>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    overflowed: Arc<AtomicBool>,
}

type Routes = Arc<Mutex<HashMap<u64, RouteEntry>>>;

/// A connection to one browser. Cloning shares it.
#[derive(Clone)]
pub struct Connection {
    next_id: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    pending: Pending,
    routes: Routes,
    next_route: Arc<AtomicU64>,
    outgoing: std::sync::mpsc::Sender<Vec<u8>>,
    events: broadcast::Sender<Event>,
}

impl Connection {
    /// Starts the reader and writer threads on the pipe pair: `to_browser` is
    /// what Chromium reads at descriptor 3, `from_browser` what it writes at 4.
    pub fn start(to_browser: impl Write + Send + 'static, from_browser: impl Read + Send + 'static) -> Connection {
        let (outgoing, queue) = std::sync::mpsc::channel::<Vec<u8>>();
        let (events, _) = broadcast::channel(256);
        let pending: Pending = Arc::default();
        let routes: Routes = Arc::default();
        std::thread::Builder::new()
            .name("mayfly-cdp-write".into())
            .spawn(move || {
                let mut to_browser = to_browser;
                for message in queue {
                    if to_browser.write_all(&message).and_then(|()| to_browser.flush()).is_err() {
                        return;
                    }
                }
            })
            .expect("a thread can be started");
        let closed = Arc::new(AtomicBool::new(false));
        let reader = Dispatch { pending: Arc::clone(&pending), routes: Arc::clone(&routes), events: events.clone() };
        let reader_closed = Arc::clone(&closed);
        std::thread::Builder::new()
            .name("mayfly-cdp-read".into())
            .spawn(move || {
                read_messages(from_browser, &reader);
                // Set before the waiting calls are failed, so a call that
                // registers later finds it set.
                reader_closed.store(true, Ordering::SeqCst);
                reader.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
                // Dropping the queues' senders ends every route's stream.
                reader.routes.lock().unwrap_or_else(|e| e.into_inner()).clear();
                let _ = reader.events.send(Event { method: PIPE_CLOSED.into(), params: Value::Null, session_id: None });
            })
            .expect("a thread can be started");
        Connection { next_id: Arc::new(AtomicU64::new(1)), closed, pending, routes, next_route: Arc::new(AtomicU64::new(1)), outgoing, events }
    }

    /// Subscribes to the browser's events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Sends a command and waits for its result.
    pub async fn call(&self, method: &str, params: Value, session_id: Option<&str>) -> Result<Value, CdpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session_id) = session_id {
            message["sessionId"] = json!(session_id);
        }
        let (done, result) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, Waiter::Call(done));
        if self.closed.load(Ordering::SeqCst) {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(CdpError::Closed);
        }
        let mut bytes = serde_json::to_vec(&message).expect("a JSON value serializes");
        bytes.push(0);
        if self.outgoing.send(bytes).is_err() {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(CdpError::Closed);
        }
        match tokio::time::timeout(CALL_TIMEOUT, result).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(message))) => Err(CdpError::Protocol { method: method.into(), message }),
            Ok(Err(_)) => Err(CdpError::Closed),
            Err(_) => {
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                Err(CdpError::Timeout { method: method.into(), seconds: CALL_TIMEOUT.as_secs() })
            }
        }
    }

    /// Sends a command without waiting for its result, such as a frame
    /// acknowledgement. Errors show in the browser's event stream, if at all.
    pub fn send(&self, method: &str, params: Value, session_id: Option<&str>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session_id) = session_id {
            message["sessionId"] = json!(session_id);
        }
        let mut bytes = serde_json::to_vec(&message).expect("a JSON value serializes");
        bytes.push(0);
        let _ = self.outgoing.send(bytes);
    }

    /// Opens a route that owns no session yet. Its queue takes at most
    /// `max_messages` messages and `max_bytes` bytes of the browser's JSON.
    /// A message that would pass either bound ends the route instead, so a
    /// slow reader never stalls the driver.
    pub fn route(&self, max_messages: usize, max_bytes: usize) -> Route {
        let id = self.next_route.fetch_add(1, Ordering::Relaxed);
        let (queue, receiver) = mpsc::channel(max_messages.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let overflowed = Arc::new(AtomicBool::new(false));
        let entry = RouteEntry { sessions: HashSet::new(), queue, queued_bytes: Arc::clone(&queued_bytes), max_bytes, overflowed: Arc::clone(&overflowed) };
        // A route opened after the pipe closed gets no entry, so its stream
        // ends at once. The reader marks the pipe closed before it clears
        // the routes under this lock, so no entry outlives the pipe.
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if !self.closed.load(Ordering::SeqCst) {
            routes.insert(id, entry);
        }
        drop(routes);
        Route { id, connection: self.clone(), receiver, queued_bytes, overflowed }
    }
}

/// The methods whose result contains the `sessionId` of a newly attached
/// target session.
const ATTACHING_METHODS: &[&str] = &["Target.attachToTarget", "Target.attachToBrowserTarget"];

/// An automation client's share of a [`Connection`].
///
/// The route owns the sessions that the browser attached at its request:
/// the `sessionId` in the result of an attach it sent, and the `sessionId`
/// of every `Target.attachedToTarget` event on a session it owns. A
/// `Target.detachedFromTarget` event on an owned session disowns the
/// session it names. The reader thread applies these rules as the messages
/// arrive, so no message of a new session can overtake its ownership.
pub struct Route {
    id: u64,
    connection: Connection,
    receiver: mpsc::Receiver<(Value, usize)>,
    queued_bytes: Arc<AtomicUsize>,
    overflowed: Arc<AtomicBool>,
}

impl Route {
    /// Sends a message after giving it a fresh id of the connection, so it
    /// never collides with the driver's ids or another route's, and returns
    /// that id. The response, with the same id, arrives through
    /// [`Route::recv`].
    pub fn send(&self, mut message: Value) -> Result<u64, CdpError> {
        let id = self.connection.next_id.fetch_add(1, Ordering::Relaxed);
        let attaches = message.get("method").and_then(Value::as_str).is_some_and(|m| ATTACHING_METHODS.contains(&m));
        message["id"] = json!(id);
        let mut bytes = serde_json::to_vec(&message).expect("a JSON value serializes");
        bytes.push(0);
        self.connection.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, Waiter::Route { route: self.id, attaches });
        if self.connection.closed.load(Ordering::SeqCst) || self.connection.outgoing.send(bytes).is_err() {
            self.connection.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(CdpError::Closed);
        }
        Ok(id)
    }

    /// Returns whether the browser's messages on `session_id` belong to
    /// this route.
    pub fn owns(&self, session_id: &str) -> bool {
        self.connection.routes.lock().unwrap_or_else(|e| e.into_inner()).get(&self.id).is_some_and(|entry| entry.sessions.contains(session_id))
    }

    /// Returns the next message for this route: a response to one of its
    /// messages or an event on one of its sessions. Returns `None` once the
    /// pipe has closed or the queue overflowed ([`Route::overflowed`]).
    pub async fn recv(&mut self) -> Option<Value> {
        let (message, size) = self.receiver.recv().await?;
        self.queued_bytes.fetch_sub(size, Ordering::SeqCst);
        Some(message)
    }

    /// Returns whether the route ended because its reader fell too far
    /// behind.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::SeqCst)
    }

    /// Returns the connection this route shares.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        self.connection.routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        self.connection.pending.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, waiter| !matches!(waiter, Waiter::Route { route, .. } if *route == self.id));
    }
}

/// The event the connection sends when the browser's pipe closes.
pub const PIPE_CLOSED: &str = "Mayfly.pipeClosed";

/// The receivers of the reader thread's messages: calls, routes and the
/// event stream.
struct Dispatch {
    pending: Pending,
    routes: Routes,
    events: broadcast::Sender<Event>,
}

impl Dispatch {
    /// Passes one message of `size` bytes to its receiver: the call or route
    /// that waits for its id, the route that owns its session, or else the
    /// event stream.
    fn message(&self, message: Value, size: usize) {
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            let waiting = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            match waiting {
                Some(Waiter::Call(done)) => {
                    let result = match message.get("error") {
                        Some(error) => Err(error.get("message").and_then(Value::as_str).unwrap_or("unknown error").to_string()),
                        None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
                    };
                    let _ = done.send(result);
                }
                Some(Waiter::Route { route, attaches }) => {
                    let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
                    if let (true, Some(entry), Some(session)) = (attaches, routes.get_mut(&route), message["result"]["sessionId"].as_str()) {
                        entry.sessions.insert(session.to_string());
                    }
                    deliver(&mut routes, route, message, size);
                }
                None => {}
            }
            return;
        }
        let Some(method) = message.get("method").and_then(Value::as_str) else { return };
        let session_id = message.get("sessionId").and_then(Value::as_str);
        if let Some(session_id) = session_id {
            let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            let owner = routes.iter_mut().find(|(_, entry)| entry.sessions.contains(session_id));
            if let Some((&route, entry)) = owner {
                if let Some(child) = message["params"]["sessionId"].as_str() {
                    match method {
                        "Target.attachedToTarget" => {
                            entry.sessions.insert(child.to_string());
                        }
                        "Target.detachedFromTarget" => {
                            entry.sessions.remove(child);
                        }
                        _ => {}
                    }
                }
                deliver(&mut routes, route, message, size);
                return;
            }
        }
        let event = Event {
            method: method.to_string(),
            params: message.get("params").cloned().unwrap_or(Value::Null),
            session_id: session_id.map(str::to_string),
        };
        let _ = self.events.send(event);
    }
}

/// Queues a message for a route, or ends the route when the message would
/// pass its bounds.
fn deliver(routes: &mut HashMap<u64, RouteEntry>, route: u64, message: Value, size: usize) {
    let Some(entry) = routes.get(&route) else { return };
    let fits = entry.queued_bytes.load(Ordering::SeqCst) + size <= entry.max_bytes;
    if fits && entry.queue.try_send((message, size)).is_ok() {
        entry.queued_bytes.fetch_add(size, Ordering::SeqCst);
        return;
    }
    entry.overflowed.store(true, Ordering::SeqCst);
    // Dropping the entry's sender ends the route's stream after the
    // messages already queued.
    routes.remove(&route);
}

/// Reads NUL-terminated messages until the pipe closes.
fn read_messages(from_browser: impl Read, dispatch: &Dispatch) {
    let mut reader = BufReader::with_capacity(1 << 20, from_browser);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.by_ref().take(MAX_MESSAGE as u64 + 1).read_until(0, &mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buffer.last() != Some(&0) {
            // A browser that ends while it writes leaves part of a message,
            // which is no error of its own.
            if buffer.len() > MAX_MESSAGE {
                tracing::error!(bytes = buffer.len(), limit = MAX_MESSAGE, "a DevTools message was longer than the limit; closing the connection");
            } else {
                tracing::debug!(bytes = buffer.len(), "the DevTools pipe closed in the middle of a message");
            }
            break;
        }
        buffer.pop();
        let Ok(message) = serde_json::from_slice::<Value>(&buffer) else {
            tracing::warn!("the browser sent a DevTools message that is not JSON");
            continue;
        };
        dispatch.message(message, buffer.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a fake browser on an in-memory pipe pair. It replies to every
    /// command with the command's method name, after one event.
    fn fake_browser() -> Connection {
        let (to_browser_read, to_browser_write) = std::io::pipe().unwrap();
        let (from_browser_read, mut from_browser_write) = std::io::pipe().unwrap();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(to_browser_read);
            let mut buffer = Vec::new();
            while reader.read_until(0, &mut buffer).is_ok_and(|n| n > 0) {
                buffer.pop();
                let request: Value = serde_json::from_slice(&buffer).unwrap();
                buffer.clear();
                let method = request["method"].as_str().unwrap().to_string();
                let event = json!({ "method": "Test.before", "params": { "for": method } });
                let reply = if method == "Test.fail" {
                    json!({ "id": request["id"], "error": { "code": -32000, "message": "it failed" } })
                } else {
                    json!({ "id": request["id"], "result": { "method": method } })
                };
                for message in [event, reply] {
                    let mut bytes = serde_json::to_vec(&message).unwrap();
                    bytes.push(0);
                    from_browser_write.write_all(&bytes).unwrap();
                }
            }
        });
        Connection::start(to_browser_write, from_browser_read)
    }

    #[tokio::test]
    async fn call_matches_responses_and_events() {
        let connection = fake_browser();
        let mut events = connection.events();
        let result = connection.call("Test.echo", json!({}), None).await.unwrap();
        assert_eq!(result["method"], "Test.echo");
        let event = events.recv().await.unwrap();
        assert_eq!(event.method, "Test.before");
        assert_eq!(event.params["for"], "Test.echo");
    }

    #[tokio::test]
    async fn call_reports_protocol_errors() {
        let connection = fake_browser();
        let error = connection.call("Test.fail", json!({}), None).await.unwrap_err();
        assert_eq!(error.to_string(), "Test.fail failed: it failed");
    }

    #[tokio::test]
    async fn call_fails_when_the_pipe_closes() {
        let (to_browser_read, to_browser_write) = std::io::pipe().unwrap();
        let (from_browser_read, from_browser_write) = std::io::pipe().unwrap();
        drop((to_browser_read, from_browser_write));
        let connection = Connection::start(to_browser_write, from_browser_read);
        let error = connection.call("Test.echo", json!({}), None).await.unwrap_err();
        assert!(matches!(error, CdpError::Closed), "{error:?}");
    }
}
