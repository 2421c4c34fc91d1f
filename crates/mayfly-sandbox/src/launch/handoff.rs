//! The messages between the supervisor, init's starter and init.
//!
//! They travel over a `SOCK_SEQPACKET` socket pair, so each message keeps
//! its boundaries. A message is one JSON object, and the descriptors it
//! announces ride along as `SCM_RIGHTS`, in chunks of at most
//! [`FDS_PER_MESSAGE`]. Chunks after the first carry one placeholder byte,
//! because the kernel does not pass descriptors with an empty payload.
//!
//! The supervisor sends a [`Request`], which the starter reads, then a
//! [`Session`], which init reads from its copy of the starter's socket once
//! the starter has released it. A [`Join`] follows once the session's
//! cgroups exist, which on cgroup v1 may be while init builds its root. The
//! starter sends [`Reply::Cloned`] when it cloned init before the request,
//! then [`Reply::Started`] or [`Reply::Failed`].

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// Descriptors per message. The kernel accepts at most 253 (`SCM_MAX_FD`).
const FDS_PER_MESSAGE: usize = 250;

/// Longest JSON object either side sends.
const MAX_PAYLOAD: usize = 4096;

/// The supervisor's request to the starter: the session's id range, and
/// on cgroup v2 the cgroup directory to clone init into.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    /// First host uid and gid of the session's id range.
    pub id_base: u32,
    pub cgroup: CgroupJoin,
}

/// The way init joins the session cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CgroupJoin {
    /// cgroup v1: init writes to each `tasks` file that comes with [`Join`].
    V1,
    /// cgroup v2: clone3 starts init in the directory that comes with the request.
    V2,
}

impl Request {
    pub(crate) fn fd_count(&self) -> usize {
        match self.cgroup {
            CgroupJoin::V1 => 0,
            CgroupJoin::V2 => 1,
        }
    }
}

/// The message for init itself, which follows the request and which init
/// reads once released: the session's descriptors, in init's fixed order.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Session {
    /// How many descriptors init gets, at numbers 0 and up.
    pub session_fds: usize,
}

impl Session {
    pub(crate) fn fd_count(&self) -> usize {
        self.session_fds
    }
}

/// The last message for init: its cgroups exist and have their limits.
/// On cgroup v1 the `tasks` files init writes itself into come with it. On
/// v2 none do, because init started in its cgroup.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Join {
    /// How many `tasks` files come with the message.
    pub tasks: usize,
}

impl Join {
    pub(crate) fn fd_count(&self) -> usize {
        self.tasks
    }
}

/// The starter's messages, each with a pidfd except `Failed`. `Cloned`
/// announces a clone made before the request, so that the supervisor can
/// reap it whatever happens next. `Started` or `Failed` is the reply to the
/// request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Cloned { pid: i32 },
    Started { pid: i32 },
    /// A step failed with `errno`. `pid` is the child that was cloned
    /// before the failure, which exits by itself and which the supervisor
    /// must reap, because it is the supervisor's child.
    Failed { step: FailedStep, errno: i32, pid: Option<i32> },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum FailedStep {
    Clone,
    UidMap,
    GidMap,
}

impl Reply {
    pub(crate) fn fd_count(&self) -> usize {
        match self {
            Reply::Cloned { .. } | Reply::Started { .. } => 1,
            Reply::Failed { .. } => 0,
        }
    }
}

/// Sends `message` with `fds`, splitting the descriptors over as many
/// messages as they need.
pub(crate) fn send<T: Serialize>(socket: BorrowedFd<'_>, message: &T, fds: &[RawFd]) -> io::Result<()> {
    let payload = serde_json::to_vec(message).map_err(io::Error::other)?;
    let mut chunks = fds.chunks(FDS_PER_MESSAGE);
    send_one(socket, &payload, chunks.next().unwrap_or_default())?;
    for chunk in chunks {
        send_one(socket, b"+", chunk)?;
    }
    Ok(())
}

fn send_one(socket: BorrowedFd<'_>, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let iov = [IoSlice::new(payload)];
    let rights = [ControlMessage::ScmRights(fds)];
    let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(socket.as_raw_fd(), &iov, control, MsgFlags::MSG_NOSIGNAL, None)?;
    if sent != payload.len() {
        return Err(io::Error::other(format!("sent {sent} of {} bytes", payload.len())));
    }
    Ok(())
}

/// Receives a message of type `T` and the number of descriptors that
/// `fd_count` returns for it. End of file before the whole message is an
/// error.
pub(crate) fn receive<T: for<'de> Deserialize<'de>>(socket: BorrowedFd<'_>, fd_count: impl Fn(&T) -> usize) -> io::Result<(T, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    let payload = receive_one(socket, &mut fds)?;
    let message: T = serde_json::from_slice(&payload).map_err(io::Error::other)?;
    let expected = fd_count(&message);
    while fds.len() < expected {
        receive_one(socket, &mut fds)?;
    }
    if fds.len() != expected {
        return Err(io::Error::other(format!("received {} descriptors, expected {expected}", fds.len())));
    }
    Ok((message, fds))
}

fn receive_one(socket: BorrowedFd<'_>, fds: &mut Vec<OwnedFd>) -> io::Result<Vec<u8>> {
    let mut payload = vec![0u8; MAX_PAYLOAD];
    let mut control = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
    let mut iov = [IoSliceMut::new(&mut payload)];
    let message = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut control), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let length = message.bytes;
    let truncated = message.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = control {
            // SAFETY: the kernel installed these descriptors for this
            // process, and nothing else owns them.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if length == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the other side closed the socket"));
    }
    if truncated {
        return Err(io::Error::other("a message was truncated"));
    }
    payload.truncate(length);
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap()
    }

    #[test]
    fn request_with_many_descriptors_arrives_whole() {
        let (left, right) = pair();
        let files: Vec<std::fs::File> = (0..300).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let session = Session { session_fds: 300 };
        let sender = std::thread::spawn(move || send(left.as_fd(), &session, &fds).unwrap());
        let (received, fds) = receive::<Session>(right.as_fd(), Session::fd_count).unwrap();
        sender.join().unwrap();
        assert_eq!(received.session_fds, 300);
        assert_eq!(fds.len(), 300);
    }

    #[test]
    fn each_reader_gets_its_own_message() {
        let (left, right) = pair();
        let files: Vec<std::fs::File> = (0..3).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        send(left.as_fd(), &Request { id_base: 100_000, cgroup: CgroupJoin::V1 }, &[]).unwrap();
        send(left.as_fd(), &Session { session_fds: 2 }, &fds[..2]).unwrap();
        send(left.as_fd(), &Join { tasks: 1 }, &fds[2..]).unwrap();
        let (request, none) = receive::<Request>(right.as_fd(), Request::fd_count).unwrap();
        assert_eq!((request.id_base, request.cgroup, none.len()), (100_000, CgroupJoin::V1, 0));
        let (session, fds) = receive::<Session>(right.as_fd(), Session::fd_count).unwrap();
        assert_eq!((session.session_fds, fds.len()), (2, 2));
        let (join, tasks) = receive::<Join>(right.as_fd(), Join::fd_count).unwrap();
        assert_eq!((join.tasks, tasks.len()), (1, 1));
    }

    #[test]
    fn closed_socket_is_an_error() {
        let (left, right) = pair();
        drop(left);
        let error = receive::<Reply>(right.as_fd(), Reply::fd_count).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn missing_descriptors_are_an_error() {
        let (left, right) = pair();
        send(left.as_fd(), &Reply::Started { pid: 7 }, &[]).unwrap();
        drop(left);
        assert!(receive::<Reply>(right.as_fd(), Reply::fd_count).is_err());
    }
}
