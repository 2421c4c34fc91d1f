//! The session lifecycle: the states a session passes through and the moves
//! between them that are allowed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a session is in its life. `Destroyed` and `Failed` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Accepted and recorded; no host resource exists yet.
    Pending,
    /// The sandbox is being created.
    Starting,
    /// The sandbox exists and the session's command runs.
    Running,
    /// A destroy was requested and the sandbox is being torn down.
    Terminating,
    /// The session ended and its teardown was verified.
    Destroyed,
    /// The session could not start, or its end could not be verified.
    Failed,
}

impl SessionState {
    pub const ALL: [SessionState; 6] = [
        SessionState::Pending,
        SessionState::Starting,
        SessionState::Running,
        SessionState::Terminating,
        SessionState::Destroyed,
        SessionState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Pending => "pending",
            SessionState::Starting => "starting",
            SessionState::Running => "running",
            SessionState::Terminating => "terminating",
            SessionState::Destroyed => "destroyed",
            SessionState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<SessionState> {
        SessionState::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// Whether the session has ended for good.
    pub fn is_final(self) -> bool {
        matches!(self, SessionState::Destroyed | SessionState::Failed)
    }

    /// Whether the session counts against its owner's quota of concurrent
    /// sessions. A session being torn down no longer does: a destroy frees
    /// the quota at once.
    pub fn holds_quota(self) -> bool {
        matches!(self, SessionState::Pending | SessionState::Starting | SessionState::Running)
    }

    /// Whether a session may move from `self` to `next`.
    pub fn can_move_to(self, next: SessionState) -> bool {
        use SessionState::*;
        match self {
            Pending => matches!(next, Starting | Terminating | Failed),
            Starting => matches!(next, Running | Terminating | Destroyed | Failed),
            Running => matches!(next, Terminating | Destroyed | Failed),
            Terminating => matches!(next, Destroyed | Failed),
            Destroyed | Failed => false,
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::SessionState::{self, *};

    #[test]
    fn final_states_have_no_way_out() {
        for from in [Destroyed, Failed] {
            for to in SessionState::ALL {
                assert!(!from.can_move_to(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn every_live_state_can_be_destroyed_or_fail() {
        for from in [Pending, Starting, Running] {
            assert!(from.can_move_to(Terminating), "{from} cannot be deleted");
            assert!(from.can_move_to(Failed), "{from} cannot fail");
        }
        assert!(Terminating.can_move_to(Destroyed));
    }

    #[test]
    fn no_state_moves_back() {
        let order = |s: SessionState| SessionState::ALL.iter().position(|x| *x == s).unwrap();
        for from in SessionState::ALL {
            for to in SessionState::ALL {
                if from.can_move_to(to) {
                    assert!(order(to) > order(from), "{from} -> {to} moves back");
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for state in SessionState::ALL {
            assert_eq!(SessionState::parse(state.as_str()), Some(state));
        }
        assert_eq!(SessionState::parse("Running"), None);
    }

    #[test]
    fn only_live_sessions_hold_quota() {
        assert!(Running.holds_quota());
        assert!(!Terminating.holds_quota());
        assert!(!Destroyed.holds_quota());
    }
}
