//! The API in-process: authentication, the authorization matrix, request
//! checks, problem details, tokens and the OpenAPI document.

mod common;

use axum::http::{Method, StatusCode};
use common::Harness;
use mayfly_core::SessionState;
use serde_json::{json, Value};

const CONFIG: &str = "";

fn assert_problem(reply: &common::Reply, status: StatusCode, slug: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    assert_eq!(reply.body["type"], format!("urn:mayfly:problem:{slug}"), "{}", reply.body);
    assert_eq!(reply.body["status"], status.as_u16());
    assert!(reply.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

#[tokio::test]
async fn every_authentication_failure_gets_the_same_answer() {
    let h = Harness::new("api-authn", CONFIG, None).await;
    let good = h.token("alice", &[]).await;
    let revoked = h.token("alice", &[]).await;
    let revoked_id = h.app.store.token_by_prefix(&revoked[..12]).await.unwrap().unwrap().id;
    h.app.store.revoke_token(&revoked_id, 1).await.unwrap();
    let expired = mayfly_control::tokens::new_api_token("alice", "old", 0, Some(1));
    h.app.store.insert_token(&expired.record).await.unwrap();
    // Right prefix, wrong secret.
    let forged = format!("{}_{}", &good[..12], "A".repeat(40));

    let mut bodies = Vec::new();
    for token in [None, Some("garbage"), Some(forged.as_str()), Some(revoked.as_str()), Some(expired.secret.as_str())] {
        let reply = h.call(Method::GET, "/v1/me", token, None).await;
        assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthenticated");
        bodies.push(reply.body.to_string());
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "the answers must not reveal which part failed: {bodies:?}");

    let causes: Vec<String> = h.audit("auth.failed").iter().map(|r| r.entry.fields["cause"].as_str().unwrap().to_string()).collect();
    assert_eq!(causes, ["missing", "malformed", "unknown", "revoked", "expired"]);
    let log = std::fs::read_to_string(h.app.audit.log().path()).unwrap();
    assert!(!log.contains(&forged[13..]) && !log.contains(&good[13..]), "no secret reaches the audit log");

    let me = h.call(Method::GET, "/v1/me", Some(&good), None).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["principal"], "alice");
}

#[tokio::test]
async fn the_default_policy_separates_owners_and_admins() {
    let h = Harness::new("api-authz", CONFIG, None).await;
    let admin = h.token("root", &["admins"]).await;
    let alice = h.token("alice", &["dev"]).await;
    let bob = h.token("bob", &["dev"]).await;
    let bobs = h.insert_session("bob", SessionState::Running).await;
    let bob_token_id = h.app.store.token_by_prefix(&bob[..12]).await.unwrap().unwrap().id;

    let cases: Vec<(&str, Method, String, Option<Value>, StatusCode)> = vec![
        (&alice, Method::GET, format!("/v1/sessions/{bobs}"), None, StatusCode::FORBIDDEN),
        (&alice, Method::DELETE, format!("/v1/sessions/{bobs}"), None, StatusCode::FORBIDDEN),
        (&alice, Method::GET, format!("/v1/sessions/{bobs}/events"), None, StatusCode::FORBIDDEN),
        (&alice, Method::POST, format!("/v1/sessions/{bobs}/attach-token"), None, StatusCode::FORBIDDEN),
        (&alice, Method::GET, "/v1/sessions?owner=bob".into(), None, StatusCode::FORBIDDEN),
        (&alice, Method::GET, "/v1/tokens?principal=bob".into(), None, StatusCode::FORBIDDEN),
        (&alice, Method::DELETE, format!("/v1/tokens/{bob_token_id}"), None, StatusCode::FORBIDDEN),
        (&alice, Method::POST, "/v1/tokens".into(), Some(json!({"name": "x", "principal": "bob"})), StatusCode::FORBIDDEN),
        (&alice, Method::POST, "/v1/tokens".into(), Some(json!({"name": "x", "groups": ["admins"]})), StatusCode::FORBIDDEN),
        (&alice, Method::GET, "/v1/audit".into(), None, StatusCode::FORBIDDEN),
        (&alice, Method::GET, "/metrics".into(), None, StatusCode::FORBIDDEN),
        (&alice, Method::GET, "/v1/profiles".into(), None, StatusCode::OK),
        (&alice, Method::GET, "/v1/tokens".into(), None, StatusCode::OK),
        (&bob, Method::GET, format!("/v1/sessions/{bobs}"), None, StatusCode::OK),
        (&bob, Method::GET, format!("/v1/sessions/{bobs}/events"), None, StatusCode::OK),
        (&bob, Method::POST, format!("/v1/sessions/{bobs}/attach-token"), None, StatusCode::CREATED),
        (&admin, Method::GET, format!("/v1/sessions/{bobs}"), None, StatusCode::OK),
        (&admin, Method::GET, "/v1/sessions?owner=bob".into(), None, StatusCode::OK),
        (&admin, Method::GET, "/v1/tokens?principal=bob".into(), None, StatusCode::OK),
        (&admin, Method::GET, "/v1/audit?limit=5".into(), None, StatusCode::OK),
        (&admin, Method::GET, "/v1/audit/verify".into(), None, StatusCode::OK),
        (&admin, Method::GET, "/metrics".into(), None, StatusCode::OK),
        (&admin, Method::DELETE, format!("/v1/sessions/{bobs}"), None, StatusCode::OK),
    ];
    for (token, method, path, body, expected) in cases {
        let reply = h.call(method.clone(), &path, Some(token), body).await;
        assert_eq!(reply.status, expected, "{method} {path}: {}", reply.body);
        if expected == StatusCode::FORBIDDEN {
            assert_problem(&reply, StatusCode::FORBIDDEN, "forbidden");
        }
    }
    // A person's plain list shows only their own sessions.
    let mine = h.call(Method::GET, "/v1/sessions", Some(&alice), None).await;
    assert_eq!(mine.body["sessions"].as_array().unwrap().len(), 0);
    let all = h.call(Method::GET, "/v1/sessions", Some(&admin), None).await;
    assert_eq!(all.body["sessions"].as_array().unwrap().len(), 1);

    // Both kinds of decision are audited, each naming the deciding policy.
    let decisions = h.audit("authz.decision");
    let denied = decisions.iter().find(|r| r.entry.fields["allowed"] == false).unwrap();
    assert_eq!(denied.entry.fields["action"], "read_session");
    let allowed = decisions.iter().find(|r| r.entry.fields["allowed"] == true && r.entry.fields["action"] == "read_session").unwrap();
    assert_eq!(allowed.entry.fields["policies"], json!(["owners-manage-their-sessions"]));
}

#[tokio::test]
async fn a_restrictive_policy_limits_a_group_to_one_profile_and_a_short_ttl() {
    let policy = include_str!("../policies/examples/contractors.cedar");
    let h = Harness::new("api-contractors", "[limits]\nsessions_per_principal = 1\n", Some(policy)).await;
    let carol = h.token("carol", &["contractors"]).await;
    let long = h.call(Method::POST, "/v1/sessions", Some(&carol), Some(json!({"ttl": "20m", "command": ["/bin/true"]}))).await;
    assert_problem(&long, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(long.body["policies"], json!(["contractors-default-profile-15-minutes"]));
    // Within the rule the request passes the policy and meets the quota.
    h.insert_session("carol", SessionState::Running).await;
    let short = h.call(Method::POST, "/v1/sessions", Some(&carol), Some(json!({"ttl": "10m", "command": ["/bin/true"]}))).await;
    assert_problem(&short, StatusCode::TOO_MANY_REQUESTS, "quota-exceeded");
}

#[tokio::test]
async fn bad_requests_name_what_is_wrong() {
    let h = Harness::new("api-requests", "[limits]\nmax_body = \"2KiB\"\n", None).await;
    let alice = h.token("alice", &[]).await;
    let create = |body: Value| h.call(Method::POST, "/v1/sessions", Some(&alice), Some(body));
    let cases = [
        (json!({"ttl": "2h", "command": ["/bin/true"]}), "above the maximum of 1h"),
        (json!({"ttl": "soon", "command": ["/bin/true"]}), "ttl"),
        (json!({"command": ["/bin/true"], "colour": "red"}), "unknown field `colour`"),
        (json!({"command": []}), "command is empty"),
        (json!({"command": ["/bin/true"], "env": {"1BAD": "x"}}), "\"1BAD\" is not a valid variable name"),
        (json!({"command": ["/bin/true"], "limits": {"memory": "8GiB"}}), "limits.memory = 8GiB is above the profile's"),
        (json!({"command": ["/bin/true"], "limits": {"pids": 0}}), "limits.pids"),
        (json!({"command": ["/bin/true"], "profile": "nope"}), "nope"),
        (json!({"command": ["/bin/true"], "profile": "../etc"}), "../etc"),
        (json!({"command": "/bin/true"}), "invalid type"),
    ];
    for (body, expected) in cases {
        let reply = create(body.clone()).await;
        assert_problem(&reply, StatusCode::BAD_REQUEST, "invalid-request");
        let detail = reply.body["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{body}: {detail}");
    }
    let above = create(json!({"ttl": "2h", "command": ["/bin/true"]})).await;
    assert_eq!(above.body["max_ttl"], "1h");

    let big = h.call(Method::POST, "/v1/sessions", Some(&alice), Some(json!({"command": ["x".repeat(4096)]}))).await;
    assert_problem(&big, StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    let text = h
        .call_from(common::PEER, Method::POST, "/v1/sessions", Some(&alice), None, &[("content-type", "text/plain")])
        .await;
    assert_problem(&text, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
    let bad_state = h.call(Method::GET, "/v1/sessions?state=asleep", Some(&alice), None).await;
    assert!(bad_state.body["detail"].as_str().unwrap().contains("running"), "{}", bad_state.body);
    let bad_limit = h.call(Method::GET, "/v1/sessions?limit=0", Some(&alice), None).await;
    assert!(bad_limit.body["detail"].as_str().unwrap().contains("1 to 500"), "{}", bad_limit.body);
    assert_eq!(h.app.store.count_by_state().await.unwrap().len(), 0, "no bad request left a session behind");

    // Without a valid token the body is never judged.
    let anonymous = h.call_from(common::PEER, Method::POST, "/v1/sessions", None, None, &[("content-type", "text/plain")]).await;
    assert_problem(&anonymous, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(anonymous.headers.contains_key("www-authenticate"));

    let missing = h.call(Method::GET, "/v1/nothing", Some(&alice), None).await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "not-found");
    let wrong_method = h.call(Method::PUT, "/v1/sessions", Some(&alice), None).await;
    assert_problem(&wrong_method, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
}

#[tokio::test]
async fn broken_profile_file_hides_its_text() {
    // A syntax error on the line of a secret: the TOML error quotes it.
    let profiles = mayfly_control::testing::temp_dir("api-broken-profiles");
    let default = include_str!("../../mayfly-core/profiles/default.toml");
    let leaky = default.replace("[environment]", "[environment]\nAPI_KEY = \"s3cr3t-value\" oops");
    std::fs::write(profiles.join("leaky.toml"), leaky).unwrap();
    let error = mayfly_control::profiles::load("leaky", Some(&profiles)).unwrap_err().to_string();
    assert!(error.contains("s3cr3t"), "the load error quotes the line: {error}");
    let config = format!("profiles_dir = {:?}\n", profiles.display().to_string());
    let h = Harness::new("api-broken", &config, None).await;
    let alice = h.token("alice", &[]).await;

    let reply = h.call(Method::POST, "/v1/sessions", Some(&alice), Some(json!({"profile": "leaky", "command": ["/bin/true"]}))).await;
    assert_problem(&reply, StatusCode::SERVICE_UNAVAILABLE, "profile-unusable");
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(detail.contains("profile \"leaky\" is invalid on this server"), "{detail}");
    assert!(!reply.body.to_string().contains("s3cr3t"), "{}", reply.body);

    let list = h.call(Method::GET, "/v1/profiles", Some(&alice), None).await;
    assert_eq!(list.status, StatusCode::OK);
    let leaky = list.body["profiles"].as_array().unwrap().iter().find(|p| p["name"] == "leaky").unwrap().clone();
    assert!(leaky["error"].as_str().unwrap().contains("an operator must fix the profile file"), "{leaky}");
    assert!(!list.body.to_string().contains("s3cr3t"), "{}", list.body);
    assert_eq!(h.app.store.count_by_state().await.unwrap().len(), 0, "no session was recorded");
    let _ = std::fs::remove_dir_all(&profiles);
}

#[tokio::test]
async fn an_ended_session_answers_gone_and_delete_stays_idempotent() {
    let h = Harness::new("api-gone", CONFIG, None).await;
    let alice = h.token("alice", &[]).await;
    let id = h.insert_session("alice", SessionState::Running).await;
    let first = h.call(Method::DELETE, &format!("/v1/sessions/{id}"), Some(&alice), None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["state"], "destroyed");
    assert_eq!(first.body["end"]["reason"], "destroyed");
    let again = h.call(Method::DELETE, &format!("/v1/sessions/{id}"), Some(&alice), None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["ended_unix_ms"], first.body["ended_unix_ms"], "a second delete changes nothing");

    let gone = h.call(Method::GET, &format!("/v1/sessions/{id}"), Some(&alice), None).await;
    assert_problem(&gone, StatusCode::GONE, "session-gone");
    assert_eq!(gone.body["end"]["reason"], "destroyed");
    assert!(gone.body["ended_unix_ms"].is_i64());
    let attach = h.call(Method::POST, &format!("/v1/sessions/{id}/attach-token"), Some(&alice), None).await;
    assert_problem(&attach, StatusCode::GONE, "session-gone");

    let events = h.call(Method::GET, &format!("/v1/sessions/{id}/events"), Some(&alice), None).await;
    let kinds: Vec<&str> = events.body["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["terminating", "ended"]);
    let audited: Vec<String> = h.app.audit.log().records(1).unwrap().iter().filter(|r| r.entry.session_id.as_deref() == Some(&id)).map(|r| r.entry.kind.clone()).collect();
    assert!(audited.contains(&"session.terminating".to_string()) && audited.contains(&"session.ended".to_string()), "{audited:?}");
}

#[tokio::test]
async fn tokens_are_shown_once_stored_hashed_and_revocable() {
    let h = Harness::new("api-tokens", CONFIG, None).await;
    let admin = h.token("root", &["admins"]).await;
    let created = h.call(Method::POST, "/v1/tokens", Some(&admin), Some(json!({"name": "ci", "principal": "dana", "groups": ["dev"], "expires_in": "1h"}))).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let secret = created.body["token"].as_str().unwrap().to_string();
    let id = created.body["record"]["id"].as_str().unwrap().to_string();
    assert!(created.body["record"].get("hash").is_none(), "the hash is never returned");
    assert_eq!(h.app.store.principal("dana").await.unwrap().unwrap().groups, vec!["dev".to_string()]);

    let listed = h.call(Method::GET, "/v1/tokens", Some(&secret), None).await;
    let text = listed.body.to_string();
    assert!(text.contains(&secret[..12]) && !text.contains(&secret[13..]), "lists show the prefix only: {text}");
    let db = std::fs::read(h.app.config.sqlite_path()).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(&secret[13..]), "the database holds no secret");

    // A person cannot raise their own groups through a token request.
    let raise = h.call(Method::POST, "/v1/tokens", Some(&secret), Some(json!({"name": "more", "groups": ["admins"]}))).await;
    assert_eq!(raise.status, StatusCode::FORBIDDEN);
    let own = h.call(Method::POST, "/v1/tokens", Some(&secret), Some(json!({"name": "laptop"}))).await;
    assert_eq!(own.status, StatusCode::CREATED);

    let bad = h.call(Method::POST, "/v1/tokens", Some(&admin), Some(json!({"name": "x", "expires_in": "400d"}))).await;
    assert!(bad.body["detail"].as_str().unwrap().contains("366d"), "{}", bad.body);

    let revoked = h.call(Method::DELETE, &format!("/v1/tokens/{id}"), Some(&secret), None).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert!(revoked.body["revoked_unix_ms"].is_i64());
    assert_eq!(h.call(Method::GET, "/v1/me", Some(&secret), None).await.status, StatusCode::UNAUTHORIZED);
    let kinds: Vec<String> = h.app.audit.log().records(1).unwrap().iter().map(|r| r.entry.kind.clone()).collect();
    for kind in ["token.created", "token.revoked", "principal.groups_set"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing from {kinds:?}");
    }
}

#[tokio::test]
async fn health_and_readiness_need_no_token_and_report_the_audit_log() {
    let h = Harness::new("api-health", CONFIG, None).await;
    assert_eq!(h.call(Method::GET, "/healthz", None, None).await.status, StatusCode::OK);
    let ready = h.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    let openapi = h.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(openapi.status, StatusCode::OK);

    // Break the audit log: the log file becomes a directory.
    let log = h.app.audit.log().path().to_path_buf();
    std::fs::rename(&log, log.with_extension("moved")).unwrap();
    std::fs::create_dir(&log).unwrap();
    let alice = h.token("alice", &[]).await;
    let refused = h.call(Method::POST, "/v1/sessions", Some(&alice), Some(json!({"command": ["/bin/true"]}))).await;
    assert_problem(&refused, StatusCode::SERVICE_UNAVAILABLE, "audit-unavailable");
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(h.app.store.count_by_state().await.unwrap().len(), 0, "no session without its audit record");
    let ready = h.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["checks"]["audit_writable"], false);
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_served_routes() {
    let document: Value = serde_json::from_str(mayfly_control::api::OPENAPI).expect("openapi.json is JSON");
    assert!(document["openapi"].as_str().unwrap_or("").starts_with("3."), "an OpenAPI 3 document");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                documented.push((method.clone(), path.clone()));
            }
        }
    }
    let mut served: Vec<(String, String)> = mayfly_control::api::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);

    // And every listed route is served: none falls through to the fallback.
    let h = Harness::new("api-routes", CONFIG, None).await;
    let admin = h.token("root", &["admins"]).await;
    for (method, path) in mayfly_control::api::ROUTES {
        let path = path.replace("{id}", "s-0000000000000000");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let reply = h.call(method.clone(), &path, Some(&admin), None).await;
        let fallback = reply.body["detail"].as_str().is_some_and(|d| d.contains("no such endpoint")) || reply.status == StatusCode::METHOD_NOT_ALLOWED;
        assert!(!fallback, "{method} {path} is not served: {}", reply.body);
    }
}

#[tokio::test]
async fn browsers_sign_in_with_a_cookie_that_needs_csrf_and_same_origin() {
    let h = Harness::new("api-web", CONFIG, None).await;
    let token = h.token("ivy", &[]).await;
    let signed = h.call(Method::POST, "/v1/auth/session", None, Some(json!({ "token": token }))).await;
    assert_eq!(signed.status, StatusCode::CREATED, "{}", signed.body);
    let set_cookie = signed.headers["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let csrf = signed.body["csrf"].as_str().unwrap().to_string();
    let host = ("host", "mayfly.test");

    let me = h.call_from(common::PEER, Method::GET, "/v1/me", None, None, &[("cookie", &cookie), host]).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["principal"], "ivy");

    let body = Some(json!({ "name": "from-browser" }));
    let no_csrf = h.call_from(common::PEER, Method::POST, "/v1/tokens", None, body.clone(), &[("cookie", &cookie), host]).await;
    assert_problem(&no_csrf, StatusCode::FORBIDDEN, "csrf-missing");
    let wrong = h.call_from(common::PEER, Method::POST, "/v1/tokens", None, body.clone(), &[("cookie", &cookie), host, ("x-csrf-token", "nope")]).await;
    assert_problem(&wrong, StatusCode::FORBIDDEN, "csrf-mismatch");
    let foreign = h
        .call_from(common::PEER, Method::POST, "/v1/tokens", None, body.clone(), &[("cookie", &cookie), host, ("x-csrf-token", &csrf), ("origin", "https://evil.test")])
        .await;
    assert_problem(&foreign, StatusCode::FORBIDDEN, "cross-origin");
    let good = h
        .call_from(common::PEER, Method::POST, "/v1/tokens", None, body, &[("cookie", &cookie), host, ("x-csrf-token", &csrf), ("origin", "http://mayfly.test")])
        .await;
    assert_eq!(good.status, StatusCode::CREATED, "{}", good.body);

    // Signing out ends the cookie; so does revoking the token behind it.
    let out = h.call_from(common::PEER, Method::DELETE, "/v1/auth/session", None, None, &[("cookie", &cookie), host, ("x-csrf-token", &csrf)]).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.body);
    assert!(out.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let after = h.call_from(common::PEER, Method::GET, "/v1/me", None, None, &[("cookie", &cookie), host]).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);

    let again = h.call(Method::POST, "/v1/auth/session", None, Some(json!({ "token": token }))).await;
    let cookie = again.headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let id = h.app.store.token_by_prefix(&token[..12]).await.unwrap().unwrap().id;
    h.app.store.revoke_token(&id, 1).await.unwrap();
    let revoked = h.call_from(common::PEER, Method::GET, "/v1/me", None, None, &[("cookie", &cookie), host]).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);

    let bad = h.call(Method::POST, "/v1/auth/session", None, Some(json!({ "token": "mfy_AAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB" }))).await;
    assert_problem(&bad, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(bad.headers.get("set-cookie").is_none());
}
