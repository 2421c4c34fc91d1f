//! Everything a request handler reaches: configuration, store, policies,
//! audit, limits, metrics and the live sessions.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use mayfly_sandbox::cgroup::Layout;
use mayfly_sandbox::host;
use tokio::sync::broadcast;

use crate::audit::Auditor;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::policy::Policies;
use crate::ratelimit::Limiter;
use crate::sessions::admission::Admission;
use crate::sessions::Live;
use crate::store::{EventRecord, Store};

/// What this host can run, found once at start.
#[derive(Debug, Clone)]
pub struct HostSupport {
    pub layout: Option<Layout>,
    /// Protections a job with Landlock required would miss, as
    /// "protection: detail".
    pub missing_required: Vec<String>,
    /// Protections missing even when Landlock is optional.
    pub missing_optional: Vec<String>,
}

impl HostSupport {
    pub fn inspect() -> HostSupport {
        let report = host::inspect_for_jobs();
        let list = |mode| {
            host::missing_for_job(&report, mode).iter().map(|m| format!("{}: {}", m.protection, m.detail)).collect::<Vec<_>>()
        };
        HostSupport {
            layout: report.cgroup_layout.clone(),
            missing_required: list(mayfly_sandbox::spec::LandlockMode::Required),
            missing_optional: list(mayfly_sandbox::spec::LandlockMode::IfAvailable),
        }
    }
}

pub struct App {
    pub config: ServerConfig,
    pub store: Store,
    pub policies: Policies,
    pub audit: Auditor,
    pub metrics: Metrics,
    pub host: HostSupport,
    pub live: Mutex<HashMap<String, Live>>,
    /// Output of ended sessions, kept for a while so that a client that
    /// attaches after the end still reads it and the end.
    pub finished: Mutex<crate::sessions::Finished>,
    pub admission: Mutex<Admission>,
    /// The warm pools of profiles that have a `[pool]` section.
    pub pools: crate::sessions::pool::Pools,
    /// Held while a creation checks its owner's quota and records the
    /// session, so that concurrent creations cannot both pass.
    pub quota: tokio::sync::Mutex<()>,
    pub events: broadcast::Sender<EventRecord>,
    /// Striped locks that keep one session's state change and its event in
    /// the same order, so that no event lands after a session's end.
    transition_locks: Vec<tokio::sync::Mutex<()>>,
    pub source_limiter: Limiter<IpAddr>,
    pub principal_limiter: Limiter<String>,
    recovered: AtomicBool,
    draining: AtomicBool,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl App {
    pub fn new(config: ServerConfig, store: Store, policies: Policies, audit: Auditor, host: HostSupport) -> Arc<App> {
        let limits = config.limits.clone();
        Arc::new(App {
            admission: Mutex::new(Admission::new(config.capacity)),
            pools: crate::sessions::pool::Pools::default(),
            source_limiter: Limiter::new(limits.per_source, limits.limiter_keys),
            principal_limiter: Limiter::new(limits.per_principal, limits.limiter_keys),
            config,
            store,
            policies,
            audit,
            metrics: Metrics::default(),
            host,
            live: Mutex::new(HashMap::new()),
            finished: Mutex::new(crate::sessions::Finished::default()),
            quota: tokio::sync::Mutex::new(()),
            events: broadcast::channel(1024).0,
            transition_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            recovered: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    /// Whether crash recovery has finished.
    pub fn recovered(&self) -> bool {
        self.recovered.load(Ordering::SeqCst)
    }

    pub fn set_recovered(&self) {
        self.recovered.store(true, Ordering::SeqCst);
    }

    /// Whether the server is shutting down and refuses new sessions.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The lock that orders the transitions of session `id`.
    pub fn transition_lock(&self, id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        &self.transition_locks[hasher.finish() as usize % self.transition_locks.len()]
    }

    pub fn live_count(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
