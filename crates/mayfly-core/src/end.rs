//! The reason a session ended, and the process exit code `mayfly run` reports for it.

use serde::{Deserialize, Serialize};

/// Exit codes of `mayfly run` when the session did not end with the
/// command's own exit status. The command's own status (0 to 255) is passed
/// through unchanged, so a script distinguishes these by the reason printed on
/// standard error or the `end` field of the `--json` report.
pub struct ExitCode;

impl ExitCode {
    /// The server refused a client request: authentication, policy, quota,
    /// rate limit or an invalid request. The message names the cause.
    pub const API_REFUSED: i32 = 118;
    /// The server could not be reached, or failed to respond.
    pub const API_UNAVAILABLE: i32 = 119;
    /// The control plane restarted while the session ran, and its sandbox
    /// was destroyed during recovery.
    pub const INTERRUPTED: i32 = 120;
    /// The session was destroyed on request (an API delete or a server
    /// shutdown) before it ended on its own.
    pub const DESTROYED: i32 = 121;
    /// Invalid command line, profile, input or artifact directory.
    pub const USAGE: i32 = 2;
    /// This host lacks a protection that the profile requires.
    pub const PROTECTION_MISSING: i32 = 122;
    /// The memory limit was reached and the kernel killed a process.
    pub const OUT_OF_MEMORY: i32 = 123;
    /// The deadline was reached.
    pub const DEADLINE: i32 = 124;
    /// The sandbox could not be set up or torn down.
    pub const SETUP_FAILED: i32 = 125;
    /// The command was found but could not be executed.
    pub const NOT_EXECUTABLE: i32 = 126;
    /// The command was not found inside the sandbox.
    pub const NOT_FOUND: i32 = 127;
    /// Added to the signal number when a signal killed the command.
    pub const SIGNAL_BASE: i32 = 128;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum EndReason {
    /// The command exited on its own with this status.
    Exited { code: i32 },
    /// A signal killed the command.
    Signaled { signal: i32, name: String },
    /// The session's deadline was reached and every process was killed.
    Deadline,
    /// The kernel's out-of-memory killer ended a process of the session.
    OutOfMemory,
    /// The command could not be started inside the sandbox.
    CommandNotFound { command: String },
    CommandNotExecutable { command: String, error: String },
    /// A sandbox setup step failed before the command ran.
    SetupFailed { step: String, error: String },
    /// Destroyed on request before the command ended; `detail` names who
    /// requested it and why.
    Destroyed { detail: String },
    /// The control plane stopped while the session ran, and recovery
    /// destroyed what was left of it.
    Interrupted { detail: String },
}

impl EndReason {
    pub fn exit_code(&self) -> i32 {
        match self {
            EndReason::Exited { code } => *code,
            EndReason::Signaled { signal, .. } => ExitCode::SIGNAL_BASE + signal,
            EndReason::Deadline => ExitCode::DEADLINE,
            EndReason::OutOfMemory => ExitCode::OUT_OF_MEMORY,
            EndReason::CommandNotFound { .. } => ExitCode::NOT_FOUND,
            EndReason::CommandNotExecutable { .. } => ExitCode::NOT_EXECUTABLE,
            EndReason::SetupFailed { .. } => ExitCode::SETUP_FAILED,
            EndReason::Destroyed { .. } => ExitCode::DESTROYED,
            EndReason::Interrupted { .. } => ExitCode::INTERRUPTED,
        }
    }

    /// Returns a one-line explanation for people, or `None` when the command
    /// simply exited and its status speaks for itself.
    pub fn describe(&self) -> Option<String> {
        match self {
            EndReason::Exited { .. } => None,
            EndReason::Signaled { signal, name } => Some(format!("the command was killed by signal {signal} ({name})")),
            EndReason::Deadline => Some("the session reached its deadline and every process was killed".into()),
            EndReason::OutOfMemory => Some("the session ran out of memory and the kernel killed a process".into()),
            EndReason::CommandNotFound { command } => Some(format!("command {command:?} was not found inside the sandbox")),
            EndReason::CommandNotExecutable { command, error } => {
                Some(format!("command {command:?} could not be executed inside the sandbox: {error}"))
            }
            EndReason::SetupFailed { step, error } => Some(format!("sandbox setup failed at step {step:?}: {error}")),
            EndReason::Destroyed { detail } => Some(format!("the session was destroyed: {detail}")),
            EndReason::Interrupted { detail } => Some(format!("the session was interrupted: {detail}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_reasons_have_distinct_exit_codes() {
        let reasons = [
            EndReason::Deadline,
            EndReason::OutOfMemory,
            EndReason::Signaled { signal: 6, name: "SIGABRT".into() },
            EndReason::SetupFailed { step: "mount /proc".into(), error: "EPERM".into() },
            EndReason::CommandNotFound { command: "nope".into() },
            EndReason::CommandNotExecutable { command: "x".into(), error: "EACCES".into() },
            EndReason::Destroyed { detail: "deleted by alice".into() },
            EndReason::Interrupted { detail: "server restarted".into() },
        ];
        let mut codes: Vec<i32> = reasons.iter().map(EndReason::exit_code).collect();
        codes.push(ExitCode::PROTECTION_MISSING);
        codes.push(ExitCode::USAGE);
        let count = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), count);
    }

    #[test]
    fn signal_exit_code_follows_shell_convention() {
        let reason = EndReason::Signaled { signal: 6, name: "SIGABRT".into() };
        assert_eq!(reason.exit_code(), 134);
        assert!(reason.describe().unwrap().contains("signal 6"));
    }
}
