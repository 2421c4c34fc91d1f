//! Init's starter: the init program before the session's namespaces exist.
//!
//! The supervisor starts the init program in the host's namespaces, as
//! host root, with an empty environment and a socket at
//! [`STARTER_SOCKET`]. It reads one request, clones itself into the
//! session's new namespaces and cgroup, writes the clone's id maps, passes
//! the clone's pidfd back and exits. The clone becomes the session's init
//! by running init's code on, without an exec: it is a copy of this small,
//! single-threaded process, which read nothing but the request.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::launch::descriptors;
use crate::launch::handoff::{self, CgroupJoin, FailedStep, Reply, Request};
use crate::launch::{clone3_fork, CloneArgs, CLONE_INTO_CGROUP, ID_RANGE_SIZE, STARTER_SOCKET};

/// Entry point of the starter. Never returns: the starter exits after its
/// reply, and its clone runs on as init.
pub fn main() -> ! {
    // SAFETY: the supervisor placed the socket at this descriptor.
    let socket = unsafe { OwnedFd::from_raw_fd(STARTER_SOCKET) };
    // End of file means the supervisor no longer needs this starter.
    let Ok((request, fds)) = handoff::receive::<Request>(socket.as_fd(), Request::fd_count) else {
        std::process::exit(0);
    };
    let (reply, started) = start_init(&request, &fds);
    let pidfds: Vec<RawFd> = started.iter().map(|(pidfd, _)| pidfd.as_raw_fd()).collect();
    let sent = handoff::send(socket.as_fd(), &reply, &pidfds);

    // The clone runs once released. The starter exits at once, so that the
    // clone's first writes to the memory they share find fewer pages that
    // the kernel must copy. Without the reply the supervisor does not know
    // the clone, so the clone is not released: it reads end of file and exits.
    if let (Ok(()), Some((_, release))) = (sent, started) {
        let _ = File::from(release).write_all(b"x");
    }
    // SAFETY: ends this process without running destructors, which would
    // only close descriptors that the exit closes as well.
    unsafe { libc::_exit(0) }
}

/// Clones init and writes its id maps. Returns the reply and, when init
/// was cloned, its pidfd and the write end of the pipe that releases it.
fn start_init(request: &Request, fds: &[OwnedFd]) -> (Reply, Option<(OwnedFd, OwnedFd)>) {
    let (session, cgroup) = fds.split_at(request.session_fds.min(fds.len()));
    let failed = |step, error: io::Error, pid| Reply::Failed { step, errno: error.raw_os_error().unwrap_or(libc::EIO), pid };
    let (release_read, release_write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(errno) => return (failed(FailedStep::Clone, errno.into(), None), None),
    };

    let (into_cgroup, cgroup_fd, tasks) = match request.cgroup {
        CgroupJoin::V2 => (CLONE_INTO_CGROUP, cgroup.first().map_or(-1, |fd| fd.as_raw_fd()) as u64, &[][..]),
        CgroupJoin::V1 { .. } => (0, 0, cgroup),
    };
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
            | into_cgroup,
        pidfd: &mut pidfd as *mut RawFd as u64,
        cgroup: cgroup_fd,
        ..Default::default()
    };
    // SAFETY: the starter is single-threaded, so the child may run any code.
    let pid = unsafe { clone3_fork(&args) };
    if pid == 0 {
        drop(release_write);
        become_init(session, tasks, release_read);
    }
    if pid < 0 {
        return (failed(FailedStep::Clone, io::Error::from_raw_os_error(-pid as i32), None), None);
    }
    let pid = pid as i32;
    // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(release_read);

    // The setgroups file stays "allow" so init can clear the groups it
    // inherited. On a failure the child reads end of file on the release
    // pipe and exits.
    let line = format!("0 {} {ID_RANGE_SIZE}\n", request.id_base);
    if let Err(error) = std::fs::write(format!("/proc/{pid}/uid_map"), &line) {
        return (failed(FailedStep::UidMap, error, Some(pid)), None);
    }
    if let Err(error) = std::fs::write(format!("/proc/{pid}/gid_map"), &line) {
        return (failed(FailedStep::GidMap, error, Some(pid)), None);
    }
    (Reply::Started { pid }, Some((pidfd, release_write)))
}

/// Code of the clone: joins the session's v1 cgroups, waits for its id
/// maps, becomes root of its user namespace, moves the session's
/// descriptors to their fixed numbers, closes every other one and runs
/// init. Any failure ends it with status 125, which the supervisor reports
/// as init's missing reports.
fn become_init(session: &[OwnedFd], tasks: &[OwnedFd], release: OwnedFd) -> ! {
    // SAFETY: plain system calls on descriptors this process owns. Nothing
    // below returns, so no Rust object closes a descriptor a second time.
    unsafe {
        // Writing "0" to a v1 `tasks` file moves the writing thread. The
        // supervisor opened the files, so its credentials allow the write.
        for file in tasks {
            if libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(125);
            }
        }

        let mut byte = 0u8;
        if libc::read(release.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) != 1 {
            libc::_exit(125);
        }

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

        // The session's descriptors go to their fixed numbers, and every
        // other one closes now.
        let fds: Vec<RawFd> = session.iter().map(|fd| fd.as_raw_fd()).collect();
        let mut scratch = vec![0; fds.len()];
        if !descriptors::place(&fds, &mut scratch, 0) {
            libc::_exit(125);
        }
    }
    super::run()
}
