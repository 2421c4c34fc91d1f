//! The control plane's storage of principals, tokens, sessions and events:
//! SQLite under the state directory by default, PostgreSQL when several
//! replicas share one database.
//!
//! Both back ends run the same SQL. Statements are written with `?`
//! placeholders and numbered (`$1`, `$2`, ...) for PostgreSQL.

mod records;
mod schema;

use std::path::Path;
use std::time::Duration;

use mayfly_core::SessionState;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row};

pub use records::{isolation_for, AttachTokenRecord, Ending, EventRecord, Principal, SessionFilter, SessionRecord, TokenRecord, WebSessionRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the database holds a value this version cannot read: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

/// Numbers the `?` placeholders of a statement for PostgreSQL. The
/// statements here have no `?` inside string literals.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `$body` with `$q` bound to a query of `$sql` for the store's back
/// end and `$pool` to its pool.
macro_rules! on_pool {
    ($store:expr, $sql:expr, |$q:ident, $pool:ident| $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => {
                let $q = sqlx::query(AssertSqlSafe(String::from($sql)));
                $body
            }
            Pool::Postgres($pool) => {
                let $q = sqlx::query(AssertSqlSafe(numbered(&$sql)));
                $body
            }
        }
    };
}

fn state_of(text: &str) -> Result<SessionState, StoreError> {
    SessionState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown session state {text:?}")))
}

fn json_of(text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("invalid JSON column: {e}")))
}

macro_rules! session_from_row {
    ($row:expr) => {{
        let row = $row;
        let command: String = row.try_get("command_json")?;
        let end: Option<String> = row.try_get("end_json")?;
        let detail: Option<String> = row.try_get("detail_json")?;
        let exit_code: Option<i64> = row.try_get("exit_code")?;
        let kind: String = row.try_get("kind")?;
        SessionRecord {
            id: row.try_get("id")?,
            owner: row.try_get("owner")?,
            profile: row.try_get("profile")?,
            isolation: records::isolation_for(&kind),
            kind,
            state: state_of(&row.try_get::<String, _>("state")?)?,
            command: serde_json::from_str(&command).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ttl_ms: row.try_get("ttl_ms")?,
            created_unix_ms: row.try_get("created_unix_ms")?,
            deadline_unix_ms: row.try_get("deadline_unix_ms")?,
            ended_unix_ms: row.try_get("ended_unix_ms")?,
            end: end.as_deref().map(json_of).transpose()?,
            exit_code: exit_code.map(|c| c as i32),
            detail: detail.as_deref().map(json_of).transpose()?,
            start: row.try_get("start_kind")?,
        }
    }};
}

macro_rules! token_from_row {
    ($row:expr) => {{
        let row = $row;
        TokenRecord {
            id: row.try_get("id")?,
            prefix: row.try_get("prefix")?,
            hash: row.try_get("hash")?,
            principal: row.try_get("principal")?,
            name: row.try_get("name")?,
            created_unix_ms: row.try_get("created_unix_ms")?,
            expires_unix_ms: row.try_get("expires_unix_ms")?,
            revoked_unix_ms: row.try_get("revoked_unix_ms")?,
        }
    }};
}

macro_rules! event_from_row {
    ($row:expr) => {{
        let row = $row;
        EventRecord {
            session_id: row.try_get("session_id")?,
            seq: row.try_get("seq")?,
            time_unix_ms: row.try_get("time_unix_ms")?,
            kind: row.try_get("kind")?,
            state: state_of(&row.try_get::<String, _>("state")?)?,
            detail: json_of(&row.try_get::<String, _>("detail_json")?)?,
        }
    }};
}

const SESSION_COLUMNS: &str = "id, owner, profile, kind, state, command_json, ttl_ms, created_unix_ms, deadline_unix_ms, ended_unix_ms, end_json, exit_code, detail_json, start_kind";
const TOKEN_COLUMNS: &str = "id, prefix, hash, principal, name, created_unix_ms, expires_unix_ms, revoked_unix_ms";

impl Store {
    /// Opens (creating when missing) the SQLite database at `path`.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        let store = Store { pool: Pool::Sqlite(pool) };
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to PostgreSQL at `url` (`postgres://user:password@host/db`).
    pub async fn open_postgres(url: &str) -> Result<Store, StoreError> {
        let pool = PgPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(10)).connect(url).await?;
        let store = Store { pool: Pool::Postgres(pool) };
        store.migrate().await?;
        Ok(store)
    }

    /// Returns the back end's name: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        for statement in schema::STATEMENTS {
            on_pool!(self, *statement, |q, pool| q.execute(pool).await.map(|_| ()))?;
        }
        // Columns added after the first release. SQLite has no ADD COLUMN IF
        // NOT EXISTS, so a column is added when selecting it fails.
        for (column, statement) in schema::ADDED_COLUMNS {
            let probe = format!("SELECT {column} FROM sessions LIMIT 0");
            if on_pool!(self, probe, |q, pool| q.execute(pool).await.map(|_| ())).is_err() {
                on_pool!(self, *statement, |q, pool| q.execute(pool).await.map(|_| ()))?;
            }
        }
        Ok(())
    }

    /// Checks that the database responds.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, "SELECT 1", |q, pool| q.execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    // --- principals -------------------------------------------------------

    /// Creates a principal, or replaces its groups when it exists.
    pub async fn put_principal(&self, name: &str, groups: &[String], now_ms: i64) -> Result<(), StoreError> {
        let groups = serde_json::to_string(groups).expect("strings serialize");
        on_pool!(
            self,
            "INSERT INTO principals (name, groups_json, created_unix_ms) VALUES (?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET groups_json = excluded.groups_json",
            |q, pool| q.bind(name).bind(groups).bind(now_ms).execute(pool).await.map(|_| ())
        )?;
        Ok(())
    }

    /// Creates a principal with these groups unless it exists already.
    pub async fn ensure_principal(&self, name: &str, groups: &[String], now_ms: i64) -> Result<(), StoreError> {
        let groups = serde_json::to_string(groups).expect("strings serialize");
        on_pool!(
            self,
            "INSERT INTO principals (name, groups_json, created_unix_ms) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
            |q, pool| q.bind(name).bind(groups).bind(now_ms).execute(pool).await.map(|_| ())
        )?;
        Ok(())
    }

    pub async fn principal(&self, name: &str) -> Result<Option<Principal>, StoreError> {
        on_pool!(self, "SELECT name, groups_json, created_unix_ms FROM principals WHERE name = ?", |q, pool| {
            match q.bind(name).fetch_optional(pool).await? {
                None => Ok(None),
                Some(row) => {
                    let groups: String = row.try_get("groups_json")?;
                    Ok(Some(Principal {
                        name: row.try_get("name")?,
                        groups: serde_json::from_str(&groups).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        created_unix_ms: row.try_get("created_unix_ms")?,
                    }))
                }
            }
        })
    }

    // --- API tokens -------------------------------------------------------

    pub async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        on_pool!(
            self,
            format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
            |q, pool| q
                .bind(&token.id)
                .bind(&token.prefix)
                .bind(&token.hash)
                .bind(&token.principal)
                .bind(&token.name)
                .bind(token.created_unix_ms)
                .bind(token.expires_unix_ms)
                .bind(token.revoked_unix_ms)
                .execute(pool)
                .await
                .map(|_| ())
        )?;
        Ok(())
    }

    pub async fn token_by_prefix(&self, prefix: &str) -> Result<Option<TokenRecord>, StoreError> {
        on_pool!(self, format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE prefix = ?"), |q, pool| {
            match q.bind(prefix).fetch_optional(pool).await? {
                None => Ok(None),
                Some(row) => Ok(Some(token_from_row!(row))),
            }
        })
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        on_pool!(self, format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?"), |q, pool| {
            match q.bind(id).fetch_optional(pool).await? {
                None => Ok(None),
                Some(row) => Ok(Some(token_from_row!(row))),
            }
        })
    }

    /// Lists tokens, of one principal or of all, oldest first.
    pub async fn tokens(&self, principal: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
        let sql = match principal {
            Some(_) => format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE principal = ? ORDER BY created_unix_ms, id"),
            None => format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_unix_ms, id"),
        };
        on_pool!(self, sql, |q, pool| {
            let q = match principal {
                Some(p) => q.bind(p.to_string()),
                None => q,
            };
            let rows = q.fetch_all(pool).await?;
            let mut tokens = Vec::with_capacity(rows.len());
            for row in &rows {
                tokens.push(token_from_row!(row));
            }
            Ok(tokens)
        })
    }

    /// Marks a token revoked. Returns false when it was revoked already.
    pub async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = on_pool!(self, "UPDATE tokens SET revoked_unix_ms = ? WHERE id = ? AND revoked_unix_ms IS NULL", |q, pool| {
            q.bind(now_ms).bind(id).execute(pool).await?.rows_affected()
        });
        Ok(done == 1)
    }

    /// Counts every token ever made, revoked and expired ones included.
    pub async fn count_tokens(&self) -> Result<i64, StoreError> {
        on_pool!(self, "SELECT COUNT(*) AS n FROM tokens", |q, pool| Ok(q.fetch_one(pool).await?.try_get::<i64, _>("n")?))
    }

    // --- sessions ---------------------------------------------------------

    pub async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let command = serde_json::to_string(&session.command).expect("strings serialize");
        on_pool!(
            self,
            format!("INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, ?)"),
            |q, pool| q
                .bind(&session.id)
                .bind(&session.owner)
                .bind(&session.profile)
                .bind(&session.kind)
                .bind(session.state.as_str())
                .bind(command)
                .bind(session.ttl_ms)
                .bind(session.created_unix_ms)
                .bind(session.deadline_unix_ms)
                .bind(session.start.as_deref())
                .execute(pool)
                .await
                .map(|_| ())
        )?;
        Ok(())
    }

    pub async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        on_pool!(self, format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?"), |q, pool| {
            match q.bind(id).fetch_optional(pool).await? {
                None => Ok(None),
                Some(row) => Ok(Some(session_from_row!(row))),
            }
        })
    }

    /// Lists sessions by id, narrowed by `filter`.
    pub async fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError> {
        let mut sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE 1 = 1");
        if filter.state.is_some() {
            sql.push_str(" AND state = ?");
        }
        if filter.owner.is_some() {
            sql.push_str(" AND owner = ?");
        }
        if filter.after.is_some() {
            sql.push_str(if filter.newest_first { " AND id < ?" } else { " AND id > ?" });
        }
        sql.push_str(if filter.newest_first { " ORDER BY id DESC LIMIT ?" } else { " ORDER BY id LIMIT ?" });
        on_pool!(self, sql, |q, pool| {
            let mut q = q;
            if let Some(state) = filter.state {
                q = q.bind(state.as_str());
            }
            if let Some(owner) = &filter.owner {
                q = q.bind(owner.clone());
            }
            if let Some(after) = &filter.after {
                q = q.bind(after.clone());
            }
            let rows = q.bind(filter.limit).fetch_all(pool).await?;
            let mut sessions = Vec::with_capacity(rows.len());
            for row in &rows {
                sessions.push(session_from_row!(row));
            }
            Ok(sessions)
        })
    }

    /// Sessions that have not ended: what recovery looks at after a restart.
    pub async fn unfinished_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        on_pool!(
            self,
            format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE state NOT IN ('destroyed', 'failed') ORDER BY id"),
            |q, pool| {
                let rows = q.fetch_all(pool).await?;
                let mut sessions = Vec::with_capacity(rows.len());
                for row in &rows {
                    sessions.push(session_from_row!(row));
                }
                Ok(sessions)
            }
        )
    }

    /// Ended sessions whose history has no `ended` event: what a crash
    /// between writing the end and its event leaves.
    pub async fn ended_without_event(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let columns = SESSION_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", ");
        on_pool!(
            self,
            format!(
                "SELECT {columns} FROM sessions s WHERE s.state IN ('destroyed', 'failed')
                 AND NOT EXISTS (SELECT 1 FROM session_events e WHERE e.session_id = s.id AND e.kind = 'ended') ORDER BY s.id"
            ),
            |q, pool| {
                let rows = q.fetch_all(pool).await?;
                let mut sessions = Vec::with_capacity(rows.len());
                for row in &rows {
                    sessions.push(session_from_row!(row));
                }
                Ok(sessions)
            }
        )
    }

    /// Deletes sessions that ended before `before_ms`, with their events.
    /// Returns the number of sessions deleted.
    pub async fn prune_sessions(&self, before_ms: i64) -> Result<u64, StoreError> {
        on_pool!(
            self,
            "DELETE FROM session_events WHERE session_id IN
             (SELECT id FROM sessions WHERE state IN ('destroyed', 'failed') AND ended_unix_ms < ?)",
            |q, pool| q.bind(before_ms).execute(pool).await.map(|_| ())
        )?;
        let removed = on_pool!(
            self,
            "DELETE FROM sessions WHERE state IN ('destroyed', 'failed') AND ended_unix_ms < ?",
            |q, pool| q.bind(before_ms).execute(pool).await?.rows_affected()
        );
        Ok(removed)
    }

    /// Counts sessions per state.
    pub async fn count_by_state(&self) -> Result<Vec<(SessionState, i64)>, StoreError> {
        on_pool!(self, "SELECT state, COUNT(*) AS n FROM sessions GROUP BY state", |q, pool| {
            let rows = q.fetch_all(pool).await?;
            let mut counts = Vec::new();
            for row in &rows {
                counts.push((state_of(&row.try_get::<String, _>("state")?)?, row.try_get::<i64, _>("n")?));
            }
            Ok(counts)
        })
    }

    /// Counts an owner's sessions that hold quota, and those created since
    /// `since_ms`.
    pub async fn quota_usage(&self, owner: &str, since_ms: i64) -> Result<(i64, i64), StoreError> {
        on_pool!(
            self,
            "SELECT
                COALESCE(SUM(CASE WHEN state IN ('pending', 'starting', 'running') THEN 1 ELSE 0 END), 0) AS live,
                COALESCE(SUM(CASE WHEN created_unix_ms >= ? THEN 1 ELSE 0 END), 0) AS recent
             FROM sessions WHERE owner = ?",
            |q, pool| {
                let row = q.bind(since_ms).bind(owner).fetch_one(pool).await?;
                Ok((row.try_get::<i64, _>("live")?, row.try_get::<i64, _>("recent")?))
            }
        )
    }

    /// Moves a session to `to` when the lifecycle allows it from its current
    /// state. Returns false, changing nothing, when it does not.
    pub async fn move_session(&self, id: &str, to: SessionState) -> Result<bool, StoreError> {
        let from: Vec<&str> = SessionState::ALL.into_iter().filter(|s| s.can_move_to(to)).map(SessionState::as_str).collect();
        if from.is_empty() {
            return Ok(false);
        }
        let placeholders = vec!["?"; from.len()].join(", ");
        let sql = format!("UPDATE sessions SET state = ? WHERE id = ? AND state IN ({placeholders})");
        let changed = on_pool!(self, sql, |q, pool| {
            let mut q = q.bind(to.as_str()).bind(id.to_string());
            for state in &from {
                q = q.bind(*state);
            }
            q.execute(pool).await?.rows_affected()
        });
        Ok(changed == 1)
    }

    /// Records how a session ended. Returns false when it had ended already.
    pub async fn end_session(&self, id: &str, ending: &Ending) -> Result<bool, StoreError> {
        if !ending.state.is_final() {
            return Err(StoreError::Invalid(format!("{} is not a final state", ending.state)));
        }
        let changed = on_pool!(
            self,
            "UPDATE sessions SET state = ?, ended_unix_ms = ?, end_json = ?, exit_code = ?, detail_json = ?
             WHERE id = ? AND state NOT IN ('destroyed', 'failed')",
            |q, pool| q
                .bind(ending.state.as_str())
                .bind(ending.ended_unix_ms)
                .bind(ending.end.to_string())
                .bind(i64::from(ending.exit_code))
                .bind(ending.detail.to_string())
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        );
        Ok(changed == 1)
    }

    // --- events -----------------------------------------------------------

    /// Appends an event to a session's history and returns it with its number.
    pub async fn append_event(
        &self,
        session_id: &str,
        kind: &str,
        state: SessionState,
        detail: &serde_json::Value,
        now_ms: i64,
    ) -> Result<EventRecord, StoreError> {
        let seq = on_pool!(
            self,
            "INSERT INTO session_events (session_id, seq, time_unix_ms, kind, state, detail_json)
             SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ? FROM session_events WHERE session_id = ?
             RETURNING seq",
            |q, pool| q
                .bind(session_id)
                .bind(now_ms)
                .bind(kind)
                .bind(state.as_str())
                .bind(detail.to_string())
                .bind(session_id)
                .fetch_one(pool)
                .await?
                .try_get::<i64, _>("seq")?
        );
        Ok(EventRecord {
            session_id: session_id.to_string(),
            seq,
            time_unix_ms: now_ms,
            kind: kind.to_string(),
            state,
            detail: detail.clone(),
        })
    }

    /// Returns a session's events after `after_seq`, in order.
    pub async fn events(&self, session_id: &str, after_seq: i64) -> Result<Vec<EventRecord>, StoreError> {
        on_pool!(
            self,
            "SELECT session_id, seq, time_unix_ms, kind, state, detail_json FROM session_events
             WHERE session_id = ? AND seq > ? ORDER BY seq",
            |q, pool| {
                let rows = q.bind(session_id).bind(after_seq).fetch_all(pool).await?;
                let mut events = Vec::with_capacity(rows.len());
                for row in &rows {
                    events.push(event_from_row!(row));
                }
                Ok(events)
            }
        )
    }

    // --- web sessions -----------------------------------------------------

    pub async fn insert_web_session(&self, web: &WebSessionRecord) -> Result<(), StoreError> {
        on_pool!(
            self,
            "INSERT INTO web_sessions (hash, principal, token_id, csrf, created_unix_ms, expires_unix_ms) VALUES (?, ?, ?, ?, ?, ?)",
            |q, pool| q
                .bind(&web.hash)
                .bind(&web.principal)
                .bind(&web.token_id)
                .bind(&web.csrf)
                .bind(web.created_unix_ms)
                .bind(web.expires_unix_ms)
                .execute(pool)
                .await
                .map(|_| ())
        )?;
        Ok(())
    }

    pub async fn web_session(&self, hash: &str) -> Result<Option<WebSessionRecord>, StoreError> {
        on_pool!(
            self,
            "SELECT hash, principal, token_id, csrf, created_unix_ms, expires_unix_ms FROM web_sessions WHERE hash = ?",
            |q, pool| {
                match q.bind(hash).fetch_optional(pool).await? {
                    None => Ok(None),
                    Some(row) => Ok(Some(WebSessionRecord {
                        hash: row.try_get("hash")?,
                        principal: row.try_get("principal")?,
                        token_id: row.try_get("token_id")?,
                        csrf: row.try_get("csrf")?,
                        created_unix_ms: row.try_get("created_unix_ms")?,
                        expires_unix_ms: row.try_get("expires_unix_ms")?,
                    })),
                }
            }
        )
    }

    /// Deletes one web session, or every expired one when `hash` is `None`.
    pub async fn delete_web_sessions(&self, hash: Option<&str>, now_ms: i64) -> Result<u64, StoreError> {
        let removed = match hash {
            Some(hash) => on_pool!(self, "DELETE FROM web_sessions WHERE hash = ?", |q, pool| q.bind(hash).execute(pool).await?.rows_affected()),
            None => on_pool!(self, "DELETE FROM web_sessions WHERE expires_unix_ms < ?", |q, pool| q.bind(now_ms).execute(pool).await?.rows_affected()),
        };
        Ok(removed)
    }

    // --- attach tokens ----------------------------------------------------

    pub async fn insert_attach_token(&self, token: &AttachTokenRecord) -> Result<(), StoreError> {
        on_pool!(
            self,
            "INSERT INTO attach_tokens (hash, session_id, principal, expires_unix_ms) VALUES (?, ?, ?, ?)",
            |q, pool| q.bind(&token.hash).bind(&token.session_id).bind(&token.principal).bind(token.expires_unix_ms).execute(pool).await.map(|_| ())
        )?;
        Ok(())
    }

    pub async fn attach_token(&self, hash: &str) -> Result<Option<AttachTokenRecord>, StoreError> {
        on_pool!(self, "SELECT hash, session_id, principal, expires_unix_ms FROM attach_tokens WHERE hash = ?", |q, pool| {
            match q.bind(hash).fetch_optional(pool).await? {
                None => Ok(None),
                Some(row) => Ok(Some(AttachTokenRecord {
                    hash: row.try_get("hash")?,
                    session_id: row.try_get("session_id")?,
                    principal: row.try_get("principal")?,
                    expires_unix_ms: row.try_get("expires_unix_ms")?,
                })),
            }
        })
    }

    /// Deletes attach tokens that expired before `now_ms`. Tokens of ended
    /// sessions stay until they expire, so that a client can still read the
    /// output that the server keeps for a while after the end.
    pub async fn prune_attach_tokens(&self, now_ms: i64) -> Result<u64, StoreError> {
        let removed = on_pool!(
            self,
            "DELETE FROM attach_tokens WHERE expires_unix_ms < ?",
            |q, pool| q.bind(now_ms).execute(pool).await?.rows_affected()
        );
        Ok(removed)
    }
}

#[cfg(test)]
mod tests;
