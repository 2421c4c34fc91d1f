//! Browser sessions through the API: Chromium starts in the sandbox, and
//! after sessions end by delete and by deadline, no Chromium process and
//! nothing of the sessions remains.

mod common;

use std::time::{Duration, Instant};

use common::server;
use common::Scratch;
use serde_json::{json, Value};

/// Chromium processes of any browser session on this host: their command
/// line carries the DevTools pipe flag, which only browser sessions use.
fn session_chromium_processes() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains("--remote-debugging-pipe") && text.contains("--user-data-dir=/work/chromium") {
            found.push(format!("{}: {}", entry.file_name().to_string_lossy(), text.chars().take(120).collect::<String>()));
        }
    }
    found
}

fn create(server: &server::Server, ttl: &str) -> Value {
    let (status, body) = server.http("POST", "/v1/sessions", Some(server.token()), Some(&json!({ "profile": "browser", "ttl": ttl })));
    assert_eq!(status, 201, "{body}");
    body["session"].clone()
}

#[test]
fn browser_sessions_leave_nothing_behind() {
    let scratch = Scratch::new("browser-leaks");
    let server = server::start(&scratch.state_dir(), &[], &[]);

    let deleted: Vec<String> = (0..2).map(|_| create(&server, "5m")["id"].as_str().unwrap().to_string()).collect();
    let expiring = create(&server, "6s");
    let expiring_id = expiring["id"].as_str().unwrap().to_string();
    assert_eq!(expiring["kind"], "browser");
    assert_eq!(expiring["isolation"]["chromium_sandbox"], false, "the record says Chromium's own sandbox is off: {expiring}");

    for id in deleted.iter().chain([&expiring_id]) {
        server.wait_for_state(server.token(), id, &["running"]);
    }
    // Chromium starts its processes over a moment; wait until they exist.
    let started = Instant::now();
    while session_chromium_processes().len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(20), "Chromium did not start in the sessions: {:?}", session_chromium_processes());
        std::thread::sleep(Duration::from_millis(100));
    }

    for id in &deleted {
        let (status, body) = server.http("DELETE", &format!("/v1/sessions/{id}"), Some(server.token()), None);
        assert!(status == 200 || status == 202, "{body}");
    }
    for id in deleted.iter().chain([&expiring_id]) {
        let session = server.wait_for_state(server.token(), id, &["destroyed", "failed"]);
        assert_eq!(session["state"], "destroyed", "{session}");
        let teardown = &session["detail"]["teardown"];
        assert_eq!(teardown["clean"], true, "{session}");
        assert_eq!(teardown["processes_remaining"], json!([]), "{session}");
    }
    let expired = server.wait_for_state(server.token(), &expiring_id, &["destroyed"]);
    assert_eq!(expired["end"]["reason"], "deadline", "{expired}");
    assert_eq!(session_chromium_processes(), Vec::<String>::new(), "no Chromium of a session is left");
    assert!(server.stop().success());
}
