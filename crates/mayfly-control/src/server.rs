//! `mayfly serve`: start-up, the first admin token, the listener with or
//! without TLS, background duties and graceful shutdown.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use mayfly_audit::Entry;
use tokio::net::TcpListener;

use crate::api::{self, caller::Peer};
use crate::app::{now_ms, App, HostSupport};
use crate::audit::Auditor;
use crate::config::{OnShutdown, ServerConfig, TlsMode};
use crate::policy::Policies;
use crate::sessions::SYSTEM;
use crate::store::Store;
use crate::tls;
use crate::tokens;

/// The principal and group of the first admin token.
pub const ADMIN: &str = "admin";
pub const ADMINS: &str = "admins";
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// The source of the first admin token when an operator supplies it.
pub enum Bootstrap {
    None,
    Token(String),
}

/// Why the server did not start: a setting to fix, or a failure.
#[derive(Debug)]
pub enum StartError {
    Config(String),
    Failed(String),
}

impl StartError {
    pub fn message(&self) -> &str {
        match self {
            StartError::Config(message) | StartError::Failed(message) => message,
        }
    }
}

impl From<String> for StartError {
    fn from(message: String) -> StartError {
        StartError::Failed(message)
    }
}

/// How long a start waits for a stopping server to release the state directory.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Takes the state directory for this server alone. A second server on the
/// same directory would destroy the first one's sessions in its recovery.
fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("serve.lock");
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => std::thread::sleep(Duration::from_millis(100)),
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(StartError::Config(format!(
                    "another mayfly serve (process {}) uses the state directory {}; stop it first, or choose another --state-dir",
                    holder.trim(),
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(StartError::Failed(format!("cannot lock {}: {error}", path.display()))),
        }
    }
    let _ = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(file)
}

/// The facts the server prints for the operator at start.
pub struct Started {
    pub address: SocketAddr,
    pub tls_fingerprint: Option<String>,
    pub tls_certificate: Option<std::path::PathBuf>,
    pub admin_token: Option<String>,
}

fn check_database_url(config: &ServerConfig) -> Result<(), String> {
    match &config.database_url {
        None => Ok(()),
        Some(url) if ["postgres://", "postgresql://", "sqlite:"].iter().any(|p| url.starts_with(p)) => Ok(()),
        Some(url) => Err(format!(
            "database_url {:?} is not supported: use postgres://USER@HOST/DB or sqlite:PATH",
            url.split('@').next_back().unwrap_or_default()
        )),
    }
}

/// Sets a path's permission bits.
fn restrict(path: &std::path::Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("cannot restrict {}: {e}", path.display()))
}

/// Creates the SQLite database file with mode 0600 when it is missing.
/// SQLite gives the `-wal` and `-shm` files it creates the database's mode,
/// so they are private from the start too.
fn create_private(path: &std::path::Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| format!("failed to create the database {}: {e}; check that the state directory is writable by root", path.display()))
}

/// Narrows the database and its `-wal` and `-shm` files to mode 0600. The
/// write-ahead log contains the same rows as the database, and older builds
/// left both side files readable by everyone.
fn restrict_sqlite_files(path: &std::path::Path) -> Result<(), String> {
    restrict(path, 0o600)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = std::path::PathBuf::from(side);
        if side.exists() {
            restrict(&side, 0o600)?;
        }
    }
    Ok(())
}

/// Creates the state directory, or narrows an existing one, to root only,
/// because it contains the database, the audit signing key and the TLS key.
fn prepare_state_dir(dir: &std::path::Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the state directory {}: {e}; choose another with --state-dir", dir.display()))?;
    restrict(dir, 0o700)
}

async fn open_store(config: &ServerConfig) -> Result<Store, String> {
    match &config.database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Store::open_postgres(url).await.map_err(|e| format!("cannot connect to PostgreSQL: {e}"))
        }
        Some(url) if url.starts_with("sqlite:") => {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            Store::open_sqlite(std::path::Path::new(path)).await.map_err(|e| format!("cannot open the SQLite database {path}: {e}"))
        }
        Some(url) => Err(format!(
            "database_url {:?} is not supported: use postgres://USER@HOST/DB or sqlite:PATH",
            url.split('@').next_back().unwrap_or_default()
        )),
        None => {
            let path = config.sqlite_path();
            Store::open_sqlite(&path).await.map_err(|e| format!("cannot open the SQLite database {}: {e}", path.display()))
        }
    }
}

/// Creates the admin principal and its first token when the store has no
/// token at all, or stores a supplied one. Returns the token to print once.
async fn bootstrap_admin(app: &App, bootstrap: Bootstrap) -> Result<Option<String>, String> {
    let store = &app.store;
    let now = now_ms();
    let (record, secret) = match bootstrap {
        Bootstrap::Token(secret) => {
            let record = tokens::supplied_api_token(secret.trim(), ADMIN, "bootstrap", now)?;
            if store.token_by_prefix(&record.prefix).await.map_err(|e| e.to_string())?.is_some() {
                return Ok(None);
            }
            (record, None)
        }
        Bootstrap::None => {
            if store.count_tokens().await.map_err(|e| e.to_string())? > 0 {
                return Ok(None);
            }
            let token = tokens::new_api_token(ADMIN, "first admin token", now, None);
            (token.record, Some(token.secret))
        }
    };
    store.ensure_principal(ADMIN, &[ADMINS.to_string()], now).await.map_err(|e| e.to_string())?;
    let entry = Entry::new("token.created", SYSTEM).field("principal", ADMIN).field("token", record.prefix.clone()).field("name", record.name.clone());
    app.audit.one(entry).await.map_err(|e| format!("the audit log cannot be written: {e}"))?;
    store.insert_token(&record).await.map_err(|e| e.to_string())?;
    Ok(secret)
}

/// Prepares everything and binds the listener. The returned future serves
/// until SIGTERM or SIGINT.
pub async fn start(config: ServerConfig, bootstrap: Bootstrap) -> Result<(Started, impl std::future::Future<Output = Result<(), String>>), StartError> {
    // Everything that can be checked without writing comes first, so that a
    // bad setting leaves no state directory behind.
    let policies = Policies::load(config.policy.as_deref()).map_err(|e| StartError::Config(format!("the policy is invalid, so the server does not start: {e}")))?;
    if let Some(dir) = &config.profiles_dir {
        if !dir.is_dir() {
            return Err(StartError::Config(format!(
                "the profiles directory {} does not exist or is not a directory; create it or fix --profiles-dir",
                dir.display()
            )));
        }
    }
    check_database_url(&config).map_err(StartError::Config)?;
    if let Bootstrap::Token(secret) = &bootstrap {
        tokens::supplied_api_token(secret.trim(), ADMIN, "bootstrap", 0).map_err(StartError::Config)?;
    }
    prepare_state_dir(&config.state_dir)?;
    let lock = lock_state_dir(&config.state_dir)?;
    let audit = Auditor::open(&config.state_dir).map_err(|e| format!("the audit log cannot be opened, so the server does not start: {e}"))?;
    if config.database_url.is_none() {
        create_private(&config.sqlite_path())?;
    }
    let store = open_store(&config).await?;
    if config.database_url.is_none() {
        restrict_sqlite_files(&config.sqlite_path())?;
    }
    let host = tokio::task::spawn_blocking(HostSupport::inspect).await.map_err(|e| e.to_string())?;
    let identity = match &config.tls {
        TlsMode::Off => None,
        TlsMode::SelfSigned => Some(tls::identity(None, &config.tls_dir(), config.listen.ip())?),
        TlsMode::Files { cert, key } => Some(tls::identity(Some((cert, key)), &config.tls_dir(), config.listen.ip()).map_err(StartError::Config)?),
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}; choose another address with --listen", config.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let app = App::new(config, store, policies, audit, host);
    let admin_token = bootstrap_admin(&app, bootstrap).await?;
    let start_entry = Entry::new("server.started", SYSTEM)
        .field("listen", address.to_string())
        .field("tls", identity.is_some())
        .field("store", app.store.backend())
        .field("policy", app.policies.source.clone())
        .field("policy_sha256", app.policies.digest.clone())
        .field("version", env!("CARGO_PKG_VERSION"));
    app.audit.record(vec![start_entry], true).await.map_err(|e| format!("the audit log cannot be written, so the server does not start: {e}"))?;

    let started = Started {
        address,
        tls_fingerprint: identity.as_ref().map(|i| i.fingerprint.clone()),
        tls_certificate: identity.as_ref().map(|i| i.cert_path.clone()),
        admin_token,
    };
    let acceptor = identity.map(|i| tokio_rustls::TlsAcceptor::from(i.config));
    Ok((started, serve(app, listener, acceptor, lock)))
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Runs recovery, the pools' refill and the periodic duties in the background.
fn spawn_background(app: &Arc<App>) {
    crate::sessions::pool::spawn_refill(app);
    let recovering = Arc::clone(app);
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        while let Err(error) = recovering.recover().await {
            tracing::error!(error = %error, retry_in_seconds = wait.as_secs(), "recovery failed; the server stays not ready and retries");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(60));
        }
        tracing::info!("recovery finished; ready");
    });
    let periodic = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            ticks += 1;
            let Some(app) = periodic.upgrade() else { return };
            // Every ten minutes, drop sessions past the retention period.
            if ticks % 60 == 1 {
                let before = now_ms() - app.config.session_retention.as_duration().as_millis() as i64;
                match app.store.prune_sessions(before).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "pruned sessions past their retention"),
                    Err(error) => tracing::warn!(error = %error, "failed to prune old sessions"),
                }
            }
            let _ = app.audit.checkpoint_if_needed().await;
            let dir = app.recordings_dir();
            let removed = tokio::task::spawn_blocking(move || crate::sessions::recording::prune(&dir, now_ms())).await.unwrap_or_default();
            if !removed.is_empty() {
                let entries = removed.iter().map(|id| Entry::new("recording.deleted", SYSTEM).session(id).field("reason", "retention passed")).collect();
                if let Err(error) = app.audit.record(entries, false).await {
                    tracing::error!(error = %error, "failed to record deleted recordings");
                }
            }
            let _ = app.store.prune_attach_tokens(now_ms()).await;
            let _ = app.store.delete_web_sessions(None, now_ms()).await;
            app.finished.lock().unwrap_or_else(|e| e.into_inner()).prune();
        }
    });
}

fn serve_connection<S>(app: &Arc<App>, router: axum::Router, stream: S, peer: SocketAddr, permit: tokio::sync::OwnedSemaphorePermit)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router.layer(Extension(Peer(peer))));
    let max_headers = app.config.limits.max_header_bytes.max(8192);
    tokio::spawn(async move {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.max_buf_size(max_headers).max_headers(100).timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
        if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).with_upgrades().await {
            tracing::debug!(peer = %peer, error = %error, "connection ended with an error");
        }
        drop(permit);
    });
}

async fn serve(app: Arc<App>, listener: TcpListener, acceptor: Option<tokio_rustls::TlsAcceptor>, lock: std::fs::File) -> Result<(), String> {
    spawn_background(&app);
    let connections = Arc::new(tokio::sync::Semaphore::new(app.config.limits.max_connections));
    let router = api::router(Arc::clone(&app));
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let why = loop {
        tokio::select! {
            why = &mut signal => break why,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(error = %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // Past the connection limit a new connection is closed at once.
                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                    app.metrics.connections_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(peer = %peer, limit = app.config.limits.max_connections, "connection limit reached; closing a new connection");
                    continue;
                };
                match &acceptor {
                    None => serve_connection(&app, router.clone(), stream, peer, permit),
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        let app = Arc::clone(&app);
                        let router = router.clone();
                        tokio::spawn(async move {
                            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => serve_connection(&app, router, tls, peer, permit),
                                Ok(Err(error)) => tracing::debug!(peer = %peer, error = %error, "TLS handshake failed"),
                                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
        }
    };
    drop(listener);
    tracing::info!(signal = why, "shutting down");
    app.start_draining();
    let live = app.live_count();
    if app.config.on_shutdown == OnShutdown::Destroy {
        app.destroy_all("the server is shutting down", SHUTDOWN_WAIT).await;
    }
    // Pool members belong to no session, so they go whatever on_shutdown sets.
    crate::sessions::pool::destroy_all(&app, SHUTDOWN_WAIT).await;
    let entry = Entry::new("server.stopped", SYSTEM)
        .field("signal", why)
        .field("on_shutdown", format!("{:?}", app.config.on_shutdown).to_lowercase())
        .field("live_sessions", live)
        .field("left_running", app.live_count());
    app.audit.record(vec![entry], true).await.map_err(|e| format!("failed to record the shutdown in the audit log: {e}"))?;
    // The state directory is free for the next server only now.
    drop(lock);
    Ok(())
}
