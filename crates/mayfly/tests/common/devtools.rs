//! A client of the server's WebSockets, for the tests that drive a browser
//! session through its DevTools endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects to a WebSocket of the server at `address`, with a bearer token
/// when given. Messages up to 256 MiB are accepted, for screenshots.
pub async fn connect(address: SocketAddr, path: &str, token: Option<&str>) -> Socket {
    let mut request = format!("ws://{address}{path}").into_client_request().unwrap();
    if let Some(token) = token {
        request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    }
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().max_message_size(Some(256 << 20));
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await.unwrap();
    socket
}

/// Sends a DevTools command and returns its response; events that arrive
/// before it are skipped.
pub async fn call(socket: &mut Socket, id: u64, method: &str, params: Value, session: Option<&str>) -> Value {
    let mut message = json!({ "id": id, "method": method, "params": params });
    if let Some(session) = session {
        message["sessionId"] = json!(session);
    }
    socket.send(Message::Text(message.to_string().into())).await.unwrap();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.unwrap_or_else(|_| panic!("no response to {method}"));
        let Some(Ok(Message::Text(text))) = next else { panic!("the connection ended before the response to {method}: {next:?}") };
        let value: Value = serde_json::from_str(&text).unwrap();
        if value["id"] == json!(id) {
            return value;
        }
    }
}
