//! Blocking HTTP/1.1 requests to a local `mayfly serve`, for the API bench.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Sends one request with `Connection: close` and returns the status and
/// the JSON body.
pub(super) fn call(address: SocketAddr, method: &str, path: &str, token: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
    let mut stream = TcpStream::connect(address).map_err(|e| format!("cannot reach {address}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or("the answer has no header end")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("the answer has no status")?;
    Ok((status, serde_json::from_str(rest).unwrap_or(Value::Null)))
}
