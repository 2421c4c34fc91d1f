//! The web console in a real Chromium: this test starts `mayfly serve` on a
//! loopback port, creates tokens for an admin and two users, and runs the
//! Playwright tests in web/tests/console.test.mjs with Node.js. They save
//! screenshots of the main pages under target/console-screenshots/.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::origin::{self, Page};
use common::server;
use common::Scratch;

/// A shell profile with an early warning, so that a session with a 25-second
/// TTL shows the countdown, the warning and the end within half a minute.
const QUICK_PROFILE: &str = r#"
kind = "shell"
description = "Short shell for the console test"

[ttl]
default = "2m"
max = "10m"

[limits]
memory = "256MiB"
cpus = 1
pids = 128
tmp = "16MiB"
shm = "16MiB"
work = "32MiB"
open_files = 256
inputs = "1MiB"
artifacts = "1MiB"

[environment]
PATH = "/usr/local/bin:/usr/bin:/bin"
HOME = "/work"
TERM = "xterm-256color"
PS1 = "$ "

[shell]
command = ["/bin/bash", "--norc", "--noprofile", "-i"]
warnings = ["15s"]
"#;

/// Returns a browser profile whose only allowed destination is the test's origin.
fn web_profile(origin_port: u16) -> String {
    let base = include_str!("../../mayfly-core/profiles/browser.toml");
    let base = base.replace("start_url = \"about:blank\"", &format!("start_url = \"http://127.0.0.1:{origin_port}/\""));
    let base = base.replace("width = 1280", "width = 1000").replace("height = 800", "height = 700");
    // A time zone and language that differ from the host's show that they
    // come from the profile.
    let base = base.replace("locale = \"en-US\"", "locale = \"de-DE\"").replace("timezone = \"UTC\"", "timezone = \"Asia/Tokyo\"");
    let base = base.replace("watermark = false", "watermark = true").replace("clipboard_out = false", "clipboard_out = true");
    format!("{base}\n[network]\negress = \"proxy\"\nallow = [\"127.0.0.1:{origin_port}\"]\n")
}

/// Returns the `web` profile with downloads kept and fetched, uploads and
/// printing allowed.
fn files_profile(origin_port: u16) -> String {
    let web = web_profile(origin_port);
    let files = web.replace("downloads = \"deny\"", "downloads = \"fetch\"").replace("uploads = false", "uploads = true").replace("printing = false", "printing = true");
    assert_ne!(files, web, "the browser profile's [transfer] lines changed; update files_profile");
    files
}

/// Pages on the host's loopback for the browser session to open: a home
/// page with a large link to a form, the form, and a page that shows what
/// the form sent. The allow rule of the `web` profile names this port.
fn origin() -> u16 {
    origin::serve(|request| {
        let path = request.path.as_str();
        if let Some(page) = input_page(path) {
            return Page::html(page);
        }
        match path {
            "/" => Page::html(
                "<!doctype html><title>Origin home</title><body style=\"margin:0;font:32px sans-serif\"><a id=next href=\"/form\" style=\"display:block;height:300px;background:#cde\">Go to the form</a><a href=\"/download\" style=\"display:block;height:100px;background:#edc\">Download the report</a><p>Welcome to the origin.</p>",
            ),
            // Reports the time zone and language of the page, an iframe and
            // a worker, and the Accept-Language header.
            "/env" => Page::html(format!(
                "<!doctype html><title>Env</title><iframe id=f src=\"/frame\"></iframe><script>\
                 const page = Intl.DateTimeFormat().resolvedOptions().timeZone + ',' + navigator.language;\
                 const worker = new Worker(URL.createObjectURL(new Blob(['postMessage(Intl.DateTimeFormat().resolvedOptions().timeZone + \",\" + navigator.language)'])));\
                 worker.onmessage = (e) => {{ const frame = document.getElementById('f').contentWindow; \
                   const inFrame = frame.Intl.DateTimeFormat().resolvedOptions().timeZone + ',' + frame.navigator.language; \
                   location.replace('/result?value=' + encodeURIComponent([page, e.data, inFrame, '{}'].join('|'))); }};\
                 </script>",
                request.header("accept-language").unwrap_or_default()
            )),
            // Leaves a cookie (set by the header), local storage and a
            // service worker behind.
            "/plant" => Page::html(
                "<!doctype html><title>Plant</title><script>localStorage.setItem('planted', 'yes');\
                 navigator.serviceWorker.register('/sw.js').then((r) => r.update()).then(() => location.replace('/result?value=planted'),\
                 (e) => location.replace('/result?value=' + encodeURIComponent('failed ' + e)));</script>",
            )
            .header("Set-Cookie: planted=yes; Max-Age=3600; Path=/"),
            "/check" => Page::html(
                "<!doctype html><title>Check</title><script>navigator.serviceWorker.getRegistrations().then((r) =>\
                 location.replace('/result?value=' + encodeURIComponent([document.cookie, localStorage.getItem('planted'), r.length].join('|'))));</script>",
            ),
            "/sw.js" => Page::new("text/javascript", "self.addEventListener('fetch', () => {});"),
            "/frame" => Page::html("<!doctype html><title>Frame</title>"),
            // A file input over the whole page, which shows the chosen
            // file's name and size in the address.
            "/upload" => Page::html(
                "<!doctype html><title>Upload</title><body style=\"margin:0\"><input id=f type=file style=\"position:fixed;left:0;top:0;width:100vw;height:100vh\">\
                 <script>const f = document.getElementById('f'); f.addEventListener('change', () =>\
                 location.replace('/result?value=' + encodeURIComponent(f.files[0].name + ':' + f.files[0].size)));</script>",
            ),
            "/form" => Page::html(
                "<!doctype html><title>Form</title><body style=\"margin:0;font:32px sans-serif\"><form action=\"/result\"><input id=field name=value autofocus style=\"font-size:32px;width:900px\"></form>",
            ),
            // The download's name tries to leave the download directory.
            "/download" => Page::new("text/plain", "quarterly numbers").header("Content-Disposition: attachment; filename=\"../../report.txt\""),
            _ => Page::html("<!doctype html><title>Result</title><body style=\"font:32px sans-serif\"><p>Thank you.</p>"),
        }
    })
}

/// Pages for the tests of tabs, touch, composition and modifiers.
fn input_page(path: &str) -> Option<&'static str> {
    Some(match path {
        // Two ways to open a tab: a link with a target and window.open.
        "/popup" => "<!doctype html><title>Popups</title><body style=\"margin:0;font:32px sans-serif\">\
            <a href=\"/form\" target=\"_blank\" style=\"display:block;height:200px;background:#cde\">Open the form in a new tab</a>\
            <div id=opener style=\"height:200px;background:#edc\">Open a popup</div>\
            <script>document.getElementById('opener').onclick = () => window.open('/result?value=popup', 'popup', 'width=400,height=300');</script>",
        // Records touches, compositions and the keys held down; Enter
        // reports the field's value, the held keys and the record.
        "/input" => "<!doctype html><title>Input</title><body style=\"margin:0;font:32px sans-serif\">\
            <input id=field autofocus style=\"font-size:32px;width:900px;height:60px\">\
            <div id=pad style=\"height:200px;background:#dec\">Touch here</div>\
            <a href=\"/result?value=tapped\" style=\"display:block;height:140px;background:#ced\">Tap to follow</a>\
            <script>const held = new Set(); const log = []; const field = document.getElementById('field'); const pad = document.getElementById('pad');\
            addEventListener('keydown', (e) => { if (e.key === 'Enter') { location.replace('/result?value=' + encodeURIComponent([field.value, [...held].join('+'), log.join(',')].join('|'))); } else { held.add(e.key); } }, true);\
            addEventListener('keyup', (e) => held.delete(e.key), true);\
            pad.addEventListener('touchstart', (e) => log.push('touchstart' + e.touches.length));\
            pad.addEventListener('touchend', () => log.push('touchend'));\
            field.addEventListener('compositionstart', () => log.push('compose'));</script>",
        _ => return None,
    })
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn create_token(server: &server::Server, principal: &str, groups: &str) -> String {
    let output = server.cli(server.token()).args(["token", "create", "--name", principal, "--principal", principal, "--groups", groups]).output().unwrap();
    assert!(output.status.success(), "token create for {principal}: {}", server::output_text(&output));
    String::from_utf8(output.stdout).unwrap().lines().find(|l| l.starts_with("mfy_")).expect("the new token is printed").trim().to_string()
}

#[test]
fn console_in_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the console test needs Chromium at {chromium}: install Debian's chromium package (apt-get install -y chromium), or set CHROMIUM"
    );
    let repository = repository();
    let web = repository.join("web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "web/node_modules/playwright-core is missing; building the workspace runs npm ci in web/, so run cargo build first"
    );
    let scratch = Scratch::new("console");
    let profiles = scratch.path.join("profiles");
    common::write(&profiles.join("quick.toml"), QUICK_PROFILE);
    let origin_port = origin();
    common::write(&profiles.join("web.toml"), &web_profile(origin_port));
    common::write(&profiles.join("files.toml"), &files_profile(origin_port));
    let profiles_arg = profiles.to_str().unwrap().to_string();
    let server = server::start(&scratch.state_dir(), &["--profiles-dir", &profiles_arg], &[]);
    let alice = create_token(&server, "alice", "dev");
    let bob = create_token(&server, "bob", "dev");

    let screenshots = repository.join("target/console-screenshots");
    let mut node = Command::new("node");
    node.args(["--test", "--test-reporter=spec", "--test-concurrency=1"]);
    // CONSOLE_ONLY runs only the tests whose names match it.
    if let Ok(pattern) = std::env::var("CONSOLE_ONLY") {
        node.arg(format!("--test-name-pattern={pattern}"));
    }
    let output = node
        .arg("tests/console.test.mjs")
        .current_dir(&web)
        .env("MAYFLY_URL", &server.url)
        .env("MAYFLY_ADMIN_TOKEN", server.token())
        .env("MAYFLY_ALICE_TOKEN", &alice)
        .env("MAYFLY_BOB_TOKEN", &bob)
        .env("MAYFLY_SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium)
        .env("MAYFLY_ORIGIN", format!("http://127.0.0.1:{origin_port}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}); the console test needs Node.js 18 or later: apt-get install -y nodejs"));
    let text = server::output_text(&output);
    println!("{text}");
    let status = server.stop();
    assert!(output.status.success(), "the console tests failed:\n{text}");
    assert!(status.success(), "mayfly serve exited with {status}");
    if std::env::var_os("CONSOLE_ONLY").is_some() {
        return;
    }
    for name in ["01-sign-in", "03-sessions", "04-terminal", "06-ended", "08-admin"] {
        assert!(screenshots.join(format!("{name}.png")).is_file(), "screenshot {name}.png was saved");
    }
}
