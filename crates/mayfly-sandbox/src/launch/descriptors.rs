//! Moving a child's descriptors to fixed numbers before it runs init.

use std::os::fd::RawFd;

/// Moves `fds[i]` to descriptor `i` for every `i`, then applies
/// `close_range` with `close_flags` to every descriptor above them: 0
/// closes them now, `CLOSE_RANGE_CLOEXEC` at the next exec. Each
/// descriptor goes first above every target, then down, so no move
/// overwrites a descriptor still to be moved. The copies start right above
/// the targets, because a fixed high base could exceed the open-file
/// limit, which is often 1024. Returns false when a call failed.
///
/// Async-signal-safe: it allocates nothing and writes only to `scratch`,
/// which must be as long as `fds`.
///
/// # Safety
/// Every entry of `fds` must be an open descriptor. Descriptors that Rust
/// objects own may be closed or replaced underneath them.
pub(crate) unsafe fn place(fds: &[RawFd], scratch: &mut [RawFd], close_flags: u32) -> bool {
    let above_targets = fds.len() as RawFd;
    for (fd, high) in fds.iter().zip(scratch.iter_mut()) {
        *high = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above_targets);
        if *high < 0 {
            return false;
        }
    }
    for (target, high) in scratch[..fds.len()].iter().enumerate() {
        if libc::dup2(*high, target as RawFd) < 0 {
            return false;
        }
    }
    libc::syscall(libc::SYS_close_range, fds.len() as u32, u32::MAX, close_flags) == 0
}
