//! The session's network: a fresh namespace in which only loopback exists.

use std::io;

/// Sets the IFF_UP flag on `lo`, so the session can talk to itself.
pub fn bring_up_loopback() -> io::Result<()> {
    // SAFETY: a plain socket(2) call; the descriptor is closed below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data, for which all zero bytes are valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: both ioctls read and write the ifreq above, which outlives them.
    let result = unsafe {
        if libc::ioctl(socket, libc::SIOCGIFFLAGS as _, &mut request) < 0 {
            -1
        } else {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(socket, libc::SIOCSIFFLAGS as _, &request)
        }
    };
    let error = io::Error::last_os_error();
    // SAFETY: the descriptor was opened above and is closed once.
    unsafe { libc::close(socket) };
    if result < 0 {
        return Err(error);
    }
    Ok(())
}
