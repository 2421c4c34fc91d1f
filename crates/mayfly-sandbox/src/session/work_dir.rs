//! A running session's `/work`, opened from the host to read the files a
//! browser downloaded and to write the files a user uploads.
//!
//! The host enters the sandbox's root through `/proc/PID/root` of its init
//! and opens `work` there. Every path below `/work` is then resolved by
//! openat2 with `/work` as its root (RESOLVE_IN_ROOT), following no symlink
//! or magic link and crossing into no other mount, and the last component
//! is opened with O_NOFOLLOW. So nothing the session creates in `/work` can
//! make the host read or write outside it.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, mkdirat, stat, Mode, SFlag};
use nix::sys::statfs::{fstatfs, TMPFS_MAGIC};
use nix::unistd::{setfsgid, setfsuid, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::transfer::check_name;

/// Returns the resolve flags of every path below `/work`.
fn resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    #[error("the session's sandbox is not running")]
    NotRunning,
    #[error("the session's sandbox has not finished its setup")]
    NotReady,
    #[error("invalid path {path:?} below /work: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("/work/{path} is not a regular file")]
    NotRegular { path: String },
    #[error("failed to {action} /work/{path}: {source}")]
    Io { action: &'static str, path: String, source: Errno },
}

/// The `/work` directory of one running session.
#[derive(Debug)]
pub struct WorkDir {
    dir: OwnedFd,
    /// The host uid and gid of the sandbox user, who owns `/work`.
    owner: (Uid, Gid),
}

fn io<'a>(action: &'static str, path: &'a str) -> impl FnOnce(Errno) -> WorkDirError + 'a {
    move |source| WorkDirError::Io { action, path: path.to_string(), source }
}

/// Checks a path relative to `/work`, with [`check_name`]'s rules.
fn checked(path: &str) -> Result<(), WorkDirError> {
    check_name(path).map_err(|error| WorkDirError::InvalidPath { path: path.to_string(), reason: error.to_string() })
}

/// Checks one component of a path: a name without `/`.
fn checked_component(name: &str) -> Result<(), WorkDirError> {
    checked(name)?;
    if name.contains('/') {
        return Err(WorkDirError::InvalidPath { path: name.to_string(), reason: "a name here may not contain '/'".into() });
    }
    Ok(())
}

/// Returns 32 random hexadecimal characters from the kernel.
fn random_name() -> Result<String, WorkDirError> {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if filled != bytes.len() as isize {
        return Err(WorkDirError::Io { action: "draw a random name for", path: String::new(), source: Errno::last() });
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl WorkDir {
    /// Opens `/work` of the sandbox whose init has the host PID `init_pid`.
    /// `init_pidfd` refers to that init: it must still be alive after the
    /// open, which proves that the PID was not reused for another process.
    pub fn open(init_pid: i32, init_pidfd: BorrowedFd<'_>) -> Result<WorkDir, WorkDirError> {
        let root_path = format!("/proc/{init_pid}/root");
        let root = open(root_path.as_str(), OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|_| WorkDirError::NotRunning)?;
        // SAFETY: pidfd_send_signal with signal 0 on a pidfd the caller owns only checks that the process exists.
        let alive = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, init_pidfd.as_raw_fd(), 0, std::ptr::null::<libc::siginfo_t>(), 0u32) } == 0;
        if !alive {
            return Err(WorkDirError::NotRunning);
        }
        // Until init has pivoted into the new root, its root is the host's.
        let host_root = stat("/").map_err(io("stat the host's root for", ""))?;
        let sandbox_root = fstat(&root).map_err(io("stat the sandbox root above", ""))?;
        if (host_root.st_dev, host_root.st_ino) == (sandbox_root.st_dev, sandbox_root.st_ino) {
            return Err(WorkDirError::NotReady);
        }
        // `/work` is a mount of its own, so this one step crosses a mount.
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let dir = openat2(&root, "work", how).map_err(|_| WorkDirError::NotReady)?;
        if fstatfs(&dir).map_err(io("check the file system of", ""))?.filesystem_type() != TMPFS_MAGIC {
            return Err(WorkDirError::NotReady);
        }
        WorkDir::at(dir)
    }

    /// Wraps an open directory as `/work`. Files are created as its owner.
    pub fn at(dir: OwnedFd) -> Result<WorkDir, WorkDirError> {
        let status = fstat(&dir).map_err(io("stat", ""))?;
        Ok(WorkDir { dir, owner: (Uid::from_raw(status.st_uid), Gid::from_raw(status.st_gid)) })
    }

    /// Opens a regular file below `/work` to read, and returns it with its
    /// size. A symlink, a directory, a FIFO or a device is rejected.
    pub fn open_file(&self, path: &str) -> Result<(File, u64), WorkDirError> {
        checked(path)?;
        // O_NONBLOCK: opening a FIFO the session put in place must not wait
        // for a writer. It changes nothing for a regular file.
        let how = OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY).resolve(resolve());
        let fd = openat2(&self.dir, path, how).map_err(io("open", path))?;
        let status = fstat(&fd).map_err(io("stat", path))?;
        if SFlag::from_bits_truncate(status.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(WorkDirError::NotRegular { path: path.to_string() });
        }
        Ok((File::from(fd), status.st_size as u64))
    }

    /// Creates `/work/PARENT/RANDOM/NAME` as a new, empty file, with
    /// `PARENT` created when missing and `RANDOM` a new directory of 32
    /// random hexadecimal characters. Returns the file, open to write, and
    /// its path relative to `/work`. The directories and the file belong to
    /// the sandbox user.
    pub fn create_file(&self, parent: &str, name: &str) -> Result<(File, String), WorkDirError> {
        checked_component(parent)?;
        checked_component(name)?;
        let random = random_name()?;
        self.as_owner(|| {
            match mkdirat(&self.dir, parent, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(error) => return Err(io("create", parent)(error)),
            }
            let directory = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let parent_fd = openat2(&self.dir, parent, OpenHow::new().flags(directory).resolve(resolve())).map_err(io("open", parent))?;
            let inner = format!("{parent}/{random}");
            mkdirat(&parent_fd, random.as_str(), Mode::from_bits_truncate(0o755)).map_err(io("create", &inner))?;
            let inner_fd = openat2(&parent_fd, random.as_str(), OpenHow::new().flags(directory).resolve(resolve())).map_err(io("open", &inner))?;
            let path = format!("{inner}/{name}");
            let how = OpenHow::new()
                .flags(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .mode(Mode::from_bits_truncate(0o644))
                .resolve(resolve());
            let file = openat2(&inner_fd, name, how).map_err(io("create", &path))?;
            Ok((File::from(file), path))
        })
    }

    /// Removes a file that [`WorkDir::create_file`] created, and its random
    /// directory when that is then empty.
    pub fn remove_created(&self, path: &str) -> Result<(), WorkDirError> {
        checked(path)?;
        let parts: Vec<&str> = path.split('/').collect();
        let [parent, random, name] = parts[..] else {
            return Err(WorkDirError::InvalidPath { path: path.to_string(), reason: "expected PARENT/RANDOM/NAME".into() });
        };
        let directory = OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).resolve(resolve());
        let parent_fd = openat2(&self.dir, parent, directory).map_err(io("open", parent))?;
        let inner_fd = openat2(&parent_fd, random, directory).map_err(io("open", path))?;
        unlinkat(&inner_fd, name, UnlinkatFlags::NoRemoveDir).map_err(io("remove", path))?;
        match unlinkat(&parent_fd, random, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOTEMPTY) => Ok(()),
            Err(error) => Err(io("remove", path)(error)),
        }
    }

    /// Runs `work` on a thread of its own whose file system identity is the
    /// owner of `/work`. The session's tmpfs belongs to its user namespace,
    /// where the host's root has no uid, so the kernel refuses files that
    /// root would create there (EOVERFLOW). The thread's identity ends with it.
    fn as_owner<T: Send>(&self, work: impl FnOnce() -> Result<T, WorkDirError> + Send) -> Result<T, WorkDirError> {
        let (uid, gid) = self.owner;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                setfsgid(gid);
                setfsuid(uid);
                // Each call returns the previous identity, so a second call
                // returns the identity that the first one set.
                if setfsuid(uid) != uid || setfsgid(gid) != gid {
                    return Err(WorkDirError::Io { action: "take the identity of the owner of", path: String::new(), source: Errno::EPERM });
                }
                work()
            });
            thread.join().unwrap_or_else(|_| Err(WorkDirError::Io { action: "write below", path: String::new(), source: Errno::EIO }))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    use super::*;

    /// A fresh directory with `work`, standing in for `/work`, and
    /// `outside` beside it; removed at the end.
    struct Scratch {
        base: PathBuf,
        work: PathBuf,
        outside: PathBuf,
    }

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let base = std::env::temp_dir().join(format!("mayfly-test-work-dir-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            let (work, outside) = (base.join("work"), base.join("outside"));
            std::fs::create_dir_all(&work).unwrap();
            std::fs::create_dir_all(&outside).unwrap();
            Scratch { base, work, outside }
        }

        fn work_dir(&self) -> WorkDir {
            let fd = open(self.work.as_path(), OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).unwrap();
            WorkDir::at(fd).unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    #[test]
    fn open_file_reads_regular_files() {
        let scratch = Scratch::new("read");
        std::fs::create_dir(scratch.work.join("downloads")).unwrap();
        std::fs::write(scratch.work.join("downloads/a"), b"hello").unwrap();
        let (mut file, size) = scratch.work_dir().open_file("downloads/a").unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!((text.as_str(), size), ("hello", 5));
    }

    #[test]
    fn open_file_rejects_what_could_leave() {
        let scratch = Scratch::new("escape");
        let secret = scratch.outside.join("secret");
        std::fs::write(&secret, b"secret").unwrap();
        std::fs::create_dir(scratch.work.join("downloads")).unwrap();
        symlink(&secret, scratch.work.join("downloads/link")).unwrap();
        symlink("../outside", scratch.work.join("up")).unwrap();
        symlink("/etc", scratch.work.join("etc")).unwrap();
        nix::unistd::mkfifo(&scratch.work.join("downloads/fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let work = scratch.work_dir();
        for (path, expected) in [
            ("downloads/link", "ELOOP"),
            ("up/secret", "ELOOP"),
            ("etc/passwd", "ELOOP"),
            ("downloads/fifo", "not a regular file"),
            ("downloads", "not a regular file"),
            ("../x", "'..'"),
            ("downloads/../../x", "'..'"),
            ("/etc/passwd", "absolute"),
            ("a\0b", "NUL"),
            ("", "empty"),
        ] {
            let message = work.open_file(path).unwrap_err().to_string();
            assert!(message.contains(expected), "{path:?}: {message}");
        }
    }

    #[test]
    fn create_file_uses_new_directory() {
        let scratch = Scratch::new("create");
        let work = scratch.work_dir();
        let (mut file, path) = work.create_file("uploads", "report.txt").unwrap();
        file.write_all(b"numbers").unwrap();
        let parts: Vec<&str> = path.split('/').collect();
        assert_eq!(parts.len(), 3, "{path}");
        assert_eq!((parts[0], parts[2]), ("uploads", "report.txt"));
        assert_eq!(parts[1].len(), 32, "{path}");
        assert_eq!(std::fs::read(scratch.work.join(&path)).unwrap(), b"numbers");
        let (_, second) = work.create_file("uploads", "report.txt").unwrap();
        assert_ne!(path, second, "each file gets a directory of its own");
        work.remove_created(&path).unwrap();
        assert!(!scratch.work.join(&path).exists());
        assert!(!scratch.work.join(&path).parent().unwrap().exists(), "the empty random directory is gone too");
    }

    #[test]
    fn create_file_rejects_links_and_bad_names() {
        let scratch = Scratch::new("create-links");
        symlink(&scratch.outside, scratch.work.join("uploads")).unwrap();
        let work = scratch.work_dir();
        // O_DIRECTORY with O_NOFOLLOW makes the kernel return ENOTDIR for a
        // symlink, and RESOLVE_NO_SYMLINKS alone would return ELOOP.
        let message = work.create_file("uploads", "x").unwrap_err().to_string();
        assert!(message.contains("ENOTDIR") || message.contains("ELOOP"), "{message}");
        assert_eq!(std::fs::read_dir(&scratch.outside).unwrap().count(), 0, "nothing was written through the link");
        for name in ["a/b", "..", "", "x\0y"] {
            assert!(work.create_file("other", name).is_err(), "{name:?}");
        }
    }
}
