//! Claiming a prepared sandbox for one session, and running the session to
//! its verified teardown.

use std::io::{Read, Write};
use std::time::{Instant, SystemTime};

use mayfly_core::EndReason;

use crate::spec::{monotonic_now_ns, Claim};
use crate::ledger;

use super::outcome::{apply_oom, end_reason};
use super::prepare::{tear_down, ClaimConfig, NamespaceCheck, Prepared, TAKEN};
use super::relay::{start_relays, wait_for_end_report};
use super::signals::forward_signals;
use super::{wait_exit, SessionError, SessionOutcome, StartContext, StartGuard, EXIT_AFTER_REPORT, KILL_GRACE, KILL_TIMEOUT, SUPERVISOR_SLACK};

impl Prepared {
    /// Binds the sandbox to one session and runs it. Runs the session's
    /// `before_start` hook, records the deadline and sends init the command,
    /// environment, deadline and terminal size. Then relays stdio, waits for
    /// the end, exports artifacts and tears everything down with evidence.
    ///
    /// Without `stdin`, the command reads end-of-file at once.
    ///
    /// A pool member's deadline counts from this call, and a cold start's
    /// from the start of [`super::prepare`]. When the hook fails, the
    /// sandbox is destroyed and the error returned.
    pub fn claim(
        mut self,
        config: ClaimConfig,
        stdin: Option<Box<dyn Read + Send>>,
        stdout: Box<dyn Write + Send>,
        stderr: Box<dyn Write + Send>,
    ) -> Result<SessionOutcome, SessionError> {
        let mut this = self.0.take().expect(TAKEN);
        if config.argv.first().is_none_or(|program| program.is_empty()) {
            this.destroy();
            return Err(SessionError::Invalid("the command is empty".into()));
        }
        let prestarted_other = this.prestart.as_ref().is_some_and(|command| command.argv != config.argv || command.env != config.env);
        if prestarted_other {
            this.destroy();
            return Err(SessionError::Invalid("the sandbox runs another command than the claim's, started before the claim".into()));
        }
        if config.terminal.is_some() != this.terminal {
            let wanted = if this.terminal { "needs a terminal size" } else { "has no terminal" };
            this.destroy();
            return Err(SessionError::Invalid(format!("the sandbox {wanted}: claim it with the kind of session it was prepared for")));
        }
        let (started, started_ns, started_wall, mut timings) = if this.pool_member {
            (Instant::now(), monotonic_now_ns(), SystemTime::now(), Default::default())
        } else {
            (this.started, this.started_ns, this.started_wall, this.timings.clone())
        };
        let deadline_wall = started_wall + config.ttl;
        let deadline_ns = started_ns + config.ttl.as_nanos() as u64;

        // 1. What opens the session's own network and devices, before its
        //    command can run.
        let mut start_guard: Option<StartGuard> = None;
        if let Some(hook) = config.before_start {
            let context = StartContext { init_pid: this.init_pid, command_pipes: this.command_pipes.take() };
            match (hook.0)(context) {
                Ok(guard) => start_guard = Some(guard),
                Err(error) => {
                    this.destroy();
                    return Err(SessionError::BeforeStart(error));
                }
            }
        }

        // 2. The ledger record gets the session's deadline, so that a reap
        //    leaves the session to its init until then. A cold start's
        //    record has it from the start, since its deadline counts from
        //    the start of prepare too.
        let deadline_unix_ms = ledger::unix_ms(deadline_wall);
        let claimed_by = (this.sandbox_id != config.session_id).then(|| config.session_id.clone());
        if this.record.deadline_unix_ms != deadline_unix_ms || this.record.claimed_by != claimed_by {
            this.record.deadline_unix_ms = deadline_unix_ms;
            this.record.claimed_by = claimed_by;
            if let Err(error) = ledger::write(&this.state_dir, &this.record) {
                drop(start_guard);
                this.destroy();
                return Err(error.into());
            }
        }

        // 3. The claim. A write error means init has already ended the
        //    sandbox, and its end report gives the reason.
        let claim = Claim { argv: config.argv, env: config.env, deadline_monotonic_ns: deadline_ns, terminal: config.terminal };
        let mut line = serde_json::to_vec(&claim).expect("the claim serializes");
        line.push(b'\n');
        let _ = this.claim_pipe.write_all(&line);
        drop(this.claim_pipe);
        let init_pid = this.init_pid;
        if let (Some(control), Ok(pidfd)) = (&config.control, this.pidfd.try_clone()) {
            control.launched(init_pid, pidfd);
        }
        if config.forward_signals {
            if let Ok(pidfd) = this.pidfd.try_clone() {
                forward_signals(pidfd);
            }
        }

        // 4. Relay stdio and collect the artifacts on their own threads.
        let relays = start_relays(this.pipes, stdin, stdout, stderr, this.artifacts.clone());
        let reports = this.reports;
        let pidfd = this.pidfd;
        let cgroup = this.cgroup;
        let namespaces = this.namespaces;

        // 5. Wait for init. Init enforces the deadline itself; the supervisor
        //    steps in only if init has not ended the session shortly after it.
        let limit_at = started + config.ttl + KILL_GRACE + SUPERVISOR_SLACK;
        let mut received = this.received;
        let reported_end = wait_for_end_report(&reports.receiver, limit_at, &mut received);
        // After the end report only init is left, so the usage is final but
        // for init's own exit, a fraction of a millisecond of CPU. Reading
        // it now overlaps that exit, which frees the session's namespaces.
        let usage_at_end = reported_end.then(|| cgroup.usage());

        let exit_wait = if reported_end { limit_at.saturating_duration_since(Instant::now()).max(EXIT_AFTER_REPORT) } else { limit_at.saturating_duration_since(Instant::now()) };
        let supervisor_killed = !wait_exit(&pidfd, exit_wait);
        if supervisor_killed {
            let _ = cgroup.kill_all(KILL_TIMEOUT);
        }
        timings.ended_us = started.elapsed().as_micros() as u64;
        // SAFETY: waitpid on the init process this supervisor started.
        unsafe { libc::waitpid(init_pid, std::ptr::null_mut(), 0) };
        // Sockets the guard holds in the session's network keep that namespace
        // alive, so they close before the teardown looks for what is left.
        drop(start_guard);
        // After the end report, the reports thread scans for namespace
        // holders and releases the held namespaces, and teardown waits for
        // the scan only when it needs the result. Without that report,
        // init's exit has closed the pipe, so the thread passes on any
        // reports still unread and returns the held namespaces.
        let held_namespaces = if reported_end { None } else { reports.held_namespaces.recv().ok().flatten() };
        let (mut end, landlock, mut enforcer) = end_reason(&reports.receiver, received, supervisor_killed, started_ns, &mut timings);
        if let Some(control) = &config.control {
            control.finished();
            // A destroy that came before init's own end report is why it ended.
            if let (false, Some(reason)) = (reported_end, control.destroy_requested()) {
                end = EndReason::Destroyed { detail: reason };
                enforcer = None;
            }
        }

        // 6. Usage, then the kill and verified teardown.
        let usage = usage_at_end.unwrap_or_else(|| cgroup.usage());
        let end = apply_oom(end, &usage);
        let check = NamespaceCheck { ids: &namespaces, handles: this.namespace_handles.as_ref(), scan: &reports.scan, released: &reports.released };
        let (evidence, artifacts, artifacts_error, stderr_ended_mid_line) =
            tear_down(&cgroup, Some(relays), check, &this.state_dir, &this.sandbox_id, &mut timings);
        if let Some(held) = held_namespaces {
            held.release();
        }

        // A failed export or an incomplete teardown overrides the command's status.
        let exit_code = if artifacts_error.is_some() || !evidence.clean { mayfly_core::ExitCode::SETUP_FAILED } else { end.exit_code() };
        Ok(SessionOutcome {
            session_id: config.session_id,
            sandbox_id: this.sandbox_id,
            exit_code,
            end,
            landlock,
            deadline_enforced_by: enforcer,
            started_at_unix_ms: ledger::unix_ms(started_wall),
            ended_at_unix_ms: ledger::unix_ms(SystemTime::now()),
            deadline_unix_ms: ledger::unix_ms(deadline_wall),
            usage,
            artifacts,
            artifacts_error,
            namespaces,
            teardown: evidence,
            timings,
            stderr_ended_mid_line,
        })
    }
}
