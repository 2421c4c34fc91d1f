//! Crash recovery: after a restart, destroy every sandbox the last process
//! left, and end every session it left unfinished, with a reason.

use std::sync::Arc;

use mayfly_audit::Entry;
use mayfly_core::{EndReason, ExitCode, SessionState};
use mayfly_sandbox::ledger;

use super::SYSTEM;
use crate::app::{now_ms, App};
use crate::store::Ending;

impl App {
    /// Runs recovery, then marks the server ready. Until it has finished,
    /// `/readyz` fails and creation answers 503.
    pub async fn recover(self: &Arc<Self>) -> Result<(), String> {
        let mut destroyed = Vec::new();
        if let Some(layout) = self.host.layout.clone() {
            let state_dir = self.config.state_dir.clone();
            destroyed = tokio::task::spawn_blocking(move || ledger::destroy_orphans(&state_dir, &layout))
                .await
                .map_err(|e| format!("the ledger scan panicked: {e}"))?;
        }
        let entries: Vec<Entry> = destroyed
            .iter()
            .map(|r| {
                // A pool member that no session had claimed is not a session.
                let entry = match r.pool_member {
                    true => Entry::new("pool.member_reaped", SYSTEM).field("member", r.session_id.clone()),
                    false => Entry::new("session.reaped", SYSTEM).session(&r.session_id),
                };
                entry.field("killed_processes", r.killed_processes).field("error", r.error.clone())
            })
            .collect();
        if !entries.is_empty() {
            self.audit.record(entries, true).await.map_err(|e| format!("the audit log cannot be written: {e}"))?;
        }
        for reaped in &destroyed {
            if let Some(error) = &reaped.error {
                tracing::error!(session_id = %reaped.session_id, error = %error, "recovery could not destroy a sandbox");
            }
        }
        let members = destroyed.iter().filter(|r| r.pool_member).count();
        if members > 0 {
            tracing::info!(members, "recovery destroyed pool members the last server left");
        }

        let unfinished = self.store.unfinished_sessions().await.map_err(|e| e.to_string())?;
        for session in unfinished {
            let reaped = destroyed.iter().find(|r| r.session_id == session.id);
            let failed_teardown = reaped.and_then(|r| r.error.clone());
            let (state, end, exit_code) = match (session.state, &failed_teardown) {
                (_, Some(error)) => (
                    SessionState::Failed,
                    EndReason::Interrupted { detail: format!("the server stopped while the session was {}, and recovery could not destroy its sandbox: {error}", session.state) },
                    ExitCode::INTERRUPTED,
                ),
                (SessionState::Terminating, None) => (
                    SessionState::Destroyed,
                    EndReason::Destroyed { detail: "destroyed on request; the server stopped during the teardown and recovery finished it".into() },
                    ExitCode::DESTROYED,
                ),
                (state, None) => (
                    SessionState::Failed,
                    EndReason::Interrupted { detail: format!("the server stopped while the session was {state}; recovery destroyed what was left of it") },
                    ExitCode::INTERRUPTED,
                ),
            };
            let ending = Ending {
                state,
                ended_unix_ms: now_ms(),
                end: serde_json::to_value(end).expect("serializes"),
                exit_code,
                detail: serde_json::json!({
                    "recovered": true,
                    "killed_processes": reaped.map_or(0, |r| r.killed_processes),
                    "deadline_passed": session.deadline_unix_ms <= now_ms(),
                }),
            };
            self.finish(&session.id, ending, SYSTEM).await.map_err(|p| p.detail)?;
        }
        // A crash between writing a session's end and its `ended` event
        // leaves an ended session without one; write it now.
        for session in self.store.ended_without_event().await.map_err(|e| e.to_string())? {
            let detail = serde_json::json!({
                "end": session.end,
                "exit_code": session.exit_code,
                "detail": { "recovered": true, "note": "the end was stored before a crash; its event is written by recovery" },
            });
            self.record_event(&session.id, "ended", session.state, SYSTEM, detail, true).await.map_err(|p| p.detail)?;
        }
        let _ = self.store.prune_attach_tokens(now_ms()).await;
        self.set_recovered();
        Ok(())
    }
}
