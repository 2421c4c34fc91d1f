//! The proxy on loopback: an origin server and the proxy both listen on
//! 127.0.0.1, and the rules decide which of the test's own loopback
//! addresses and ports a client may reach.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_core::egress::EgressPolicy;
use mayfly_egress::{ConnectionReport, EgressLog, ProxyConfig, Writing};

#[derive(Default)]
struct Reports {
    connections: Mutex<Vec<ConnectionReport>>,
    throttled: Mutex<u64>,
}

impl EgressLog for Reports {
    fn connection(&self, report: ConnectionReport) -> Writing {
        self.connections.lock().unwrap().push(report);
        Box::pin(async {})
    }
    fn throttled(&self, count: u64) -> Writing {
        *self.throttled.lock().unwrap() += count;
        Box::pin(async {})
    }
}

/// Starts an origin that replies to every HTTP request with its request
/// line, and echoes anything that is not HTTP.
fn origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                let mut stream = stream;
                if first.starts_with("GET ") {
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let body = format!("origin saw {}", first.trim());
                    let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                } else {
                    let _ = stream.write_all(first.as_bytes());
                    let _ = std::io::copy(&mut reader, &mut stream);
                }
            });
        }
    });
    address
}

fn proxy(allow: &[String], deny: &[String], reports: &Arc<Reports>, tune: impl FnOnce(&mut ProxyConfig)) -> (mayfly_egress::ProxyHandle, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = ProxyConfig::new(EgressPolicy::parse(allow, deny).unwrap());
    config.connect_timeout = Duration::from_secs(3);
    tune(&mut config);
    let log: Arc<dyn EgressLog> = Arc::clone(reports) as Arc<dyn EgressLog>;
    (mayfly_egress::start(listener, config, log).unwrap(), address)
}

/// Sends `request` to the proxy and returns its whole response.
fn exchange(proxy: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn plain_http_reaches_an_allowed_origin() {
    let origin = origin();
    let reports = Arc::new(Reports::default());
    let (handle, proxy) = proxy(&[format!("127.0.0.1:{}", origin.port())], &[], &reports, |_| {});
    let answer = exchange(proxy, &format!("GET http://127.0.0.1:{}/hello?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Connection: keep-alive\r\n\r\n", origin.port()));
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("origin saw GET /hello?x=1 HTTP/1.1"), "{answer}");
    handle.stop();
    let connections = reports.connections.lock().unwrap();
    assert_eq!(connections.len(), 1);
    let report = &connections[0];
    assert!(report.allowed);
    assert_eq!(report.host, "127.0.0.1");
    assert_eq!(report.port, origin.port());
    assert!(report.decision.contains(&format!("127.0.0.1:{}", origin.port())), "{}", report.decision);
    assert!(report.bytes_out > 0);
    assert!(report.bytes_in > 0);
}

#[test]
fn connect_tunnels_bytes_both_ways() {
    let origin = origin();
    let reports = Arc::new(Reports::default());
    let (handle, proxy) = proxy(&[format!("127.0.0.1:{}", origin.port())], &[], &reports, |_| {});
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", origin.port()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert_eq!(status, "HTTP/1.1 200 Connection established\r\n");
    let mut blank = String::new();
    reader.read_line(&mut blank).unwrap();
    stream.write_all(b"not http, just bytes\n").unwrap();
    let mut echoed = String::new();
    reader.read_line(&mut echoed).unwrap();
    assert_eq!(echoed, "not http, just bytes\n");
    drop((reader, stream));
    handle.stop();
    let connections = reports.connections.lock().unwrap();
    assert_eq!(connections.len(), 1);
    assert_eq!(connections[0].bytes_out, 21);
    assert_eq!(connections[0].bytes_in, 21);
}

#[test]
fn refused_targets_get_403_and_a_report() {
    let origin = origin();
    let reports = Arc::new(Reports::default());
    // 127.0.0.2 stands for an address the operator forbids; the origin's
    // port on 127.0.0.1 is allowed, any other port is not named.
    let allow = [format!("127.0.0.0/8:{}", origin.port())];
    let deny = ["127.0.0.2".to_string()];
    let (handle, proxy) = proxy(&allow, &deny, &reports, |_| {});
    let cases = [
        (format!("CONNECT 127.0.0.2:{} HTTP/1.1\r\n\r\n", origin.port()), "denied by rule \"127.0.0.2\""),
        ("CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n".to_string(), "loopback range"),
        ("GET http://localhost:9/ HTTP/1.1\r\n\r\n".to_string(), "loopback range"),
    ];
    for (request, expected) in &cases {
        let answer = exchange(proxy, request);
        assert!(answer.starts_with("HTTP/1.1 403 Forbidden"), "{request}: {answer}");
        assert!(answer.contains(expected), "{request}: {answer}");
    }
    handle.stop();
    let connections = reports.connections.lock().unwrap();
    assert_eq!(connections.len(), cases.len());
    assert!(connections.iter().all(|r| !r.allowed && r.bytes_out == 0 && r.bytes_in == 0), "{connections:?}");
    assert_eq!(connections[2].host, "localhost");
}

#[test]
fn bad_requests_are_answered_in_words() {
    let reports = Arc::new(Reports::default());
    let (handle, proxy) = proxy(&[], &[], &reports, |_| {});
    let answer = exchange(proxy, "GET /relative HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    assert!(answer.contains("absolute http://"), "{answer}");
    let oversized = format!("GET http://example.com/ HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let answer = exchange(proxy, &oversized);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    handle.stop();
    assert!(reports.connections.lock().unwrap().is_empty(), "malformed requests reach no target, so there is nothing to report");
}

#[test]
fn rate_limit_refuses_and_counts() {
    let reports = Arc::new(Reports::default());
    let (handle, proxy) = proxy(&[], &[], &reports, |config| config.connections_per_second = 1);
    let answers: Vec<String> = (0..5).map(|_| exchange(proxy, "CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n")).collect();
    let limited = answers.iter().filter(|a| a.starts_with("HTTP/1.1 429")).count();
    assert!(limited >= 2, "a burst of 2 passes and the rest are refused: {answers:?}");
    handle.stop();
    assert_eq!(*reports.throttled.lock().unwrap(), limited as u64);
}

#[test]
fn stopping_closes_the_listener_and_open_tunnels() {
    let origin = origin();
    let reports = Arc::new(Reports::default());
    let (handle, proxy) = proxy(&[format!("127.0.0.1:{}", origin.port())], &[], &reports, |_| {});
    let mut tunnel = TcpStream::connect(proxy).unwrap();
    tunnel.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(tunnel, "CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", origin.port()).unwrap();
    let mut greeting = [0u8; 39];
    tunnel.read_exact(&mut greeting).unwrap();
    handle.stop();
    let mut rest = Vec::new();
    assert_eq!(tunnel.read_to_end(&mut rest).unwrap(), 0, "the tunnel is closed");
    assert!(TcpStream::connect(proxy).is_err(), "the listener is closed");
    let connections = reports.connections.lock().unwrap();
    assert_eq!(connections.len(), 1, "the cut tunnel is reported");
    assert!(connections[0].decision.ends_with("cut off when the session ended"), "{}", connections[0].decision);
}
