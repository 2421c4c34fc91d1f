//! The caller's identity: the client address (behind trusted proxies too), the
//! per-source limit before authentication, the token check, and the
//! per-principal limit after it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mayfly_audit::Entry;

use crate::app::{now_ms, App};
use crate::problem::Problem;
use crate::sessions::SYSTEM;
use crate::tokens::{self, Authenticated, Refused};

/// The TCP peer of a connection, set by the server for each connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Returns the client's address: the peer, or when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not one.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    let mut client = peer;
    for hop in forwarded.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(address) => {
                client = address;
                if !trusted.contains(&address) {
                    break;
                }
            }
            // An unreadable hop ends the trusted chain at the last good address.
            Err(_) => break,
        }
    }
    client
}

pub fn seconds_to_retry(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Applies the per-source rate limit, before anything else.
pub async fn limit_source(State(app): State<std::sync::Arc<App>>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<Peer>().map(|p| p.0.ip());
    if let Some(peer) = peer {
        let client = client_ip(request.headers(), peer, &app.config.trusted_proxies);
        if let Err(wait) = app.source_limiter.check(&client) {
            app.metrics.rate_limited_source.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %client, "rate limited by source");
            return Problem::too_many("rate-limited", "too many requests from this address; slow down", seconds_to_retry(wait)).into_response();
        }
    }
    next.run(request).await
}

/// The cookie of a signed-in browser.
pub const COOKIE: &str = "mayfly_session";
/// The header in which a browser repeats its CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Reads the browser session cookie of a request.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// Whether the request's `Origin`, when it has one, is this server: the
/// scheme-less host must equal the `Host` header.
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let origin_host = origin.split("://").nth(1).unwrap_or_default().trim_end_matches('/');
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// Protects cookie-authenticated requests: a foreign `Origin` is rejected,
/// and a state-changing request must carry the CSRF token. Requests with a
/// bearer token carry no ambient authority and pass untouched.
pub async fn protect_cookies(request: Request, next: Next) -> Response {
    let headers = request.headers();
    if bearer(headers).is_none() && session_cookie(headers).is_some() {
        if !same_origin(headers) {
            return Problem::new(axum::http::StatusCode::FORBIDDEN, "cross-origin", "Cross-origin request", "a signed-in browser session may be used only from this server's own pages").into_response();
        }
        let safe = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS);
        if !safe && !headers.contains_key(CSRF_HEADER) {
            return Problem::new(axum::http::StatusCode::FORBIDDEN, "csrf-missing", "CSRF token missing", format!("a request from a signed-in browser that changes state must repeat the session's CSRF token in the {CSRF_HEADER} header")).into_response();
        }
    }
    next.run(request).await
}

/// Reads the bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl App {
    /// Authenticates a signed-in browser by its cookie, checking the CSRF
    /// token when the request repeats one.
    async fn browser(&self, headers: &HeaderMap, cookie: &str) -> Result<Result<Authenticated, Refused>, Problem> {
        if !tokens::looks_like_web_session(cookie) {
            return Ok(Err(Refused::Malformed));
        }
        let now = now_ms();
        let Some(web) = self.store.web_session(&tokens::hash(cookie)).await.map_err(|e| Problem::store_failed(&e))? else {
            return Ok(Err(Refused::Unknown));
        };
        if web.expires_unix_ms <= now {
            return Ok(Err(Refused::Expired));
        }
        if let Some(presented) = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
            use subtle::ConstantTimeEq;
            if !bool::from(presented.as_bytes().ct_eq(web.csrf.as_bytes())) {
                return Err(Problem::new(axum::http::StatusCode::FORBIDDEN, "csrf-mismatch", "CSRF token mismatch", "the CSRF token does not belong to this browser session; sign in again"));
            }
        }
        tokens::authenticate_by_id(&self.store, &web.token_id, now).await.map_err(|e| Problem::store_failed(&e))
    }

    /// Records a rejected authentication. The response never tells why.
    pub async fn refuse(&self, refused: Refused, client: IpAddr) -> Problem {
        self.metrics.authentication_failures.fetch_add(1, Ordering::Relaxed);
        let entry = Entry::new("auth.failed", SYSTEM).field("client", client.to_string()).field("cause", refused.as_str());
        if let Err(error) = self.audit.one(entry).await {
            return Problem::audit_failed(&error);
        }
        Problem::unauthenticated()
    }

    /// Authenticates a request by its API token and applies the principal's
    /// rate limit.
    pub async fn caller(&self, headers: &HeaderMap, peer: Peer) -> Result<Authenticated, Problem> {
        let client = client_ip(headers, peer.0.ip(), &self.config.trusted_proxies);
        let who = match (bearer(headers), session_cookie(headers)) {
            (Some(token), _) => tokens::authenticate(&self.store, token, now_ms()).await.map_err(|e| Problem::store_failed(&e))?,
            (None, Some(cookie)) => self.browser(headers, cookie).await?,
            (None, None) => Err(Refused::Missing),
        };
        let who = match who {
            Ok(who) => who,
            Err(refused) => return Err(self.refuse(refused, client).await),
        };
        if let Err(wait) = self.principal_limiter.check(&who.principal.name) {
            self.metrics.rate_limited_principal.fetch_add(1, Ordering::Relaxed);
            return Err(Problem::too_many("rate-limited", format!("too many requests for {}; slow down", who.principal.name), seconds_to_retry(wait)));
        }
        Ok(who)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", forwarded.parse().unwrap());
        headers
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let proxy: IpAddr = "127.0.0.2".parse().unwrap();
        let stranger: IpAddr = "127.0.0.9".parse().unwrap();
        let h = headers("127.0.0.50, 127.0.0.60");
        assert_eq!(client_ip(&h, stranger, &[proxy]), stranger, "an untrusted peer's header is ignored");
        assert_eq!(client_ip(&h, proxy, &[proxy]), "127.0.0.60".parse::<IpAddr>().unwrap());
        let chain: IpAddr = "127.0.0.60".parse().unwrap();
        assert_eq!(client_ip(&h, proxy, &[proxy, chain]), "127.0.0.50".parse::<IpAddr>().unwrap(), "trusted hops are skipped");
        assert_eq!(client_ip(&headers("junk"), proxy, &[proxy]), proxy);
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
