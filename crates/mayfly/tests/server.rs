//! The control plane as a real process: jobs through the API and the CLI
//! client, delete, events, shutdown, admission, TLS and the first token.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::server::{self, output_text, raw_http, Server};
use common::Scratch;
use serde_json::{json, Value};

fn process_alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Returns the host PID of a session's init, from its `running` event.
fn init_pid(server: &Server, token: &str, id: &str) -> i64 {
    let (_, events) = server.http("GET", &format!("/v1/sessions/{id}/events"), Some(token), None);
    events["events"].as_array().unwrap().iter().find(|e| e["kind"] == "running").unwrap()["detail"]["init_pid"].as_i64().unwrap()
}

fn assert_clean_session(session: &Value) {
    let teardown = &session["detail"]["teardown"];
    assert_eq!(teardown["clean"], true, "{session}");
    assert_eq!(teardown["processes_remaining"], json!([]));
    assert_eq!(teardown["namespaces_remaining"], json!([]));
}

#[test]
fn jobs_run_through_the_api_with_output_status_and_end_reason() {
    let scratch = Scratch::new("server-jobs");
    let server = server::start(&scratch.state_dir(), &[], &[]);
    let token = server.token().to_string();

    let output = server.cli(&token).args(["run", "--ttl", "20s", "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 7"]).output().unwrap();
    assert_eq!(output.status.code(), Some(7), "{}", output_text(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out\n");
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("err\n"), "{}", output_text(&output));

    let started = Instant::now();
    let output = server.cli(&token).args(["run", "--ttl", "2s", "--json", "--", "/bin/sleep", "60"]).output().unwrap();
    assert_eq!(output.status.code(), Some(124), "{}", output_text(&output));
    assert!(started.elapsed() < Duration::from_secs(6));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reached its deadline"), "{stderr}");

    let refused = server.cli(&token).args(["run", "--ttl", "2h", "--", "/bin/true"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(118), "{}", output_text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("maximum of 1h"), "{}", output_text(&refused));

    let listed = server.cli(&token).args(["ls", "--json"]).output().unwrap();
    let sessions: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let sessions = sessions["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2, "the refused request left no session");
    for session in &sessions {
        assert_eq!(session["state"], "destroyed", "{session}");
        assert_clean_session(session);
        let (_, events) = server.http("GET", &format!("/v1/sessions/{}/events", session["id"].as_str().unwrap()), Some(&token), None);
        let kinds: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["pending", "starting", "running", "ended"]);
    }
    let deadline = sessions.iter().find(|s| s["end"]["reason"] == "deadline").unwrap();
    let overshoot = deadline["ended_unix_ms"].as_i64().unwrap() - deadline["deadline_unix_ms"].as_i64().unwrap();
    assert!(overshoot < 1500, "the deadline held within the kill grace: {overshoot} ms late");

    let table = server.cli(&token).arg("ls").output().unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).starts_with("ID"), "{}", output_text(&table));
    // A reader that goes away early ends the client quietly.
    let mut piped = std::process::Command::new("sh");
    piped.arg("-c").arg(format!("{} ls --json | head -c 5", common::MAYFLY)).env("MAYFLY_URL", &server.url).env("MAYFLY_TOKEN", &token);
    let piped = piped.output().unwrap();
    assert!(!String::from_utf8_lossy(&piped.stderr).contains("panicked"), "{}", output_text(&piped));

    // With --json a remote run reports the whole ended session.
    let output = server.cli(&token).args(["run", "--json", "--ttl", "10s", "--", "/bin/true"]).output().unwrap();
    let report = common::report(&output);
    assert_eq!(report["state"], "destroyed", "{report}");
    assert_eq!(report["detail"]["teardown"]["clean"], true, "{report}");
    let refused = server.cli(&token).args(["run", "--json", "--ttl", "2h", "--", "/bin/true"]).output().unwrap();
    assert_eq!(common::report(&refused)["exit_code"], 118);
    // Input for a server's job is not sent, and the client says so.
    let input = scratch.path.join("input");
    std::fs::write(&input, "not sent\n").unwrap();
    let output = server.cli(&token).args(["run", "--ttl", "10s", "--", "/bin/sh", "-c", "cat; echo end"]).stdin(std::fs::File::open(&input).unwrap()).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "end\n");
    assert!(String::from_utf8_lossy(&output.stderr).contains("standard input is not sent to a job on a server"), "{}", output_text(&output));
    let quiet = server.cli(&token).args(["run", "--ttl", "10s", "--", "/bin/true"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("standard input"), "{}", output_text(&quiet));

    let verify = server.cli(&token).args(["audit", "verify", "--server", &server.url]).output().unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", output_text(&verify));
    assert!(server::ledger_records(&scratch.state_dir()).is_empty());
    assert!(server.stop().success());
}

#[test]
fn delete_destroys_a_running_session_at_once_and_events_stream_its_end() {
    let scratch = Scratch::new("server-delete");
    let server = server::start(&scratch.state_dir(), &[], &[]);
    let token = server.token().to_string();
    let id = server.create(&token, "60s", &["/bin/sh", "-c", "trap '' TERM; sleep 100"]);
    server.wait_for_state(&token, &id, &["running"]);
    let pid = init_pid(&server, &token, &id);
    assert!(process_alive(pid));

    // A live event stream, read on another thread until the server closes it.
    let address = server.address;
    let (stream_token, stream_path) = (token.clone(), format!("/v1/sessions/{id}/events"));
    let stream = std::thread::spawn(move || raw_http(address, "GET", &stream_path, Some(&stream_token), None, &[("Accept", "text/event-stream")]));
    std::thread::sleep(Duration::from_millis(200));

    let started = Instant::now();
    let (status, session) = server.http("DELETE", &format!("/v1/sessions/{id}"), Some(&token), None);
    assert_eq!(status, 200, "{session}");
    assert!(started.elapsed() < Duration::from_secs(2), "delete took {:?}", started.elapsed());
    assert_eq!(session["state"], "destroyed");
    assert_eq!(session["end"]["reason"], "destroyed");
    assert_eq!(session["end"]["detail"], "deleted by admin");
    assert_eq!(session["exit_code"], 121);
    assert_clean_session(&session);
    assert!(!process_alive(pid), "init {pid} survived the delete");

    let (status, _, body) = stream.join().unwrap().unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("event: terminating") && body.contains("event: ended"), "{body}");

    let (status, gone) = server.http("GET", &format!("/v1/sessions/{id}"), Some(&token), None);
    assert_eq!(status, 410);
    assert_eq!(gone["end"]["reason"], "destroyed");
    let (status, again) = server.http("DELETE", &format!("/v1/sessions/{id}"), Some(&token), None);
    assert_eq!((status, again["ended_unix_ms"].clone()), (200, session["ended_unix_ms"].clone()));
}

#[test]
fn a_full_host_answers_503_with_retry_after() {
    let scratch = Scratch::new("server-admission");
    let config = scratch.path.join("mayfly.toml");
    std::fs::write(&config, "[capacity]\nsessions = 1\n").unwrap();
    let server = server::start(&scratch.state_dir(), &["--config", config.to_str().unwrap()], &[]);
    let token = server.token().to_string();
    let first = server.create(&token, "60s", &["/bin/sleep", "100"]);
    let body = json!({ "ttl": "10s", "command": ["/bin/true"] });
    let (status, head, text) = raw_http(server.address, "POST", "/v1/sessions", Some(&token), Some(&body), &[]).unwrap();
    assert_eq!(status, 503, "{text}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert!(text.contains("host-full") && text.contains("maximum of 1 sessions"), "{text}");
    server.http("DELETE", &format!("/v1/sessions/{first}"), Some(&token), None);
    let second = server.create(&token, "10s", &["/bin/true"]);
    server.wait_for_state(&token, &second, &["destroyed"]);
}

#[test]
fn sigterm_destroys_running_sessions_and_records_why() {
    let scratch = Scratch::new("server-sigterm");
    let server = server::start(&scratch.state_dir(), &[], &[]);
    let token = server.token().to_string();
    let id = server.create(&token, "60s", &["/bin/sleep", "100"]);
    server.wait_for_state(&token, &id, &["running"]);
    let pid = init_pid(&server, &token, &id);
    assert!(server.stop().success());
    assert!(!process_alive(pid));
    assert!(server::ledger_records(&scratch.state_dir()).is_empty());

    let log = std::fs::read_to_string(scratch.state_dir().join("audit/log.jsonl")).unwrap();
    let records: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ended = records.iter().find(|r| r["kind"] == "session.ended" && r["session_id"] == id.as_str()).unwrap();
    assert_eq!(ended["fields"]["end"]["detail"], "the server is shutting down");
    let stopped = records.iter().find(|r| r["kind"] == "server.stopped").unwrap();
    assert_eq!(stopped["fields"]["signal"], "SIGTERM");
    assert_eq!(stopped["fields"]["left_running"], 0);
}

#[test]
fn left_sessions_keep_their_deadline_while_the_server_is_down() {
    let scratch = Scratch::new("server-leave");
    let config = scratch.path.join("mayfly.toml");
    std::fs::write(&config, "on_shutdown = \"leave\"\n").unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let server = server::start(&scratch.state_dir(), &args, &[]);
    let token = server.token().to_string();
    let id = server.create(&token, "3s", &["/bin/sh", "-c", "trap '' TERM; sleep 100"]);
    server.wait_for_state(&token, &id, &["running"]);
    let pid = init_pid(&server, &token, &id);
    assert!(server.stop().success());
    assert!(process_alive(pid), "leave mode keeps the session running");
    // No process supervises it now, so its own init ends it at the deadline.
    let started = Instant::now();
    while process_alive(pid) && started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!process_alive(pid), "the deadline did not hold while the server was down");

    let server = server::start(&scratch.state_dir(), &args, &[]);
    assert!(server.admin_token.is_none(), "the admin token is printed only at the first start");
    let session = server.wait_for_state(&token, &id, &["failed"]);
    assert_eq!(session["end"]["reason"], "interrupted");
    assert_eq!(session["exit_code"], 120);
    assert!(server::ledger_records(&scratch.state_dir()).is_empty());
}

#[test]
fn a_supplied_bootstrap_token_is_stored_only_as_a_hash() {
    let scratch = Scratch::new("server-bootstrap");
    let generated = std::process::Command::new(common::MAYFLY).args(["token", "generate"]).output().unwrap();
    let token = String::from_utf8(generated.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("mfy_"));
    let server = server::start(&scratch.state_dir(), &[], &[("MAYFLY_BOOTSTRAP_TOKEN", &token)]);
    assert!(server.admin_token.is_none(), "a supplied token is not printed");
    let (status, me) = server.http("GET", "/v1/me", Some(&token), None);
    assert_eq!(status, 200);
    assert_eq!(me["groups"], json!(["admins"]));
    let db = std::fs::read(scratch.state_dir().join("mayfly.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(&token[13..]));
    // The write-ahead log contains the same rows, so it is as private as the database.
    for name in ["mayfly.db", "mayfly.db-wal", "mayfly.db-shm"] {
        let mode = std::fs::metadata(scratch.state_dir().join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
    }

    let bad = std::process::Command::new(common::MAYFLY)
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(scratch.path.join("other"))
        .env("MAYFLY_BOOTSTRAP_TOKEN", "hunter2")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", output_text(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("mayfly token generate"), "{}", output_text(&bad));
    assert!(!scratch.path.join("other").exists(), "a rejected start leaves no state directory");
}

#[test]
fn bad_configuration_stops_the_server_with_a_named_cause() {
    let scratch = Scratch::new("server-config");
    let serve = |extra: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(common::MAYFLY);
        command.args(["serve", "--listen", "127.0.0.1:0", "--state-dir"]).arg(scratch.state_dir()).args(extra);
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let policy = scratch.path.join("bad.cedar");
    std::fs::write(&policy, "permit (principal, action, resource);\n\npermit (principal, action resource);\n").unwrap();
    let output = serve(&["--policy", policy.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("bad.cedar:3:"), "{}", output_text(&output));

    let config = scratch.path.join("mayfly.toml");
    std::fs::write(&config, "listen_port = 1\n").unwrap();
    let output = serve(&["--config", config.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("listen_port"), "{}", output_text(&output));

    let output = serve(&[], &[("MAYFLY_LISTN", "127.0.0.1:1")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("MAYFLY_LISTN"), "{}", output_text(&output));

    let output = serve(&["--profiles-dir", "/nonexistent-profiles"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent-profiles"), "{}", output_text(&output));
}

#[test]
fn one_server_at_a_time_owns_a_state_directory() {
    let scratch = Scratch::new("server-lock");
    let server = server::start(&scratch.state_dir(), &[], &[]);
    let token = server.token().to_string();
    let id = server.create(&token, "60s", &["/bin/sleep", "100"]);
    server.wait_for_state(&token, &id, &["running"]);
    let second = std::process::Command::new(common::MAYFLY)
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(scratch.state_dir())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2), "{}", output_text(&second));
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(message.contains("another mayfly serve") && message.contains(&server.child.id().to_string()), "{message}");
    // The first server's session was left alone.
    let (status, session) = server.http("GET", &format!("/v1/sessions/{id}"), Some(&token), None);
    assert_eq!((status, session["state"].as_str()), (200, Some("running")));
}

#[test]
fn tls_serves_with_a_generated_certificate_that_clients_pin() {
    let scratch = Scratch::new("server-tls");
    let config = scratch.path.join("mayfly.toml");
    std::fs::write(&config, "[tls]\nself_signed = true\n").unwrap();
    let server = server::start(&scratch.state_dir(), &["--config", config.to_str().unwrap()], &[]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let cert = scratch.state_dir().join("tls/cert.pem");
    let fingerprint = std::process::Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(&cert).output().unwrap();
    let fingerprint = String::from_utf8_lossy(&fingerprint.stdout).to_string();
    assert!(fingerprint.contains(server.fingerprint.as_deref().unwrap()), "{fingerprint} vs {:?}", server.fingerprint);
    let token = server.token().to_string();

    let output = server.cli(&token).env("MAYFLY_CA_CERT", &cert).args(["run", "--ttl", "10s", "--", "/bin/echo", "over tls"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "over tls\n");
    let untrusted = server.cli(&token).args(["ls"]).output().unwrap();
    assert_eq!(untrusted.status.code(), Some(119), "{}", output_text(&untrusted));
    assert!(String::from_utf8_lossy(&untrusted.stderr).contains("--ca-cert"), "{}", output_text(&untrusted));
    // Plain HTTP to the TLS port gets nowhere.
    assert!(server::try_http(server.address, "GET", "/healthz", None, None).map(|(s, _)| s != 200).unwrap_or(true));
}

#[test]
fn the_postgres_store_serves_sessions() {
    let scratch = Scratch::new("server-postgres");
    let url = mayfly_control::testing::postgres_url();
    let database = format!("mayfly_server_{}", std::process::id());
    let admin = server::PgAdmin::new(&url);
    admin.create_database(&database);
    let url = format!("{}/{database}", url.rsplit_once('/').unwrap().0);
    let server = server::start(&scratch.state_dir(), &["--database-url", &url], &[]);
    let token = server.token().to_string();
    let output = server.cli(&token).args(["run", "--ttl", "10s", "--", "/bin/echo", "stored in postgres"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    let (_, list) = server.http("GET", "/v1/sessions", Some(&token), None);
    assert_eq!(list["sessions"][0]["state"], "destroyed");
    assert!(!scratch.state_dir().join("mayfly.db").exists(), "no SQLite database beside PostgreSQL");
    drop(server);
    admin.drop_database(&database);
}

#[test]
fn metrics_headers_and_websocket_messages_are_bounded_and_reported() {
    let scratch = Scratch::new("server-metrics");
    let server = server::start(&scratch.state_dir(), &[], &[]);
    let token = server.token().to_string();
    let id = server.create(&token, "20s", &["/bin/sh", "-c", "exit 3"]);
    server.wait_for_state(&token, &id, &["destroyed"]);
    let (status, _) = server.http("GET", "/v1/me", Some("mfy_AAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"), None);
    assert_eq!(status, 401);

    let (status, _, text) = raw_http(server.address, "GET", "/metrics", Some(&token), None, &[]).unwrap();
    assert_eq!(status, 200, "{text}");
    for expected in [
        "mayfly_sessions{state=\"destroyed\"} 1",
        "mayfly_sessions{state=\"running\"} 0",
        "mayfly_session_creation_seconds_count 1",
        "mayfly_session_teardown_seconds_count 1",
        "mayfly_deadline_overshoot_seconds_count 0",
        "mayfly_authentication_failures_total 1",
        "mayfly_authorization_denials_total 0",
        "mayfly_rate_limited_source_total 0",
    ] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }

    // Headers past the limit are refused before any handler runs.
    let huge = "x".repeat(40 * 1024);
    let (status, _, _) = raw_http(server.address, "GET", "/v1/me", Some(&token), None, &[("X-Padding", &huge)]).unwrap_or((431, String::new(), String::new()));
    assert_eq!(status, 431);

    // A WebSocket message past the limit closes the attach.
    let id = server.create(&token, "20s", &["/bin/sleep", "30"]);
    server.wait_for_state(&token, &id, &["running"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
        let mut request = format!("ws://{}/v1/sessions/{id}/attach", server.address).into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let stream = tokio::net::TcpStream::connect(server.address).await.unwrap();
        let (mut socket, _) = tokio_tungstenite::client_async(request, stream).await.unwrap();
        let first = socket.next().await.unwrap().unwrap();
        assert!(first.to_text().unwrap().contains("\"type\":\"session\""), "{first:?}");
        socket.send(Message::Binary(vec![0u8; 200 * 1024].into())).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match socket.next().await {
                    None | Some(Err(_)) => return None,
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await
        .expect("the server closed the attach");
        assert!(closed.is_none() || closed == Some(1009), "{closed:?}");
    });
    let (status, session) = server.http("DELETE", &format!("/v1/sessions/{id}"), Some(&token), None);
    assert_eq!((status, session["state"].as_str()), (200, Some("destroyed")));
    let log = std::fs::read_to_string(scratch.state_dir().join("audit/log.jsonl")).unwrap();
    assert!(log.contains("\"session.attached\"") && log.contains("\"session.detached\""));
    assert!(log.contains("\"policy_sha256\""));
}

#[test]
fn a_late_attach_still_reads_the_output_and_the_end() {
    let scratch = Scratch::new("server-late-attach");
    let server = server::start(&scratch.state_dir(), &[], &[]);
    let token = server.token().to_string();
    let body = json!({ "ttl": "20s", "command": ["/bin/sh", "-c", "echo late reader; exit 4"] });
    let (status, created) = server.http("POST", "/v1/sessions", Some(&token), Some(&body));
    assert_eq!(status, 201);
    let id = created["session"]["id"].as_str().unwrap().to_string();
    let attach_token = created["attach"]["token"].as_str().unwrap().to_string();
    server.wait_for_state(&token, &id, &["destroyed"]);
    // Past a prune of the periodic duties, the attach token still works.
    std::thread::sleep(Duration::from_millis(200));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (output, end) = runtime.block_on(async {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let stream = tokio::net::TcpStream::connect(server.address).await.unwrap();
        let url = format!("ws://{}/v1/sessions/{id}/attach?token={attach_token}", server.address);
        let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        let (mut output, mut end) = (Vec::new(), Value::Null);
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Binary(frame) => output.extend_from_slice(&frame[1..]),
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "end" {
                        end = value;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        (output, end)
    });
    assert_eq!(String::from_utf8_lossy(&output), "late reader\n");
    assert_eq!(end["exit_code"], 4, "{end}");
    assert_eq!(end["state"], "destroyed");
}

/// Reads WebSocket messages until `done` says so or 15 seconds pass;
/// returns the terminal output seen and the text messages.
async fn read_until(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    output: &mut String,
    texts: &mut Vec<Value>,
    done: impl Fn(&str, &[Value]) -> bool,
) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done(output, texts) {
        let message = tokio::time::timeout_at(deadline, socket.next()).await;
        match message {
            Ok(Some(Ok(Message::Binary(frame)))) => output.push_str(&String::from_utf8_lossy(&frame[1..])),
            Ok(Some(Ok(Message::Text(text)))) => texts.push(serde_json::from_str(&text).unwrap()),
            Ok(Some(Ok(_))) => {}
            _ => return,
        }
    }
}

#[test]
fn a_shell_session_runs_on_a_terminal_with_one_writer() {
    let scratch = Scratch::new("server-shell");
    let profiles = scratch.path.join("profiles");
    let shell = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mayfly-core/profiles/shell.toml")).unwrap();
    let observed = shell.replace("observers = false", "observers = true").replace("warnings = [\"5m\", \"1m\"]", "warnings = [\"10s\", \"5s\"]");
    common::write(&profiles.join("watched.toml"), &observed);
    let server = server::start(&scratch.state_dir(), &["--profiles-dir", profiles.to_str().unwrap()], &[]);
    let token = server.token().to_string();
    let body = json!({ "profile": "watched", "ttl": "12s", "terminal": { "rows": 30, "cols": 100 } });
    let (status, created) = server.http("POST", "/v1/sessions", Some(&token), Some(&body));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["session"]["kind"], "shell");
    let id = created["session"]["id"].as_str().unwrap().to_string();
    let (status, refused) = server.http("POST", "/v1/sessions", Some(&token), Some(&json!({ "profile": "watched", "command": ["/bin/true"] })));
    assert_eq!(status, 400, "{refused}");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
        let connect = |mode: &'static str| {
            let (address, id, token) = (server.address, id.clone(), token.clone());
            async move {
                let mut request = format!("ws://{address}/v1/sessions/{id}/attach?mode={mode}").into_client_request().unwrap();
                request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
                let stream = tokio::net::TcpStream::connect(address).await.unwrap();
                tokio_tungstenite::client_async(request, stream).await
            }
        };
        let (mut writer, _) = connect("write").await.unwrap();
        // A second writer is turned away; an observer is let in.
        let second = connect("write").await;
        assert!(matches!(second, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 409), "{second:?}");
        let (mut observer, _) = connect("observe").await.unwrap();

        let (mut output, mut texts) = (String::new(), Vec::new());
        writer.send(Message::Binary(b"echo sum=$((6*7)); tty; stty size\r".to_vec().into())).await.unwrap();
        read_until(&mut writer, &mut output, &mut texts, |o, _| o.contains("30 100")).await;
        assert!(output.contains("sum=42"), "{output}");
        assert!(output.contains("/dev/pts/"), "the shell has a terminal: {output}");
        assert!(output.contains("30 100"), "the initial size applies: {output}");

        writer.send(Message::Text(json!({ "type": "resize", "rows": 50, "cols": 132 }).to_string().into())).await.unwrap();
        writer.send(Message::Binary(b"stty size\r".to_vec().into())).await.unwrap();
        read_until(&mut writer, &mut output, &mut texts, |o, _| o.contains("50 132")).await;
        assert!(output.contains("50 132"), "{output}");

        // The observer sees the same terminal and cannot type into it.
        let (mut watched, mut observer_texts) = (String::new(), Vec::new());
        observer.send(Message::Binary(b"echo from-observer\r".to_vec().into())).await.unwrap();
        read_until(&mut observer, &mut watched, &mut observer_texts, |o, _| o.contains("50 132")).await;
        assert!(watched.contains("sum=42"));
        assert!(!watched.contains("from-observer"), "{watched}");

        // Warnings before the deadline, then the end with its reason.
        read_until(&mut writer, &mut output, &mut texts, |_, t| t.iter().any(|m| m["type"] == "end")).await;
        let warnings: Vec<i64> = texts.iter().filter(|m| m["type"] == "warning").map(|m| m["remaining_seconds"].as_i64().unwrap()).collect();
        assert_eq!(warnings, vec![10, 5], "{texts:?}");
        let end = texts.iter().find(|m| m["type"] == "end").unwrap();
        assert_eq!(end["end"]["reason"], "deadline", "{end}");
    });
    let log = std::fs::read_to_string(scratch.state_dir().join("audit/log.jsonl")).unwrap();
    assert!(log.contains("\"role\":\"writer\"") && log.contains("\"role\":\"observer\""));
}

#[test]
fn an_idle_shell_ends_after_its_idle_timeout_and_output_does_not_count() {
    let scratch = Scratch::new("server-idle");
    let profiles = scratch.path.join("profiles");
    let shell = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mayfly-core/profiles/shell.toml")).unwrap();
    let ticking = shell
        .replace("idle_timeout = \"10m\"", "idle_timeout = \"10s\"")
        .replace("command = [\"/bin/bash\", \"-i\"]", "command = [\"/bin/sh\", \"-c\", \"while true; do echo tick; sleep 1; done\"]");
    common::write(&profiles.join("brief.toml"), &ticking);
    let server = server::start(&scratch.state_dir(), &["--profiles-dir", profiles.to_str().unwrap()], &[]);
    let token = server.token().to_string();
    // The shell prints every second, but nobody types.
    let body = json!({ "profile": "brief", "ttl": "60s" });
    let (status, created) = server.http("POST", "/v1/sessions", Some(&token), Some(&body));
    assert_eq!(status, 201, "{created}");
    let id = created["session"]["id"].as_str().unwrap().to_string();
    let attach_token = created["attach"]["token"].as_str().unwrap().to_string();
    let started = Instant::now();
    // An attached writer that types nothing is warned halfway through.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let texts = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(server.address).await.unwrap();
        let url = format!("ws://{}/v1/sessions/{id}/attach?token={attach_token}", server.address);
        let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        let (mut output, mut texts) = (String::new(), Vec::new());
        read_until(&mut socket, &mut output, &mut texts, |_, t| t.iter().any(|m| m["type"] == "end")).await;
        texts
    });
    let idle_warnings: Vec<&Value> = texts.iter().filter(|m| m["type"] == "idle_warning").collect();
    assert_eq!(idle_warnings.len(), 1, "{texts:?}");
    assert!(idle_warnings[0]["remaining_seconds"].as_u64().unwrap() <= 5, "{texts:?}");
    let session = server.wait_for_state(&token, &id, &["destroyed"]);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(15), "ended after {took:?}");
    assert_eq!(session["end"]["reason"], "destroyed");
    assert!(session["end"]["detail"].as_str().unwrap().starts_with("idle timeout"), "{session}");
}

#[test]
fn a_recorded_shell_is_kept_as_asciicast_with_its_digest_audited() {
    use sha2::Digest;
    let scratch = Scratch::new("server-recording");
    let profiles = scratch.path.join("profiles");
    let shell = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mayfly-core/profiles/shell.toml")).unwrap();
    common::write(&profiles.join("recorded.toml"), &shell.replace("recording = false", "recording = true"));
    let server = server::start(&scratch.state_dir(), &["--profiles-dir", profiles.to_str().unwrap()], &[]);
    let token = server.token().to_string();
    let (status, created) = server.http("POST", "/v1/sessions", Some(&token), Some(&json!({ "profile": "recorded", "ttl": "60s" })));
    assert_eq!(status, 201, "{created}");
    let id = created["session"]["id"].as_str().unwrap().to_string();
    let attach_token = created["attach"]["token"].as_str().unwrap().to_string();
    let (status, early) = server.http("GET", &format!("/v1/sessions/{id}/recording"), Some(&token), None);
    assert_eq!(status, 409, "{early}");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let stream = tokio::net::TcpStream::connect(server.address).await.unwrap();
        let url = format!("ws://{}/v1/sessions/{id}/attach?token={attach_token}", server.address);
        let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        socket.send(Message::Binary(b"echo recorded-$((2+3))-words\r".to_vec().into())).await.unwrap();
        let (mut output, mut texts) = (String::new(), Vec::new());
        read_until(&mut socket, &mut output, &mut texts, |o, _| o.contains("recorded-5-words")).await;
        assert!(output.contains("recorded-5-words"), "{output}");
    });
    let (status, _) = server.http("DELETE", &format!("/v1/sessions/{id}"), Some(&token), None);
    assert_eq!(status, 200);

    let (status, _, text) = raw_http(server.address, "GET", &format!("/v1/sessions/{id}/recording"), Some(&token), None, &[]).unwrap();
    assert_eq!(status, 200);
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(text.contains("recorded-5-words"), "{text}");
    let digest = mayfly_audit::hex(&sha2::Sha256::digest(text.as_bytes()));
    let log = std::fs::read_to_string(scratch.state_dir().join("audit/log.jsonl")).unwrap();
    let record: Value = log.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).find(|r| r["kind"] == "session.recording").unwrap();
    assert_eq!(record["fields"]["complete"], true);
    assert_eq!(record["fields"]["sha256"], digest.as_str(), "the audited digest matches the download");
    assert!(log.contains("\"recording.downloaded\""));

    // Another person may not download it.
    let (_, bob) = server.http("POST", "/v1/tokens", Some(&token), Some(&json!({ "name": "bob", "principal": "bob" })));
    let (status, _) = server.http("GET", &format!("/v1/sessions/{id}/recording"), Some(bob["token"].as_str().unwrap()), None);
    assert_eq!(status, 403);
}
