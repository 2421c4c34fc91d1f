//! Files of browser sessions through the API and the attach WebSocket.
//! Downloads are kept in the session and fetched, uploads reach a page's
//! file input, and pages print to PDF. Each one is refused when the
//! profile's `[transfer]` section does not allow it, and each one is audited.
//!
//! The pages come from an HTTP server of this test on the host's loopback,
//! which the profiles' egress rule allows.

mod common;

use std::time::Duration;

use common::origin::{self, Page};
use common::server::{self, raw_http, Server};
use common::Scratch;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The bytes of the download whose name tries to leave the download directory.
const REPORT: &str = "quarterly numbers\n";
/// The size of the download above the profiles' 64 KiB limit.
const BIG: usize = 1024 * 1024;

/// Serves the pages the browser sessions open, on a free loopback port.
fn origin() -> u16 {
    origin::serve(|request| match request.path.as_str() {
        "/download" => Page::new("text/plain", REPORT).header("Content-Disposition: attachment; filename=\"../../evil.sh\""),
        // Escape, bell and a line feed, in the encoded form a header can carry.
        "/download-control" => {
            Page::new("text/plain", "control").header("Content-Disposition: attachment; filename*=UTF-8''%1B%5B31mred%07%0Aline.txt")
        }
        "/big" => Page::new("application/octet-stream", vec![b'x'; BIG]).header("Content-Disposition: attachment; filename=\"big.bin\""),
        // A file input over the whole page. The page shows what it got in
        // its address: each file's name, size and text, or that the
        // chooser was cancelled.
        "/upload" => Page::new(
            "text/html",
            "<!doctype html><title>Upload</title><body style=\"margin:0\">\
             <input id=f type=file multiple style=\"position:fixed;left:0;top:0;width:100vw;height:100vh\">\
             <script>const f = document.getElementById('f');\
             f.addEventListener('change', async () => { const parts = [];\
               for (const file of f.files) parts.push(file.name + ':' + file.size + ':' + await file.text());\
               location.replace('/result?value=' + encodeURIComponent(parts.join('|'))); });\
             f.addEventListener('cancel', () => location.replace('/result?value=cancelled'));</script>",
        ),
        _ => Page::new("text/html", "<!doctype html><title>Origin</title><p style=\"font:32px sans-serif\">A page to print."),
    })
}

/// Returns a browser profile with the given `[transfer]` lines, allowed to
/// reach only the origin.
fn profile(port: u16, transfer: &str) -> String {
    let base = include_str!("../../mayfly-core/profiles/browser.toml").split("[transfer]").next().unwrap();
    let base = base.replace("start_url = \"about:blank\"", &format!("start_url = \"http://127.0.0.1:{port}/\""));
    format!("{base}\n[transfer]\n{transfer}\n\n[network]\negress = \"proxy\"\nallow = [\"127.0.0.1:{port}\"]\n")
}

/// A viewer in control of a browser session, on its attach WebSocket.
struct Viewer {
    socket: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    /// Text messages that arrived while the test waited for another one.
    backlog: Vec<Value>,
}

impl Viewer {
    async fn attach(server: &Server, id: &str, token: &str) -> Viewer {
        let stream = tokio::net::TcpStream::connect(server.address).await.unwrap();
        let url = format!("ws://{}/v1/sessions/{id}/attach?token={token}", server.address);
        let (socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        Viewer { socket, backlog: Vec::new() }
    }

    async fn send(&mut self, message: Value) {
        self.socket.send(Message::Text(message.to_string().into())).await.unwrap();
    }

    /// Takes the first text message that `wanted` accepts, from those kept
    /// earlier or the next ones; frames are skipped. Fails after 30 seconds.
    async fn expect(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        if let Some(index) = self.backlog.iter().position(&wanted) {
            return self.backlog.remove(index);
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let message = match tokio::time::timeout_at(until, self.socket.next()).await {
                Ok(Some(Ok(message))) => message,
                other => panic!("the viewer never got {what}: {other:?}; text messages seen: {:?}", self.backlog),
            };
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(&text).unwrap();
                if wanted(&value) {
                    return value;
                }
                self.backlog.push(value);
            }
        }
    }

    /// Waits until the start page has loaded, because a navigation sent
    /// before the driver opened it would be replaced by it.
    async fn expect_start_page(&mut self, origin: &str) {
        let start = format!("{origin}/");
        self.expect("the start page", move |m| m["type"] == "browser" && m["url"] == start.as_str()).await;
    }

    async fn expect_type(&mut self, kind: &str) -> Value {
        self.expect(kind, |m| m["type"] == kind).await
    }

    async fn navigate(&mut self, url: &str) {
        self.backlog.retain(|m| m["type"] != "browser");
        self.send(json!({ "type": "navigate", "url": url })).await;
        let wanted = url.to_string();
        self.expect(&format!("the page at {url}"), move |m| m["type"] == "browser" && m["url"] == wanted.as_str()).await;
    }

    /// Waits for the address of the page's result, and returns its value.
    async fn result(&mut self) -> String {
        let message = self.expect("the page's result", |m| m["type"] == "browser" && m["url"].as_str().is_some_and(|u| u.contains("/result?value="))).await;
        let encoded = message["url"].as_str().unwrap().split("value=").nth(1).unwrap().to_string();
        percent_decode(&encoded)
    }

    /// Clicks the file input of the upload page until its chooser opens,
    /// and returns the first file message the viewer gets.
    async fn open_chooser(&mut self) -> Value {
        for _ in 0..10 {
            for action in ["down", "up"] {
                self.send(json!({ "type": "mouse", "action": action, "x": 100, "y": 100, "button": "left", "buttons": if action == "down" { 1 } else { 0 }, "click_count": 1 })).await;
            }
            let wait = tokio::time::timeout(Duration::from_secs(2), self.expect("a file chooser", |m| m["type"] == "file_chooser" || m["type"] == "upload_refused"));
            if let Ok(message) = wait.await {
                return message;
            }
        }
        panic!("the page's file chooser never opened");
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            out.push(u8::from_str_radix(&text[index + 1..index + 3], 16).unwrap());
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Creates a session of `profile` and returns its id and attach token.
fn create(server: &Server, profile: &str) -> (String, String) {
    let (status, body) = server.http("POST", "/v1/sessions", Some(server.token()), Some(&json!({ "profile": profile, "ttl": "5m" })));
    assert_eq!(status, 201, "{body}");
    let id = body["session"]["id"].as_str().unwrap().to_string();
    server.wait_for_state(server.token(), &id, &["running"]);
    (id, body["attach"]["token"].as_str().unwrap().to_string())
}

/// Returns one header's value from a response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn audit_records(server: &Server) -> Vec<Value> {
    let (status, page) = server.http("GET", "/v1/audit?since=1&limit=1000", Some(server.token()), None);
    assert_eq!(status, 200, "{page}");
    page["records"].as_array().unwrap().clone()
}

fn records_of<'a>(records: &'a [Value], kind: &str, session: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind && r["session_id"] == session).collect()
}

#[test]
fn browser_files_cross_only_as_allowed() {
    let scratch = Scratch::new("browser-files");
    let port = origin();
    let origin = format!("http://127.0.0.1:{port}");
    let profiles = scratch.path.join("profiles");
    let open = "downloads = \"fetch\"\ndownload_limit = \"64KiB\"\nuploads = true\nupload_limit = \"1KiB\"\nprinting = true";
    common::write(&profiles.join("open.toml"), &profile(port, open));
    common::write(&profiles.join("keep.toml"), &profile(port, "downloads = \"keep\"\ndownload_limit = \"64KiB\""));
    common::write(&profiles.join("closed.toml"), &profile(port, ""));
    let profiles_arg = profiles.to_str().unwrap().to_string();
    let server = server::start(&scratch.state_dir(), &["--profiles-dir", &profiles_arg], &[]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let token = server.token().to_string();

    // A session whose profile lets files cross.
    let (id, attach) = create(&server, "open");
    let mut viewer = runtime.block_on(Viewer::attach(&server, &id, &attach));
    let session = runtime.block_on(viewer.expect_type("session"));
    assert_eq!(session["transfer"]["downloads"], "fetch", "{session}");
    assert_eq!(session["transfer"]["uploads"], true, "{session}");
    assert_eq!(session["transfer"]["printing"], true, "{session}");
    let listed = runtime.block_on(viewer.expect_type("downloads"));
    assert_eq!(listed["downloads"], json!([]), "{listed}");
    runtime.block_on(viewer.expect_start_page(&origin));

    // A download whose suggested name climbs out of the download directory
    // is kept under its guid and listed under a sanitized name.
    runtime.block_on(viewer.send(json!({ "type": "navigate", "url": format!("{origin}/download") })));
    let done = runtime.block_on(viewer.expect("a completed download", |m| m["type"] == "download" && m["download"]["state"] == "completed"));
    let report = done["download"].clone();
    assert_eq!(report["filename"], "_.._evil.sh", "{done}");
    assert_eq!(report["bytes"], REPORT.len(), "{done}");
    let report_id = report["id"].as_str().unwrap().to_string();
    let (status, list) = server.http("GET", &format!("/v1/sessions/{id}/downloads"), Some(&token), None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["downloads"][0]["id"], report_id.as_str(), "{list}");
    assert_eq!(list["downloads"][0]["state"], "completed", "{list}");

    let (status, head, body) = raw_http(server.address, "GET", &format!("/v1/sessions/{id}/downloads/{report_id}"), Some(&token), None, &[]).unwrap();
    assert_eq!(status, 200, "{head}\n{body}");
    assert_eq!(body, REPORT);
    assert_eq!(header(&head, "content-disposition"), Some("attachment; filename=\"_.._evil.sh\"; filename*=UTF-8''_.._evil.sh"), "{head}");
    assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"), "{head}");
    assert_eq!(header(&head, "content-type"), Some("application/octet-stream"), "{head}");

    // Control characters in the suggested name never reach the header.
    runtime.block_on(viewer.send(json!({ "type": "navigate", "url": format!("{origin}/download-control") })));
    let control = runtime.block_on(viewer.expect("the second completed download", |m| m["type"] == "download" && m["download"]["state"] == "completed"));
    let control_id = control["download"]["id"].as_str().unwrap().to_string();
    let filename = control["download"]["filename"].as_str().unwrap();
    assert!(!filename.chars().any(char::is_control), "{control}");
    let (status, head, body) = raw_http(server.address, "GET", &format!("/v1/sessions/{id}/downloads/{control_id}"), Some(&token), None, &[]).unwrap();
    assert_eq!((status, body.as_str()), (200, "control"), "{head}");
    let disposition = header(&head, "content-disposition").unwrap();
    assert!(disposition.starts_with("attachment; filename=\""), "{disposition}");
    assert!(!disposition.bytes().any(|b| b < 0x20 || b == 0x7f), "{disposition:?}");
    assert_eq!(disposition.matches('"').count(), 2, "{disposition}");

    // The endpoint opens only files the driver recorded, by their guid.
    for path in [
        "..",
        "%2e%2e",
        "..%2f..%2fetc%2fpasswd",
        "%2fetc%2fpasswd",
        "..%5c..%5cetc%5cpasswd",
        "chromium%2fLocal%20State",
        &format!("{report_id}%00"),
        &format!("{report_id}.crdownload"),
        &format!("..%2f{report_id}"),
        &report_id.to_uppercase(),
    ] {
        let (status, head, body) = raw_http(server.address, "GET", &format!("/v1/sessions/{id}/downloads/{path}"), Some(&token), None, &[]).unwrap();
        assert_eq!(status, 400, "{path}: {head}\n{body}");
        assert!(body.contains("is not a download id"), "{path}: {body}");
    }
    for path in ["../../../../etc/passwd", "a/b", &format!("{report_id}/x")] {
        let (status, _, body) = raw_http(server.address, "GET", &format!("/v1/sessions/{id}/downloads/{path}"), Some(&token), None, &[]).unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("root:"), "{path}: {body}");
    }
    let (status, body) = server.http("GET", &format!("/v1/sessions/{id}/downloads/00000000-0000-4000-8000-000000000000"), Some(&token), None);
    assert_eq!(status, 404, "{body}");

    // A download above the 64 KiB limit is cancelled and cannot be fetched.
    runtime.block_on(viewer.send(json!({ "type": "navigate", "url": format!("{origin}/big") })));
    let big = runtime.block_on(viewer.expect("a download cancelled for its size", |m| m["type"] == "download" && m["download"]["state"] == "too_large"));
    let big_id = big["download"]["id"].as_str().unwrap().to_string();
    let (status, body) = server.http("GET", &format!("/v1/sessions/{id}/downloads/{big_id}"), Some(&token), None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["state"], "too_large", "{body}");

    // An upload reaches the page's file input under a sanitized name.
    runtime.block_on(viewer.navigate(&format!("{origin}/upload")));
    let chooser = runtime.block_on(viewer.open_chooser());
    assert_eq!(chooser["type"], "file_chooser", "{chooser}");
    assert_eq!(chooser["multiple"], true, "{chooser}");
    assert_eq!(chooser["upload_limit_bytes"], 1024, "{chooser}");
    let number = chooser["chooser"].as_u64().unwrap();
    let content = "uploaded text";
    runtime.block_on(viewer.send(json!({ "type": "upload", "chooser": number, "files": [{ "name": "../../notes\u{7}.txt", "size": content.len() }] })));
    runtime.block_on(viewer.expect_type("upload_ready"));
    let mut chunk = vec![0x20];
    chunk.extend_from_slice(content.as_bytes());
    runtime.block_on(viewer.socket.send(Message::Binary(chunk.into()))).unwrap();
    let uploaded = runtime.block_on(viewer.expect_type("upload_done"));
    assert_eq!(uploaded["files"], json!([{ "name": "_.._notes_.txt", "size": content.len() }]), "{uploaded}");
    assert_eq!(runtime.block_on(viewer.result()), format!("_.._notes_.txt:{}:{content}", content.len()));

    // A file above the 1 KiB upload limit is rejected when announced, and
    // bytes beyond an announced size end the upload.
    runtime.block_on(viewer.navigate(&format!("{origin}/upload")));
    let chooser = runtime.block_on(viewer.open_chooser());
    let number = chooser["chooser"].as_u64().unwrap();
    runtime.block_on(viewer.send(json!({ "type": "upload", "chooser": number, "files": [{ "name": "large.bin", "size": 4096 }] })));
    let refused = runtime.block_on(viewer.expect_type("upload_failed"));
    assert!(refused["message"].as_str().unwrap().contains("transfer.upload_limit"), "{refused}");
    runtime.block_on(viewer.navigate(&format!("{origin}/upload")));
    let chooser = runtime.block_on(viewer.open_chooser());
    let number = chooser["chooser"].as_u64().unwrap();
    runtime.block_on(viewer.send(json!({ "type": "upload", "chooser": number, "files": [{ "name": "short.txt", "size": 4 }] })));
    runtime.block_on(viewer.expect_type("upload_ready"));
    runtime.block_on(viewer.socket.send(Message::Binary(vec![0x20, b'a', b'b', b'c', b'd', b'e', b'f'].into()))).unwrap();
    let overflow = runtime.block_on(viewer.expect_type("upload_failed"));
    assert!(overflow["message"].as_str().unwrap().contains("more than the files it announced"), "{overflow}");

    // The page prints to a PDF.
    runtime.block_on(viewer.navigate(&format!("{origin}/print")));
    let (status, head, body) = raw_http(server.address, "POST", &format!("/v1/sessions/{id}/print"), Some(&token), None, &[]).unwrap();
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(body.starts_with("%PDF-"), "{}", body.chars().take(40).collect::<String>());
    assert_eq!(header(&head, "content-type"), Some("application/pdf"), "{head}");
    assert!(header(&head, "content-disposition").unwrap().starts_with("attachment;"), "{head}");
    drop(viewer);

    let records = audit_records(&server);
    let kept = records_of(&records, "browser.download_kept", &id);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept[0]["fields"]["filename"], "_.._evil.sh", "{kept:?}");
    let fetched = records_of(&records, "browser.download_fetched", &id);
    assert_eq!(fetched.len(), 2, "{fetched:?}");
    assert_eq!(fetched[0]["fields"]["download_id"], report_id.as_str(), "{fetched:?}");
    assert_eq!(fetched[0]["fields"]["bytes"], REPORT.len(), "{fetched:?}");
    let cancelled = records_of(&records, "browser.download_cancelled", &id);
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0]["fields"]["download_id"], big_id.as_str(), "{cancelled:?}");
    let uploads = records_of(&records, "browser.upload", &id);
    assert_eq!(uploads.len(), 1, "only the completed upload is recorded: {uploads:?}");
    assert_eq!(uploads[0]["fields"]["filename"], "_.._notes_.txt", "{uploads:?}");
    assert_eq!(uploads[0]["fields"]["bytes"], content.len(), "{uploads:?}");
    let prints = records_of(&records, "browser.print", &id);
    assert_eq!(prints.len(), 1, "{prints:?}");
    assert!(prints[0]["fields"]["bytes"].as_u64().unwrap() > 100, "{prints:?}");
    let (status, body) = server.http("DELETE", &format!("/v1/sessions/{id}"), Some(&token), None);
    assert!(status == 200 || status == 202, "{body}");

    // With `keep`, a download stays in the session: it is listed to the
    // viewer, and the API refuses to list or fetch it.
    let (keep_id, keep_attach) = create(&server, "keep");
    let mut viewer = runtime.block_on(Viewer::attach(&server, &keep_id, &keep_attach));
    let session = runtime.block_on(viewer.expect_type("session"));
    assert_eq!(session["transfer"]["downloads"], "keep", "{session}");
    runtime.block_on(viewer.expect_start_page(&origin));
    runtime.block_on(viewer.send(json!({ "type": "navigate", "url": format!("{origin}/download") })));
    let kept = runtime.block_on(viewer.expect("a kept download", |m| m["type"] == "download" && m["download"]["state"] == "completed"));
    let kept_id = kept["download"]["id"].as_str().unwrap().to_string();
    for path in [format!("/v1/sessions/{keep_id}/downloads"), format!("/v1/sessions/{keep_id}/downloads/{kept_id}")] {
        let (status, body) = server.http("GET", &path, Some(&token), None);
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["type"], "urn:mayfly:problem:transfer-not-allowed", "{body}");
        assert!(body["detail"].as_str().unwrap().contains("transfer.downloads = \"keep\""), "{body}");
    }
    let (status, body) = server.http("POST", &format!("/v1/sessions/{keep_id}/print"), Some(&token), None);
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("transfer.printing"), "{body}");
    drop(viewer);
    let records = audit_records(&server);
    assert_eq!(records_of(&records, "browser.download_kept", &keep_id).len(), 1);
    assert_eq!(records_of(&records, "browser.download_fetched", &keep_id).len(), 0);
    server.http("DELETE", &format!("/v1/sessions/{keep_id}"), Some(&token), None);

    // With everything off, the page's chooser is cancelled and the viewer
    // gets the reason. Printing and the downloads are refused.
    let (closed_id, closed_attach) = create(&server, "closed");
    let mut viewer = runtime.block_on(Viewer::attach(&server, &closed_id, &closed_attach));
    runtime.block_on(viewer.expect_type("session"));
    runtime.block_on(viewer.expect_start_page(&origin));
    runtime.block_on(viewer.navigate(&format!("{origin}/upload")));
    let refused = runtime.block_on(viewer.open_chooser());
    assert_eq!(refused["type"], "upload_refused", "{refused}");
    assert!(refused["reason"].as_str().unwrap().contains("transfer.uploads"), "{refused}");
    assert_eq!(runtime.block_on(viewer.result()), "cancelled", "the page saw its chooser cancelled");
    runtime.block_on(viewer.send(json!({ "type": "upload", "chooser": 1, "files": [{ "name": "a.txt", "size": 1 }] })));
    let failed = runtime.block_on(viewer.expect_type("upload_failed"));
    assert!(failed["message"].as_str().unwrap().contains("transfer.uploads"), "{failed}");
    let (status, body) = server.http("POST", &format!("/v1/sessions/{closed_id}/print"), Some(&token), None);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["setting"], "transfer.printing", "{body}");
    let (status, body) = server.http("GET", &format!("/v1/sessions/{closed_id}/downloads"), Some(&token), None);
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("transfer.downloads = \"deny\""), "{body}");
    drop(viewer);
    let records = audit_records(&server);
    assert_eq!(records_of(&records, "browser.upload_refused", &closed_id).len(), 1);
    assert_eq!(records_of(&records, "browser.upload", &closed_id).len(), 0);
    assert_eq!(records_of(&records, "browser.print", &closed_id).len(), 0);
    server.http("DELETE", &format!("/v1/sessions/{closed_id}"), Some(&token), None);

    // A job has no downloads.
    let job = server.create(&token, "30s", &["/bin/sleep", "20"]);
    let (status, body) = server.http("GET", &format!("/v1/sessions/{job}/downloads"), Some(&token), None);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "urn:mayfly:problem:not-a-browser-session", "{body}");
    server.http("DELETE", &format!("/v1/sessions/{job}"), Some(&token), None);

    for id in [&id, &keep_id, &closed_id] {
        let ended = server.wait_for_state(&token, id, &["destroyed", "failed"]);
        assert_eq!(ended["detail"]["teardown"]["clean"], true, "{ended}");
    }
    assert!(server.stop().success());
}
