//! Init's starter: the init program before the session's namespaces exist.
//!
//! The supervisor starts the starter in the host's namespaces, as host
//! root, with an empty environment and a socket at [`STARTER_SOCKET`]. The
//! starter clones init into the session's new namespaces, writes the
//! clone's id maps, passes the clone's pidfd back and exits. The clone
//! becomes the session's init by running init's code on, without an exec:
//! it is a copy of the small, single-threaded starter.
//!
//! Making the new namespaces takes longer than any other step of a launch,
//! so on cgroup v1 the starter clones init as soon as it starts, while the
//! supervisor still prepares the session, and init joins its cgroups once
//! released. On cgroup v2, init starts in its cgroup (`CLONE_INTO_CGROUP`),
//! which exists only by the time of the request, so the starter clones it
//! then. Moving a running process into a v2 cgroup would cost more.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::launch::descriptors;
use crate::launch::handoff::{self, CgroupJoin, FailedStep, Reply, Request, Session};
use crate::launch::{clone3_fork, CloneArgs, CLONE_INTO_CGROUP, ID_RANGE_SIZE, STARTER_SOCKET};

/// A clone that is to become init, with the write end of the pipe that
/// releases it. Dropping it before the release ends the clone.
struct Clone {
    pid: i32,
    pidfd: OwnedFd,
    release: OwnedFd,
}

/// Entry point of the starter. Never returns: the starter exits after its
/// reply, and its clone runs on as init.
pub fn main() -> ! {
    // SAFETY: the supervisor placed the socket at this descriptor.
    let socket = unsafe { OwnedFd::from_raw_fd(STARTER_SOCKET) };
    let early = clones_early().then(|| clone_init(None));
    // The supervisor learns of the clone now, so that it can reap it even
    // when no request comes. A clone that is not released exits by itself.
    if let Some(Ok(clone)) = &early {
        if handoff::send(socket.as_fd(), &Reply::Cloned { pid: clone.pid }, &[clone.pidfd.as_raw_fd()]).is_err() {
            // SAFETY: ends this process; its clone reads end of file and exits.
            unsafe { libc::_exit(0) }
        }
    }
    // End of file means the supervisor no longer needs this starter.
    let Ok((request, fds)) = handoff::receive::<Request>(socket.as_fd(), Request::fd_count) else {
        // SAFETY: as above.
        unsafe { libc::_exit(0) }
    };
    let (reply, started) = start_init(&request, &fds, early);
    let pidfds: Vec<RawFd> = started.iter().map(|clone| clone.pidfd.as_raw_fd()).collect();
    let sent = handoff::send(socket.as_fd(), &reply, &pidfds);

    // The clone runs once released. The starter exits at once, so that the
    // clone's first writes to the memory they share find fewer pages that
    // the kernel must copy. Without the reply the supervisor does not know
    // the clone, so the clone is not released: it reads end of file and exits.
    if let (Ok(()), Some(clone)) = (sent, started) {
        let _ = File::from(clone.release).write_all(b"x");
    }
    // SAFETY: ends this process without running destructors, which would
    // only close descriptors that the exit closes as well.
    unsafe { libc::_exit(0) }
}

/// Returns whether init is cloned before the request: on every host but
/// one whose sessions use cgroup v2, whose unified hierarchy at the usual
/// place has every controller a session needs. This reads one file,
/// where [`crate::cgroup::Layout::detect`] reads the mount table. When it guesses wrong, the
/// request corrects it: a v2 session drops an early clone, and a v1
/// session clones when the request comes.
fn clones_early() -> bool {
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    !crate::cgroup::V2_CONTROLLERS.iter().all(|needed| controllers.split_whitespace().any(|have| have == *needed))
}

/// Uses the early clone, or clones init now, and writes its id maps.
/// Returns the reply and, when init is ready for its release, the clone.
fn start_init(request: &Request, fds: &[OwnedFd], early: Option<io::Result<Clone>>) -> (Reply, Option<Clone>) {
    let failed = |step, error: io::Error, pid| Reply::Failed { step, errno: error.raw_os_error().unwrap_or(libc::EIO), pid };
    let cloned = match (early, request.cgroup) {
        (Some(early), CgroupJoin::V1) => early,
        (None, CgroupJoin::V1) => clone_init(None),
        (early, CgroupJoin::V2) => {
            // An early clone is outside the cgroup. It ends once its release
            // pipe closes, before the next clone could inherit that pipe, and
            // the supervisor reaps it.
            drop(early);
            clone_init(Some(fds.first().map_or(-1, |fd| fd.as_raw_fd())))
        }
    };
    let clone = match cloned {
        Ok(clone) => clone,
        Err(error) => return (failed(FailedStep::Clone, error, None), None),
    };

    // The setgroups file stays "allow" so init can clear the groups it
    // inherited. On a failure the clone reads end of file on the release
    // pipe and exits.
    let line = format!("0 {} {ID_RANGE_SIZE}\n", request.id_base);
    if let Err(error) = std::fs::write(format!("/proc/{}/uid_map", clone.pid), &line) {
        return (failed(FailedStep::UidMap, error, Some(clone.pid)), None);
    }
    if let Err(error) = std::fs::write(format!("/proc/{}/gid_map", clone.pid), &line) {
        return (failed(FailedStep::GidMap, error, Some(clone.pid)), None);
    }
    (Reply::Started { pid: clone.pid }, Some(clone))
}

/// Clones init into new user, PID, mount, network, IPC and UTS namespaces,
/// and with `cgroup_directory` into that v2 cgroup.
fn clone_init(cgroup_directory: Option<RawFd>) -> io::Result<Clone> {
    let (release_read, release_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut pidfd: RawFd = -1;
    // CLONE_PARENT makes init a child of the supervisor, which waits for it.
    // clone3 then takes the exit signal from this process and requires 0 here.
    let args = CloneArgs {
        flags: (libc::CLONE_PARENT
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_PIDFD) as u64
            | cgroup_directory.map_or(0, |_| CLONE_INTO_CGROUP),
        pidfd: &mut pidfd as *mut RawFd as u64,
        cgroup: cgroup_directory.map_or(0, |fd| fd as u64),
        ..Default::default()
    };
    // SAFETY: the starter is single-threaded, so the child may run any code.
    let pid = unsafe { clone3_fork(&args) };
    if pid == 0 {
        drop(release_write);
        become_init(release_read);
    }
    if pid < 0 {
        return Err(io::Error::from_raw_os_error(-pid as i32));
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Clone { pid: pid as i32, pidfd, release: release_write })
}

/// Gives every signal but SIGKILL and SIGSTOP its default action, such as
/// one that the user's shell had ignored.
fn reset_signal_actions() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator().filter(|s| *s != Signal::SIGKILL && *s != Signal::SIGSTOP) {
        // SAFETY: installing SIG_DFL runs no code in a handler.
        let _ = unsafe { sigaction(signal, &default) };
    }
}

/// Runs the clone until it becomes init. The clone waits for its release,
/// which comes after its id maps, reads the session's descriptors and
/// becomes root of its user namespace. Then it moves the descriptors to
/// their fixed numbers, with its copy of the starter's socket right after
/// them, closes every other one and runs init, which joins its cgroups
/// later. Any failure ends it with status 125, which the supervisor reports
/// as init's missing reports.
fn become_init(release: OwnedFd) -> ! {
    // Init and the command's child use the compiled filter. The clone
    // compiles it while it waits for its release. On another architecture
    // this fails, and the command's child reports the failure.
    let _ = crate::seccomp::command_filter();
    // Two steps for the command's child, done here while nothing waits for
    // them. The capability bounding and ambient sets limit only what an
    // exec gains, so init keeps the capabilities it uses. Should the drop
    // fail, the child's check finds the capabilities and fails the session.
    // Every signal gets its default action, so the child resets only
    // SIGPIPE, which init ignores again.
    let _ = crate::caps::drop_bounding_set();
    reset_signal_actions();
    // A forked starter's clone still has the supervisor's command line and
    // environment in its memory, and the session could read the command
    // line in /proc/1/cmdline.
    // SAFETY: this clone has one thread.
    if !unsafe { crate::launch::forget_command_line_and_environment() } {
        // SAFETY: ends this clone, which has nothing to clean up.
        unsafe { libc::_exit(125) }
    }
    let mut byte = 0u8;
    // SAFETY: reads one byte into a local from a descriptor this process owns.
    if unsafe { libc::read(release.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) } != 1 {
        // SAFETY: ends this clone, which has nothing to clean up.
        unsafe { libc::_exit(125) }
    }
    // The session's message follows the request on the starter's socket,
    // whose descriptor this clone inherited.
    // SAFETY: the descriptor stays open until `place` below moves it.
    let socket = unsafe { BorrowedFd::borrow_raw(STARTER_SOCKET) };
    let Ok((_, session_fds)) = handoff::receive::<Session>(socket, Session::fd_count) else {
        // SAFETY: as above.
        unsafe { libc::_exit(125) }
    };

    // SAFETY: plain system calls on descriptors this process owns. Nothing
    // below returns, so no Rust object closes a descriptor a second time.
    unsafe {
        // The cloning uid (host root) is not mapped, so the clone starts as
        // the overflow uid. Uid 0 of the new namespace is an unprivileged
        // host uid, and it keeps the capabilities of the namespace.
        if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
            || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
            || libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
        {
            libc::_exit(125);
        }
        // Changing the uids made the process non-dumpable, which gives its
        // /proc files to host root, so init could no longer write its own,
        // such as oom_score_adj. An exec'd init is dumpable too.
        if libc::prctl(libc::PR_SET_DUMPABLE, 1) != 0 {
            libc::_exit(125);
        }

        // The session's descriptors go to their fixed numbers and the
        // socket, which brings the cgroups later, right after them. Every
        // other descriptor closes now.
        let mut fds: Vec<RawFd> = session_fds.iter().map(|fd| fd.as_raw_fd()).collect();
        fds.push(STARTER_SOCKET);
        let mut scratch = vec![0; fds.len()];
        if !descriptors::place(&fds, &mut scratch, 0) {
            libc::_exit(125);
        }
        super::run(OwnedFd::from_raw_fd(session_fds.len() as RawFd))
    }
}
