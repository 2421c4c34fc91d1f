//! Kill the server with SIGKILL at random moments while sessions are being
//! created, running and deleted; after every restart nothing may be left:
//! no process, cgroup, mount or ledger record, every session ended with a
//! reason, deadlines held while the server was down, and the audit chain
//! verifies.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::server::{self, try_http};
use common::Scratch;
use serde_json::{json, Value};

/// A small deterministic generator, so that a failing seed can be replayed
/// with MAYFLY_CRASH_SEED.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// PIDs of processes whose cgroup names one of `ids`.
fn processes_of(ids: &[String]) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup")) else { continue };
        if let Some(id) = ids.iter().find(|id| cgroups.contains(id.as_str())) {
            found.push((pid, id.clone()));
        }
    }
    found
}

/// Cgroup directories named after one of `ids`, in any hierarchy.
fn cgroups_of(ids: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.filter_map(Result::ok) {
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            if ids.contains(&name) {
                found.push(entry.path().display().to_string());
            } else if stack.len() < 10_000 && entry.path().components().count() < 8 {
                stack.push(entry.path());
            }
        }
    }
    found
}

/// Creates and deletes sessions until told to stop; records every id the
/// server acknowledged.
fn load(address: std::net::SocketAddr, token: String, seed: u64, stop: Arc<AtomicBool>, ids: Arc<Mutex<Vec<String>>>) {
    let mut random = Lcg(seed);
    while !stop.load(Ordering::Relaxed) {
        let command = match random.next(4) {
            0 => json!(["/bin/echo", "quick"]),
            1 => json!(["/bin/sh", "-c", "trap '' TERM; sleep 100"]),
            2 => json!(["/bin/sleep", "100"]),
            _ => json!(["/bin/sh", "-c", "head -c 100000 /dev/zero | od | tail -1"]),
        };
        let ttl = if random.next(2) == 0 { "2s" } else { "30s" };
        match try_http(address, "POST", "/v1/sessions", Some(&token), Some(&json!({ "ttl": ttl, "command": command }))) {
            Ok((201, created)) => ids.lock().unwrap().push(created["session"]["id"].as_str().unwrap().to_string()),
            Ok(_) => {}
            Err(_) => return,
        }
        if random.next(3) == 0 {
            let victim = {
                let ids = ids.lock().unwrap();
                ids.get(random.next(ids.len().max(1) as u64) as usize).cloned()
            };
            if let Some(victim) = victim {
                let _ = try_http(address, "DELETE", &format!("/v1/sessions/{victim}"), Some(&token), None);
            }
        }
        std::thread::sleep(Duration::from_millis(random.next(30)));
    }
}

#[test]
fn killing_the_server_at_random_points_leaves_nothing_behind() {
    let seed = std::env::var("MAYFLY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| unix_ms() as u64);
    eprintln!("crash test seed {seed} (replay with MAYFLY_CRASH_SEED={seed})");
    let mut random = Lcg(seed);
    let scratch = Scratch::new("crash");
    let state = scratch.state_dir();
    let ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut token = None;
    const ROUNDS: usize = 6;

    for round in 0..ROUNDS {
        let server = server::start(&state, &[], &[]);
        let admin = token.get_or_insert_with(|| server.token().to_string()).clone();
        // Everything the last crash left has been recovered: every session
        // the server acknowledged has ended, none is left running.
        let (_, list) = server.http("GET", "/v1/sessions?limit=500", Some(&admin), None);
        for session in list["sessions"].as_array().unwrap() {
            assert!(matches!(session["state"].as_str(), Some("destroyed" | "failed")), "round {round}: not ended after recovery: {session}");
            assert!(session["end"].is_object(), "round {round}: ended without a reason: {session}");
        }
        let known = ids.lock().unwrap().clone();
        assert!(processes_of(&known).is_empty(), "round {round}: processes left: {:?}", processes_of(&known));
        assert!(cgroups_of(&known).is_empty(), "round {round}: cgroups left: {:?}", cgroups_of(&known));
        let leftover: Vec<String> = server::ledger_records(&state).iter().map(|p| format!("{}: {}", p.display(), std::fs::read_to_string(p).unwrap_or_default())).collect();
        assert!(leftover.is_empty(), "round {round}: ledger records left: {leftover:#?}");

        let stop = Arc::new(AtomicBool::new(false));
        let loader = {
            let (stop, ids, admin, address) = (Arc::clone(&stop), Arc::clone(&ids), admin.clone(), server.address);
            let seed = random.next(u64::MAX);
            std::thread::spawn(move || load(address, admin, seed, stop, ids))
        };
        std::thread::sleep(Duration::from_millis(100 + random.next(700)));
        let crashed_at = unix_ms();
        server.crash();
        stop.store(true, Ordering::Relaxed);
        loader.join().unwrap();

        // While no server runs, each session's own init still enforces its
        // deadline: wait past the 2 s deadlines and look.
        let ended_by = crashed_at + 2_000 + 1_500;
        while unix_ms() < ended_by {
            std::thread::sleep(Duration::from_millis(100));
        }
        let known = ids.lock().unwrap().clone();
        let short: Vec<String> = known
            .iter()
            .filter(|id| {
                let record = state.join("sessions").join(format!("{id}.json"));
                std::fs::read(&record)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|r| r["deadline_unix_ms"].as_i64())
                    .is_some_and(|deadline| deadline + 1_000 < unix_ms())
            })
            .cloned()
            .collect();
        let survivors = processes_of(&short);
        assert!(survivors.is_empty(), "round {round}: processes outlived their deadline while the server was down: {survivors:?}");
    }

    let server = server::start(&state, &[], &[]);
    let admin = token.unwrap();
    let (_, list) = server.http("GET", "/v1/sessions?limit=500", Some(&admin), None);
    let sessions = list["sessions"].as_array().unwrap();
    assert!(sessions.len() >= ROUNDS, "the load created too few sessions to mean anything: {}", sessions.len());
    for session in sessions {
        assert!(matches!(session["state"].as_str(), Some("destroyed" | "failed")), "{session}");
        let id = session["id"].as_str().unwrap();
        let (_, events) = server.http("GET", &format!("/v1/sessions/{id}/events"), Some(&admin), None);
        let last = events["events"].as_array().unwrap().last().cloned().unwrap_or_default();
        assert_eq!(last["kind"], "ended", "{id} has no end event: {events}");
    }
    let known = ids.lock().unwrap().clone();
    assert!(processes_of(&known).is_empty());
    assert!(cgroups_of(&known).is_empty(), "{:?}", cgroups_of(&known));
    assert!(server::ledger_records(&state).is_empty());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!known.iter().any(|id| mounts.contains(id.as_str())), "a session mount is visible on the host");
    drop(server);

    let verify = std::process::Command::new(common::MAYFLY).args(["audit", "verify", "--state-dir"]).arg(&state).output().unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", server::output_text(&verify));
    eprintln!("crash test: {} sessions over {ROUNDS} crashes; {}", sessions.len(), String::from_utf8_lossy(&verify.stdout).trim());
}
