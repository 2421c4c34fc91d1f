//! Rate limits before and after authentication, and per-principal quotas.

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use mayfly_core::SessionState;
use serde_json::json;

#[tokio::test]
async fn random_tokens_do_not_get_fresh_buckets() {
    let config = "[limits]\nrequests_per_minute_per_source = 60\nburst_per_source = 5\n";
    let h = Harness::new("limits-source", config, None).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let random = mayfly_control::tokens::generate_text();
        statuses.push(h.call(Method::GET, "/v1/me", Some(&random), None).await.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count(), 7, "{statuses:?}");
    let limited = h.call(Method::GET, "/v1/me", None, None).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    // Another address has its own bucket, and health checks are never limited.
    let other = h.call_from("127.0.0.2:1", Method::GET, "/v1/me", None, None, &[]).await;
    assert_eq!(other.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.call(Method::GET, "/healthz", None, None).await.status, StatusCode::OK);
    // Only 5 failures reached authentication and the audit log.
    assert_eq!(h.audit("auth.failed").len(), 6);
}

#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let config = "trusted_proxies = [\"127.0.0.5\"]\n[limits]\nrequests_per_minute_per_source = 60\nburst_per_source = 2\n";
    let h = Harness::new("limits-proxy", config, None).await;
    async fn from(h: &Harness, peer: &str, client: &str) -> StatusCode {
        h.call_from(peer, Method::GET, "/v1/me", None, None, &[("x-forwarded-for", client)]).await.status
    }
    // Two clients behind the proxy have a bucket each.
    for client in ["127.0.0.10", "127.0.0.11"] {
        for _ in 0..2 {
            assert_ne!(from(&h, "127.0.0.5:1", client).await, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    assert_eq!(from(&h, "127.0.0.5:1", "127.0.0.10").await, StatusCode::TOO_MANY_REQUESTS);
    // A stranger's header is ignored: rotating it gains nothing.
    assert_ne!(from(&h, "127.0.0.6:1", "127.0.0.20").await, StatusCode::TOO_MANY_REQUESTS);
    assert_ne!(from(&h, "127.0.0.6:1", "127.0.0.21").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(from(&h, "127.0.0.6:1", "127.0.0.22").await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn many_tokens_of_one_principal_share_its_limits() {
    let config = "[limits]\nrequests_per_minute_per_principal = 60\nburst_per_principal = 4\nsessions_per_principal = 2\n";
    let h = Harness::new("limits-principal", config, None).await;
    let mut tokens = Vec::new();
    for _ in 0..8 {
        tokens.push(h.token("erin", &[]).await);
    }
    let mut statuses = Vec::new();
    for token in &tokens {
        statuses.push(h.call(Method::GET, "/v1/me", Some(token), None).await.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 4, "{statuses:?}");
    let limited = h.call(Method::GET, "/v1/me", Some(&tokens[7]), None).await;
    assert_eq!(limited.body["type"], "urn:mayfly:problem:rate-limited");
    // Another principal is unaffected.
    let frank = h.token("frank", &[]).await;
    assert_eq!(h.call(Method::GET, "/v1/me", Some(&frank), None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_session_quota_holds_across_tokens_and_frees_on_delete() {
    let config = "[limits]\nsessions_per_principal = 2\n";
    let h = Harness::new("limits-quota", config, None).await;
    let first = h.token("gail", &[]).await;
    let second = h.token("gail", &[]).await;
    let a = h.insert_session("gail", SessionState::Running).await;
    h.insert_session("gail", SessionState::Pending).await;
    let body = json!({"command": ["/bin/true"]});
    for token in [&first, &second] {
        let reply = h.call(Method::POST, "/v1/sessions", Some(token), Some(body.clone())).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.body);
        assert_eq!(reply.body["type"], "urn:mayfly:problem:quota-exceeded");
        assert_eq!(reply.body["limit"], 2);
    }
    // A delete frees the quota at once.
    let deleted = h.call(Method::DELETE, &format!("/v1/sessions/{a}"), Some(&first), None).await;
    assert_eq!(deleted.status, StatusCode::OK);
    let (live, _) = h.app.store.quota_usage("gail", 0).await.unwrap();
    assert_eq!(live, 1);
}

#[tokio::test]
async fn creations_per_minute_are_limited_per_principal() {
    let config = "[limits]\ncreations_per_minute_per_principal = 2\n";
    let h = Harness::new("limits-rate", config, None).await;
    let token = h.token("hank", &[]).await;
    for _ in 0..2 {
        let id = h.insert_session("hank", SessionState::Running).await;
        h.call(Method::DELETE, &format!("/v1/sessions/{id}"), Some(&token), None).await;
    }
    let reply = h.call(Method::POST, "/v1/sessions", Some(&token), Some(json!({"command": ["/bin/true"]}))).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.body);
    assert!(reply.body["detail"].as_str().unwrap().contains("in the last minute"));
}
