//! The tables, in SQL that SQLite and PostgreSQL both accept.

/// Applied in order at every start; each statement is idempotent.
pub const STATEMENTS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS principals (
        name TEXT PRIMARY KEY,
        groups_json TEXT NOT NULL,
        created_unix_ms BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS tokens (
        id TEXT PRIMARY KEY,
        prefix TEXT NOT NULL UNIQUE,
        hash TEXT NOT NULL,
        principal TEXT NOT NULL REFERENCES principals(name),
        name TEXT NOT NULL,
        created_unix_ms BIGINT NOT NULL,
        expires_unix_ms BIGINT,
        revoked_unix_ms BIGINT
    )",
    "CREATE INDEX IF NOT EXISTS tokens_by_principal ON tokens(principal)",
    "CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        profile TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        command_json TEXT NOT NULL,
        ttl_ms BIGINT NOT NULL,
        created_unix_ms BIGINT NOT NULL,
        deadline_unix_ms BIGINT NOT NULL,
        ended_unix_ms BIGINT,
        end_json TEXT,
        exit_code BIGINT,
        detail_json TEXT,
        start_kind TEXT
    )",
    "CREATE INDEX IF NOT EXISTS sessions_by_owner ON sessions(owner, created_unix_ms)",
    "CREATE INDEX IF NOT EXISTS sessions_by_state ON sessions(state)",
    "CREATE TABLE IF NOT EXISTS session_events (
        session_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        time_unix_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        detail_json TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    )",
    "CREATE TABLE IF NOT EXISTS web_sessions (
        hash TEXT PRIMARY KEY,
        principal TEXT NOT NULL,
        token_id TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created_unix_ms BIGINT NOT NULL,
        expires_unix_ms BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS attach_tokens (
        hash TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        principal TEXT NOT NULL,
        expires_unix_ms BIGINT NOT NULL
    )",
];

/// Columns of the sessions table added after it was first created: each
/// column's name, and the statement that adds it to an older database.
pub const ADDED_COLUMNS: &[(&str, &str)] = &[("start_kind", "ALTER TABLE sessions ADD COLUMN start_kind TEXT")];
