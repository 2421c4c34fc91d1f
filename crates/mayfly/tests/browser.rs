//! Browser sessions through the API: Chromium starts in the sandbox, and
//! after sessions end by delete and by deadline, no Chromium process and
//! nothing of the sessions remains.

mod common;

use std::time::{Duration, Instant};

use common::server;
use common::Scratch;
use serde_json::{json, Value};

/// Processes of the given sessions, found by the session id in their
/// cgroup path, with their command lines.
fn session_processes(ids: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) else { continue };
        if !ids.iter().any(|id| cgroup.contains(id.as_str())) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        found.push(format!("{}: {}", entry.file_name().to_string_lossy(), text.chars().take(120).collect::<String>()));
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
    // Chromium starts its processes over a moment; wait until each session
    // has its browser process.
    let ids: Vec<String> = deleted.iter().cloned().chain([expiring_id.clone()]).collect();
    let started = Instant::now();
    loop {
        let processes = session_processes(&ids);
        let browsers = processes.iter().filter(|p| p.contains("--remote-debugging-pipe")).count();
        if browsers == 3 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "Chromium did not start in every session: {processes:?}");
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
    assert_eq!(session_processes(&ids), Vec::<String>::new(), "no process of the sessions is left");
    assert!(server.stop().success());
}

#[test]
fn browser_sessions_end_without_a_viewer() {
    let scratch = Scratch::new("browser-viewer");
    let profiles = scratch.path.join("profiles");
    let text = include_str!("../../mayfly-core/profiles/browser.toml").replace("viewer_grace = \"2m\"", "viewer_grace = \"3s\"");
    common::write(&profiles.join("lonely.toml"), &text);
    let profiles_arg = profiles.to_str().unwrap().to_string();
    let server = server::start(&scratch.state_dir(), &["--profiles-dir", &profiles_arg], &[]);
    let create = |profile: &str| {
        let (status, body) = server.http("POST", "/v1/sessions", Some(server.token()), Some(&json!({ "profile": profile, "ttl": "2m" })));
        assert_eq!(status, 201, "{body}");
        (body["session"]["id"].as_str().unwrap().to_string(), body["attach"]["token"].as_str().unwrap().to_string())
    };

    // No viewer ever attaches, so the session ends once the grace has passed.
    let (alone, _) = create("lonely");
    let ended = server.wait_for_state(server.token(), &alone, &["destroyed"]);
    assert_eq!(ended["end"]["reason"], "destroyed", "{ended}");
    assert!(ended["end"]["detail"].as_str().unwrap().contains("no viewer for 3s"), "{ended}");

    // A viewer in control keeps the session alive past the grace, and the
    // session ends the grace after the viewer leaves.
    let (watched, token) = create("lonely");
    server.wait_for_state(server.token(), &watched, &["running"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let frames = runtime.block_on(async {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let stream = tokio::net::TcpStream::connect(server.address).await.unwrap();
        let url = format!("ws://{}/v1/sessions/{watched}/attach?token={token}", server.address);
        let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        let mut frames = 0;
        let until = tokio::time::Instant::now() + Duration::from_secs(6);
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, socket.next()).await {
            if matches!(message, Message::Binary(ref bytes) if bytes.first() == Some(&0x10)) {
                frames += 1;
            }
        }
        frames
    });
    assert!(frames >= 1, "the viewer received the page as frames");
    let (status, session) = server.http("GET", &format!("/v1/sessions/{watched}"), Some(server.token()), None);
    assert_eq!(status, 200, "the session outlived its 3 s grace while a viewer was attached: {session}");
    let ended = server.wait_for_state(server.token(), &watched, &["destroyed"]);
    assert!(ended["end"]["detail"].as_str().unwrap().contains("no viewer"), "{ended}");
    assert!(server.stop().success());
}
