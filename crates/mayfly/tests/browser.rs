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
    assert_eq!(ended["detail"]["teardown"]["clean"], true, "{ended}");
    assert_eq!(session_processes(&[alone, watched]), Vec::<String>::new(), "no process of the sessions is left");
    assert!(server.stop().success());
}

/// Reads text messages from a viewer's WebSocket until one matches, within 20 s.
async fn next_text<S>(socket: &mut S, wanted: impl Fn(&Value) -> bool) -> Value
where
    S: futures_util::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    use futures_util::StreamExt;
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(until, socket.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if wanted(&message) {
                    return message;
                }
                seen.push(message);
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("the wanted message never came ({other:?}); saw {seen:?}"),
        }
    }
}

#[test]
fn clipboard_follows_profile() {
    let scratch = Scratch::new("browser-clipboard");
    let profiles = scratch.path.join("profiles");
    let base = include_str!("../../mayfly-core/profiles/browser.toml");
    common::write(&profiles.join("closed.toml"), &base.replace("clipboard_in = true", "clipboard_in = false"));
    common::write(&profiles.join("small.toml"), &base.replace("clipboard_limit = \"64KiB\"", "clipboard_limit = \"8B\"").replace("watermark = false", "watermark = true"));
    let profiles_arg = profiles.to_str().unwrap().to_string();
    let server = server::start(&scratch.state_dir(), &["--profiles-dir", &profiles_arg], &[]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut ids = Vec::new();
    for profile in ["closed", "small"] {
        let (status, body) = server.http("POST", "/v1/sessions", Some(server.token()), Some(&json!({ "profile": profile, "ttl": "2m" })));
        assert_eq!(status, 201, "{body}");
        let id = body["session"]["id"].as_str().unwrap().to_string();
        let token = body["attach"]["token"].as_str().unwrap().to_string();
        server.wait_for_state(server.token(), &id, &["running"]);
        runtime.block_on(async {
            use futures_util::SinkExt;
            use tokio_tungstenite::tungstenite::Message;
            let stream = tokio::net::TcpStream::connect(server.address).await.unwrap();
            let url = format!("ws://{}/v1/sessions/{id}/attach?token={token}", server.address);
            let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
            let session = next_text(&mut socket, |m| m["type"] == "session").await;
            let tabs = next_text(&mut socket, |m| m["type"] == "tabs").await;
            assert_eq!(tabs["tabs"].as_array().unwrap().len(), 1, "{tabs}");
            let send = |message: Value| Message::Text(message.to_string().into());
            let error = |m: &Value| m["type"] == "error";
            if profile == "closed" {
                assert_eq!(session["transfer"]["clipboard_in"], false, "{session}");
                assert_eq!(session["watermark"], Value::Null, "{session}");
                socket.send(send(json!({ "type": "paste", "text": "secret" }))).await.unwrap();
                let refused = next_text(&mut socket, error).await;
                assert!(refused["message"].as_str().unwrap().contains("transfer.clipboard_in"), "{refused}");
                socket.send(send(json!({ "type": "copy" }))).await.unwrap();
                let refused = next_text(&mut socket, error).await;
                assert!(refused["message"].as_str().unwrap().contains("transfer.clipboard_out"), "{refused}");
            } else {
                assert_eq!(session["transfer"]["clipboard_limit_bytes"], 8, "{session}");
                assert!(session["watermark"].as_str().unwrap().ends_with(&id), "{session}");
                socket.send(send(json!({ "type": "paste", "text": "too long!" }))).await.unwrap();
                let refused = next_text(&mut socket, error).await;
                assert!(refused["message"].as_str().unwrap().contains("transfer.clipboard_limit"), "{refused}");
                socket.send(send(json!({ "type": "paste", "text": "ok" }))).await.unwrap();
                // Input is handled in order, so a refusal of the next message
                // shows the paste went through without one.
                socket.send(send(json!({ "type": "switch_tab", "id": "none" }))).await.unwrap();
                let refused = next_text(&mut socket, error).await;
                assert!(refused["message"].as_str().unwrap().contains("no open tab has the id \"none\""), "{refused}");
            }
            socket.close(None).await.unwrap();
        });
        ids.push(id);
    }
    let (status, audit) = server.http("GET", "/v1/audit?since=1&limit=1000", Some(server.token()), None);
    assert_eq!(status, 200);
    let pastes: Vec<&Value> = audit["records"].as_array().unwrap().iter().filter(|r| r["kind"] == "browser.clipboard_in").collect();
    assert_eq!(pastes.len(), 1, "only the allowed paste is recorded: {pastes:?}");
    assert_eq!(pastes[0]["fields"]["bytes"], 2);
    assert_eq!(pastes[0]["session_id"], ids[1]);
    for id in &ids {
        server.http("DELETE", &format!("/v1/sessions/{id}"), Some(server.token()), None);
        server.wait_for_state(server.token(), id, &["destroyed"]);
    }
    assert!(server.stop().success());
}

/// Returns the PIDs of a session's processes whose command line contains `marker`.
fn session_pids(id: &str, marker: &str) -> Vec<i32> {
    session_processes(&[id.to_string()])
        .iter()
        .filter(|line| line.contains(marker))
        .filter_map(|line| line.split(':').next()?.parse().ok())
        .collect()
}

/// What a viewer saw after the test killed its session's renderers.
enum RendererKill {
    /// The viewer heard of the crash, and a reload brought the page back.
    Recovered,
    /// Chromium's browser process died after its renderers, before the page
    /// came back, and the viewer got the end message instead.
    BrowserDied(Value),
}

/// Kills the renderers of a running browser session and follows its viewer.
/// If the page recovers, kills the browser process as well, so the session
/// always ends.
async fn kill_renderers(server: &server::Server, id: &str, token: &str) -> RendererKill {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let stream = tokio::net::TcpStream::connect(server.address).await.unwrap();
    let url = format!("ws://{}/v1/sessions/{id}/attach?token={token}", server.address);
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    next_text(&mut socket, |m| m["type"] == "browser" && m["status"] == "running").await;

    // The test started this session, so it may end the session's renderer
    // processes.
    let renderers = session_pids(id, "--type=renderer");
    assert!(!renderers.is_empty(), "the session has a renderer: {:?}", session_processes(&[id.to_string()]));
    for pid in renderers {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let message = next_text(&mut socket, |m| (m["type"] == "browser" && m["status"] == "renderer_crashed") || m["type"] == "end").await;
    if message["type"] == "end" {
        return RendererKill::BrowserDied(message);
    }

    // A reload brings the page back.
    socket.send(Message::Text(json!({ "type": "reload" }).to_string().into())).await.unwrap();
    let message = next_text(&mut socket, |m| (m["type"] == "browser" && m["status"] == "running") || m["type"] == "end").await;
    if message["type"] == "end" {
        return RendererKill::BrowserDied(message);
    }

    // When the browser itself goes, the session ends and the viewer gets the
    // end message.
    for pid in session_pids(id, "--remote-debugging-pipe") {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let end = next_text(&mut socket, |m| m["type"] == "end").await;
    assert_eq!(end["end"]["reason"], "signaled", "{end}");
    RendererKill::Recovered
}

#[test]
fn crashes_reach_viewer_and_audit() {
    let scratch = Scratch::new("browser-crash");
    let server = server::start(&scratch.state_dir(), &[], &[]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Chromium 148 sometimes ends its browser process with SIGSEGV when a
    // renderer is killed under load. That outcome must also reach the viewer
    // and the audit log, and the renderer path is then tried in a new session.
    let mut recovered = None;
    for _ in 0..4 {
        let (status, body) = server.http("POST", "/v1/sessions", Some(server.token()), Some(&json!({ "profile": "browser", "ttl": "2m" })));
        assert_eq!(status, 201, "{body}");
        let id = body["session"]["id"].as_str().unwrap().to_string();
        let token = body["attach"]["token"].as_str().unwrap().to_string();
        server.wait_for_state(server.token(), &id, &["running"]);
        let outcome = runtime.block_on(kill_renderers(&server, &id, &token));
        let ended = server.wait_for_state(server.token(), &id, &["destroyed", "failed"]);
        assert_eq!(ended["detail"]["teardown"]["clean"], true, "{ended}");
        match outcome {
            RendererKill::Recovered => {
                recovered = Some(id);
                break;
            }
            RendererKill::BrowserDied(end) => {
                assert_eq!(end["end"]["reason"], "signaled", "the viewer is told how the browser ended: {end}");
                assert_eq!(ended["end"]["reason"], "signaled", "the session record has the same end: {ended}");
            }
        }
    }
    let id = recovered.expect("in one of four sessions the page survived its renderer crash");
    let (status, audit) = server.http("GET", "/v1/audit?since=1&limit=1000", Some(server.token()), None);
    assert_eq!(status, 200);
    let crashes = audit["records"].as_array().unwrap().iter().filter(|r| r["kind"] == "browser.renderer_crashed" && r["session_id"] == id.as_str()).count();
    assert!(crashes >= 1, "the renderer crash is in the audit log");
    assert!(server.stop().success());
}
