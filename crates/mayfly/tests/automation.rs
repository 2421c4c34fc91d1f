//! The DevTools endpoint of browser sessions against a real server and
//! real Chromium. One test speaks the protocol itself while a viewer is
//! attached, and checks the close codes for floods and oversized messages.
//! The other runs web/tests/automation.test.mjs, which drives the browser
//! with Playwright and Puppeteer and checks whom it rejects. Both use a
//! profile with `transfer.automation = true` whose browser may reach a web
//! server of the test on loopback, and one without automation.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::devtools::{self, call, Socket};
use common::origin::{self, Page};
use common::server;
use common::Scratch;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;


/// Returns the browser profiles: `auto` allows automation and reaches the
/// origin, `brief` is `auto` with a 3-second `viewer_grace`, and `plain` is
/// the built-in browser profile.
fn write_profiles(dir: &Path, origin_port: u16) {
    let base = include_str!("../../mayfly-core/profiles/browser.toml");
    assert!(base.contains("automation = false"), "the built-in browser profile sets transfer.automation");
    assert!(base.contains("viewer_grace = \"2m\""), "the built-in browser profile sets browser.viewer_grace");
    let auto = base
        .replace("start_url = \"about:blank\"", &format!("start_url = \"http://127.0.0.1:{origin_port}/\""))
        .replace("automation = false", "automation = true");
    let auto = format!("{auto}\n[network]\negress = \"proxy\"\nallow = [\"127.0.0.1:{origin_port}\"]\n");
    common::write(&dir.join("auto.toml"), &auto);
    common::write(&dir.join("brief.toml"), &auto.replace("viewer_grace = \"2m\"", "viewer_grace = \"3s\""));
    common::write(&dir.join("plain.toml"), base);
}

/// Decodes a query string value: `+` is a space, `%XX` a byte.
fn decode_query_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Serves the pages the browser opens, on a loopback port: a home page
/// with a greeting and a download link, a form, and the form's result.
fn origin() -> u16 {
    origin::serve(|request| match request.path.as_str() {
        "/" => Page::html(
            "<!doctype html><title>Automation home</title><body style=\"font:32px sans-serif\"><p id=greeting>Hello from the origin</p><a id=download href=\"/download\">Download the report</a>",
        ),
        "/form" => Page::html(
            "<!doctype html><title>Form</title><body style=\"font:32px sans-serif\"><form action=\"/result\"><input id=name name=name style=\"font-size:32px\"><button id=send>Send</button></form>",
        ),
        "/result" => {
            let name = request.query.split('&').find_map(|pair| pair.strip_prefix("name=")).map(decode_query_value).unwrap_or_default();
            Page::html(format!("<!doctype html><title>Result</title><body style=\"font:32px sans-serif\"><p id=result>Thank you, {}</p>", escape_html(&name)))
        }
        "/download" => Page::new("text/plain", "quarterly numbers").header("Content-Disposition: attachment; filename=\"report.txt\""),
        _ => Page::new("text/plain", "not found"),
    })
}

/// Starts a server with the two profiles and returns it with the origin's port.
fn start(scratch: &Scratch) -> (server::Server, u16) {
    let origin_port = origin();
    let profiles = scratch.path.join("profiles");
    write_profiles(&profiles, origin_port);
    let profiles_arg = profiles.to_str().unwrap().to_string();
    (server::start(&scratch.state_dir(), &["--profiles-dir", &profiles_arg], &[]), origin_port)
}

fn create_token(server: &server::Server, principal: &str) -> String {
    let output = server.cli(server.token()).args(["token", "create", "--name", principal, "--principal", principal, "--groups", "dev"]).output().unwrap();
    assert!(output.status.success(), "token create for {principal}: {}", server::output_text(&output));
    String::from_utf8(output.stdout).unwrap().lines().find(|l| l.starts_with("mfy_")).expect("the new token is printed").trim().to_string()
}

/// Connects to a WebSocket of the server, with a bearer token when given.
async fn connect(server: &server::Server, path: &str, token: Option<&str>) -> Socket {
    devtools::connect(server.address, path, token).await
}

/// Reads the close frame's code, skipping other messages.
async fn close_code(socket: &mut Socket) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), socket.next()).await.expect("the server closes the connection") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
}

/// Reads the viewer's messages until the page shows `url` and a frame of it
/// arrives.
async fn viewer_shows(viewer: &mut Socket, url: &str) {
    let mut at_url = false;
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), viewer.next()).await.unwrap_or_else(|_| panic!("the viewer never showed {url}; it received {seen:?}"));
        match next {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                seen.push(message.clone());
                if message["type"] == "browser" && message["url"] == url {
                    at_url = true;
                }
            }
            Some(Ok(Message::Binary(bytes))) if at_url && bytes.first() == Some(&0x10) => return,
            Some(Ok(_)) => {}
            other => panic!("the viewer's connection ended: {other:?}"),
        }
    }
}

/// Reads the viewer's messages until its tab list has `tab` in front.
async fn viewer_activates(viewer: &mut Socket, tab: &str) {
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), viewer.next()).await.unwrap_or_else(|_| panic!("tab {tab} never came to the front; the viewer received {seen:?}"));
        match next {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "tabs" && message["active"] == tab {
                    return;
                }
                seen.push(message);
            }
            Some(Ok(_)) => {}
            other => panic!("the viewer's connection ended: {other:?}"),
        }
    }
}

fn audit_records(server: &server::Server, session: &str) -> Vec<Value> {
    let (status, body) = server.http("GET", "/v1/audit?since=1&limit=1000", Some(server.token()), None);
    assert_eq!(status, 200, "{body}");
    body["records"].as_array().unwrap().iter().filter(|r| r["session_id"] == session).cloned().collect()
}

#[test]
fn viewer_keeps_frames_while_a_client_automates() {
    let scratch = Scratch::new("automation-raw");
    let (server, origin_port) = start(&scratch);
    let origin = format!("http://127.0.0.1:{origin_port}");
    let (status, created) = server.http("POST", "/v1/sessions", Some(server.token()), Some(&json!({ "profile": "auto", "ttl": "5m" })));
    assert_eq!(status, 201, "{created}");
    let id = created["session"]["id"].as_str().unwrap().to_string();
    let attach_token = created["attach"]["token"].as_str().unwrap().to_string();
    server.wait_for_state(server.token(), &id, &["running"]);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut viewer = connect(&server, &format!("/v1/sessions/{id}/attach?token={attach_token}"), None).await;
        viewer_shows(&mut viewer, &format!("{origin}/")).await;
        let devtools = format!("/v1/sessions/{id}/devtools");
        let mut client = connect(&server, &devtools, Some(server.token())).await;

        // Commands without a session go to the client's browser session and
        // come back without one, with the client's ids.
        let targets = call(&mut client, 1, "Target.getTargets", json!({}), None).await;
        assert!(targets.get("sessionId").is_none(), "{targets}");
        let page = targets["result"]["targetInfos"].as_array().unwrap().iter().find(|t| t["type"] == "page").expect("the viewer's page is listed")["targetId"]
            .as_str()
            .unwrap()
            .to_string();
        let attached = call(&mut client, 2, "Target.attachToTarget", json!({ "targetId": page, "flatten": true }), None).await;
        let session = attached["result"]["sessionId"].as_str().expect("a session on the page").to_string();
        let navigated = call(&mut client, 3, "Page.navigate", json!({ "url": format!("{origin}/form") }), Some(&session)).await;
        assert_eq!(navigated["sessionId"], session.as_str(), "{navigated}");
        assert!(navigated.get("error").is_none(), "{navigated}");

        // The viewer follows what the client did to its page.
        viewer_shows(&mut viewer, &format!("{origin}/form")).await;

        let rejected = call(&mut client, 4, "Browser.close", json!({}), None).await;
        assert!(rejected["error"]["message"].as_str().unwrap().starts_with("Mayfly rejects Browser.close"), "{rejected}");
        let quitting = call(&mut client, 8, "Page.navigate", json!({ "url": "chrome://quit" }), Some(&session)).await;
        assert!(quitting["error"]["message"].as_str().unwrap().contains("only http, https and data addresses"), "{quitting}");

        // Commands that never finish pile up until the client counts as
        // flooding the browser and is disconnected.
        let created = call(&mut client, 6, "Target.createTarget", json!({ "url": "about:blank" }), None).await;
        let spare = created["result"]["targetId"].as_str().unwrap().to_string();
        // The client's new page comes to the front once the driver has set
        // it up, and the viewer's navigation goes to the page in front.
        viewer_activates(&mut viewer, &spare).await;
        let attached = call(&mut client, 7, "Target.attachToTarget", json!({ "targetId": spare, "flatten": true }), None).await;
        let spare_session = attached["result"]["sessionId"].as_str().unwrap().to_string();
        for id in 100..1200 {
            let message = json!({ "id": id, "sessionId": spare_session, "method": "Runtime.evaluate", "params": { "expression": "new Promise(() => {})", "awaitPromise": true } });
            if client.send(Message::Text(message.to_string().into())).await.is_err() {
                break;
            }
        }
        assert_eq!(close_code(&mut client).await, Some(CloseCode::from(4029)), "a flooding client is closed with 4029");

        // The driver works on: the viewer's own navigation is shown.
        let navigate = json!({ "type": "navigate", "url": format!("{origin}/") });
        viewer.send(Message::Text(navigate.to_string().into())).await.unwrap();
        viewer_shows(&mut viewer, &format!("{origin}/")).await;

        // A message above 16 MiB ends the connection with 1009.
        let mut client = connect(&server, &devtools, Some(server.token())).await;
        let huge = json!({ "id": 1, "method": "Runtime.evaluate", "params": { "expression": "x".repeat(17 << 20) } });
        let _ = client.send(Message::Text(huge.to_string().into())).await;
        assert_eq!(close_code(&mut client).await, Some(CloseCode::Size), "an oversized message is closed with 1009");

        // Still served after both clients are gone.
        viewer.send(Message::Text(json!({ "type": "navigate", "url": format!("{origin}/form") }).to_string().into())).await.unwrap();
        viewer_shows(&mut viewer, &format!("{origin}/form")).await;
    });

    let records = audit_records(&server, &id);
    let reasons: Vec<&str> = records.iter().filter(|r| r["kind"] == "browser.automation_detached").map(|r| r["fields"]["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, vec!["client flooded", "message too large"], "{records:?}");
    let attached = records.iter().filter(|r| r["kind"] == "browser.automation_attached").count();
    assert_eq!(attached, 2, "{records:?}");
    assert!(server.stop().success());
}

#[test]
fn automation_client_keeps_the_session_alive() {
    let scratch = Scratch::new("automation-grace");
    let (server, _) = start(&scratch);
    let (status, created) = server.http("POST", "/v1/sessions", Some(server.token()), Some(&json!({ "profile": "brief", "ttl": "2m" })));
    assert_eq!(status, 201, "{created}");
    let id = created["session"]["id"].as_str().unwrap().to_string();
    server.wait_for_state(server.token(), &id, &["running"]);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = connect(&server, &format!("/v1/sessions/{id}/devtools"), Some(server.token())).await;
        let version = call(&mut client, 1, "Browser.getVersion", json!({}), None).await;
        assert!(version["result"]["product"].as_str().unwrap().contains("Chrome"), "{version}");
        // Twice the 3 s grace, with no viewer but the automation client.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let (status, session) = server.http("GET", &format!("/v1/sessions/{id}"), Some(server.token()), None);
        assert_eq!(status, 200, "the session outlived its grace while a client automated it: {session}");
        assert_eq!(session["state"], "running", "{session}");
        client.close(None).await.unwrap();
    });

    let ended = server.wait_for_state(server.token(), &id, &["destroyed"]);
    assert!(ended["end"]["detail"].as_str().unwrap().contains("no viewer for 3s"), "the session ended the grace after the client left: {ended}");
    assert!(server.stop().success());
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[test]
fn playwright_and_puppeteer_automate_sessions() {
    let repository = repository();
    let web = repository.join("web");
    for package in ["playwright-core", "puppeteer-core"] {
        assert!(web.join("node_modules").join(package).is_dir(), "web/node_modules/{package} is missing; building the workspace runs npm ci in web/, so run cargo build first");
    }
    let scratch = Scratch::new("automation-node");
    let (server, origin_port) = start(&scratch);
    let alice = create_token(&server, "alice");
    let bob = create_token(&server, "bob");
    let screenshots = repository.join("target/automation-screenshots");
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec", "--test-concurrency=1", "tests/automation.test.mjs"])
        .current_dir(&web)
        .env("MAYFLY_URL", &server.url)
        .env("MAYFLY_ADMIN_TOKEN", server.token())
        .env("MAYFLY_ALICE_TOKEN", &alice)
        .env("MAYFLY_BOB_TOKEN", &bob)
        .env("MAYFLY_ORIGIN", format!("http://127.0.0.1:{origin_port}"))
        .env("MAYFLY_SCREENSHOTS", &screenshots)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}); the automation test needs Node.js 18 or later: apt-get install -y nodejs"));
    let text = server::output_text(&output);
    println!("{text}");
    let status = server.stop();
    assert!(output.status.success(), "the automation tests failed:\n{text}");
    assert!(status.success(), "mayfly serve exited with {status}");
    for name in ["playwright-result", "puppeteer-result"] {
        assert!(screenshots.join(format!("{name}.png")).is_file(), "screenshot {name}.png was saved");
    }
}
