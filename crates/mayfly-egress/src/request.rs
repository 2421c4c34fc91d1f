//! Reading a client's request head: `CONNECT host:port` or an absolute
//! `http://` request, which is rewritten for the origin server.

use std::net::IpAddr;

/// The largest request head the proxy reads.
pub const MAX_HEAD: usize = 16 * 1024;

/// The target of a client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A tunnel: the proxy replies 200 and then copies bytes both ways.
    Connect { host: Host, port: u16 },
    /// One plain HTTP request, with its head rewritten for the origin.
    Http { host: Host, port: u16, head: Vec<u8> },
}

/// A host as the client wrote it: a normalized name or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Address(IpAddr),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Address(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Address(address) => write!(f, "{address}"),
        }
    }
}

/// A request the proxy rejects, with the status and message it sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub status: u16,
    pub message: String,
}

fn reject(status: u16, message: impl Into<String>) -> Rejected {
    Rejected { status, message: message.into() }
}

/// Returns the length of the head, through its blank line, once `buffer`
/// contains all of it.
pub fn head_length(buffer: &[u8]) -> Option<usize> {
    buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
}

/// Parses `host[:port]` or `[v6][:port]`.
fn authority(text: &str, default_port: Option<u16>) -> Result<(Host, u16), Rejected> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(|| reject(400, format!("{text:?} lacks the ] after the IPv6 address")))?;
        (inside, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match (port, default_port) {
        (Some(port), _) => port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| reject(400, format!("port {port:?} is not a number from 1 to 65535")))?,
        (None, Some(port)) => port,
        (None, None) => return Err(reject(400, format!("{text:?} needs a port, such as {text}:443"))),
    };
    let host = match host.parse::<IpAddr>() {
        Ok(address) => Host::Address(address),
        Err(_) => Host::Name(mayfly_core::egress::normalize_name(host).map_err(|e| reject(400, e))?),
    };
    Ok((host, port))
}

/// Headers that speak to the proxy, or to a connection the proxy does not
/// keep open, and never go to the origin.
const HOP_HEADERS: [&str; 5] = ["proxy-connection", "proxy-authorization", "connection", "keep-alive", "te"];

/// Parses a complete request head.
pub fn parse(head: &[u8]) -> Result<Target, Rejected> {
    let text = std::str::from_utf8(head).map_err(|_| reject(400, "the request head is not valid UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(reject(400, format!("{request_line:?} is not an HTTP request line")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(reject(505, format!("{version} is not supported; use HTTP/1.1")));
    }
    if method == "CONNECT" {
        let (host, port) = authority(target, None)?;
        return Ok(Target::Connect { host, port });
    }
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || method.is_empty() {
        return Err(reject(400, format!("{method:?} is not an HTTP method")));
    }
    let Some(rest) = target.strip_prefix("http://") else {
        let hint = if target.starts_with("https://") { "; for https, the client must send CONNECT" } else { "" };
        return Err(reject(400, format!("a proxy request needs an absolute http:// address, not {target:?}{hint}")));
    };
    let (authority_text, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (host, port) = authority(authority_text, Some(80))?;

    let mut rewritten = format!("{method} {path} {version}\r\n");
    let mut has_host = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        if HOP_HEADERS.contains(&name.as_str()) {
            continue;
        }
        has_host |= name == "host";
        rewritten.push_str(line);
        rewritten.push_str("\r\n");
    }
    if !has_host {
        rewritten.push_str(&format!("Host: {authority_text}\r\n"));
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    Ok(Target::Http { host, port, head: rewritten.into_bytes() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_connect() {
        let target = parse(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").unwrap();
        assert_eq!(target, Target::Connect { host: Host::Name("example.com".into()), port: 443 });
        let v6 = parse(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(v6, Target::Connect { host: Host::Address("::1".parse().unwrap()), port: 8443 });
    }

    #[test]
    fn parse_rewrites_plain_http() {
        let head = b"GET http://Example.com:8080/a/b?c=d HTTP/1.1\r\nHost: Example.com:8080\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nAccept: */*\r\n\r\n";
        let Target::Http { host, port, head } = parse(head).unwrap() else { panic!("not plain HTTP") };
        assert_eq!(host, Host::Name("example.com".into()));
        assert_eq!(port, 8080);
        let text = String::from_utf8(head).unwrap();
        assert_eq!(text, "GET /a/b?c=d HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn parse_adds_host_and_default_port() {
        let Target::Http { port, head, .. } = parse(b"GET http://127.0.0.1 HTTP/1.0\r\n\r\n").unwrap() else { panic!("not plain HTTP") };
        assert_eq!(port, 80);
        assert_eq!(String::from_utf8(head).unwrap(), "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn parse_rejects_with_reasons() {
        let cases: [(&[u8], u16, &str); 7] = [
            (b"CONNECT example.com HTTP/1.1\r\n\r\n", 400, "needs a port"),
            (b"CONNECT example.com:0 HTTP/1.1\r\n\r\n", 400, "1 to 65535"),
            (b"GET /relative HTTP/1.1\r\n\r\n", 400, "absolute http://"),
            (b"GET https://example.com/ HTTP/1.1\r\n\r\n", 400, "CONNECT"),
            (b"GET http://exa mple.com/ HTTP/1.1\r\n\r\n", 400, "not an HTTP request line"),
            (b"GET http://example.com/ HTTP/2\r\n\r\n", 505, "HTTP/1.1"),
            (b"get http://example.com/ HTTP/1.1\r\n\r\n", 400, "not an HTTP method"),
        ];
        for (head, status, text) in cases {
            let rejected = parse(head).expect_err(&String::from_utf8_lossy(head));
            assert_eq!(rejected.status, status, "{rejected:?}");
            assert!(rejected.message.contains(text), "{rejected:?}");
        }
    }

    #[test]
    fn head_length_finds_the_blank_line() {
        assert_eq!(head_length(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_length(b"GET / HTTP/1.1\r\n"), None);
    }
}
