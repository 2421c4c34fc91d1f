//! The state directory and session ids.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Creates the state directory, readable by root only.
pub fn prepare(state_dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| format!("failed to create state directory {}: {e}; choose another with --state-dir", state_dir.display()))
}

/// Returns a new session id, ordered by creation time like the server's.
pub fn new_session_id() -> String {
    mayfly_control::sessions::job::new_session_id()
}
