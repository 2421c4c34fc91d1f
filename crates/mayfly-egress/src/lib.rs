//! The egress proxy. It listens on a session's own loopback (the listener is
//! opened in the session's network namespace by the supervisor) and runs in
//! the host's network. It takes HTTP `CONNECT` requests and plain
//! `http://` requests, resolves names itself, decides each connection by
//! the profile's [`EgressPolicy`] and reports every decision with the bytes
//! it carried.
//!
//! One proxy serves one session, on a thread of its own. Stopping it (or
//! dropping its [`ProxyHandle`]) closes every socket it has in the
//! session's network, so the namespace can go away with the session.

mod request;
mod serve;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::egress::EgressPolicy;

pub use serve::ProxyHandle;

pub use mayfly_core::egress::PROXY_PORT;

/// Settings of one session's proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub policy: EgressPolicy,
    /// How long name resolution and the connection to the target may take.
    pub connect_timeout: Duration,
    /// How long a client may take to send its request head.
    pub request_timeout: Duration,
    /// Connections open at once; more are refused with 503.
    pub max_connections: usize,
    /// New connections per second, with a burst of twice as many; more are
    /// refused with 429 and counted in one report when the proxy stops.
    pub connections_per_second: u32,
}

impl ProxyConfig {
    pub fn new(policy: EgressPolicy) -> ProxyConfig {
        ProxyConfig {
            policy,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_connections: 256,
            connections_per_second: 50,
        }
    }
}

/// One connection the proxy handled or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionReport {
    /// The host as the client requested it: a name or an address.
    pub host: String,
    pub port: u16,
    /// The address the proxy connected to, or the first one it refused.
    pub address: Option<IpAddr>,
    pub allowed: bool,
    /// The decision in words: the rule that allowed or denied it, the range
    /// that was refused, or why the connection failed.
    pub decision: String,
    /// Bytes from the session to the target, and back.
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub duration: Duration,
}

/// A report being written.
pub type Writing = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Receives the proxy's reports and writes them to the audit log. The proxy
/// awaits each write on its own thread before it closes the connection.
pub trait EgressLog: Send + Sync {
    fn connection(&self, report: ConnectionReport) -> Writing;
    /// Records the connections refused by the rate or connection limit, once
    /// when the proxy stops, so a session cannot flood the log.
    fn throttled(&self, count: u64) -> Writing;
}

/// Starts a proxy on `listener`, which must be non-blocking.
pub fn start(listener: std::net::TcpListener, config: ProxyConfig, log: Arc<dyn EgressLog>) -> std::io::Result<ProxyHandle> {
    serve::start(listener, Arc::new(config), log)
}
