//! `mayfly bench --suite api`: the control plane under load, beside the
//! `mayfly run` cold start, in one run. It starts a private `mayfly serve`
//! on a loopback port with its own state directory and measures
//! create-to-running latency, sessions created per second with auditing on,
//! and audit records appended per second.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_audit::{AuditLog, Entry};
use serde_json::{json, Value};

use super::http::call;
use super::server::{mayfly_executable, start_server, BenchDir, Target, RAISED_LIMITS};
use super::stats::{median, milliseconds, percentile, ratio};
use super::timed_run::{time_run, RUN_TIMEOUT};
use crate::cli::BenchArgs;

const CLIENTS: usize = 4;
/// Appended to the raised limits: room for the throughput phase's sessions.
const CAPACITY_CONFIG: &str = "[capacity]\nsessions = 64\n";

/// Creates a `/bin/true` job, retrying while the host is full.
fn create(server: &Target) -> Result<String, String> {
    let body = json!({ "ttl": "30s", "command": ["/bin/true"] });
    loop {
        match call(server.address, "POST", "/v1/sessions", &server.token, Some(&body))? {
            (201, created) => return Ok(created["session"]["id"].as_str().unwrap_or_default().to_string()),
            (503, _) => std::thread::sleep(Duration::from_millis(5)),
            (status, problem) => return Err(format!("create answered {status}: {}", problem["detail"])),
        }
    }
}

/// Waits until a session has ended and returns its events.
fn wait_ended(server: &Target, id: &str) -> Result<Vec<Value>, String> {
    let started = Instant::now();
    loop {
        let (_, body) = call(server.address, "GET", &format!("/v1/sessions/{id}/events"), &server.token, None)?;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        if events.iter().any(|e| e["kind"] == "ended") {
            return Ok(events);
        }
        if started.elapsed() > RUN_TIMEOUT {
            return Err(format!("session {id} did not end within {} s", RUN_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Latencies {
    cold_start: Vec<Duration>,
    create_to_running: Vec<Duration>,
    post_round_trip: Vec<Duration>,
    errors: Vec<String>,
}

/// Alternates a `mayfly run` cold start and an API create, `runs` times.
fn latencies(executable: &Path, run_state: &Path, server: &Target, runs: u32) -> Latencies {
    let mut result = Latencies { cold_start: Vec::new(), create_to_running: Vec::new(), post_round_trip: Vec::new(), errors: Vec::new() };
    for iteration in 0..runs + 3 {
        let measured = iteration >= 3;
        let mut command = Command::new(executable);
        command.arg("run").arg("--state-dir").arg(run_state).args(["--", "/bin/true"]);
        match time_run(&mut command, RUN_TIMEOUT) {
            Ok(elapsed) if measured => result.cold_start.push(elapsed),
            Ok(_) => {}
            Err(error) => result.errors.push(format!("mayfly run: {error}")),
        }
        let posted = Instant::now();
        let outcome = create(server).and_then(|id| {
            let round_trip = posted.elapsed();
            let events = wait_ended(server, &id)?;
            let running = events.iter().find(|e| e["kind"] == "running").ok_or(format!("session {id} never ran"))?;
            let micros = running["detail"]["since_request_us"].as_u64().ok_or("the running event has no since_request_us")?;
            Ok((round_trip, Duration::from_micros(micros)))
        });
        match outcome {
            Ok((round_trip, to_running)) if measured => {
                result.post_round_trip.push(round_trip);
                result.create_to_running.push(to_running);
            }
            Ok(_) => {}
            Err(error) => result.errors.push(error),
        }
    }
    result
}

/// Creates `total` sessions from several clients at once and waits until
/// all have ended; returns sessions per second over the whole span.
fn throughput(server: &Target, total: usize) -> Result<(f64, Duration), String> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let next = Arc::clone(&next);
            let server = server.clone();
            std::thread::spawn(move || -> Result<Vec<String>, String> {
                let mut ids = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < total as u64 {
                    ids.push(create(&server)?);
                }
                Ok(ids)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for client in clients {
        ids.extend(client.join().map_err(|_| "a client thread panicked".to_string())??);
    }
    for id in &ids {
        wait_ended(server, id)?;
    }
    let elapsed = started.elapsed();
    Ok((ids.len() as f64 / elapsed.as_secs_f64(), elapsed))
}

/// Appends `count` single records, each flushed to disk, as the server does.
fn audit_rate(dir: &Path, count: u32) -> Result<f64, String> {
    let log = AuditLog::open(dir).map_err(|e| e.to_string())?;
    let started = Instant::now();
    for n in 0..count {
        let entry = Entry::new("bench.record", "bench").field("n", n);
        log.append(vec![entry], n % 32 == 31).map_err(|e| e.to_string())?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn row(name: &str, sorted: &[Duration], base: Option<Duration>) -> String {
    let (Some(med), Some(p99)) = (median(sorted), percentile(sorted, 99)) else { return format!("| {name} | no successful runs | | |\n") };
    let versus = base.map(|b| format!("{:.2}", ratio(med, b))).unwrap_or_else(|| "1.00".into());
    format!("| {name} | {:.2} | {:.2} | {versus} |\n", milliseconds(med), milliseconds(p99))
}

pub(super) fn main(args: &BenchArgs) -> i32 {
    let prepared = mayfly_executable().and_then(|executable| Ok((executable, BenchDir::create(args.state_dir.join("bench-api"))?)));
    let (executable, dir) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            eprintln!("mayfly: {error}");
            return 1;
        }
    };
    let result = run(&executable, dir.path(), args);
    drop(dir);
    match result {
        Ok(markdown) => {
            print!("{markdown}");
            if let Some(path) = &args.output {
                if let Err(error) = std::fs::write(path, &markdown) {
                    eprintln!("mayfly: failed to write {}: {error}", path.display());
                    return 1;
                }
            }
            0
        }
        Err(error) => {
            eprintln!("mayfly: the API bench failed: {error}");
            1
        }
    }
}

fn run(executable: &Path, dir: &Path, args: &BenchArgs) -> Result<String, String> {
    let server = start_server(executable, dir, &format!("{RAISED_LIMITS}{CAPACITY_CONFIG}"), &[])?;
    let target = server.target();
    let mut lat = latencies(executable, &dir.join("run"), &target, args.runs);
    for list in [&mut lat.cold_start, &mut lat.create_to_running, &mut lat.post_round_trip] {
        list.sort();
    }
    let total = (args.runs as usize * 4).clamp(20, 2000);
    let (per_second, span) = throughput(&target, total)?;
    drop(server);
    let appends = (args.runs * 20).clamp(100, 10_000);
    let records_per_second = audit_rate(&dir.join("audit-bench"), appends)?;

    let cold = median(&lat.cold_start);
    let cold_per_second = cold.map(|c| 1.0 / c.as_secs_f64()).unwrap_or(0.0);
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    out.push_str(&format!("Command: `{command_line}` ({} runs each, {CLIENTS} clients for throughput)\n\n", args.runs));
    out.push_str("| Measure | Median ms | p99 ms | Ratio to `mayfly run` |\n|---|---|---|---|\n");
    out.push_str(&row("`mayfly run -- /bin/true` cold start", &lat.cold_start, None));
    out.push_str(&row("API create to running (server side)", &lat.create_to_running, cold));
    out.push_str(&row("API create request round trip", &lat.post_round_trip, cold));
    out.push_str(&format!(
        "\n| Throughput | Per second | Ratio to sequential `mayfly run` |\n|---|---|---|\n| API sessions created and ended ({total} sessions in {:.1} s, auditing on) | {per_second:.1} | {:.2} |\n| `mayfly run` cold starts, one after another | {cold_per_second:.1} | 1.00 |\n| Audit records appended, each flushed to disk ({appends}) | {records_per_second:.0} | |\n",
        span.as_secs_f64(),
        if cold_per_second > 0.0 { per_second / cold_per_second } else { 0.0 },
    ));
    if !lat.errors.is_empty() {
        out.push_str(&format!("\n{} runs failed; the first: {}\n", lat.errors.len(), lat.errors[0]));
    }
    Ok(out)
}
