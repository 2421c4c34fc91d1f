//! The rows the control plane keeps: principals, API tokens, sessions, their
//! events and attach tokens.

use mayfly_core::SessionState;
use serde::Serialize;

/// Someone or something that calls the API, with the groups policies see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub name: String,
    pub groups: Vec<String>,
    pub created_unix_ms: i64,
}

/// An API token. Only the SHA-256 of the secret is kept; the prefix is the
/// visible part that identifies it in lists and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub id: String,
    pub prefix: String,
    #[serde(skip)]
    pub hash: String,
    pub principal: String,
    pub name: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: Option<i64>,
    pub revoked_unix_ms: Option<i64>,
}

/// A session as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionRecord {
    pub id: String,
    pub owner: String,
    pub profile: String,
    pub kind: String,
    pub state: SessionState,
    pub command: Vec<String>,
    pub ttl_ms: i64,
    pub created_unix_ms: i64,
    pub deadline_unix_ms: i64,
    pub ended_unix_ms: Option<i64>,
    /// The end reason as JSON ([`mayfly_core::EndReason`]), once ended.
    pub end: Option<serde_json::Value>,
    pub exit_code: Option<i32>,
    /// Usage, teardown evidence and the isolation in place, once ended.
    pub detail: Option<serde_json::Value>,
    /// For a browser session, how Chromium is isolated, from its start;
    /// derived from the kind, not stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<serde_json::Value>,
    /// `warm` when the session claimed a sandbox from its profile's pool,
    /// `cold` when its sandbox was built for it. Sessions created before
    /// pools existed have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
}

/// Returns what a session of `kind` states about its isolation beyond the
/// sandbox every session has: for browsers, that Chromium's own sandbox is
/// off, and why.
pub fn isolation_for(kind: &str) -> Option<serde_json::Value> {
    (kind == "browser").then(|| {
        serde_json::json!({
            "chromium_sandbox": false,
            "reason": "Chromium's namespace sandbox needs to create user namespaces, which Mayfly's seccomp filter denies to every session, so Chromium runs with --no-sandbox inside Mayfly's sandbox",
            "layers": ["namespaces", "seccomp", "landlock", "cgroups", "unprivileged uid", "egress proxy"],
        })
    })
}

/// One lifecycle transition or notable moment of a session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub session_id: String,
    pub seq: i64,
    pub time_unix_ms: i64,
    pub kind: String,
    pub state: SessionState,
    pub detail: serde_json::Value,
}

/// A short-lived token that lets its holder attach to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachTokenRecord {
    pub hash: String,
    pub session_id: String,
    pub principal: String,
    pub expires_unix_ms: i64,
}

/// What a session list is narrowed to.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub state: Option<SessionState>,
    pub owner: Option<String>,
    /// The page cursor: sessions whose id sorts after this one, or before
    /// it when `newest_first` is set.
    pub after: Option<String>,
    pub limit: i64,
    /// Newest first instead of oldest first. Ids sort by creation time.
    pub newest_first: bool,
}

/// How a session's ended state is written.
#[derive(Debug, Clone)]
pub struct Ending {
    pub state: SessionState,
    pub ended_unix_ms: i64,
    pub end: serde_json::Value,
    pub exit_code: i32,
    pub detail: serde_json::Value,
}

/// A signed-in browser: the cookie's hash, who it speaks for, through which
/// API token, and the token that state-changing requests must repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSessionRecord {
    pub hash: String,
    pub principal: String,
    pub token_id: String,
    pub csrf: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
}
