//! The sandbox's init: PID 1 of the session's PID namespace.
//!
//! It builds the root filesystem and copies the inputs, then waits for the
//! claim that gives it a command and a deadline. It starts the command, then
//! reaps zombies, forwards signals and ends the session: when the command
//! exits (every other process is killed with it) or at the deadline, which it
//! enforces on its own so that the deadline holds even when the supervisor
//! that started it is gone. Before exiting it streams the artifacts out.

mod command;
pub(crate) mod network;
mod pty;
pub mod rootfs;
mod start;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use mayfly_core::EndReason;
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::launch::handoff::{self, Join};
use crate::spec::{fd, monotonic_now_ns, Claim, InitReport, InitSpec, LandlockStatus, ARTIFACTS_DIR, SANDBOX_GID, SANDBOX_UID};
use crate::transfer;
use crate::terminal::WindowSize;
use command::ChildMessage;

/// A failed setup step: which step, and the error it got.
#[derive(Debug)]
pub struct SetupError {
    pub step: String,
    pub error: String,
}

impl SetupError {
    pub fn new(step: impl Into<String>, error: impl Into<String>) -> Self {
        SetupError { step: step.into(), error: error.into() }
    }
}

/// Signals that init passes on to the command.
const FORWARDED: &[Signal] =
    &[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGWINCH];

fn report(out: &mut File, message: &InitReport) {
    if let Ok(mut line) = serde_json::to_vec(message) {
        line.push(b'\n');
        // The supervisor may be gone; the session goes on to its end regardless.
        let _ = out.write_all(&line);
    }
}

/// Reads the spec: the first line of JSON on the spec pipe.
fn read_spec(pipe: &mut BufReader<File>) -> Result<InitSpec, SetupError> {
    let mut line = String::new();
    pipe.read_line(&mut line).map_err(|e| SetupError::new("read the session spec", e.to_string()))?;
    let spec: InitSpec = serde_json::from_str(&line).map_err(|e| SetupError::new("parse the session spec", e.to_string()))?;
    check_build(&spec.build_id)?;
    Ok(spec)
}

/// Rejects a spec written by a binary of another build than this init.
fn check_build(build_id: &str) -> Result<(), SetupError> {
    if build_id == crate::init_program::BUILD_ID {
        return Ok(());
    }
    let error = format!(
        "this init is from build {}, but the binary that started it is from build {build_id}; install {} and mayfly from the same build, side by side",
        crate::init_program::BUILD_ID,
        crate::init_program::FILE_NAME,
    );
    Err(SetupError::new("check that init and the starting binary are one build", error))
}

/// The reason init ends without a claim.
enum Unclaimed {
    /// No claim came before the time the spec allows.
    Expired,
    /// The supervisor closed the spec pipe, or gave up while writing it.
    Closed,
    /// The command started before the claim exited.
    CommandExited,
    Invalid(SetupError),
}

/// Waits until the claim arrives on the spec pipe or `until` (on
/// CLOCK_MONOTONIC) passes, and reads it. With `prestarted`, the pidfd of a
/// command that started before the claim, also stops when it exits.
fn wait_for_claim(pipe: &mut BufReader<File>, until: u64, prestarted: Option<&OwnedFd>) -> Result<Claim, Unclaimed> {
    // The supervisor of a session started cold writes both lines at once,
    // so the claim may already sit in the reader's buffer.
    while pipe.buffer().is_empty() {
        let now = monotonic_now_ns();
        if now >= until {
            return Err(Unclaimed::Expired);
        }
        let millis = ((until - now) / 1_000_000).clamp(1, i32::MAX as u64) as i32;
        let command_fd = prestarted.map_or(-1, std::os::fd::AsRawFd::as_raw_fd);
        let mut polls = [
            libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(pipe.get_ref()), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: command_fd, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: poll reads and writes two pollfds on this stack; a
        // negative descriptor is ignored.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), 2, millis) };
        if ready > 0 && polls[1].revents != 0 {
            return Err(Unclaimed::CommandExited);
        }
        if ready > 0 {
            break;
        }
        if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(Unclaimed::Closed);
        }
    }
    let mut line = String::new();
    match pipe.read_line(&mut line) {
        Ok(0) | Err(_) => return Err(Unclaimed::Closed),
        Ok(_) if !line.ends_with('\n') => return Err(Unclaimed::Closed),
        Ok(_) => {}
    }
    let claim: Claim = serde_json::from_str(&line).map_err(|e| Unclaimed::Invalid(SetupError::new("parse the claim", e.to_string())))?;
    if prestarted.is_none() && claim.argv.first().is_none_or(|program| program.is_empty()) {
        return Err(Unclaimed::Invalid(SetupError::new("parse the claim", "the command is empty")));
    }
    Ok(claim)
}

/// Waits on the starter's socket for the supervisor's [`Join`], which comes
/// once the session's cgroups exist, and moves init into them. On cgroup v1
/// the `tasks` files come with it: writing "0" to one moves the writing
/// thread, and init has one. The supervisor opened the files, so the
/// write needs no permission of init's own. On v2 init started in its cgroup.
fn join_cgroups(socket: OwnedFd) -> Result<(), SetupError> {
    let step = "join the session cgroup";
    let (_, tasks) = handoff::receive::<Join>(socket.as_fd(), Join::fd_count).map_err(|e| SetupError::new(step, e.to_string()))?;
    drop(socket);
    for file in tasks {
        File::from(file).write_all(b"0").map_err(|e| SetupError::new(step, e.to_string()))?;
    }
    Ok(())
}

/// Checks that init is in the session's cgroup in every hierarchy the
/// session uses.
fn check_cgroup(spec: &InitSpec) -> Result<(), SetupError> {
    let step = "check the session cgroup";
    let text = crate::procfs::read("/proc/self/cgroup").map_err(|e| SetupError::new(step, e.to_string()))?;
    let suffix = format!("/mayfly/{}", spec.session_id);
    for controllers in &spec.cgroup_membership {
        let joined = text.lines().any(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, list, path) = (fields.next(), fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
            let listed = if controllers.is_empty() { list.is_empty() } else { list.split(',').any(|c| c == controllers) };
            listed && path.ends_with(&suffix)
        });
        if !joined {
            return Err(SetupError::new(step, format!("init is not in the session cgroup for {controllers:?}: {}", text.trim())));
        }
    }
    Ok(())
}

/// Copies each input from its inherited descriptor into /work, owned by the
/// sandbox user, reading no more than the size the supervisor checked.
fn copy_inputs(spec: &InitSpec) -> Result<(), SetupError> {
    for (index, input) in spec.inputs.iter().enumerate() {
        let step = || format!("copy input {:?}", input.name);
        // SAFETY: the launcher placed input `index` at FIRST_INPUT + index.
        let source = unsafe { File::from_raw_fd(fd::FIRST_INPUT + index as i32) };
        let target = Path::new("/work").join(&input.name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| SetupError::new(step(), e.to_string()))?;
            chown_tree(Path::new("/work"), parent);
        }
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(input.mode & 0o777)
            .open(&target)
            .map_err(|e| SetupError::new(step(), e.to_string()))?;
        let copied = io::copy(&mut source.take(input.size), &mut file).map_err(|e| SetupError::new(step(), e.to_string()))?;
        if copied != input.size {
            return Err(SetupError::new(step(), format!("the file changed size while it was copied ({copied} of {} bytes)", input.size)));
        }
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(input.mode & 0o777))
            .map_err(|e| SetupError::new(step(), e.to_string()))?;
        nix::unistd::chown(&target, Some(SANDBOX_UID.into()), Some(SANDBOX_GID.into()))
            .map_err(|e| SetupError::new(step(), e.to_string()))?;
    }
    Ok(())
}

/// Gives the sandbox user every directory from `dir` up to (not including) `top`.
fn chown_tree(top: &Path, dir: &Path) {
    let mut current = Some(dir);
    while let Some(path) = current {
        if path == top {
            break;
        }
        let _ = nix::unistd::chown(path, Some(SANDBOX_UID.into()), Some(SANDBOX_GID.into()));
        current = path.parent();
    }
}

/// Runs the setup steps that the command's child inherits, in order,
/// stopping at the first failure: the new root, sealed read-only, the
/// session's cgroups and its cgroup namespace. [`finish_setup`] does the
/// rest while the child confines itself.
fn setup(spec: &InitSpec, join: OwnedFd) -> Result<(), SetupError> {
    // 1. Stop mount events from reaching the host, then build the new root.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| SetupError::new("make the mount tree private", e.to_string()))?;
    rootfs::build(spec)?;

    // 2. Nothing below may run outside the session's limits: join the
    //    session cgroup, check that init is in it, then create a cgroup
    //    namespace rooted there.
    join_cgroups(join)?;
    check_cgroup(spec)?;
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|e| SetupError::new("create the cgroup namespace", e.to_string()))?;

    // 3. Seal the root read-only: init writes only to its other mounts from
    //    here on. Remounting fails while anything writes to the mount, even
    //    an access time update, so it comes before the child exists.
    rootfs::seal_root()
}

/// Runs the setup that can wait until the command's child exists, which
/// shares init's mount, network and UTS namespaces. It must end before the
/// child runs any command.
fn finish_setup(spec: &InitSpec) -> Result<(), SetupError> {
    // 4. Nothing of the host's tree stays mounted.
    rootfs::detach_old_root()?;

    // 5. Hostname and the session's own loopback interface.
    nix::unistd::sethostname(&spec.hostname).map_err(|e| SetupError::new("set the hostname", e.to_string()))?;
    network::bring_up_loopback().map_err(|e| SetupError::new("bring up the loopback interface", e.to_string()))?;

    // 6. Inputs and the artifact directory, on the /work mount.
    copy_inputs(spec)?;
    std::fs::create_dir(ARTIFACTS_DIR).map_err(|e| SetupError::new("create /work/artifacts", e.to_string()))?;
    nix::unistd::chown(ARTIFACTS_DIR, Some(SANDBOX_UID.into()), Some(SANDBOX_GID.into()))
        .map_err(|e| SetupError::new("create /work/artifacts", e.to_string()))
}

fn signal_name(signal: i32) -> String {
    Signal::try_from(signal).map(|s| s.as_str().to_string()).unwrap_or_else(|_| format!("signal {signal}"))
}

/// Sends a signal to every process in the PID namespace but init itself.
fn kill_all(signal: Signal) {
    let _ = kill(Pid::from_raw(-1), signal);
}

/// Reaps every child that has exited. Returns the command's status if it was among them.
fn reap(command: Pid) -> Option<WaitStatus> {
    let mut command_status = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return command_status,
            Ok(status) => {
                if status.pid() == Some(command) && matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                    command_status = Some(status);
                }
            }
        }
    }
}

/// Kills everything left and waits until init has no child.
fn kill_and_reap_all() {
    kill_all(Signal::SIGKILL);
    loop {
        match waitpid(None, None) {
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
}

/// Waits for one of the blocked signals until `timeout`, or returns `None`.
fn wait_signal(set: &SigSet, timeout: Duration) -> Option<i32> {
    let spec = libc::timespec { tv_sec: timeout.as_secs() as _, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: sigtimedwait reads the signal set and timeout, both valid for
    // the duration of the call, and ignores the null info pointer.
    let signal = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &spec) };
    (signal > 0).then_some(signal)
}

/// How long init waits, after every session process is gone, for the
/// terminal's last output to reach the supervisor.
const TERMINAL_DRAIN: Duration = Duration::from_secs(2);

/// The command child, forked before the claim, confined and waiting for
/// its command.
struct Waiting {
    command: Pid,
    /// The child's error pipe, after its `Confined` message.
    error_read: BufReader<File>,
    landlock: LandlockStatus,
    /// Init's end of the pipe that passes the claim on to the child.
    claim_write: OwnedFd,
    /// The terminal's master, for the window size the claim sets.
    terminal_master: Option<File>,
    /// A pidfd of the child when its command started before the claim.
    prestarted: Option<OwnedFd>,
}

/// Forks the command child, which confines itself and waits for the claim.
/// Init runs [`finish_setup`] meanwhile, or before the fork when the child
/// runs a command started before the claim, which waits for nothing. For
/// a terminal session, opens the pseudo-terminal first and starts the
/// copies between it and the stdio pipes. `drained` then receives the
/// signal that the terminal's output has all been copied.
fn start_command(spec: &InitSpec, drained: &mut Option<std::sync::mpsc::Receiver<()>>) -> Result<Waiting, EndReason> {
    let finish = || finish_setup(spec).map_err(|error| EndReason::SetupFailed { step: error.step, error: error.error });
    if spec.prestart.is_some() {
        finish()?;
    }
    let pipe = |what: &str| {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| EndReason::SetupFailed { step: format!("create the {what} pipe"), error: e.to_string() })
    };
    let (error_read, error_write) = pipe("error")?;
    let (claim_read, claim_write) = pipe("claim")?;
    let terminal = match spec.terminal.then(|| pty::open(WindowSize { rows: 24, cols: 80 })).transpose() {
        Ok(terminal) => terminal,
        Err(error) => return Err(EndReason::SetupFailed { step: "open the pseudo-terminal".into(), error }),
    };
    // SAFETY: init is single-threaded, so the child may run ordinary code.
    let command = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop((error_read, claim_write));
            command::run(spec, claim_read, error_write, terminal.as_ref().map(|(_, slave)| slave.as_path()))
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(EndReason::SetupFailed { step: "fork the command".into(), error: e.to_string() }),
    };
    drop((error_write, claim_read));
    // The child execs nothing before init passes it the claim, which comes
    // after this. On failure, init's end kills the child.
    if spec.prestart.is_none() {
        finish()?;
    }
    // Only the command keeps the command pipes open, so each side reads
    // end-of-file when the other closes.
    if let Some((read, write)) = spec.command_pipes {
        // SAFETY: closing init's copies, which no Rust object wraps.
        unsafe {
            libc::close(read);
            libc::close(write);
        }
    }

    // A terminal session's stdio pipes stay with init, which copies between
    // them and the pseudo-terminal's master.
    let mut terminal_master = None;
    if let Some((master, _)) = terminal {
        // SAFETY: fcntl duplicates descriptors 0 and 1, which init owns, into
        // new close-on-exec descriptors that the Files below own alone.
        let (input, output) = unsafe {
            (libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3), libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3))
        };
        if input < 0 || output < 0 {
            return Err(EndReason::SetupFailed { step: "keep the terminal's pipes".into(), error: io::Error::last_os_error().to_string() });
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (input, output) = unsafe { (File::from_raw_fd(input), File::from_raw_fd(output)) };
        terminal_master = master.try_clone().ok().map(File::from);
        *drained = Some(pty::relay(master, input, output));
    }

    // Only the command has the session's stdio open from now on, so the
    // supervisor reads end-of-file when the command's processes are gone.
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for target in 0..=2 {
            // SAFETY: dup2 over the standard descriptors, which init owns and
            // no Rust object in init wraps.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), target) };
        }
    }

    // The child reports that it is confined, or why it failed, before it
    // waits for the claim, so a sandbox reports ready only with a child
    // that can run the claim's command.
    let mut error_read = BufReader::new(File::from(error_read));
    let mut first = String::new();
    let _ = error_read.read_line(&mut first);
    let landlock = match child_message(&first)? {
        Some(status) => status,
        None => {
            let error = "the command child exited without reporting its confinement".to_string();
            return Err(EndReason::SetupFailed { step: "confine the command".into(), error });
        }
    };
    let prestarted = match spec.prestart {
        None => None,
        // SAFETY: pidfd_open on the child forked above; the new descriptor
        // is owned by the OwnedFd alone.
        Some(_) => match unsafe { libc::syscall(libc::SYS_pidfd_open, command.as_raw(), 0) } {
            fd if fd >= 0 => Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
            _ => return Err(EndReason::SetupFailed { step: "watch the command".into(), error: io::Error::last_os_error().to_string() }),
        },
    };
    Ok(Waiting { command, error_read, landlock, claim_write, terminal_master, prestarted })
}

/// Interprets one line from the command child: the Landlock status of a
/// confined child, `None` for an empty line, or the reason it failed.
fn child_message(line: &str) -> Result<Option<LandlockStatus>, EndReason> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<ChildMessage>(line) {
        Ok(ChildMessage::Confined { landlock }) => Ok(Some(landlock)),
        Ok(ChildMessage::NotFound { command }) => Err(EndReason::CommandNotFound { command }),
        Ok(ChildMessage::NotExecutable { command, error }) => Err(EndReason::CommandNotExecutable { command, error }),
        Ok(ChildMessage::SetupFailed { step, error }) => Err(EndReason::SetupFailed { step, error }),
        Err(e) => Err(EndReason::SetupFailed { step: "read the command's setup result".into(), error: e.to_string() }),
    }
}

/// Passes the claim on to the waiting command child and supervises the
/// command until the session ends. `setup_time` is how long init's setup
/// before the claim took.
fn supervise(spec: &InitSpec, claim: &Claim, waiting: Waiting, reports: &mut File, setup_time: Duration, started_ns: u64) -> EndReason {
    let claimed = Instant::now();
    let command = waiting.command;
    if let (Some(master), Some(size)) = (&waiting.terminal_master, claim.terminal) {
        pty::set_size(master, size);
    }
    // A child that failed before the claim, or that runs a command started
    // before it, has closed its end. The error pipe below gives any reason.
    let _ = File::from(waiting.claim_write).write_all(&serde_json::to_vec(claim).expect("the claim serializes"));
    let mut error_read = waiting.error_read;

    // The rest of the error pipe either closes (exec succeeded) or carries
    // the reason the command could not start.
    let mut landlock = waiting.landlock;
    let mut text = String::new();
    let _ = error_read.read_to_string(&mut text);
    for line in text.lines() {
        match child_message(line) {
            Ok(Some(status)) => landlock = status,
            Ok(None) => {}
            Err(end) => return end,
        }
    }
    let setup_us = (setup_time + claimed.elapsed()).as_micros() as u64;
    let command_started_ns = monotonic_now_ns();
    report(reports, &InitReport::Started { landlock, setup_us, init_started_ns: started_ns, command_started_ns });

    let mut signals = SigSet::empty();
    signals.add(Signal::SIGCHLD);
    for signal in FORWARDED {
        signals.add(*signal);
    }
    let grace_ns = spec.kill_grace_ms * 1_000_000;
    let mut deadline_reached = false;
    loop {
        let now = monotonic_now_ns();
        let wake_at = if deadline_reached { claim.deadline_monotonic_ns + grace_ns } else { claim.deadline_monotonic_ns };
        if now >= wake_at {
            if deadline_reached {
                // The grace period is over: nothing may outlive it.
                kill_all(Signal::SIGKILL);
                if reap(command).is_some() {
                    return EndReason::Deadline;
                }
                // The command is killed but not yet reaped; wait for its SIGCHLD.
                let _ = wait_signal(&signals, Duration::from_millis(50));
                continue;
            }
            // The deadline: ask every process to stop, and stop them for good
            // after the grace period.
            deadline_reached = true;
            kill_all(Signal::SIGTERM);
            kill_all(Signal::SIGCONT);
            continue;
        }
        match wait_signal(&signals, Duration::from_nanos(wake_at - now)) {
            Some(signal) if signal == libc::SIGCHLD => {
                if let Some(status) = reap(command) {
                    if deadline_reached {
                        return EndReason::Deadline;
                    }
                    return match status {
                        WaitStatus::Exited(_, code) => EndReason::Exited { code },
                        WaitStatus::Signaled(_, signal, _) => {
                            EndReason::Signaled { signal: signal as i32, name: signal_name(signal as i32) }
                        }
                        _ => unreachable!("reap returns only exit and kill statuses"),
                    };
                }
            }
            Some(signal) => {
                if let Ok(signal) = Signal::try_from(signal) {
                    let _ = kill(command, signal);
                }
            }
            None => {}
        }
    }
}

/// Entry point of the init program, which starts as init's starter (see
/// [`start`]) and runs on as init in the starter's clone.
pub fn main() -> ! {
    start::main()
}

/// Init itself, with its copy of the starter's socket, on which the
/// supervisor's [`Join`] comes. Never returns: the exit status carries no
/// meaning, because the end reason travels on the report pipe.
fn run(join: OwnedFd) -> ! {
    let started = Instant::now();
    let started_ns = monotonic_now_ns();
    // SAFETY: the launcher placed the report pipe at this descriptor.
    let mut reports = unsafe { File::from_raw_fd(fd::REPORT) };

    // Block the signals init waits for; give SIGPIPE to no one, so a vanished
    // supervisor cannot kill init before the deadline.
    let mut blocked = SigSet::empty();
    blocked.add(Signal::SIGCHLD);
    for signal in FORWARDED {
        blocked.add(*signal);
    }
    let _ = blocked.thread_block();
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN runs no code in a handler.
    let _ = unsafe { sigaction(Signal::SIGPIPE, &ignore) };

    // SAFETY: the launcher placed the spec pipe at this descriptor and nothing
    // else in init owns it.
    let mut spec_pipe = BufReader::new(unsafe { File::from_raw_fd(fd::SPEC) });
    let spec = match read_spec(&mut spec_pipe) {
        Ok(spec) => spec,
        Err(error) => {
            let end = EndReason::SetupFailed { step: error.step, error: error.error };
            report(&mut reports, &InitReport::Ended { end, artifacts_truncated: false, reported_ns: monotonic_now_ns() });
            exit_now();
        }
    };
    let mut drained = None;
    let end = match setup(&spec, join) {
        Ok(()) => {
            match start_command(&spec, &mut drained) {
                Err(end) => end,
                Ok(waiting) => {
                    let setup_time = started.elapsed();
                    report(&mut reports, &InitReport::Ready { setup_us: setup_time.as_micros() as u64 });
                    match wait_for_claim(&mut spec_pipe, spec.unclaimed_until_monotonic_ns, waiting.prestarted.as_ref()) {
                        Ok(claim) => {
                            drop(spec_pipe);
                            supervise(&spec, &claim, waiting, &mut reports, setup_time, started_ns)
                        }
                        Err(Unclaimed::Expired) => EndReason::Destroyed { detail: "no claim arrived before the sandbox's unclaimed time ran out".into() },
                        Err(Unclaimed::Closed) => EndReason::Destroyed { detail: "the supervisor closed the sandbox before claiming it".into() },
                        Err(Unclaimed::CommandExited) => EndReason::SetupFailed { step: "keep the command running until the claim".into(), error: "the command started before the claim exited".into() },
                        Err(Unclaimed::Invalid(error)) => EndReason::SetupFailed { step: error.step, error: error.error },
                    }
                }
            }
        }
        Err(error) => EndReason::SetupFailed { step: error.step, error: error.error },
    };
    kill_and_reap_all();
    // With every process gone the terminal's slave is closed, so the copy
    // reads what is left in the master and stops. Exiting before that would
    // cut off the shell's last output.
    if let Some(drained) = drained {
        let _ = drained.recv_timeout(TERMINAL_DRAIN);
    }

    // Every session process is dead, so nothing can change /work/artifacts
    // while it is read.
    let mut artifacts_truncated = false;
    if let Some(limit) = spec.artifacts_max_bytes {
        // SAFETY: the launcher placed the artifact pipe at this descriptor.
        let pipe = unsafe { OwnedFd::from_raw_fd(fd::ARTIFACTS) };
        let mut out = io::BufWriter::new(File::from(pipe));
        artifacts_truncated = transfer::write_artifacts(Path::new(ARTIFACTS_DIR), limit, &mut out).unwrap_or(false);
    }
    report(&mut reports, &InitReport::Ended { end, artifacts_truncated, reported_ns: monotonic_now_ns() });
    exit_now()
}

/// Ends init at once. The supervisor waits for this exit before it tears
/// the session down, and `std::process::exit` would first unmap the
/// signal stack, which can interrupt the other CPU to flush its TLB.
/// Init writes its reports unbuffered, so nothing is left to flush.
fn exit_now() -> ! {
    // SAFETY: _exit ends the process; no Rust object needs its destructor.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_from_another_build_is_rejected() {
        assert!(check_build(crate::init_program::BUILD_ID).is_ok());
        let error = check_build("0123456789abcdef").unwrap_err();
        assert_eq!(error.step, "check that init and the starting binary are one build");
        assert!(error.error.contains("from build 0123456789abcdef"), "{}", error.error);
        assert!(error.error.contains("install mayfly-init and mayfly from the same build"), "{}", error.error);
    }
}
