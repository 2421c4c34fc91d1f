//! Helpers for tests: scratch directories and a private PostgreSQL server.
//! Not part of the product's interface.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Creates a fresh directory under the system's temporary directory.
pub fn temp_dir(label: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mayfly-test-{label}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary directory");
    dir
}

/// A PostgreSQL server that this test process started on loopback, stopped
/// and deleted when the process ends.
struct PrivatePostgres {
    url: String,
}

fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path().join("bin")).filter(|p| p.join("postgres").exists()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("the PostgreSQL tests need a PostgreSQL server installation: run `apt-get install -y postgresql`, or set MAYFLY_TEST_POSTGRES_URL to a database to use")
    })
}

fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command.stdin(Stdio::null());
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

fn start_private_postgres() -> PrivatePostgres {
    let bin = postgres_bin();
    let dir = std::env::temp_dir().join(format!("mayfly-test-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new("chown").arg("postgres:postgres").arg(&dir).status().expect("chown");
    assert!(status.success(), "failed to give {} to the postgres user", dir.display());
    let data = dir.join("data");
    let output = as_postgres(&bin.join("initdb"))
        .args(["-A", "trust", "-U", "mayfly", "-E", "UTF8", "--no-sync", "-D"])
        .arg(&data)
        .output()
        .expect("initdb runs");
    assert!(output.status.success(), "initdb failed: {}", String::from_utf8_lossy(&output.stderr));
    let port = free_port();
    let options = format!("-h 127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=50", dir.display());
    let output = as_postgres(&bin.join("pg_ctl"))
        .args(["-D"])
        .arg(&data)
        .args(["-l"])
        .arg(dir.join("log"))
        .args(["-o", &options, "-w", "start"])
        .output()
        .expect("pg_ctl runs");
    assert!(output.status.success(), "PostgreSQL did not start: {}", String::from_utf8_lossy(&output.stderr));
    // Stopped when the test process exits: the exit handler below runs pg_ctl stop.
    let stop = format!("{} -D {} -m immediate stop", bin.join("pg_ctl").display(), data.display());
    STOP.set((stop, dir.clone())).ok();
    // SAFETY: registers a plain function with no captured state.
    unsafe { libc::atexit(stop_private_postgres) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "PostgreSQL did not accept connections on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    PrivatePostgres { url: format!("postgres://mayfly@127.0.0.1:{port}/postgres") }
}

static STOP: OnceLock<(String, PathBuf)> = OnceLock::new();

extern "C" fn stop_private_postgres() {
    if let Some((command, dir)) = STOP.get() {
        let _ = Command::new("runuser").args(["-u", "postgres", "--", "sh", "-c", command]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The URL of a PostgreSQL database for tests: `MAYFLY_TEST_POSTGRES_URL`
/// when set, or a private server started on first use.
pub fn postgres_url() -> String {
    if let Ok(url) = std::env::var("MAYFLY_TEST_POSTGRES_URL") {
        return url;
    }
    static SERVER: OnceLock<PrivatePostgres> = OnceLock::new();
    SERVER.get_or_init(start_private_postgres).url.clone()
}
