//! A viewer of a browser session on the attach WebSocket, as the web
//! console is one: it reads frames and sends input messages.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::attach_socket::connect_attach;
use super::server::Target;
use crate::remote::http::Stream;

/// The first byte of a frame message on a browser session's attach.
const FRAME: u8 = 0x10;
/// Maximum time to retry an attach that the server rejects, such as one
/// sent before the new session is registered.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct Viewer {
    socket: WebSocketStream<Stream>,
}

impl Viewer {
    /// Attaches to session `id` as its writer, retrying a rejected attach
    /// every 20 ms for up to `ATTACH_TIMEOUT`.
    pub(super) async fn attach(target: &Target, id: &str, attach_token: &str) -> Result<Viewer, String> {
        let started = Instant::now();
        loop {
            match connect_attach(target.address, &target.token, id, attach_token).await {
                Ok(socket) => return Ok(Viewer { socket }),
                Err(error) if started.elapsed() > ATTACH_TIMEOUT => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Waits up to `timeout` for the next frame and returns its JPEG size in
    /// bytes, or None when the time passed. Text messages are skipped,
    /// except the session's end and a closed browser, which are errors.
    pub(super) async fn next_frame(&mut self, timeout: Duration) -> Result<Option<usize>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_elapsed) => return Ok(None),
                Ok(next) => next,
            };
            match next {
                Some(Ok(Message::Binary(message))) if message.first() == Some(&FRAME) => return Ok(Some(message.len() - 1)),
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if message["type"] == "end" || message["status"] == "closed" {
                        return Err(format!("the browser session ended while attached: {message}"));
                    }
                    if message["type"] == "error" {
                        return Err(format!("the server rejected an input message: {}", message["message"]));
                    }
                }
                Some(Ok(Message::Close(frame))) => return Err(format!("the server closed the attach WebSocket: {frame:?}")),
                None => return Err("the server closed the attach WebSocket".into()),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(format!("reading the attach WebSocket failed: {error}")),
            }
        }
    }

    /// Sends one input message, such as a key event.
    pub(super) async fn send(&mut self, message: &Value) -> Result<(), String> {
        self.socket.send(Message::Text(message.to_string().into())).await.map_err(|e| format!("sending an input message failed: {e}"))
    }

    pub(super) async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
