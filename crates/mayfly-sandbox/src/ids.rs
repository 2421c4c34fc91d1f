//! Host id ranges for sessions. Each running session has one range of
//! 65536 uids and gids, so two sessions never share a host uid.
//!
//! A range is claimed with an exclusive flock on a file in the state
//! directory. Init inherits the locked descriptor, so the range stays taken
//! for as long as any session process lives, even after the supervisor exits.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::launch::ID_RANGE_SIZE;

/// First host uid handed to sessions. Far above the ranges that distributions
/// give to accounts (below 60000) and to rootless containers in /etc/subuid
/// (usually from 100000).
pub const FIRST_ID: u32 = 1_000_000_000;
/// Number of ranges, and so of sessions that can run at once on a host.
pub const SLOTS: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("failed to create the id range directory {path}: {source}")]
    Directory { path: String, source: io::Error },
    #[error("all {SLOTS} sandbox id ranges are in use; wait for sessions to end")]
    Exhausted,
    #[error("failed to lock id range file {path}: {source}")]
    Lock { path: String, source: io::Error },
}

/// A claimed id range; the claim lasts while the lock file stays open.
#[derive(Debug)]
pub struct IdRange {
    pub base: u32,
    pub lock: File,
}

/// Claims the first free range.
pub fn claim(state_dir: &Path) -> Result<IdRange, IdError> {
    let dir = state_dir.join("id-ranges");
    std::fs::create_dir_all(&dir).map_err(|source| IdError::Directory { path: dir.display().to_string(), source })?;
    for slot in 0..SLOTS {
        let path = dir.join(format!("{slot}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| IdError::Lock { path: path.display().to_string(), source })?;
        // SAFETY: flock on a descriptor owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(IdRange { base: FIRST_ID + slot * ID_RANGE_SIZE, lock: file });
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(IdError::Lock { path: path.display().to_string(), source: error });
        }
    }
    Err(IdError::Exhausted)
}
