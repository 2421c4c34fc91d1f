//! Who is calling: the client address (behind trusted proxies too), the
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

/// The client's address: the peer, or when the peer is a trusted proxy, the
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

/// The per-source rate limit, applied before anything else.
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

/// Reads the bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl App {
    /// Records a refused authentication; the answer never says why.
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
        let Some(token) = bearer(headers) else { return Err(self.refuse(Refused::Missing, client).await) };
        let who = match tokens::authenticate(&self.store, token, now_ms()).await.map_err(|e| Problem::store_failed(&e))? {
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
