//! A small client for the Mayfly API: HTTP/1.1 requests and WebSocket
//! attaches over TCP, or over TLS when the URL is `https://`.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use mayfly_core::ExitCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A failure with the exit code it maps to and a message for people.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure { code: ExitCode::USAGE, message: message.into() }
    }

    pub fn unavailable(message: impl Into<String>) -> Failure {
        Failure { code: ExitCode::API_UNAVAILABLE, message: message.into() }
    }
}

/// A server address split from a URL such as `https://mayfly.example:8470`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let bad = || format!("server URL {url:?} is not http://HOST:PORT or https://HOST:PORT");
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad());
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.contains('@') || authority.is_empty() {
            return Err(bad());
        }
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(bad)?;
            (host.to_string(), after.strip_prefix(':').map(str::to_string))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), Some(port.to_string())),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            Some(text) => text.parse::<u16>().map_err(|_| bad())?,
            None if tls => 443,
            None => 80,
        };
        Ok(Endpoint { tls, host, port })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub struct Client {
    pub endpoint: Endpoint,
    token: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A decoded response: status and JSON body (or `Null` when empty).
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: Option<u64>,
}

fn retry_after(headers: &hyper::HeaderMap) -> Option<u64> {
    headers.get(hyper::header::RETRY_AFTER)?.to_str().ok()?.parse().ok()
}

/// Trusts the certificates in `ca_cert`, or the host's CA store without one.
fn tls_connector(ca_cert: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read the CA certificate {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("{} holds an unusable certificate: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("no certificate found in {}: --ca-cert takes a PEM file, such as tls/cert.pem in the server's state directory", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    // See the server's TLS setup for why ring is used.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl Client {
    pub fn new(url: &str, token: String, ca_cert: Option<&PathBuf>) -> Result<Client, Failure> {
        let endpoint = Endpoint::parse(url).map_err(Failure::usage)?;
        let tls = if endpoint.tls { Some(tls_connector(ca_cert.map(PathBuf::as_path)).map_err(Failure::usage)?) } else { None };
        Ok(Client { endpoint, token, tls })
    }

    pub async fn connect(&self) -> Result<Stream, Failure> {
        let authority = self.endpoint.authority();
        let unreachable = |e: String| Failure::unavailable(format!("cannot reach the server at {authority}: {e}"));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port)))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(connector) => {
                let name = ServerName::try_from(self.endpoint.host.clone()).map_err(|e| Failure::usage(format!("{}: {e}", self.endpoint.host)))?;
                let tls = connector.connect(name, tcp).await.map_err(|e| {
                    let text = e.to_string();
                    if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
                        unreachable(format!("TLS handshake failed: {text}; pass --ca-cert FILE (or set MAYFLY_CA_CERT) with the server's certificate, which for a self-signed server is tls/cert.pem in its state directory"))
                    } else if text.contains("InvalidContentType") || text.contains("corrupt message") {
                        unreachable(format!("TLS handshake failed: {text}; the server may serve plain HTTP, so try http://"))
                    } else {
                        unreachable(format!("TLS handshake failed: {text}"))
                    }
                })?;
                Ok(Stream::Tls(Box::new(tls)))
            }
        }
    }

    /// Sends one request and decodes the JSON response.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, Failure> {
        let stream = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::unavailable(format!("HTTP handshake failed: {e}")))?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.endpoint.authority())
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(hyper::header::ACCEPT, "application/json");
        let bytes = match body {
            Some(value) => {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(bytes)).map_err(|e| Failure::usage(e.to_string()))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| Failure::unavailable("the server did not answer within 60 s"))?
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("invalid HTTP version") && !self.endpoint.tls {
                    Failure::unavailable(format!("the server at {} did not answer in HTTP; if it serves TLS, use https://", self.endpoint.authority()))
                } else {
                    Failure::unavailable(format!("the request failed: {text}"))
                }
            })?;
        let status = response.status();
        let retry = retry_after(response.headers());
        let bytes = response.into_body().collect().await.map_err(|e| Failure::unavailable(format!("reading the answer failed: {e}")))?.to_bytes();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into())) };
        Ok(Answer { status, body, retry_after: retry })
    }

    /// Like [`Client::call`], turning any error status into a failure that
    /// carries the server's problem detail.
    pub async fn expect(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let answer = self.call(method, path, body).await?;
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        Err(problem_failure(&answer))
    }

    /// Opens a WebSocket to `path_and_query`.
    pub async fn websocket(&self, path_and_query: &str) -> Result<tokio_tungstenite::WebSocketStream<Stream>, Failure> {
        let stream = self.connect().await?;
        let url = format!("ws://{}{path_and_query}", self.endpoint.authority());
        let (socket, _) = tokio_tungstenite::client_async(url, stream).await.map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                let body = response.body().as_ref().and_then(|b| serde_json::from_slice::<Value>(b).ok()).unwrap_or(Value::Null);
                problem_failure(&Answer { status: response.status(), retry_after: retry_after(response.headers()), body })
            }
            other => Failure::unavailable(format!("the attach connection failed: {other}")),
        })?;
        Ok(socket)
    }
}

/// Maps an error response to a failure: refusals are 4xx, the rest 5xx.
pub fn problem_failure(answer: &Answer) -> Failure {
    let detail = answer.body.get("detail").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| answer.body.to_string());
    let title = answer.body.get("title").and_then(Value::as_str).unwrap_or("error");
    let mut message = format!("{title} ({}): {detail}", answer.status.as_u16());
    if let Some(seconds) = answer.retry_after {
        message.push_str(&format!(" (retry after {seconds}s)"));
    }
    let code = if answer.status.is_client_error() { ExitCode::API_REFUSED } else { ExitCode::API_UNAVAILABLE };
    Failure { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_hosts_ports_and_schemes() {
        assert_eq!(Endpoint::parse("http://127.0.0.1:8470").unwrap(), Endpoint { tls: false, host: "127.0.0.1".into(), port: 8470 });
        assert_eq!(Endpoint::parse("https://[::1]:9/").unwrap(), Endpoint { tls: true, host: "::1".into(), port: 9 });
        assert_eq!(Endpoint::parse("https://mayfly.example").unwrap().port, 443);
        for bad in ["127.0.0.1:8470", "ftp://x", "http://", "http://h:port", "http://u@h:1", "http://h:1/v1"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
