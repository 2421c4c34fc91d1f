//! A real `mayfly serve` process on a loopback port, and a minimal HTTP
//! client for talking to it from tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::MAYFLY;

pub struct Server {
    pub child: Child,
    pub address: SocketAddr,
    pub url: String,
    /// The first admin token, when this start printed one.
    pub admin_token: Option<String>,
    pub fingerprint: Option<String>,
    pub state_dir: PathBuf,
    stdout: BufReader<ChildStdout>,
}

/// Starts `mayfly serve` on a free loopback port with `extra` arguments and
/// environment, and waits until it is ready.
pub fn start(state_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    start_binary(Path::new(MAYFLY), state_dir, extra, env)
}

/// Like [`start`], with the `mayfly` binary at `binary`.
pub fn start_binary(binary: &Path, state_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut command = Command::new(binary);
    command.arg("serve").arg("--state-dir").arg(state_dir).args(["--listen", "127.0.0.1:0"]).args(extra);
    // The server rejects MAYFLY_ variables it does not know, such as a
    // test's own MAYFLY_CRASH_SEED, so its settings come from `env` alone.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MAYFLY_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut url = None;
    let mut fingerprint = None;
    let mut admin_token = None;
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            panic!("mayfly serve exited before it listened: {:?}", child.wait());
        }
        let text = line.trim();
        if let Some(rest) = text.strip_prefix("mayfly: listening on ") {
            url = Some(rest.split_whitespace().next().unwrap().to_string());
        } else if let Some(rest) = text.strip_prefix("mayfly: TLS certificate SHA-256 fingerprint ") {
            fingerprint = Some(rest.to_string());
        } else if text.starts_with("mfy_") {
            admin_token = Some(text.to_string());
        } else if text.starts_with("mayfly: accepting connections") {
            break;
        }
    }
    let url = url.unwrap();
    let address: SocketAddr = url.split("://").nth(1).unwrap().parse().unwrap();
    let server = Server { child, address, url, admin_token, fingerprint, state_dir: state_dir.to_path_buf(), stdout };
    server.wait_ready();
    server
}

impl Server {
    pub fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if !self.url.starts_with("https") {
                if let Ok((200, _)) = try_http(self.address, "GET", "/readyz", None, None) {
                    return;
                }
            } else if TcpStream::connect(self.address).is_ok() {
                std::thread::sleep(Duration::from_millis(300));
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the server did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn token(&self) -> &str {
        self.admin_token.as_deref().expect("this start printed an admin token")
    }

    pub fn http(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        try_http(self.address, method, path, token, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A `mayfly` client command aimed at this server with `token`.
    pub fn cli(&self, token: &str) -> Command {
        let mut command = Command::new(MAYFLY);
        command.env("MAYFLY_URL", &self.url).env("MAYFLY_TOKEN", token).stdin(Stdio::null());
        command
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill on the PID of a child this test started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        status
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until the session reaches one of `states`, and returns it.
    pub fn wait_for_state(&self, token: &str, id: &str, states: &[&str]) -> Value {
        let started = Instant::now();
        loop {
            let (status, body) = self.http("GET", &format!("/v1/sessions/{id}"), Some(token), None);
            let session = if status == 410 { body["session"].clone() } else { body };
            if states.contains(&session["state"].as_str().unwrap_or("")) {
                return session;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "session {id} never reached {states:?}: {session}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates a job and returns its id.
    pub fn create(&self, token: &str, ttl: &str, command: &[&str]) -> String {
        let body = serde_json::json!({ "ttl": ttl, "command": command });
        let (status, created) = self.http("POST", "/v1/sessions", Some(token), Some(&body));
        assert_eq!(status, 201, "{created}");
        created["session"]["id"].as_str().unwrap().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill on the PID of a child this test started.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and
/// the JSON body (or the text as a JSON string).
pub fn try_http(address: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Result<(u16, Value), String> {
    let (status, _, text) = raw_http(address, method, path, token, body, &[])?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}

/// Like [`try_http`], with extra headers, returning headers and body text.
pub fn raw_http(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Result<(u16, String, String), String> {
    let mut stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status: u16 = head.split_whitespace().nth(1).ok_or("no status")?.parse().map_err(|_| "bad status")?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    Ok((status, head.to_string(), body))
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
}

pub fn output_text(output: &Output) -> String {
    format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Session processes still alive: any process whose cgroup path names a
/// Mayfly session of this state directory's ledger, or none at all.
pub fn ledger_records(state_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state_dir.join("sessions")).map(|e| e.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default()
}

/// Creates and drops databases on a PostgreSQL server with `psql`.
pub struct PgAdmin {
    url: String,
}

impl PgAdmin {
    pub fn new(url: &str) -> PgAdmin {
        PgAdmin { url: url.to_string() }
    }

    fn sql(&self, statement: &str) {
        let output = Command::new("psql").arg(&self.url).args(["-v", "ON_ERROR_STOP=1", "-c", statement]).output().expect("psql runs (apt-get install -y postgresql-client)");
        assert!(output.status.success(), "{statement}: {}", output_text(&output));
    }

    pub fn create_database(&self, name: &str) {
        self.sql(&format!("CREATE DATABASE {name}"));
    }

    pub fn drop_database(&self, name: &str) {
        self.sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }
}
