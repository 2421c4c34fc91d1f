//! The state directory and session ids.

use std::io::Read;
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

/// Returns a new session id: `s-` and 16 random hexadecimal digits.
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("s-{hex}")
}
