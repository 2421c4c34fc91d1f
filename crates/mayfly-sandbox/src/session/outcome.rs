//! The end of a session: its reason, its usage and where its time went.

use std::collections::BTreeMap;
use std::sync::mpsc;

use mayfly_core::EndReason;
use serde::Serialize;

use super::INIT_STEP;
use crate::cgroup::Usage;
use crate::spec::{InitReport, LandlockStatus};
use crate::teardown::Evidence;
use crate::transfer::ExportSummary;

/// Process that ended the session at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineEnforcer {
    Init,
    Supervisor,
}

/// Durations of a session's phases in microseconds, for operators and `mayfly bench`.
/// A session started cold starts when its sandbox is prepared, and one
/// claimed from a pool at the claim, so phases before it count as 0.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// From the start of the session to init running in its namespaces and cgroups.
    pub launch_us: u64,
    /// From the start of the session to the start of init's own code, after its exec.
    pub init_started_us: u64,
    /// Init's own setup, from its start to the command's exec, as init
    /// measured it, without the time a pool member waited for its claim.
    pub init_setup_us: u64,
    /// From the start of the session to init's report that the command's
    /// exec succeeded. A session claimed from a pool starts at the claim.
    pub command_started_us: u64,
    /// From the start of the session to init's report that every session
    /// process is gone and the artifacts are out.
    pub init_reported_us: u64,
    /// From the start of the session to init's exit, which includes the
    /// kernel's teardown of the session's namespaces.
    pub ended_us: u64,
    /// Kill, cgroup removal and stream joins after init's exit.
    pub teardown_us: u64,
    /// Time teardown waited for the scan for anything of the session left on
    /// the host. The scan starts when init reports the end, while init exits.
    pub verify_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionOutcome {
    pub session_id: String,
    /// The id of the sandbox, which names its cgroups and ledger record: the
    /// session id for a cold start, the member's own id for a pool member.
    pub sandbox_id: String,
    pub end: EndReason,
    pub exit_code: i32,
    pub landlock: Option<LandlockStatus>,
    pub deadline_enforced_by: Option<DeadlineEnforcer>,
    pub started_at_unix_ms: u64,
    pub ended_at_unix_ms: u64,
    pub deadline_unix_ms: u64,
    pub usage: Usage,
    pub artifacts: Option<ExportSummary>,
    pub artifacts_error: Option<String>,
    pub namespaces: BTreeMap<String, String>,
    pub teardown: Evidence,
    pub timings: Timings,
    /// Whether the command's standard error ended without a newline.
    #[serde(skip)]
    pub stderr_ended_mid_line: bool,
}

/// Interprets the kernel's OOM counter: a command killed by SIGKILL, or one
/// that failed after a process of the session was OOM-killed, ran out of memory.
pub(super) fn apply_oom(end: EndReason, usage: &Usage) -> EndReason {
    if usage.oom_kills == 0 {
        return end;
    }
    match end {
        EndReason::Signaled { signal, .. } if signal == libc::SIGKILL => EndReason::OutOfMemory,
        EndReason::Exited { code } if code != 0 => EndReason::OutOfMemory,
        EndReason::SetupFailed { step, .. } if step == INIT_STEP => EndReason::OutOfMemory,
        other => other,
    }
}

/// Reads init's reports once it has exited and decides how the session ended.
pub(super) fn end_reason(
    reports: &mpsc::Receiver<InitReport>,
    mut received: Vec<InitReport>,
    supervisor_killed: bool,
    started_ns: u64,
    timings: &mut Timings,
) -> (EndReason, Option<LandlockStatus>, Option<DeadlineEnforcer>) {
    let since_start = |ns: u64| ns.saturating_sub(started_ns) / 1000;
    received.extend(reports.try_iter());
    let mut landlock = None;
    let mut end = None;
    for report in received {
        match report {
            InitReport::Ready { .. } => {}
            InitReport::Started { landlock: status, setup_us, init_started_ns, command_started_ns } => {
                landlock = Some(status);
                timings.init_setup_us = setup_us;
                timings.init_started_us = since_start(init_started_ns);
                timings.command_started_us = since_start(command_started_ns);
            }
            InitReport::Ended { end: reason, reported_ns, .. } => {
                end = Some(reason);
                timings.init_reported_us = since_start(reported_ns);
            }
        }
    }
    if supervisor_killed {
        return (EndReason::Deadline, landlock, Some(DeadlineEnforcer::Supervisor));
    }
    let end = end.unwrap_or_else(|| EndReason::SetupFailed {
        step: INIT_STEP.into(),
        error: "init exited without reporting how the session ended".into(),
    });
    let enforcer = (end == EndReason::Deadline).then_some(DeadlineEnforcer::Init);
    (end, landlock, enforcer)
}
