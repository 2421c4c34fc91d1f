//! `mayfly serve`: the control plane.

use std::path::PathBuf;

use clap::Args;
use mayfly_control::config::{unknown_env, Overrides, ServerConfig};
use mayfly_control::server::{self, Bootstrap};
use mayfly_core::ExitCode;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); flags and MAYFLY_* variables win over it.
    #[arg(long, env = "MAYFLY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on; anything but loopback is served over TLS.
    #[arg(long, env = "MAYFLY_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// State directory: database, audit log, ledger, TLS certificate [default: /var/lib/mayfly].
    #[arg(long, env = "MAYFLY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory of profile files (NAME.toml), besides the built-in profiles.
    #[arg(long, env = "MAYFLY_PROFILES_DIR", value_name = "DIR")]
    pub profiles_dir: Option<PathBuf>,
    /// Cedar policy file; the built-in default policy when absent.
    #[arg(long, env = "MAYFLY_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// PostgreSQL URL (postgres://USER@HOST/DB); SQLite under the state directory when absent.
    #[arg(long, env = "MAYFLY_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// File holding the first admin token, instead of generating one (see `mayfly token generate`).
    #[arg(long, env = "MAYFLY_BOOTSTRAP_TOKEN_FILE", value_name = "FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
}

fn bootstrap(args: &ServeArgs, config: &ServerConfig) -> Result<Bootstrap, String> {
    if let Ok(token) = std::env::var("MAYFLY_BOOTSTRAP_TOKEN") {
        return Ok(Bootstrap::Token(token));
    }
    match args.bootstrap_token_file.as_ref().or(config.bootstrap_token_file.as_ref()) {
        Some(path) => std::fs::read_to_string(path)
            .map(|text| Bootstrap::Token(text.trim().to_string()))
            .map_err(|e| format!("cannot read the bootstrap token file {}: {e}", path.display())),
        None => Ok(Bootstrap::None),
    }
}

/// Prints a status line. The server keeps running, and stops cleanly, when
/// nobody reads its standard output any more.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

pub fn main(args: ServeArgs) -> i32 {
    if let Ok(filter) = std::env::var("MAYFLY_LOG") {
        if tracing_subscriber::EnvFilter::try_new(&filter).is_err() {
            eprintln!("mayfly: MAYFLY_LOG {filter:?} is not a log filter; use a level such as info or debug, or a filter such as mayfly_control=debug");
            return ExitCode::USAGE;
        }
    }
    if let Some(name) = unknown_env(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok())) {
        eprintln!("mayfly: unknown environment variable {name}; Mayfly reads only {}", mayfly_control::config::documented_env().join(", "));
        return ExitCode::USAGE;
    }
    let overrides = Overrides {
        config: args.config.clone(),
        listen: args.listen.clone(),
        state_dir: args.state_dir.clone(),
        profiles_dir: args.profiles_dir.clone(),
        policy: args.policy.clone(),
        database_url: args.database_url.clone(),
    };
    let config = match ServerConfig::load(&overrides) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("mayfly: {message}");
            return ExitCode::USAGE;
        }
    };
    let bootstrap = match bootstrap(&args, &config) {
        Ok(bootstrap) => bootstrap,
        Err(message) => {
            eprintln!("mayfly: {message}");
            return ExitCode::USAGE;
        }
    };
    // Sessions then start without waiting for the init program's exec.
    mayfly_sandbox::launch::keep_one_ready();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("mayfly-serve").build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mayfly: cannot start the async runtime: {error}");
            return ExitCode::SETUP_FAILED;
        }
    };
    let state_dir = config.state_dir.clone();
    runtime.block_on(async move {
        let (started, serving) = match server::start(config, bootstrap).await {
            Ok(started) => started,
            Err(error) => {
                eprintln!("mayfly: {}", error.message());
                return match error {
                    server::StartError::Config(_) => ExitCode::USAGE,
                    server::StartError::Failed(_) => ExitCode::SETUP_FAILED,
                };
            }
        };
        let scheme = if started.tls_fingerprint.is_some() { "https" } else { "http" };
        say(&format!("mayfly: listening on {scheme}://{} (state directory {})", started.address, state_dir.display()));
        if let Some(fingerprint) = &started.tls_fingerprint {
            say(&format!("mayfly: TLS certificate SHA-256 fingerprint {fingerprint}"));
        }
        if let Some(path) = &started.tls_certificate {
            say(&format!("mayfly: clients trust it with --ca-cert {}", path.display()));
        }
        if let Some(token) = &started.admin_token {
            say(&format!("mayfly: first admin token, shown only this once; keep it safe:\n{token}"));
        }
        say("mayfly: accepting connections; stop with SIGTERM or Ctrl-C");
        match serving.await {
            Ok(()) => {
                say("mayfly: stopped");
                0
            }
            Err(message) => {
                eprintln!("mayfly: {message}");
                ExitCode::SETUP_FAILED
            }
        }
    })
}
