//! An in-process control plane over a real SQLite database, driven through
//! its router without a socket. No sandbox is started here: sessions are
//! written to the store directly where a test needs them.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::{Extension, Router};
use http_body_util::BodyExt;
use mayfly_control::api::{self, caller::Peer};
use mayfly_control::app::{now_ms, App, HostSupport};
use mayfly_control::audit::Auditor;
use mayfly_control::config::{Overrides, ServerConfig};
use mayfly_control::policy::Policies;
use mayfly_control::store::{SessionRecord, Store};
use mayfly_control::testing::temp_dir;
use mayfly_control::tokens;
use mayfly_core::SessionState;
use serde_json::Value;
use tower::ServiceExt;

pub struct Harness {
    pub app: Arc<App>,
    router: Router,
    pub dir: PathBuf,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

pub const PEER: &str = "127.0.0.1:40000";

impl Harness {
    /// A control plane with this configuration file text and policy text
    /// (the default policy when `None`).
    pub async fn new(label: &str, config: &str, policy: Option<&str>) -> Harness {
        let dir = temp_dir(label);
        let path = dir.join("mayfly.toml");
        std::fs::write(&path, config).unwrap();
        let config = ServerConfig::load(&Overrides { config: Some(path), state_dir: Some(dir.join("state")), ..Default::default() }).unwrap();
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let policies = match policy {
            Some(text) => Policies::parse("test.cedar", text).unwrap(),
            None => Policies::load(None).unwrap(),
        };
        let audit = Auditor::open(&config.state_dir).unwrap();
        let store = Store::open_sqlite(&config.sqlite_path()).await.unwrap();
        let app = App::new(config, store, policies, audit, HostSupport::inspect());
        app.recover().await.unwrap();
        let router = api::router(Arc::clone(&app));
        Harness { app, router, dir }
    }

    /// Makes a principal with these groups and returns a new token of it.
    pub async fn token(&self, principal: &str, groups: &[&str]) -> String {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let store = &self.app.store;
        if store.principal(principal).await.unwrap().is_none() {
            store.put_principal(principal, &groups, now_ms()).await.unwrap();
        }
        let token = tokens::new_api_token(principal, "test", now_ms(), None);
        store.insert_token(&token.record).await.unwrap();
        token.secret
    }

    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        self.call_from(PEER, method, path, token, body, &[]).await
    }

    pub async fn call_from(&self, peer: &str, method: Method, path: &str, token: Option<&str>, body: Option<Value>, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = match body {
            Some(body) => request.header("content-type", "application/json").body(Body::from(body.to_string())).unwrap(),
            None => request.body(Body::empty()).unwrap(),
        };
        self.send(peer, request).await
    }

    pub async fn send(&self, peer: &str, request: Request<Body>) -> Reply {
        let peer: SocketAddr = peer.parse().unwrap();
        let response = self.router.clone().layer(Extension(Peer(peer))).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply { status, headers, body }
    }

    /// Writes a session straight into the store, as if it were in `state`.
    pub async fn insert_session(&self, owner: &str, state: SessionState) -> String {
        let id = mayfly_control::sessions::job::new_session_id();
        let now = now_ms();
        let record = SessionRecord {
            id: id.clone(),
            owner: owner.into(),
            profile: "default".into(),
            kind: "job".into(),
            state: SessionState::Pending,
            command: vec!["/bin/true".into()],
            ttl_ms: 60_000,
            created_unix_ms: now,
            deadline_unix_ms: now + 60_000,
            ended_unix_ms: None,
            end: None,
            exit_code: None,
            detail: None,
            isolation: None,
            start: None,
        };
        self.app.store.insert_session(&record).await.unwrap();
        let path: &[SessionState] = match state {
            SessionState::Pending => &[],
            SessionState::Starting => &[SessionState::Starting],
            SessionState::Running => &[SessionState::Starting, SessionState::Running],
            other => panic!("insert_session does not make {other} sessions"),
        };
        for step in path {
            assert!(self.app.store.move_session(&id, *step).await.unwrap());
        }
        id
    }

    /// The audit records of one kind.
    pub fn audit(&self, kind: &str) -> Vec<mayfly_audit::Record> {
        self.app.audit.log().records(1).unwrap().into_iter().filter(|r| r.entry.kind == kind).collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
