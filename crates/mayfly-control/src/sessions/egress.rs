//! Egress for one session: the proxy started on the session's loopback
//! before its command runs, and the audit records of its connections.

use std::sync::Arc;

use mayfly_audit::{AuditLog, Entry};
use mayfly_core::egress::{EgressMode, NetworkSettings, PROXY_PORT};
use mayfly_egress::{ConnectionReport, EgressLog, ProxyConfig, Writing};
use mayfly_sandbox::session::{BeforeStart, StartGuard};

use crate::audit::Auditor;

/// Returns the hook that starts the session's proxy, or `None` when the
/// profile allows no egress.
pub fn before_start(network: &NetworkSettings, log: Arc<dyn EgressLog>) -> Option<BeforeStart> {
    if network.egress != EgressMode::Proxy {
        return None;
    }
    let config = ProxyConfig::new(network.policy.clone());
    Some(BeforeStart(Box::new(move |start| {
        let listener = mayfly_sandbox::netns::listen_on_session_loopback(start.init_pid, PROXY_PORT)
            .map_err(|e| format!("cannot open the egress proxy's listener on the session's loopback: {e}"))?;
        let handle = mayfly_egress::start(listener, config, log).map_err(|e| format!("cannot start the egress proxy: {e}"))?;
        Ok(Box::new(handle) as StartGuard)
    })))
}

/// Builds the audit record of one connection.
pub fn connection_entry(actor: &str, session_id: &str, report: &ConnectionReport) -> Entry {
    Entry::new("egress.connection", actor)
        .session(session_id)
        .field("host", report.host.clone())
        .field("port", report.port)
        .field("address", report.address.map(|a| a.to_string()))
        .field("allowed", report.allowed)
        .field("decision", report.decision.clone())
        .field("bytes_out", report.bytes_out)
        .field("bytes_in", report.bytes_in)
        .field("duration_ms", report.duration.as_millis() as u64)
}

/// Builds the record of the connections refused by the proxy's limits.
pub fn throttled_entry(actor: &str, session_id: &str, count: u64) -> Entry {
    Entry::new("egress.throttled", actor).session(session_id).field("refused_connections", count)
}

/// Writes a session's egress records through the server's audit writer.
pub struct ServerEgressLog {
    pub audit: Auditor,
    pub actor: String,
    pub session_id: String,
}

impl ServerEgressLog {
    fn write(&self, entry: Entry) -> Writing {
        let audit = self.audit.clone();
        let session_id = self.session_id.clone();
        Box::pin(async move {
            if let Err(error) = audit.one(entry).await {
                tracing::error!(session_id = %session_id, error = %error, "failed to record an egress connection");
            }
        })
    }
}

impl EgressLog for ServerEgressLog {
    fn connection(&self, report: ConnectionReport) -> Writing {
        self.write(connection_entry(&self.actor, &self.session_id, &report))
    }

    fn throttled(&self, count: u64) -> Writing {
        self.write(throttled_entry(&self.actor, &self.session_id, count))
    }
}

/// Writes a session's egress records straight to a local audit log, for
/// `mayfly run` without a server.
pub struct LocalEgressLog {
    pub log: Arc<AuditLog>,
    pub actor: String,
    pub session_id: String,
}

impl LocalEgressLog {
    fn write(&self, entry: Entry) -> Writing {
        let log = Arc::clone(&self.log);
        let session_id = self.session_id.clone();
        Box::pin(async move {
            let appended = tokio::task::spawn_blocking(move || log.append(vec![entry], false)).await;
            match appended {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::error!(session_id = %session_id, error = %error, "failed to record an egress connection"),
                Err(error) => tracing::error!(session_id = %session_id, error = %error, "the egress audit writer failed"),
            }
        })
    }
}

impl EgressLog for LocalEgressLog {
    fn connection(&self, report: ConnectionReport) -> Writing {
        self.write(connection_entry(&self.actor, &self.session_id, &report))
    }

    fn throttled(&self, count: u64) -> Writing {
        self.write(throttled_entry(&self.actor, &self.session_id, count))
    }
}
