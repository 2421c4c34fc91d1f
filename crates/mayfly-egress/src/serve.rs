//! The proxy's thread: a single-threaded runtime that accepts on the
//! session's listener and relays each allowed connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;

use crate::request::{self, Host, Rejected, Target};
use crate::{ConnectionReport, EgressLog, ProxyConfig};

/// A running proxy. Stopping or dropping it ends every connection and
/// closes the listener.
pub struct ProxyHandle {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProxyHandle {
    /// Stops the proxy and waits until its sockets are closed.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the egress proxy thread panicked");
            }
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shut_down();
    }
}

pub fn start(listener: std::net::TcpListener, config: Arc<ProxyConfig>, log: Arc<dyn EgressLog>) -> std::io::Result<ProxyHandle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new().name("mayfly-egress".into()).spawn(move || {
        runtime.block_on(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => accept(listener, config, log, stopped).await,
                Err(error) => tracing::error!(error = %error, "the egress proxy cannot use its listener"),
            }
        });
        // Dropping the runtime drops every connection task and its sockets.
        drop(runtime);
    })?;
    Ok(ProxyHandle { stop: Some(stop), thread: Some(thread) })
}

/// A token bucket for new connections.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_second: u32) -> Bucket {
        let rate = f64::from(per_second.max(1));
        Bucket { tokens: rate * 2.0, rate, burst: rate * 2.0, last: Instant::now() }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How long connections get to write their reports after the proxy stops.
const REPORT_GRACE: Duration = Duration::from_secs(2);

async fn accept(listener: TcpListener, config: Arc<ProxyConfig>, log: Arc<dyn EgressLog>, mut stopped: oneshot::Receiver<()>) {
    let (ending, end_signal) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let open = Arc::new(Semaphore::new(config.max_connections));
    let mut bucket = Bucket::new(config.connections_per_second);
    let mut throttled = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, most likely; wait instead of spinning.
                tracing::warn!(error = %error, "the egress proxy failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match (bucket.take(), Arc::clone(&open).try_acquire_owned()) {
            (true, Ok(permit)) => permit,
            (rate_ok, _) => {
                throttled += 1;
                let (status, message) = if rate_ok {
                    (503, "too many connections are open; close some and try again")
                } else {
                    (429, "too many new connections; slow down")
                };
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), respond(&mut stream, status, message)).await;
                });
                continue;
            }
        };
        let (config, log, end_signal) = (Arc::clone(&config), Arc::clone(&log), end_signal.clone());
        tasks.spawn(async move {
            handle(stream, &config, log.as_ref(), end_signal).await;
            drop(permit);
        });
        // Forget the tasks that have finished, so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    // Every open connection ends now and reports what it carried.
    drop(listener);
    let _ = ending.send(true);
    let _ = tokio::time::timeout(REPORT_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    if throttled > 0 {
        log.throttled(throttled).await;
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

async fn respond(stream: &mut TcpStream, status: u16, message: &str) -> std::io::Result<()> {
    let body = format!("mayfly egress: {message}\n");
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads the request head and whatever followed it in the same reads.
async fn read_head(stream: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), Rejected> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(length) = request::head_length(&buffer) {
            let rest = buffer.split_off(length);
            return Ok((buffer, rest));
        }
        if buffer.len() >= request::MAX_HEAD {
            return Err(Rejected { status: 431, message: format!("the request head is longer than {} bytes", request::MAX_HEAD) });
        }
        let read = stream.read(&mut chunk).await.map_err(|e| Rejected { status: 400, message: format!("reading the request failed: {e}") })?;
        if read == 0 {
            return Err(Rejected { status: 400, message: "the client closed the connection before its request was complete".into() });
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Serves one client connection from request to close, or until the proxy
/// stops.
async fn handle(mut client: TcpStream, config: &ProxyConfig, log: &dyn EgressLog, mut end_signal: watch::Receiver<bool>) {
    let started = Instant::now();
    let (head, early) = match tokio::time::timeout(config.request_timeout, read_head(&mut client)).await {
        Ok(Ok(read)) => read,
        Ok(Err(rejected)) => {
            let _ = respond(&mut client, rejected.status, &rejected.message).await;
            return;
        }
        Err(_) => {
            let _ = respond(&mut client, 408, "the request head did not arrive in time").await;
            return;
        }
    };
    let (host, port, upstream_head) = match request::parse(&head) {
        Ok(Target::Connect { host, port }) => (host, port, None),
        Ok(Target::Http { host, port, head }) => (host, port, Some(head)),
        Err(rejected) => {
            let _ = respond(&mut client, rejected.status, &rejected.message).await;
            return;
        }
    };
    let mut report = ConnectionReport {
        host: host.to_string(),
        port,
        address: None,
        allowed: false,
        decision: String::new(),
        bytes_out: 0,
        bytes_in: 0,
        duration: Duration::ZERO,
    };
    let finish = |mut report: ConnectionReport| {
        report.duration = started.elapsed();
        log.connection(report)
    };

    let connected = tokio::select! {
        connected = connect(&host, port, config, &mut report) => Some(connected),
        _ = end_signal.changed() => None,
    };
    let Some((upstream, status, message)) = connected else {
        report.decision.push_str("; the session ended before the connection was made");
        let _ = respond(&mut client, 503, "the session is ending").await;
        finish(report).await;
        return;
    };
    let Some(mut upstream) = upstream else {
        let _ = respond(&mut client, status, &message).await;
        finish(report).await;
        return;
    };
    let greeting = match &upstream_head {
        None => client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await,
        Some(head) => upstream.write_all(head).await,
    };
    let forwarded = match greeting {
        Ok(()) => upstream.write_all(&early).await,
        Err(error) => Err(error),
    };
    if let Err(error) = forwarded {
        report.decision.push_str(&format!("; the connection failed: {error}"));
        finish(report).await;
        return;
    }
    report.bytes_out = (upstream_head.as_ref().map_or(0, Vec::len) + early.len()) as u64;
    let (out, back, ended) = relay(&mut client, &mut upstream, &mut end_signal).await;
    report.bytes_out += out;
    report.bytes_in = back;
    if let Some(ended) = ended {
        report.decision.push_str("; ");
        report.decision.push_str(&ended);
    }
    finish(report).await;
}

/// Copies bytes both ways until both sides have finished, an error occurs
/// or the proxy stops. Returns the bytes sent to the target, the bytes sent
/// back, and why the relay ended early, if it did.
async fn relay(client: &mut TcpStream, upstream: &mut TcpStream, end_signal: &mut watch::Receiver<bool>) -> (u64, u64, Option<String>) {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let (mut out, mut back) = (0u64, 0u64);
    let mut outgoing = vec![0u8; 16 * 1024];
    let mut incoming = vec![0u8; 16 * 1024];
    let (mut client_open, mut upstream_open) = (true, true);
    while client_open || upstream_open {
        tokio::select! {
            read = client_read.read(&mut outgoing), if client_open => match read {
                Ok(0) => {
                    client_open = false;
                    let _ = upstream_write.shutdown().await;
                }
                Ok(n) => {
                    if let Err(error) = upstream_write.write_all(&outgoing[..n]).await {
                        return (out, back, Some(format!("writing to the target failed: {error}")));
                    }
                    out += n as u64;
                }
                Err(error) => return (out, back, Some(format!("reading from the session failed: {error}"))),
            },
            read = upstream_read.read(&mut incoming), if upstream_open => match read {
                Ok(0) => {
                    upstream_open = false;
                    let _ = client_write.shutdown().await;
                }
                Ok(n) => {
                    if let Err(error) = client_write.write_all(&incoming[..n]).await {
                        return (out, back, Some(format!("writing to the session failed: {error}")));
                    }
                    back += n as u64;
                }
                Err(error) => return (out, back, Some(format!("reading from the target failed: {error}"))),
            },
            _ = end_signal.changed() => return (out, back, Some("cut off when the session ended".into())),
        }
    }
    (out, back, None)
}

/// Resolves the host, decides every address and connects to the first
/// allowed one. Without a connection it returns the status and message for
/// the client. The report contains the decision either way.
async fn connect(host: &Host, port: u16, config: &ProxyConfig, report: &mut ConnectionReport) -> (Option<TcpStream>, u16, String) {
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let (name, addresses) = match host {
        Host::Address(address) => (None, vec![*address]),
        Host::Name(name) => match tokio::time::timeout_at(deadline, tokio::net::lookup_host((name.as_str(), port))).await {
            Ok(Ok(found)) => (Some(name.as_str()), found.map(|a: SocketAddr| a.ip()).collect::<Vec<IpAddr>>()),
            Ok(Err(error)) => {
                report.decision = format!("the name did not resolve: {error}");
                return (None, 502, format!("{host}: the name did not resolve"));
            }
            Err(_) => {
                report.decision = "resolving the name timed out".into();
                return (None, 504, format!("{host}: resolving the name timed out"));
            }
        },
    };
    let mut allowed = Vec::new();
    let mut refused = None;
    for address in addresses {
        let verdict = config.policy.decide(name, address, port);
        if verdict.is_allowed() {
            allowed.push((address, verdict));
        } else if refused.is_none() {
            refused = Some((address, verdict));
        }
    }
    if allowed.is_empty() {
        let Some((address, verdict)) = refused else {
            report.decision = "the name resolved to no address".into();
            return (None, 502, format!("{host}: the name resolved to no address"));
        };
        report.address = Some(address);
        report.decision = verdict.to_string();
        return (None, 403, format!("{host}:{port} {verdict}"));
    }
    let mut last_error = String::new();
    for (address, verdict) in allowed {
        report.address = Some(address);
        report.allowed = true;
        report.decision = verdict.to_string();
        match tokio::time::timeout_at(deadline, TcpStream::connect((address, port))).await {
            Ok(Ok(stream)) => return (Some(stream), 200, String::new()),
            Ok(Err(error)) => last_error = error.to_string(),
            Err(_) => {
                report.decision.push_str("; connecting timed out");
                return (None, 504, format!("{host}:{port}: connecting timed out"));
            }
        }
    }
    report.decision.push_str(&format!("; connecting failed: {last_error}"));
    (None, 502, format!("{host}:{port}: connecting failed: {last_error}"))
}
