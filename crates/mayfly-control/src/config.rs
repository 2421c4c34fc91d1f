//! The server's configuration: built-in defaults, then a TOML file, then
//! `MAYFLY_*` environment variables and command-line flags. Unknown keys in
//! the file and unknown `MAYFLY_*` variables are errors that name them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use mayfly_core::ByteSize;
use serde::Deserialize;

use crate::ratelimit::Rate;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mayfly";

/// Every environment variable Mayfly reads. Others starting with `MAYFLY_`
/// are refused, so that a misspelt setting is noticed.
pub const KNOWN_ENV: &[&str] = &[
    "MAYFLY_CONFIG",
    "MAYFLY_LISTEN",
    "MAYFLY_STATE_DIR",
    "MAYFLY_PROFILES_DIR",
    "MAYFLY_POLICY",
    "MAYFLY_DATABASE_URL",
    "MAYFLY_BOOTSTRAP_TOKEN",
    "MAYFLY_BOOTSTRAP_TOKEN_FILE",
    "MAYFLY_URL",
    "MAYFLY_TOKEN",
    "MAYFLY_CA_CERT",
    "MAYFLY_LOG",
    "MAYFLY_TEST_POSTGRES_URL",
];

/// Returns the variables a person sets, for messages: every known one but
/// the test suite's own.
pub fn documented_env() -> Vec<&'static str> {
    KNOWN_ENV.iter().copied().filter(|name| *name != "MAYFLY_TEST_POSTGRES_URL").collect()
}

/// Returns the first `MAYFLY_*` variable in `vars` that Mayfly does not know.
pub fn unknown_env(vars: impl IntoIterator<Item = String>) -> Option<String> {
    vars.into_iter().find(|name| name.starts_with("MAYFLY_") && !KNOWN_ENV.contains(&name.as_str()))
}

/// The fate of running sessions when the server stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnShutdown {
    /// Destroy them and record why (the default).
    Destroy,
    /// Leave them to their deadlines, which their init enforces; the next
    /// start destroys what is left.
    Leave,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    state_dir: Option<PathBuf>,
    profiles_dir: Option<PathBuf>,
    policy: Option<PathBuf>,
    database_url: Option<String>,
    on_shutdown: Option<OnShutdown>,
    trusted_proxies: Option<Vec<String>>,
    bootstrap_token_file: Option<PathBuf>,
    session_retention: Option<mayfly_core::Ttl>,
    tls: Option<FileTls>,
    limits: Option<FileLimits>,
    capacity: Option<FileCapacity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    /// Serve TLS with the generated self-signed certificate even on loopback.
    #[serde(default)]
    self_signed: bool,
}

/// The listener's use of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP: allowed on loopback only.
    Off,
    /// A certificate generated at first start and kept in the state directory.
    SelfSigned,
    /// A configured certificate chain and key.
    Files { cert: PathBuf, key: PathBuf },
}

/// Decides what a listener on `ip` serves: TLS unless it is loopback, with
/// the configured certificate when there is one.
pub fn tls_mode(ip: IpAddr, configured: Option<(PathBuf, PathBuf)>, self_signed: bool) -> TlsMode {
    match configured {
        Some((cert, key)) => TlsMode::Files { cert, key },
        None if self_signed || !ip.is_loopback() => TlsMode::SelfSigned,
        None => TlsMode::Off,
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    requests_per_minute_per_source: Option<u32>,
    burst_per_source: Option<u32>,
    requests_per_minute_per_principal: Option<u32>,
    burst_per_principal: Option<u32>,
    sessions_per_principal: Option<u32>,
    creations_per_minute_per_principal: Option<u32>,
    max_body: Option<ByteSize>,
    max_headers: Option<ByteSize>,
    max_websocket_message: Option<ByteSize>,
    limiter_keys: Option<u32>,
    output_buffer: Option<ByteSize>,
    max_connections: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileCapacity {
    memory: Option<ByteSize>,
    cpus: Option<f64>,
    sessions: Option<u32>,
    pool_preparations: Option<u32>,
}

/// Settings given on the command line or through `MAYFLY_*` variables; they
/// win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub profiles_dir: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub database_url: Option<String>,
}

/// Request and session limits of the API.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    pub per_source: Rate,
    pub per_principal: Rate,
    pub sessions_per_principal: u32,
    pub creations_per_minute_per_principal: u32,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_websocket_message_bytes: usize,
    pub limiter_keys: usize,
    pub output_buffer_bytes: usize,
    pub max_connections: usize,
}

/// How much the host may hold at once; sessions reserve their limits.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub memory_bytes: u64,
    pub cpu_millis: u64,
    pub sessions: u32,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub profiles_dir: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    /// `None` means SQLite under the state directory.
    pub database_url: Option<String>,
    pub on_shutdown: OnShutdown,
    pub trusted_proxies: Vec<IpAddr>,
    pub bootstrap_token_file: Option<PathBuf>,
    /// How long ended sessions and their events stay in the store.
    pub session_retention: mayfly_core::Ttl,
    pub tls: TlsMode,
    pub limits: ApiLimits,
    pub capacity: Capacity,
    /// Warm pool members prepared at once, over every profile.
    pub pool_preparations: u32,
}

fn host_memory_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = text
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    kib * 1024
}

fn host_cpus() -> u64 {
    std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1)
}

/// Returns the default capacity: memory less 512 MiB kept for the host, and four
/// times the cores, since CPU limits are ceilings rather than reservations.
fn default_capacity() -> Capacity {
    Capacity {
        memory_bytes: host_memory_bytes().saturating_sub(512 << 20).max(256 << 20),
        cpu_millis: host_cpus() * 4000,
        sessions: 256,
    }
}

fn check_range(key: &str, value: u32, low: u32, high: u32) -> Result<u32, String> {
    if (low..=high).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{key} = {value} is out of range: allowed is {low} to {high}"))
    }
}

fn check_size(key: &str, value: ByteSize, low: ByteSize, high: ByteSize) -> Result<usize, String> {
    if value >= low && value <= high {
        Ok(value.as_bytes() as usize)
    } else {
        Err(format!("{key} = {value} is out of range: allowed is {low} to {high}"))
    }
}

impl ServerConfig {
    /// Builds the configuration from the defaults, the file named by
    /// `overrides.config` (if any) and the overrides.
    pub fn load(overrides: &Overrides) -> Result<ServerConfig, String> {
        let file = match &overrides.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the configuration file {}: {e}", path.display()))?;
                toml::from_str::<FileConfig>(&text).map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))?
            }
        };
        let where_ = |key: &str| match &overrides.config {
            Some(path) => format!("{}: {key}", path.display()),
            None => key.to_string(),
        };

        let listen_text = overrides.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            format!("listen address {listen_text:?} is not ADDRESS:PORT, for example 127.0.0.1:8470 or [::1]:8470")
        })?;
        let trusted_proxies = file
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .map(|text| text.parse::<IpAddr>().map_err(|_| format!("{}: {text:?} is not an IP address", where_("trusted_proxies"))))
            .collect::<Result<Vec<_>, _>>()?;

        let l = file.limits.unwrap_or_default();
        let rate = |per_minute: Option<u32>, burst: Option<u32>, key: &str, default: (u32, u32)| -> Result<Rate, String> {
            Ok(Rate {
                per_minute: check_range(&where_(&format!("limits.requests_per_minute_per_{key}")), per_minute.unwrap_or(default.0), 1, 1_000_000)?,
                burst: check_range(&where_(&format!("limits.burst_per_{key}")), burst.unwrap_or(default.1), 1, 100_000)?,
            })
        };
        let limits = ApiLimits {
            per_source: rate(l.requests_per_minute_per_source, l.burst_per_source, "source", (1200, 200))?,
            per_principal: rate(l.requests_per_minute_per_principal, l.burst_per_principal, "principal", (1200, 200))?,
            sessions_per_principal: check_range(&where_("limits.sessions_per_principal"), l.sessions_per_principal.unwrap_or(16), 1, 100_000)?,
            creations_per_minute_per_principal: check_range(
                &where_("limits.creations_per_minute_per_principal"),
                l.creations_per_minute_per_principal.unwrap_or(120),
                1,
                1_000_000,
            )?,
            max_body_bytes: check_size(&where_("limits.max_body"), l.max_body.unwrap_or(ByteSize::kib(64)), ByteSize::kib(1), ByteSize::mib(64))?,
            max_header_bytes: check_size(&where_("limits.max_headers"), l.max_headers.unwrap_or(ByteSize::kib(16)), ByteSize::kib(8), ByteSize::mib(1))?,
            max_websocket_message_bytes: check_size(
                &where_("limits.max_websocket_message"),
                l.max_websocket_message.unwrap_or(ByteSize::kib(64)),
                ByteSize::kib(1),
                ByteSize::mib(16),
            )?,
            limiter_keys: check_range(&where_("limits.limiter_keys"), l.limiter_keys.unwrap_or(10_000), 10, 10_000_000)? as usize,
            output_buffer_bytes: check_size(&where_("limits.output_buffer"), l.output_buffer.unwrap_or(ByteSize::mib(1)), ByteSize::kib(4), ByteSize::mib(256))?,
            max_connections: check_range(&where_("limits.max_connections"), l.max_connections.unwrap_or(1024), 16, 1_000_000)? as usize,
        };
        let session_retention = file.session_retention.unwrap_or(mayfly_core::Ttl::from_secs(30 * 86_400));
        if session_retention < mayfly_core::Ttl::from_secs(3600) || session_retention > mayfly_core::Ttl::from_secs(3650 * 86_400) {
            return Err(format!("{} = {session_retention} is out of range: allowed is 1h to 3650d", where_("session_retention")));
        }

        let c = file.capacity.unwrap_or_default();
        let defaults = default_capacity();
        let cpus = c.cpus.unwrap_or(defaults.cpu_millis as f64 / 1000.0);
        if !(cpus.is_finite() && (0.01..=100_000.0).contains(&cpus)) {
            return Err(format!("{} = {cpus} is out of range: allowed is 0.01 to 100000 cores", where_("capacity.cpus")));
        }
        let capacity = Capacity {
            memory_bytes: c.memory.map_or(defaults.memory_bytes, ByteSize::as_bytes),
            cpu_millis: (cpus * 1000.0).round() as u64,
            sessions: check_range(&where_("capacity.sessions"), c.sessions.unwrap_or(defaults.sessions), 1, 1_000_000)?,
        };
        let pool_preparations = check_range(&where_("capacity.pool_preparations"), c.pool_preparations.unwrap_or(2), 1, 64)?;
        if capacity.memory_bytes < 16 << 20 {
            return Err(format!("{} = {} is too small: allow at least 16MiB", where_("capacity.memory"), ByteSize::bytes(capacity.memory_bytes)));
        }

        let (files, self_signed) = match file.tls {
            None => (None, false),
            Some(FileTls { cert: Some(cert), key: Some(key), self_signed: false }) => (Some((cert, key)), false),
            Some(FileTls { cert: None, key: None, self_signed }) => (None, self_signed),
            Some(FileTls { self_signed: true, .. }) => {
                return Err(format!("{}: set either cert and key, or self_signed = true, not both", where_("tls")));
            }
            Some(_) => return Err(format!("{}: cert and key must be set together", where_("tls"))),
        };
        Ok(ServerConfig {
            tls: tls_mode(listen.ip(), files, self_signed),
            listen,
            state_dir: overrides.state_dir.clone().or(file.state_dir).unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            profiles_dir: overrides.profiles_dir.clone().or(file.profiles_dir),
            policy: overrides.policy.clone().or(file.policy),
            database_url: overrides.database_url.clone().or(file.database_url),
            on_shutdown: file.on_shutdown.unwrap_or(OnShutdown::Destroy),
            trusted_proxies,
            bootstrap_token_file: file.bootstrap_token_file,
            session_retention,
            limits,
            capacity,
            pool_preparations,
        })
    }

    /// Returns the SQLite database's path, used when no database URL is set.
    pub fn sqlite_path(&self) -> PathBuf {
        self.state_dir.join("mayfly.db")
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.state_dir.join("tls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::temp_dir;

    fn with_file(text: &str) -> Result<ServerConfig, String> {
        let dir = temp_dir("config");
        let path = dir.join("mayfly.toml");
        std::fs::write(&path, text).unwrap();
        let result = ServerConfig::load(&Overrides { config: Some(path), ..Default::default() });
        std::fs::remove_dir_all(dir).unwrap();
        result
    }

    #[test]
    fn defaults_listen_on_loopback_with_sqlite() {
        let config = ServerConfig::load(&Overrides::default()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.tls, TlsMode::Off);
        assert!(config.database_url.is_none());
        assert_eq!(config.on_shutdown, OnShutdown::Destroy);
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = with_file("listen = \"127.0.0.1:1\"\nlisten_port = 9\n").unwrap_err();
        assert!(error.contains("listen_port"), "{error}");
        let error = with_file("[limits]\nmax_bdy = \"1MiB\"\n").unwrap_err();
        assert!(error.contains("max_bdy"), "{error}");
    }

    #[test]
    fn out_of_range_values_name_key_and_range() {
        let error = with_file("[limits]\nsessions_per_principal = 0\n").unwrap_err();
        assert!(error.contains("limits.sessions_per_principal = 0") && error.contains("1 to 100000"), "{error}");
        let error = with_file("[limits]\nmax_body = \"1GiB\"\n").unwrap_err();
        assert!(error.contains("limits.max_body") && error.contains("64MiB"), "{error}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = temp_dir("config-flags");
        let path = dir.join("mayfly.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1111\"\nstate_dir = \"/tmp/from-file\"\n").unwrap();
        let config = ServerConfig::load(&Overrides { config: Some(path), listen: Some("127.0.0.1:2222".into()), ..Default::default() }).unwrap();
        assert_eq!(config.listen.port(), 2222);
        assert_eq!(config.state_dir, PathBuf::from("/tmp/from-file"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_listen_address_says_what_is_expected() {
        let error = ServerConfig::load(&Overrides { listen: Some("localhost".into()), ..Default::default() }).unwrap_err();
        assert!(error.contains("\"localhost\"") && error.contains("ADDRESS:PORT"), "{error}");
    }

    #[test]
    fn only_loopback_may_serve_plain_http() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(tls_mode(ip("127.0.0.1"), None, false), TlsMode::Off);
        assert_eq!(tls_mode(ip("::1"), None, false), TlsMode::Off);
        for address in ["0.0.0.0", "192.0.2.7", "::", "2001:db8::1"] {
            assert_eq!(tls_mode(ip(address), None, false), TlsMode::SelfSigned, "{address}");
        }
        assert_eq!(tls_mode(ip("127.0.0.1"), None, true), TlsMode::SelfSigned);
        let files = Some((PathBuf::from("c.pem"), PathBuf::from("k.pem")));
        assert!(matches!(tls_mode(ip("0.0.0.0"), files, false), TlsMode::Files { .. }));
        let error = with_file("[tls]\ncert = \"c.pem\"\n").unwrap_err();
        assert!(error.contains("cert and key must be set together"), "{error}");
    }

    #[test]
    fn unknown_environment_variables_are_found() {
        assert_eq!(unknown_env(["PATH".to_string(), "MAYFLY_LISTEN".to_string()]), None);
        assert_eq!(unknown_env(["MAYFLY_LISTN".to_string()]), Some("MAYFLY_LISTN".to_string()));
    }
}
