//! The program that runs as a sandbox's init when a starter is spawned
//! (see [`crate::launch::starter`]), as for every sandbox of a server.
//!
//! That program is `mayfly-init`, a small program installed beside the
//! binary that starts sandboxes. It contains only this crate's init, so the
//! kernel and the dynamic loader map and relocate far fewer pages than for
//! the whole `mayfly` binary, which saves about half a millisecond per
//! sandbox. When `mayfly-init` is missing, the starting binary runs as init
//! itself, given [`crate::INIT_ARGUMENT`]; both run the same code.
//!
//! Init and the starting binary must come from one build, because init
//! reads the spec that the other writes. Each spec carries [`BUILD_ID`], a
//! hash of this crate's sources, and init rejects a spec with another one.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The file name of the init program, in the directory of the binary that
/// starts sandboxes.
pub const FILE_NAME: &str = "mayfly-init";

/// A hash of this crate's sources at build time, the same in every binary
/// built from them.
pub const BUILD_ID: &str = env!("MAYFLY_SANDBOX_BUILD_ID");

/// The program that runs as init in the sandboxes this process starts.
#[derive(Debug)]
pub enum InitProgram {
    /// `mayfly-init`, opened once with `O_PATH`, so a later rename or
    /// replacement of the file does not change what runs.
    Separate { path: PathBuf, file: OwnedFd },
    /// The starting binary itself, through `/proc/self/exe`, with the reason
    /// `mayfly-init` is not used.
    SameBinary { reason: String },
}

impl InitProgram {
    /// Returns the descriptor to exec, or `None` for `/proc/self/exe`.
    pub(crate) fn descriptor(&self) -> Option<RawFd> {
        match self {
            InitProgram::Separate { file, .. } => Some(file.as_raw_fd()),
            InitProgram::SameBinary { .. } => None,
        }
    }
}

/// Returns the init program of this process, found on first use.
pub fn init_program() -> &'static InitProgram {
    static PROGRAM: OnceLock<InitProgram> = OnceLock::new();
    PROGRAM.get_or_init(find)
}

/// Opens `mayfly-init` beside the current executable, if it is a regular,
/// executable file with the executable's owner that only its owner may
/// change.
fn find() -> InitProgram {
    let same_binary = |reason: String| InitProgram::SameBinary { reason };
    let executable = match std::env::current_exe() {
        Ok(path) => path,
        Err(error) => return same_binary(format!("the path of the running binary is unknown: {error}")),
    };
    let path = executable.with_file_name(FILE_NAME);
    let file = match File::options().read(true).custom_flags(libc::O_PATH | libc::O_CLOEXEC).open(&path) {
        Ok(file) => file,
        Err(error) => return same_binary(format!("{} cannot be opened: {error}", path.display())),
    };
    let (metadata, owner) = match (file.metadata(), std::fs::metadata(&executable)) {
        (Ok(metadata), Ok(owner)) => (metadata, owner),
        (Err(error), _) | (_, Err(error)) => return same_binary(format!("{} cannot be checked: {error}", path.display())),
    };
    if let Some(problem) = unfit(metadata.is_file(), metadata.mode(), metadata.uid(), owner.uid()) {
        return same_binary(format!("{} {problem}", path.display()));
    }
    InitProgram::Separate { path, file: file.into() }
}

/// Returns why a file with this type, mode and owner may not run as init,
/// or `None` when it may.
fn unfit(is_file: bool, mode: u32, uid: u32, executable_uid: u32) -> Option<String> {
    if !is_file {
        return Some("is not a regular file".into());
    }
    if mode & 0o111 != 0o111 {
        return Some(format!("is not executable by everyone (mode {:o}); init runs as an unprivileged uid", mode & 0o7777));
    }
    if mode & 0o022 != 0 {
        return Some(format!("is writable by its group or others (mode {:o}); run chmod go-w on it", mode & 0o7777));
    }
    if uid != executable_uid {
        return Some(format!("is owned by uid {uid}, not by uid {executable_uid}, the owner of the running binary"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_files_run_as_init() {
        assert_eq!(unfit(true, 0o100755, 0, 0), None);
        assert!(unfit(false, 0o040755, 0, 0).unwrap().contains("not a regular file"));
        assert!(unfit(true, 0o100700, 0, 0).unwrap().contains("not executable by everyone"));
        assert!(unfit(true, 0o100775, 0, 0).unwrap().contains("chmod go-w"));
        assert!(unfit(true, 0o100757, 0, 0).unwrap().contains("chmod go-w"));
        assert!(unfit(true, 0o100755, 1000, 0).unwrap().contains("owned by uid 1000, not by uid 0"));
    }

    #[test]
    fn build_id_is_a_hash() {
        assert_eq!(BUILD_ID.len(), 16, "{BUILD_ID}");
        assert!(BUILD_ID.chars().all(|c| c.is_ascii_hexdigit()), "{BUILD_ID}");
    }
}
