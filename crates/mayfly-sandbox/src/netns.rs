//! Sockets in a session's network namespace, opened by the supervisor. A
//! socket belongs to the namespace it was created in, so a listener made
//! here is reachable only from inside the session, while the process that
//! accepts on it stays in the host's network.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// Opens a TCP listener on the session's own loopback, at 127.0.0.1:`port`,
/// in the network namespace of the process `pid`. It brings the loopback
/// interface up first, which init would do a moment later anyway.
pub fn listen_on_session_loopback(pid: i32, port: u16) -> io::Result<TcpListener> {
    let namespace = File::open(format!("/proc/{pid}/ns/net"))?;
    // setns moves only the calling thread, so a short-lived thread enters the
    // namespace and the caller's threads stay in the host's network.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                crate::init::network::bring_up_loopback()?;
                let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread that entered the session's network panicked")))
    })
}
