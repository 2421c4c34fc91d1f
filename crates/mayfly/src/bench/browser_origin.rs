//! The browser bench's web origin: a few pages served on a loopback port,
//! which both the browser sessions (through their egress proxy) and the
//! bare Chromium anchor open.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A page that never changes after it loads.
pub(super) const STATIC_PATH: &str = "/static";
/// A page that shows a large counter and changes its background color on
/// every key press.
pub(super) const COUNTER_PATH: &str = "/counter";
/// A page that redraws a full-viewport canvas on every animation frame.
pub(super) const ANIMATION_PATH: &str = "/animation";

/// Maximum wait for a client's request line and headers, so that an idle
/// connection, such as one Chromium opened ahead of time, ends by itself.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

const STATIC_PAGE: &str = "<!doctype html><title>Static</title>\
<body style=\"margin:0;background:#2b5f8a;color:#fff;font:64px sans-serif\">\
<h1 style=\"margin:80px\">Mayfly browser bench</h1><p style=\"margin:80px\">A page that does not change.</p>";

const COUNTER_PAGE: &str = "<!doctype html><title>Counter</title>\
<body style=\"margin:0;font:240px sans-serif\"><div id=count style=\"height:100vh;display:flex;align-items:center;justify-content:center\">0</div>\
<script>let count = 0; const box = document.getElementById('count');\
addEventListener('keydown', () => { count += 1; box.textContent = count; box.style.background = count % 2 ? '#fc3' : '#36c'; });</script>";

const ANIMATION_PAGE: &str = "<!doctype html><title>Animation</title>\
<body style=\"margin:0;overflow:hidden\"><canvas id=c width=1280 height=720></canvas><script>\
const c = document.getElementById('c').getContext('2d'); let n = 0;\
function draw() { n += 1; c.fillStyle = 'hsl(' + (n % 360) + ',60%,50%)'; c.fillRect(0, 0, 1280, 720);\
for (let i = 0; i < 12; i++) { const x = (n * (i + 2) * 3) % 1280, y = 60 * i;\
c.fillStyle = 'hsl(' + ((n * 2 + i * 30) % 360) + ',80%,40%)'; c.fillRect(x, y, 160, 50); }\
c.fillStyle = '#fff'; c.font = '96px sans-serif'; c.fillText('frame ' + n, 420, 400); requestAnimationFrame(draw); }\
requestAnimationFrame(draw);</script>";

/// Returns the page at `path`, or None for any other path.
pub(super) fn page(path: &str) -> Option<&'static str> {
    match path {
        STATIC_PATH => Some(STATIC_PAGE),
        COUNTER_PATH => Some(COUNTER_PAGE),
        ANIMATION_PATH => Some(ANIMATION_PAGE),
        _ => None,
    }
}

/// The origin's server thread, stopped when dropped.
pub(super) struct Origin {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Origin {
    /// Listens on a port of 127.0.0.1 that the kernel picks.
    pub(super) fn start() -> Result<Origin, String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("cannot listen on 127.0.0.1 for the bench's origin: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let accept_stop = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    std::thread::spawn(move || serve(stream));
                }
            }
        });
        Ok(Origin { port, stop, thread: Some(thread) })
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // A connection wakes the accept loop, which then reads the flag.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request, sends its page or 404, and closes the connection.
fn serve(stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let Ok(reader_stream) = stream.try_clone() else { return };
    let mut reader = BufReader::new(reader_stream);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match page(path) {
        Some(body) => ("200 OK", body),
        None => ("404 Not Found", "not found"),
    };
    let mut stream = stream;
    let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pages_by_path() {
        assert!(page(STATIC_PATH).is_some_and(|p| p.contains("does not change")));
        assert!(page(COUNTER_PATH).is_some_and(|p| p.contains("keydown")));
        assert!(page(ANIMATION_PATH).is_some_and(|p| p.contains("requestAnimationFrame")));
        assert_eq!(page("/favicon.ico"), None);
    }

    #[test]
    fn origin_serves_and_stops() {
        let origin = Origin::start().expect("the origin starts");
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, origin.port())).expect("the origin accepts");
        stream.write_all(b"GET /counter HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.ends_with(COUNTER_PAGE), "{response}");
        let port = origin.port();
        drop(origin);
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(), "the origin still listens after drop");
    }
}
