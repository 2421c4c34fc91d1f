//! The attach WebSocket of a bench session, opened with the client that
//! `mayfly attach` uses.

use std::net::SocketAddr;

use tokio_tungstenite::WebSocketStream;

use crate::remote::encode;
use crate::remote::http::{Client, Stream};

/// Opens the attach WebSocket of session `id` as its writer.
pub(super) async fn connect_attach(address: SocketAddr, api_token: &str, id: &str, attach_token: &str) -> Result<WebSocketStream<Stream>, String> {
    let client = Client::new(&format!("http://{address}"), api_token.to_string(), None).map_err(|f| f.message)?;
    let path = format!("/v1/sessions/{}/attach?token={}&mode=write", encode(id), encode(attach_token));
    client.websocket(&path).await.map_err(|f| format!("attaching to session {id} failed: {}", f.message))
}
