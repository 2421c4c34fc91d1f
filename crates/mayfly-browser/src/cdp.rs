//! A DevTools protocol connection over a pipe pair. Messages are JSON
//! objects, each followed by a NUL byte. Two threads move the bytes, because
//! the pipes are blocking files, and callers await responses matched by id.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot};

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

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A connection to one browser. Cloning shares it.
#[derive(Clone)]
pub struct Connection {
    next_id: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    pending: Pending,
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
        let (reader_pending, reader_events, reader_closed) = (Arc::clone(&pending), events.clone(), Arc::clone(&closed));
        std::thread::Builder::new()
            .name("mayfly-cdp-read".into())
            .spawn(move || {
                read_messages(from_browser, &reader_pending, &reader_events);
                // Set before the waiting calls are failed, so a call that
                // registers later finds it set.
                reader_closed.store(true, Ordering::SeqCst);
                reader_pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
                let _ = reader_events.send(Event { method: PIPE_CLOSED.into(), params: Value::Null, session_id: None });
            })
            .expect("a thread can be started");
        Connection { next_id: Arc::new(AtomicU64::new(1)), closed, pending, outgoing, events }
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
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, done);
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
}

/// The event the connection sends when the browser's pipe closes.
pub const PIPE_CLOSED: &str = "Mayfly.pipeClosed";

/// Reads NUL-terminated messages until the pipe closes.
fn read_messages(from_browser: impl Read, pending: &Pending, events: &broadcast::Sender<Event>) {
    let mut reader = BufReader::with_capacity(1 << 20, from_browser);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.by_ref().take(MAX_MESSAGE as u64 + 1).read_until(0, &mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buffer.last() != Some(&0) {
            tracing::error!(bytes = buffer.len(), "a DevTools message was longer than the limit or cut off; closing the connection");
            break;
        }
        buffer.pop();
        let Ok(message) = serde_json::from_slice::<Value>(&buffer) else {
            tracing::warn!("the browser sent a DevTools message that is not JSON");
            continue;
        };
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            let waiting = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            if let Some(done) = waiting {
                let result = match message.get("error") {
                    Some(error) => Err(error.get("message").and_then(Value::as_str).unwrap_or("unknown error").to_string()),
                    None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
                };
                let _ = done.send(result);
            }
        } else if let Some(method) = message.get("method").and_then(Value::as_str) {
            let event = Event {
                method: method.to_string(),
                params: message.get("params").cloned().unwrap_or(Value::Null),
                session_id: message.get("sessionId").and_then(Value::as_str).map(str::to_string),
            };
            let _ = events.send(event);
        }
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
