//! The last steps before the session's command runs, executed in the child
//! that init forks: drop to the sandbox user, lose every capability, then
//! apply no_new_privs, Landlock and seccomp. The confined child then waits
//! for the claim, which init passes on through a pipe, and execs the claim's
//! command. Init forks the child before the claim, so a claimed pool member
//! has only the exec left to do.
//!
//! A failure is written to the error pipe as one JSON line before the child
//! exits. A successful exec closes the pipe, because it is close-on-exec,
//! and that is how init learns that the command started.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{setresgid, setresuid, setsid, Gid, Uid};
use serde::{Deserialize, Serialize};

use crate::spec::{Claim, InitSpec, LandlockStatus, SANDBOX_GID, SANDBOX_UID, WORK_DIR};
use crate::{caps, landlock_policy, seccomp};

/// A message from the command child to init on the error pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChildMessage {
    /// Sent right before exec, so init can report the Landlock result.
    Confined { landlock: LandlockStatus },
    NotFound { command: String },
    NotExecutable { command: String, error: String },
    SetupFailed { step: String, error: String },
}

fn send(pipe: &mut std::fs::File, message: &ChildMessage) {
    if let Ok(mut line) = serde_json::to_vec(message) {
        line.push(b'\n');
        let _ = pipe.write_all(&line);
    }
}

/// Finds the command the way a shell would: a name with a slash is used as
/// it is, any other name is looked up in the PATH the session will have.
fn resolve(command: &str, env: &[(String, String)]) -> Option<PathBuf> {
    if command.contains('/') {
        return Some(PathBuf::from(command));
    }
    let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':').filter(|dir| !dir.is_empty()).map(|dir| Path::new(dir).join(command)).find(|candidate| {
        let Ok(c_path) = CString::new(candidate.as_os_str().as_encoded_bytes()) else { return false };
        // SAFETY: access(2) reads a NUL-terminated path that outlives the call.
        unsafe { libc::access(c_path.as_ptr(), libc::X_OK) == 0 }
    })
}

/// Runs the numbered steps up to the wait for the claim, then execs the
/// claim's command. Returns only on failure, with the message to send.
fn confine_and_exec(spec: &InitSpec, claim_pipe: std::fs::File, pipe: &mut std::fs::File, terminal: Option<&Path>) -> ChildMessage {
    let fail = |step: &str, error: String| ChildMessage::SetupFailed { step: step.into(), error };

    // 1. Restore default signal handling: init blocks signals and ignores
    //    SIGPIPE, which the command must receive normally. Every other
    //    signal has its default action since init started.
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_DFL runs no code in a handler.
    if let Err(errno) = unsafe { sigaction(Signal::SIGPIPE, &default) } {
        return fail("restore SIGPIPE", errno.to_string());
    }
    if let Err(errno) = SigSet::empty().thread_set_mask() {
        return fail("reset the signal mask", errno.to_string());
    }

    // 2. A session of its own, so the command is a process group leader
    //    without a controlling terminal.
    if let Err(errno) = setsid() {
        return fail("setsid", errno.to_string());
    }

    // 2b. In a terminal session, the pseudo-terminal's slave becomes the
    //     controlling terminal and standard input, output and error, owned
    //     by the sandbox user like a login terminal.
    if let Some(slave) = terminal {
        if let Err(error) = attach_terminal(slave) {
            return fail("attach the terminal", error);
        }
    }

    // 3. Resource limits that cgroups do not cover: open files, and no core
    //    dumps, which would write process memory into the session's tmpfs.
    let open_files = u64::from(spec.open_files);
    if let Err(errno) = setrlimit(Resource::RLIMIT_NOFILE, open_files, open_files) {
        let hard = nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(_, hard)| hard);
        let error = if errno == nix::errno::Errno::EPERM && hard < open_files {
            format!("the profile's open_files {open_files} is above the hard open-file limit {hard} that mayfly runs with; raise that limit (ulimit -Hn) or lower open_files")
        } else {
            errno.to_string()
        };
        return fail("set RLIMIT_NOFILE", error);
    }
    if let Err(errno) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        return fail("set RLIMIT_CORE", errno.to_string());
    }

    // 4. Make the command and everything it starts the out-of-memory killer's
    //    first choice, ahead of init (which reports how the session ended) and
    //    of every host process. Raising the score needs no privilege.
    if let Err(error) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        return fail("raise oom_score_adj", error.to_string());
    }

    // 5. Init emptied the bounding and ambient sets before its release,
    //    and the check below confirms it.

    // 6. Become the unprivileged sandbox user. Leaving uid 0 clears the
    //    permitted and effective sets; clear_sets makes that explicit.
    if let Err(errno) = nix::unistd::setgroups(&[]) {
        return fail("clear supplementary groups", errno.to_string());
    }
    let gid = Gid::from_raw(SANDBOX_GID);
    if let Err(errno) = setresgid(gid, gid, gid) {
        return fail("switch to the sandbox group", errno.to_string());
    }
    let uid = Uid::from_raw(SANDBOX_UID);
    if let Err(errno) = setresuid(uid, uid, uid) {
        return fail("switch to the sandbox user", errno.to_string());
    }
    if let Err(error) = caps::clear_sets().and_then(|()| caps::verify_none()) {
        return fail("clear capabilities", error.to_string());
    }

    // 7. Start in /work.
    if let Err(errno) = nix::unistd::chdir(WORK_DIR) {
        return fail("enter /work", errno.to_string());
    }

    // 8. no_new_privs: exec can never grant privilege again, not even through
    //    a set-user-ID file. Landlock and seccomp both rely on it.
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return fail("set no_new_privs", std::io::Error::last_os_error().to_string());
    }

    // 9. Landlock, then the seccomp allow list, which must come last because
    //    it forbids the calls that the earlier steps make.
    let extra: Vec<PathBuf> = spec.mounts.iter().map(|m| m.target.clone()).collect();
    let landlock = match landlock_policy::restrict(spec.landlock, &extra) {
        Ok(status) => status,
        Err(error) => return fail("apply Landlock", error.to_string()),
    };
    let filter = match seccomp::command_filter() {
        Ok(filter) => filter,
        Err(error) => return fail("build the seccomp filter", error.to_string()),
    };
    send(pipe, &ChildMessage::Confined { landlock });
    if let Err(error) = seccomp::install(filter) {
        return fail("install the seccomp filter", error.to_string());
    }

    // 10. Wait for the claim, which init writes whole and then closes, and
    //     find the command as the sandbox user would in the claim's PATH. A
    //     command started before the claim runs at once.
    let claim = match &spec.prestart {
        Some(command) => Claim { argv: command.argv.clone(), env: command.env.clone(), deadline_monotonic_ns: 0, terminal: None },
        None => {
            let mut text = Vec::new();
            if let Err(error) = { claim_pipe }.read_to_end(&mut text) {
                return fail("read the claim", error.to_string());
            }
            match serde_json::from_slice::<Claim>(&text) {
                Ok(claim) => claim,
                Err(error) => return fail("read the claim", error.to_string()),
            }
        }
    };
    let Some(command) = claim.argv.first().cloned() else { return fail("read the claim", "the command is empty".into()) };
    let Some(path) = resolve(&command, &claim.env) else { return ChildMessage::NotFound { command } };
    let argv: Vec<CString> = claim.argv.iter().map(|a| CString::new(a.as_bytes()).unwrap_or_default()).collect();
    let envp: Vec<CString> = claim.env.iter().map(|(k, v)| CString::new(format!("{k}={v}")).unwrap_or_default()).collect();
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return ChildMessage::NotFound { command };
    };

    // 11. Exec. On success the error pipe closes and nothing more is sent.
    let errno = match nix::unistd::execve(&c_path, &argv, &envp) {
        Err(errno) => errno,
        Ok(never) => match never {},
    };
    match errno {
        nix::errno::Errno::ENOENT => ChildMessage::NotFound { command },
        other => ChildMessage::NotExecutable { command, error: other.desc().to_string() },
    }
}

/// Opens the terminal's slave, makes it the controlling terminal and puts it
/// at descriptors 0, 1 and 2.
fn attach_terminal(slave: &Path) -> Result<(), String> {
    let file = std::fs::File::options().read(true).write(true).open(slave).map_err(|e| format!("open {}: {e}", slave.display()))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: TIOCSCTTY takes an integer argument; fchown and dup2 act on a
    // descriptor this function owns.
    unsafe {
        if libc::ioctl(fd, libc::TIOCSCTTY, 0) != 0 {
            return Err(format!("TIOCSCTTY: {}", std::io::Error::last_os_error()));
        }
        libc::fchown(fd, SANDBOX_UID, SANDBOX_GID);
        for target in 0..=2 {
            if libc::dup2(fd, target) < 0 {
                return Err(format!("dup2: {}", std::io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

/// Entry point of the command child, which reads the claim from
/// `claim_pipe`. Never returns.
pub fn run(spec: &InitSpec, claim_pipe: OwnedFd, pipe: OwnedFd, terminal: Option<&Path>) -> ! {
    // Every descriptor above stderr, the error pipe included, closes at exec.
    // SAFETY: close_range with the CLOEXEC flag only changes descriptor flags.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    // The command pipes become descriptors 3 and 4, which dup2 leaves open
    // across exec. Their sources sit above the inputs, so neither is 3 or 4,
    // but the error pipe may be, so it moves out of the way first.
    let pipe = match spec.command_pipes {
        None => pipe,
        Some((read, write)) => {
            // SAFETY: fcntl and dup2 on descriptors this child owns; the
            // duplicate of the error pipe is owned by the OwnedFd below alone.
            unsafe {
                let moved = libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&pipe), libc::F_DUPFD_CLOEXEC, 5);
                drop(pipe);
                if moved < 0 || libc::dup2(read, 3) != 3 || libc::dup2(write, 4) != 4 {
                    libc::_exit(125)
                }
                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved)
            }
        }
    };
    let mut pipe = std::fs::File::from(pipe);
    let message = confine_and_exec(spec, std::fs::File::from(claim_pipe), &mut pipe, terminal);
    send(&mut pipe, &message);
    // SAFETY: _exit ends the process without running atexit handlers that
    // belong to init.
    unsafe { libc::_exit(125) }
}
