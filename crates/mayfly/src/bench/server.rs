//! A private `mayfly serve` for the benches that measure the API: it listens
//! on a loopback port chosen by the kernel, keeps its state in a directory of
//! the bench's own, and is stopped when dropped.

use std::ffi::OsStr;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::call;

/// `[limits]` raised so that no rate limit or quota throttles a bench.
pub(super) const RAISED_LIMITS: &str = "[limits]\nrequests_per_minute_per_source = 1000000\nburst_per_source = 100000\nrequests_per_minute_per_principal = 1000000\nburst_per_principal = 100000\nsessions_per_principal = 1000\ncreations_per_minute_per_principal = 1000000\n";

/// Maximum time from the start until `/readyz` returns 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct Server {
    child: Child,
    address: SocketAddr,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill on the PID of the server this bench started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The server address and API token of a client.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) address: SocketAddr,
    pub(super) token: String,
}

impl Server {
    pub(super) fn target(&self) -> Target {
        Target { address: self.address, token: self.token.clone() }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `mayfly serve` with `config` as its configuration file, its state
/// in `dir/server` and `extra_args` after its own, and waits until it is
/// ready. The first API token comes from the server's standard output.
pub(super) fn start_server(executable: &Path, dir: &Path, config: &str, extra_args: &[&OsStr]) -> Result<Server, String> {
    let config_path = dir.join("mayfly.toml");
    std::fs::write(&config_path, config).map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let mut child = Command::new(executable)
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.join("server"))
        .arg("--config")
        .arg(&config_path)
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start mayfly serve: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let (mut address, mut token) = (None, None);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(rest) = line.strip_prefix("mayfly: listening on http://") {
            address = rest.split_whitespace().next().and_then(|a| a.parse::<SocketAddr>().ok());
        } else if line.starts_with("mfy_") {
            token = Some(line.trim().to_string());
        } else if line.starts_with("mayfly: accepting connections") {
            break;
        }
    }
    let (Some(address), Some(token)) = (address, token) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err("mayfly serve did not print its address and first token".into());
    };
    let server = Server { child, address, token };
    let started = Instant::now();
    while call(address, "GET", "/readyz", "", None).map(|(s, _)| s) != Ok(200) {
        if started.elapsed() > READY_TIMEOUT {
            return Err(format!("mayfly serve did not become ready within {} s", READY_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// Returns the path of the running `mayfly` executable, which the benches
/// start as the server.
pub(super) fn mayfly_executable() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the mayfly executable: {e}"))
}

/// A fresh directory for one bench's servers and files, removed with its
/// contents when dropped.
pub(super) struct BenchDir(PathBuf);

impl BenchDir {
    /// Creates `path` empty, removing what a previous run left there.
    pub(super) fn create(path: PathBuf) -> Result<BenchDir, String> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(BenchDir(path))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
