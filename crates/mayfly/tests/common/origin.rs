//! A small HTTP origin on a loopback port, for the pages that browser
//! sessions open in the tests.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

/// One request to the origin.
pub struct Request {
    pub path: String,
    /// The query string after `?`, or empty.
    pub query: String,
    /// Header names in lower case, with their trimmed values.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// Returns the value of the header `name`, given in lower case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// One response with status 200: its header lines and its body. The
/// origin adds Content-Length and closes the connection after each one.
pub struct Page {
    headers: String,
    body: Vec<u8>,
}

impl Page {
    pub fn new(content_type: &str, body: impl Into<Vec<u8>>) -> Page {
        Page { headers: format!("Content-Type: {content_type}\r\n"), body: body.into() }
    }

    /// Returns an HTML page in UTF-8.
    pub fn html(body: impl Into<Vec<u8>>) -> Page {
        Page::new("text/html; charset=utf-8", body)
    }

    /// Adds a header line, such as `Content-Disposition: attachment`.
    pub fn header(mut self, line: &str) -> Page {
        self.headers.push_str(line);
        self.headers.push_str("\r\n");
        self
    }
}

/// Serves the pages that `route` returns on a free port of 127.0.0.1 until
/// the test process ends, one thread per connection, and returns the port.
pub fn serve(route: impl Fn(&Request) -> Page + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let route = std::sync::Arc::new(route);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let route = std::sync::Arc::clone(&route);
            std::thread::spawn(move || {
                let Ok(reading) = stream.try_clone() else { return };
                let mut reader = BufReader::new(reading);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    return;
                }
                let mut headers = Vec::new();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    if let Some((name, value)) = line.split_once(':') {
                        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
                    }
                    line.clear();
                }
                // A proxy may pass on the absolute form: keep the path only.
                let mut target = request_line.split_whitespace().nth(1).unwrap_or("/");
                if let Some(rest) = target.strip_prefix("http://") {
                    target = rest.find('/').map_or("/", |start| &rest[start..]);
                }
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let page = route(&Request { path: path.to_string(), query: query.to_string(), headers });
                let mut stream = stream;
                let _ = write!(stream, "HTTP/1.1 200 OK\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n", page.headers, page.body.len());
                let _ = stream.write_all(&page.body);
            });
        }
    });
    port
}
