//! Warm pools through a real `mayfly serve`. Sessions that claim a member
//! find nothing of earlier sessions, get their profile's policy at the
//! claim and count their deadline from the claim. No member outlives a
//! stop or a crash of the server.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::server::{self, output_text, Server};
use common::{default_profile_text, write, Scratch};
use serde_json::Value;

/// Writes a job profile `name` with the given extra sections and returns
/// the profiles directory.
fn profile(scratch: &Scratch, name: &str, sections: &str) -> PathBuf {
    let dir = scratch.path.join("profiles");
    write(&dir.join(format!("{name}.toml")), &format!("{}\n{sections}\n", default_profile_text()));
    dir
}

fn start(scratch: &Scratch, profiles: &Path) -> Server {
    server::start(&scratch.state_dir(), &["--profiles-dir", profiles.to_str().unwrap()], &[])
}

/// Returns the pool of `profile` as `/v1/pools` reports it.
fn pool(server: &Server, token: &str, profile: &str) -> Value {
    let (status, body) = server.http("GET", "/v1/pools", Some(token), None);
    assert_eq!(status, 200, "{body}");
    body["pools"].as_array().unwrap().iter().find(|p| p["profile"] == profile).cloned().unwrap_or(Value::Null)
}

/// Waits until the pool of `profile` has `count` members ready.
fn wait_for_ready(server: &Server, token: &str, profile: &str, count: u64) -> Value {
    let started = Instant::now();
    loop {
        let pool = pool(server, token, profile);
        if pool["ready"].as_u64().unwrap_or(0) >= count {
            return pool;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the pool of {profile} never had {count} members ready: {pool}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a job through the CLI client and returns its output and its record.
fn run(server: &Server, token: &str, profile: &str, command: &[&str]) -> (std::process::Output, Value) {
    let output = server.cli(token).args(["run", "--profile", profile, "--ttl", "30s", "--json", "--"]).args(command).output().unwrap();
    let record = common::report(&output);
    (output, record)
}

/// Ids of the pool members whose ledger records are in `state_dir`.
fn member_records(state_dir: &Path) -> Vec<Value> {
    server::ledger_records(state_dir)
        .iter()
        .filter(|path| path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("p-")))
        .filter_map(|path| serde_json::from_slice(&std::fs::read(path).ok()?).ok())
        .collect()
}

/// Returns the PIDs of the processes of sandbox `id`: those whose cgroup names it.
fn sandbox_processes(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup")) else { continue };
        if cgroups.contains(id) {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

fn assert_members_gone(members: &[Value]) {
    for member in members {
        let id = member["session_id"].as_str().unwrap();
        assert_eq!(sandbox_processes(id), Vec::<String>::new(), "processes of member {id} remain");
        for path in member["cgroup_paths"].as_array().unwrap() {
            assert!(!Path::new(path.as_str().unwrap()).exists(), "cgroup {path} of member {id} remains");
        }
    }
}

/// Plants a file in every writable place, a process that would outlive the
/// command if it could, and prints what the session finds of earlier ones.
const PLANT: &str = "echo planted > /tmp/planted; echo planted > /work/planted; echo planted > /dev/shm/planted; \
                     setsid sleep 1000 < /dev/null > /dev/null 2>&1 & echo planted";
const LOOK: &str = "find /tmp /work /dev/shm -mindepth 1; for p in /proc/[0-9]*; do cat $p/comm; done | grep -x sleep; echo looked";

#[test]
fn claimed_members_show_no_earlier_trace() {
    let scratch = Scratch::new("pool-trace");
    let profiles = profile(&scratch, "pooled", "[pool]\nmin = 2\nmax = 4\nmax_age = \"10m\"");
    let server = start(&scratch, &profiles);
    let token = server.token().to_string();
    wait_for_ready(&server, &token, "pooled", 2);

    let (output, planted) = run(&server, &token, "pooled", &["/bin/sh", "-c", PLANT]);
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    assert_eq!(planted["start"], "warm", "the planting session claimed a member: {planted}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "planted\n");

    // A burst larger than the pool: the first ones claim members prepared
    // while the planting session ran, the rest start cold or claim members
    // refilled since.
    wait_for_ready(&server, &token, "pooled", 2);
    let burst: Vec<_> = (0..6)
        .map(|_| {
            let (url, token) = (server.url.clone(), token.clone());
            std::thread::spawn(move || {
                let output = std::process::Command::new(common::MAYFLY)
                    .env("MAYFLY_URL", url)
                    .env("MAYFLY_TOKEN", token)
                    .args(["run", "--profile", "pooled", "--ttl", "30s", "--json", "--", "/bin/sh", "-c", LOOK])
                    .stdin(std::process::Stdio::null())
                    .output()
                    .unwrap();
                let record = common::report(&output);
                (output, record)
            })
        })
        .collect();
    let mut warm = 0;
    for handle in burst {
        let (output, record) = handle.join().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
        // Only /work/artifacts, which init creates, and no sleep process.
        assert_eq!(String::from_utf8_lossy(&output.stdout), "/work/artifacts\nlooked\n", "session {} found a trace: {record}", record["id"]);
        assert_eq!(record["detail"]["teardown"]["clean"], true, "{record}");
        match record["start"].as_str() {
            Some("warm") => warm += 1,
            Some("cold") => {}
            other => panic!("the record names no start, or an unknown one: {other:?} in {record}"),
        }
    }
    assert!(warm >= 1, "the burst included no pool member");

    let (_, metrics) = server::raw_http(server.address, "GET", "/metrics", Some(&token), None, &[]).map(|(s, _, b)| (s, b)).unwrap();
    assert!(metrics.contains("mayfly_pool_ready{profile=\"pooled\"}"), "{metrics}");
    assert!(metrics.contains("mayfly_pool_claims_total{profile=\"pooled\"}"), "{metrics}");
    let claims = pool(&server, &token, "pooled")["claims_total"].as_u64().unwrap();
    assert!(claims >= 1 + warm, "{claims} claims for {warm} warm sessions after the planting one");
}

#[test]
fn warm_deadline_counts_from_claim() {
    let scratch = Scratch::new("pool-deadline");
    let profiles = profile(&scratch, "pooled", "[pool]\nmin = 1\nmax = 1");
    let server = start(&scratch, &profiles);
    let token = server.token().to_string();
    wait_for_ready(&server, &token, "pooled", 1);
    // The member waits longer than the session's TTL, so a deadline counted
    // from its preparation would end the session at once.
    std::thread::sleep(Duration::from_secs(3));

    let body = serde_json::json!({ "profile": "pooled", "ttl": "2s", "command": ["/bin/sh", "-c", "trap '' TERM; sleep 100"] });
    let (status, created) = server.http("POST", "/v1/sessions", Some(&token), Some(&body));
    assert_eq!(status, 201, "{created}");
    let id = created["session"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["session"]["start"], "warm", "{created}");
    let session = server.wait_for_state(&token, &id, &["destroyed", "failed"]);

    let created_ms = session["created_unix_ms"].as_i64().unwrap();
    assert_eq!(session["deadline_unix_ms"].as_i64().unwrap() - created_ms, 2000, "{session}");
    assert_eq!(session["end"]["reason"], "deadline", "{session}");
    let ended_ms = session["ended_unix_ms"].as_i64().unwrap();
    assert!(ended_ms >= created_ms + 2000, "the session ended {} ms after its creation, before its TTL", ended_ms - created_ms);
    assert_eq!(session["detail"]["deadline_enforced_by"], "init", "{session}");
}

/// Starts a server on the host's loopback that replies to every request
/// with a fixed body, and returns its port.
fn origin() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let mut stream = stream;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\nConnection: close\r\n\r\nhello from origin");
            });
        }
    });
    port
}

#[test]
fn claim_binds_profile_egress_rules() {
    let scratch = Scratch::new("pool-egress");
    let allowed = origin();
    let other = origin();
    profile(&scratch, "closed", "[pool]\nmin = 1\nmax = 1");
    let profiles = profile(&scratch, "open", &format!("[network]\negress = \"proxy\"\nallow = [\"127.0.0.1:{allowed}\"]\n\n[pool]\nmin = 1\nmax = 1"));
    let server = start(&scratch, &profiles);
    let token = server.token().to_string();
    wait_for_ready(&server, &token, "open", 1);
    wait_for_ready(&server, &token, "closed", 1);

    // Checked from inside: the proxy of the claiming session's profile
    // lets through what its rules allow and nothing else.
    let fetch = |target: u16| format!("/usr/bin/curl -sS --max-time 10 --noproxy '' -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{target}/ ; echo \" $http_proxy\"");
    let script = format!("{}; {}", fetch(allowed), fetch(other));
    let (output, record) = run(&server, &token, "open", &["/bin/sh", "-c", &script]);
    assert_eq!(record["start"], "warm", "{record}");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{}", output_text(&output));
    assert_eq!(lines[0], "200 http://127.0.0.1:3128", "the allowed origin is reached through the proxy: {}", output_text(&output));
    assert!(lines[1].starts_with("403 "), "an origin no rule names is refused: {}", output_text(&output));

    // A profile without egress has no proxy: no variable and no listener.
    let (output, record) = run(&server, &token, "closed", &["/bin/sh", "-c", &fetch(allowed)]);
    assert_eq!(record["start"], "warm", "{record}");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(text.starts_with("000 "), "a session without egress reached the network: {}", output_text(&output));
    assert!(text.trim_end().ends_with("000"), "a session without egress has a proxy variable: {}", output_text(&output));
}

#[test]
fn members_end_with_stop_and_crash() {
    let scratch = Scratch::new("pool-crash");
    let profiles = profile(&scratch, "pooled", "[pool]\nmin = 2\nmax = 2");
    let state = scratch.state_dir();

    let server = start(&scratch, &profiles);
    let token = server.token().to_string();
    wait_for_ready(&server, &token, "pooled", 2);
    let members = member_records(&state);
    assert_eq!(members.len(), 2, "{members:?}");
    for member in &members {
        assert_eq!(member["pool_member"], true, "{member}");
        assert!(!sandbox_processes(member["session_id"].as_str().unwrap()).is_empty(), "member {member} runs");
    }
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    assert_eq!(member_records(&state), Vec::<Value>::new(), "a stop left ledger records of members");
    assert_members_gone(&members);

    // After a crash, the next start's recovery destroys what is left.
    let server = start(&scratch, &profiles);
    wait_for_ready(&server, &token, "pooled", 2);
    let crashed = member_records(&state);
    assert_eq!(crashed.len(), 2, "{crashed:?}");
    server.crash();
    let server = start(&scratch, &profiles);
    let left: Vec<Value> = member_records(&state).into_iter().filter(|r| crashed.iter().any(|c| c["session_id"] == r["session_id"])).collect();
    assert_eq!(left, Vec::<Value>::new(), "recovery left ledger records of the crashed server's members");
    assert_members_gone(&crashed);
    let (_, audit) = server.http("GET", "/v1/audit?limit=1000", Some(&token), None);
    let reaped: Vec<&Value> = audit["records"].as_array().unwrap().iter().filter(|r| r["kind"] == "pool.member_reaped").collect();
    for member in &crashed {
        assert!(reaped.iter().any(|r| r["fields"]["member"] == member["session_id"]), "no pool.member_reaped record for {member}: {reaped:?}");
    }
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    assert_eq!(member_records(&state), Vec::<Value>::new(), "the last stop left ledger records of members");
}

/// Returns the command lines of the processes whose cgroup names `id`.
fn command_lines(id: &str) -> Vec<String> {
    sandbox_processes(id)
        .iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .collect()
}

#[test]
fn browser_member_starts_chromium_before_claim() {
    let scratch = Scratch::new("pool-browser");
    let browser = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../mayfly-core/profiles/browser.toml")).unwrap();
    let profiles = scratch.path.join("profiles");
    write(&profiles.join("pooled-browser.toml"), &format!("{browser}\n[pool]\nmin = 1\nmax = 1\n"));
    let server = start(&scratch, &profiles);
    let token = server.token().to_string();
    wait_for_ready(&server, &token, "pooled-browser", 1);
    let ready = member_records(&scratch.state_dir());
    assert_eq!(ready.len(), 1, "{ready:?}");
    let member_id = ready[0]["session_id"].as_str().unwrap().to_string();
    let started = Instant::now();
    while !command_lines(&member_id).iter().any(|line| line.contains("--remote-debugging-pipe")) {
        assert!(started.elapsed() < Duration::from_secs(30), "Chromium did not start in the member before its claim: {:?}", command_lines(&member_id));
        std::thread::sleep(Duration::from_millis(100));
    }

    let body = serde_json::json!({ "profile": "pooled-browser", "ttl": "5m" });
    let (status, created) = server.http("POST", "/v1/sessions", Some(&token), Some(&body));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["session"]["start"], "warm", "{created}");
    let id = created["session"]["id"].as_str().unwrap().to_string();
    server.wait_for_state(&token, &id, &["running"]);
    let member = member_records(&scratch.state_dir()).into_iter().find(|r| r["claimed_by"] == id.as_str()).expect("the claimed member's ledger record names the session");
    assert_eq!(member["session_id"], member_id.as_str(), "the session claimed the ready member");
    let (_, events) = server.http("GET", &format!("/v1/sessions/{id}/events"), Some(&token), None);
    assert!(events["events"].as_array().unwrap().iter().any(|e| e["kind"] == "running"), "{events}");

    let (status, body) = server.http("DELETE", &format!("/v1/sessions/{id}"), Some(&token), None);
    assert!(status == 200 || status == 202, "{body}");
    let session = server.wait_for_state(&token, &id, &["destroyed", "failed"]);
    assert_eq!(session["state"], "destroyed", "{session}");
    assert_eq!(session["detail"]["teardown"]["clean"], true, "{session}");
    assert_eq!(session["detail"]["sandbox_id"], member_id.as_str(), "{session}");
    assert_eq!(command_lines(&member_id), Vec::<String>::new(), "processes of the claimed member remain");
}

/// Returns the ids of the members whose ledger records are in `state_dir`.
fn member_ids(state_dir: &Path) -> Vec<String> {
    member_records(state_dir).iter().map(|r| r["session_id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn members_are_replaced_on_change_and_age() {
    let scratch = Scratch::new("pool-replace");
    let profiles = profile(&scratch, "pooled", "[pool]\nmin = 1\nmax = 1\nmax_age = \"10s\"");
    let server = start(&scratch, &profiles);
    let token = server.token().to_string();
    let state = scratch.state_dir();
    wait_for_ready(&server, &token, "pooled", 1);
    let first = member_ids(&state);
    assert_eq!(first.len(), 1, "{first:?}");

    // A change of the profile outside [pool] replaces the member.
    let changed = std::fs::read_to_string(profiles.join("pooled.toml")).unwrap().replace("hostname = \"mayfly\"", "hostname = \"changed\"");
    write(&profiles.join("pooled.toml"), &changed);
    let started = Instant::now();
    loop {
        let ids = member_ids(&state);
        if ids.len() == 1 && ids != first && pool(&server, &token, "pooled")["ready"] == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the member of the changed profile was not replaced: {ids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_members_gone(&[serde_json::json!({ "session_id": first[0], "cgroup_paths": [] })]);
    let (output, record) = run(&server, &token, "pooled", &["/bin/hostname"]);
    assert_eq!(record["start"], "warm", "{record}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "changed\n", "the new member has the changed profile");

    // A member that reaches pool.max_age is replaced too.
    wait_for_ready(&server, &token, "pooled", 1);
    let aging = member_ids(&state);
    let started = Instant::now();
    loop {
        let ids = member_ids(&state);
        if !ids.is_empty() && !ids.iter().any(|id| aging.contains(id)) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(40), "the member was not replaced at its maximum age: {ids:?} {aging:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let destroyed = pool(&server, &token, "pooled")["destroyed_total"].as_u64().unwrap();
    assert!(destroyed >= 2, "{destroyed} members destroyed, expected the one of the old profile and the aged one");
}

#[test]
fn idle_members_make_room_for_sessions() {
    let scratch = Scratch::new("pool-room");
    let profiles = profile(&scratch, "pooled", "[pool]\nmin = 2\nmax = 2");
    let config = scratch.path.join("mayfly.toml");
    write(&config, "[capacity]\nsessions = 2\n");
    let server = server::start(&scratch.state_dir(), &["--profiles-dir", profiles.to_str().unwrap(), "--config", config.to_str().unwrap()], &[]);
    let token = server.token().to_string();
    wait_for_ready(&server, &token, "pooled", 2);

    // The two members hold the host's whole capacity, so a session of
    // another profile fits only once a member is destroyed for it.
    let body = serde_json::json!({ "profile": "default", "ttl": "30s", "command": ["/bin/true"] });
    let (status, created) = server.http("POST", "/v1/sessions", Some(&token), Some(&body));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["session"]["start"], "cold", "{created}");
    let session = server.wait_for_state(&token, created["session"]["id"].as_str().unwrap(), &["destroyed", "failed"]);
    assert_eq!(session["state"], "destroyed", "{session}");
    assert!(pool(&server, &token, "pooled")["destroyed_total"].as_u64().unwrap() >= 1, "no member was destroyed to make room");
}

#[test]
fn unusable_profile_is_logged_once() {
    let scratch = Scratch::new("pool-unusable");
    let profiles = scratch.path.join("profiles");
    write(&profiles.join("broken.toml"), &format!("{}\n[pool]\nmin = 1\nmax = 1\nmax_ages = \"1m\"\n", default_profile_text()));
    /// Ends the server when the test ends, also when an assert fails.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            // A reaped child's PID may belong to another process by now.
            if let Ok(None) = self.0.try_wait() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
                let _ = self.0.wait();
            }
        }
    }

    let log = scratch.path.join("server.log");
    let child = std::process::Command::new(common::MAYFLY)
        .arg("serve")
        .arg("--state-dir")
        .arg(scratch.state_dir())
        .args(["--listen", "127.0.0.1:0", "--profiles-dir"])
        .arg(&profiles)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Stop(child);
    let warning = "a profile cannot be used";
    let started = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains(warning) {
        assert!(started.elapsed() < Duration::from_secs(30), "no warning about the broken profile: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The refill loop looks at the profiles every second; the reason is
    // logged once all the same.
    std::thread::sleep(Duration::from_millis(2500));
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings: Vec<&str> = text.lines().filter(|line| line.contains(warning)).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("profile=broken"), "{}", warnings[0]);
    // TOML errors span several lines, so the reason follows the first one.
    assert!(text.contains("unknown field `max_ages`"), "the warning gives the reason: {text}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.0.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(server.0.wait().unwrap().success());
}
