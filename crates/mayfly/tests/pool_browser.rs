//! Warm pools of browser profiles through a real `mayfly serve`. A session
//! plants cookies, localStorage, a service worker and a cache entry through
//! a page of the test's own origin on the host's loopback. Later sessions,
//! pool members among them, load a page that reports what they find, and
//! find none of it. An automation client of the planting session also
//! grants the origin permissions and makes the page download a file that
//! the session keeps. Later sessions have neither. A member claimed under a
//! profile with a restrictive transfer policy gets that policy.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::origin::{self, Page};
use common::server::{self, Server};
use common::{write, Scratch};
use serde_json::{json, Value};

const BROWSER_PROFILE: &str = include_str!("../../mayfly-core/profiles/browser.toml");

/// One request the origin received: its path with the query, and whether
/// it carried a cookie.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    cookie: Option<String>,
}

const PLANT_PAGE: &str = r#"<!doctype html><title>plant</title><script>
localStorage.setItem('planted', 'yes');
caches.open('planted').then((cache) => cache.put('/cached', new Response('planted')))
  .then(() => navigator.serviceWorker.register('/worker.js'))
  .then(() => navigator.serviceWorker.ready)
  .then(() => fetch('/planted'), (error) => fetch('/planted?error=' + encodeURIComponent(error)));
</script>"#;

const LOOK_PAGE: &str = r#"<!doctype html><title>look</title><script>
(async () => {
  const workers = (await navigator.serviceWorker.getRegistrations()).length;
  const cached = (await caches.keys()).length;
  const geolocation = (await navigator.permissions.query({ name: 'geolocation' })).state;
  const notifications = (await navigator.permissions.query({ name: 'notifications' })).state;
  const found = { cookie: document.cookie, storage: localStorage.length, workers, cached, history: history.length, geolocation, notifications };
  fetch('/report?' + new URLSearchParams({ found: JSON.stringify(found) }));
})();
</script>"#;

/// Serves the plant and look pages, a service worker and the reports, on
/// the host's loopback, and records every request.
fn origin() -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let port = origin::serve(move |request| {
        let path = if request.query.is_empty() { request.path.clone() } else { format!("{}?{}", request.path, request.query) };
        record.lock().unwrap().push(Seen { path, cookie: request.header("cookie").map(str::to_string) });
        match request.path.as_str() {
            "/plant" => Page::new("text/html", PLANT_PAGE).header("Set-Cookie: planted=yes; Max-Age=3600; Path=/"),
            "/look" => Page::new("text/html", LOOK_PAGE),
            "/worker.js" => Page::new("text/javascript", "self.addEventListener('fetch', () => {});"),
            "/planted.bin" => Page::new("application/octet-stream", "planted").header("Content-Disposition: attachment; filename=\"planted.bin\""),
            _ => Page::new("text/plain", ""),
        }
    });
    (port, seen)
}

/// Writes a browser profile that opens `page` of the origin, with a pool
/// of `members` members.
fn browser_profile(dir: &PathBuf, name: &str, port: u16, page: &str, members: u32) {
    let text = BROWSER_PROFILE.replace("start_url = \"about:blank\"", &format!("start_url = \"http://127.0.0.1:{port}{page}\""));
    let sections = format!("[network]\negress = \"proxy\"\nallow = [\"127.0.0.1:{port}\"]\n\n[pool]\nmin = {members}\nmax = {members}\n");
    write(&dir.join(format!("{name}.toml")), &format!("{text}\n{sections}\n"));
}

/// Returns the id that names the session's cgroups: the claimed pool
/// member's id, from its ledger record, or else the session's own id.
fn sandbox_id(state_dir: &Path, id: &str) -> String {
    let members = server::ledger_records(state_dir).into_iter().filter_map(|path| serde_json::from_slice::<Value>(&std::fs::read(path).ok()?).ok());
    members.filter(|record| record["claimed_by"] == id).find_map(|record| record["session_id"].as_str().map(str::to_string)).unwrap_or_else(|| id.to_string())
}

/// Returns the host PID of the session's Chromium browser process.
fn chromium_pid(state_dir: &Path, id: &str) -> i32 {
    let sandbox = sandbox_id(state_dir, id);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cgroup.contains(&sandbox) && String::from_utf8_lossy(&cmdline).contains("--remote-debugging-pipe") {
            if let Ok(pid) = entry.file_name().to_string_lossy().parse() {
                return pid;
            }
        }
    }
    panic!("session {id} (sandbox {sandbox}) has no Chromium process");
}

/// Lists the files in the session's download directory, read from the host
/// through its Chromium process's root.
fn kept_downloads(state_dir: &Path, id: &str) -> Vec<String> {
    let directory = format!("/proc/{}/root/work/downloads", chromium_pid(state_dir, id));
    match std::fs::read_dir(&directory) {
        Ok(entries) => entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => panic!("{directory}: {error}"),
    }
}

/// Through the session's DevTools endpoint, grants the origin the
/// geolocation and notifications permissions and makes the page download a
/// file. Returns the page's notifications permission state afterwards.
async fn plant_through_automation(server: &Server, id: &str, port: u16) -> String {
    let mut socket = common::devtools::connect(server.address, &format!("/v1/sessions/{id}/devtools"), Some(server.token())).await;
    let mut next_id = 0;
    let mut call = async |method: &str, params: Value, session: Option<&str>| -> Value {
        next_id += 1;
        let value = common::devtools::call(&mut socket, next_id, method, params, session).await;
        assert!(value.get("error").is_none(), "{method} failed: {value}");
        value["result"].clone()
    };

    let origin = format!("http://127.0.0.1:{port}");
    call("Browser.grantPermissions", json!({ "origin": origin, "permissions": ["geolocation", "notifications"] }), None).await;
    let targets = call("Target.getTargets", json!({}), None).await;
    let page = targets["targetInfos"].as_array().unwrap().iter().find(|t| t["type"] == "page").expect("the session has a page")["targetId"].clone();
    let attached = call("Target.attachToTarget", json!({ "targetId": page, "flatten": true }), None).await;
    let session = attached["sessionId"].as_str().unwrap().to_string();

    let download = "const a = document.createElement('a'); a.href = '/planted.bin'; a.download = 'planted.bin'; document.body.append(a); a.click();";
    call("Runtime.evaluate", json!({ "expression": download }), Some(&session)).await;
    let query = "navigator.permissions.query({ name: 'notifications' }).then((status) => status.state)";
    let state = call("Runtime.evaluate", json!({ "expression": query, "awaitPromise": true }), Some(&session)).await;
    state["result"]["value"].as_str().unwrap_or_default().to_string()
}

fn wait_for_ready(server: &Server, profile: &str, count: u64) {
    let started = Instant::now();
    loop {
        let (_, body) = server.http("GET", "/v1/pools", Some(server.token()), None);
        let ready = body["pools"].as_array().unwrap().iter().find(|p| p["profile"] == profile).map_or(0, |p| p["ready"].as_u64().unwrap());
        if ready >= count {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the pool of {profile} never had {count} members ready: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn create(server: &Server, profile: &str) -> Value {
    let (status, body) = server.http("POST", "/v1/sessions", Some(server.token()), Some(&json!({ "profile": profile, "ttl": "5m" })));
    assert_eq!(status, 201, "{body}");
    body
}

/// Waits until the origin has received `count` requests whose path starts with `prefix`.
fn wait_for_requests(seen: &Mutex<Vec<Seen>>, prefix: &str, count: usize) -> Vec<Seen> {
    let started = Instant::now();
    loop {
        let matching: Vec<Seen> = seen.lock().unwrap().iter().filter(|s| s.path.starts_with(prefix)).cloned().collect();
        if matching.len() >= count {
            return matching;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "{count} requests to {prefix} never came; the origin saw {:?}", seen.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn destroy(server: &Server, id: &str) {
    let (status, body) = server.http("DELETE", &format!("/v1/sessions/{id}"), Some(server.token()), None);
    assert!(status == 200 || status == 202, "{body}");
    let session = server.wait_for_state(server.token(), id, &["destroyed", "failed"]);
    assert_eq!(session["state"], "destroyed", "{session}");
    assert_eq!(session["detail"]["teardown"]["clean"], true, "{session}");
}

#[test]
fn browser_members_hold_no_earlier_state() {
    let scratch = Scratch::new("pool-browser-state");
    let (port, seen) = origin();
    let profiles = scratch.path.join("profiles");
    browser_profile(&profiles, "plant", port, "/plant", 1);
    let plant = std::fs::read_to_string(profiles.join("plant.toml")).unwrap();
    let plant = plant.replace("downloads = \"deny\"", "downloads = \"keep\"").replace("automation = false", "automation = true");
    write(&profiles.join("plant.toml"), &plant);
    browser_profile(&profiles, "look", port, "/look", 2);
    let server = server::start(&scratch.state_dir(), &["--profiles-dir", profiles.to_str().unwrap()], &[]);
    wait_for_ready(&server, "plant", 1);
    wait_for_ready(&server, "look", 2);

    let planter = create(&server, "plant");
    assert_eq!(planter["session"]["start"], "warm", "{planter}");
    let planted = wait_for_requests(&seen, "/planted", 1);
    assert_eq!(planted[0].path, "/planted", "the page planted everything: {planted:?}");
    assert_eq!(planted[0].cookie.as_deref(), Some("planted=yes"), "the cookie was set: {planted:?}");
    let planter_id = planter["session"]["id"].as_str().unwrap().to_string();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let notifications = runtime.block_on(plant_through_automation(&server, &planter_id, port));
    assert_eq!(notifications, "granted", "the planting session got the permission");
    let started = Instant::now();
    while kept_downloads(&scratch.state_dir(), &planter_id).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "the planting session never kept its download");
        std::thread::sleep(Duration::from_millis(100));
    }
    destroy(&server, &planter_id);

    // A burst larger than the pool: two claim members, the third starts
    // cold or claims a member refilled since.
    let lookers: Vec<Value> = (0..3).map(|_| create(&server, "look")).collect();
    let warm = lookers.iter().filter(|l| l["session"]["start"] == "warm").count();
    assert!(warm >= 1, "the burst included no pool member: {lookers:?}");
    let reports = wait_for_requests(&seen, "/report", 3);
    for report in &reports {
        let query = report.path.split_once("found=").map(|(_, q)| q).unwrap_or_default();
        let decoded = query.replace("%7B", "{").replace("%7D", "}").replace("%22", "\"").replace("%3A", ":").replace("%2C", ",").replace('+', " ");
        let found: Value = serde_json::from_str(&decoded).unwrap_or_else(|e| panic!("report {:?}: {e}", report.path));
        assert_eq!(found["cookie"], "", "a later session found the cookie: {found}");
        assert_eq!(found["storage"], 0, "a later session found localStorage: {found}");
        assert_eq!(found["workers"], 0, "a later session found the service worker: {found}");
        assert_eq!(found["cached"], 0, "a later session found the cache: {found}");
        // The tab's own history: the blank page Chromium starts on and the start page.
        assert_eq!(found["history"], 2, "a later session has history of another: {found}");
        assert_ne!(found["geolocation"], "granted", "a later session has the granted geolocation permission: {found}");
        assert_ne!(found["notifications"], "granted", "a later session has the granted notifications permission: {found}");
    }
    for looker in &lookers {
        let id = looker["session"]["id"].as_str().unwrap();
        assert_eq!(kept_downloads(&scratch.state_dir(), id), Vec::<String>::new(), "session {id} has a download of another");
    }
    for request in seen.lock().unwrap().iter().filter(|s| s.path.starts_with("/look") || s.path.starts_with("/report")) {
        assert_eq!(request.cookie, None, "a later session sent the planted cookie: {request:?}");
    }
    for looker in &lookers {
        destroy(&server, looker["session"]["id"].as_str().unwrap());
    }
    assert!(server.stop().success());
}

/// Reads a viewer's WebSocket until a text message of type `wanted` comes, within 30 s.
async fn next_message<S>(socket: &mut S, wanted: &str) -> Value
where
    S: futures_util::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    use futures_util::StreamExt;
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(until, socket.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["type"] == wanted {
                    return message;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no {wanted} message came: {other:?}"),
        }
    }
}

#[test]
fn browser_member_gets_profile_transfer_policy() {
    let scratch = Scratch::new("pool-browser-transfer");
    let (port, seen) = origin();
    let profiles = scratch.path.join("profiles");
    browser_profile(&profiles, "closed", port, "/look", 1);
    let closed = std::fs::read_to_string(profiles.join("closed.toml")).unwrap().replace("clipboard_in = true", "clipboard_in = false").replace("watermark = false", "watermark = true");
    write(&profiles.join("closed.toml"), &closed);
    let server = server::start(&scratch.state_dir(), &["--profiles-dir", profiles.to_str().unwrap()], &[]);
    wait_for_ready(&server, "closed", 1);
    // The ready member's Chromium is running, on about:blank.
    assert!(seen.lock().unwrap().is_empty(), "a member loaded a page before its claim: {:?}", seen.lock().unwrap());

    let created = create(&server, "closed");
    assert_eq!(created["session"]["start"], "warm", "{created}");
    let id = created["session"]["id"].as_str().unwrap().to_string();
    let token = created["attach"]["token"].as_str().unwrap().to_string();
    server.wait_for_state(server.token(), &id, &["running"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let stream = tokio::net::TcpStream::connect(server.address).await.unwrap();
        let url = format!("ws://{}/v1/sessions/{id}/attach?token={token}", server.address);
        let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        let session = next_message(&mut socket, "session").await;
        assert_eq!(session["transfer"]["clipboard_in"], false, "{session}");
        // The watermark names the session that claimed the member.
        assert!(session["watermark"].as_str().unwrap_or_default().ends_with(&id), "{session}");
        // The member's Chromium started on about:blank, and the driver
        // opened the profile's start page after the claim.
        let start_page = format!("http://127.0.0.1:{port}/look");
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = next_message(&mut socket, "browser").await;
            if status["url"] == start_page.as_str() {
                break;
            }
            assert!(tokio::time::Instant::now() < until, "the start page never opened: {status}");
        }
        socket.send(Message::Text(json!({ "type": "paste", "text": "secret" }).to_string().into())).await.unwrap();
        let refused = next_message(&mut socket, "error").await;
        assert!(refused["message"].as_str().unwrap().contains("transfer.clipboard_in"), "{refused}");
        socket.close(None).await.unwrap();
    });
    destroy(&server, &id);
    assert!(server.stop().success());
}
