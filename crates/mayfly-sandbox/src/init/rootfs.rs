//! The sandbox's root filesystem, built by init inside its own mount
//! namespace before pivot_root.
//!
//! The root is a small tmpfs that becomes read-only once built. The host's
//! /usr (and the usr-merged links next to it) are bound read-only, nosuid and
//! nodev. /etc holds only generated files plus a short list of read-only
//! host files that dynamic linking and TLS need; nothing secret. /proc is
//! fresh, /dev minimal, and /tmp, /dev/shm and /work are sized tmpfs mounts.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, pivot_root};

use super::SetupError;
use crate::spec::{InitSpec, SANDBOX_GID, SANDBOX_UID};

/// Directory in which the new root is assembled. Mounting over the host's
/// /tmp is safe because the mount namespace is private by then.
const NEW_ROOT: &str = "/tmp";

/// Top-level entries that are symlinks into /usr on usr-merged hosts and real
/// directories on older ones. Either form is reproduced read-only.
const USR_MERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Host files and directories under /etc bound read-only, each with its reason.
const HOST_ETC: &[(&str, &str)] = &[
    ("ld.so.cache", "lets the dynamic linker find libraries in multiarch directories"),
    ("alternatives", "Debian's /usr/bin/* links to alternatives, such as awk and editor, point here"),
    ("ssl/certs", "public CA certificates for TLS clients; /etc/ssl/private is not bound"),
];

/// Device nodes bound from the host. None of them gives access to hardware.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// /proc entries hidden behind /dev/null because they expose host kernel state.
const PROC_MASKED_FILES: &[&str] = &["kcore", "sysrq-trigger", "timer_list", "sched_debug", "latency_stats", "kmsg", "keys"];
/// /proc directories made read-only.
const PROC_READ_ONLY: &[&str] = &["sys", "irq", "bus", "fs"];

fn step(name: impl Into<String>) -> impl FnOnce(nix::Error) -> SetupError {
    let name = name.into();
    move |errno| SetupError::new(name, errno.to_string())
}

fn io_step(name: impl Into<String>) -> impl FnOnce(std::io::Error) -> SetupError {
    let name = name.into();
    move |error| SetupError::new(name, error.to_string())
}

fn mount_tmpfs(target: &Path, options: &str, flags: MsFlags) -> Result<(), SetupError> {
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(options)).map_err(step(format!("mount tmpfs on {}", target.display())))
}

/// Mount flags that a mount inherited from the host may have locked; a
/// remount inside a user namespace must repeat them or it fails.
fn locked_flags(path: &Path) -> MsFlags {
    let Ok(stat) = statvfs(path) else { return MsFlags::empty() };
    let flags = stat.flags();
    let mut result = MsFlags::empty();
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
    ] {
        if flags.contains(fs_flag) {
            result |= ms_flag;
        }
    }
    // Linux's ST_RELATIME. The libc crate and nix leave it out for musl.
    const ST_RELATIME: libc::c_ulong = 0x1000;
    if flags.bits() & ST_RELATIME != 0 {
        result |= MsFlags::MS_RELATIME;
    }
    result
}

/// Mount points of the host's tree, read once before the new root is built.
pub struct HostMounts(Vec<PathBuf>);

impl HostMounts {
    pub fn read() -> HostMounts {
        let info = crate::procfs::read("/proc/self/mountinfo").unwrap_or_default();
        HostMounts(info.lines().filter_map(|line| line.split(' ').nth(4)).map(PathBuf::from).collect())
    }

    /// Returns the host mount points strictly below `source`.
    fn below(&self, source: &Path) -> Vec<&Path> {
        self.0.iter().filter(|point| point.starts_with(source) && point.as_path() != source).map(PathBuf::as_path).collect()
    }
}

/// Binds `source` on `target` recursively, then remounts it and every mount
/// below it read-only, nosuid and nodev. `host` lists the submounts that came
/// along; a source that is not on the host's tree (such as a fresh /proc
/// entry) has none.
pub fn bind_read_only(host: &HostMounts, source: &Path, target: &Path) -> Result<(), SetupError> {
    bind_read_only_from(host, source, source, target)
}

/// Like [`bind_read_only`], for a source reached through another path, such
/// as a /proc/self/fd link; `host_path` is its path on the host's tree.
fn bind_read_only_from(host: &HostMounts, source: &Path, host_path: &Path, target: &Path) -> Result<(), SetupError> {
    let what = format!("bind {} read-only on {}", host_path.display(), target.display());
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(step(what.clone()))?;
    let mut points = vec![target.to_path_buf()];
    for below in host.below(host_path) {
        if let Ok(relative) = below.strip_prefix(host_path) {
            points.push(target.join(relative));
        }
    }
    for point in points {
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | locked_flags(&point);
        mount(None::<&str>, &point, None::<&str>, flags, None::<&str>).map_err(step(format!("{what} (remount {})", point.display())))?;
    }
    Ok(())
}

/// Binds one host device node. A character device cannot be executed, so the
/// bind keeps the host mount's flags and needs no remount.
fn bind_device(name: &str, dev: &Path) -> Result<(), SetupError> {
    let target = dev.join(name);
    fs::write(&target, b"").map_err(io_step(format!("create /dev/{name}")))?;
    let source = Path::new("/dev").join(name);
    mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(step(format!("bind /dev/{name}")))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), SetupError> {
    fs::create_dir_all(path).map_err(io_step(format!("create directory {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_step(format!("set mode of {}", path.display())))
}

fn write_file(path: &Path, content: &str) -> Result<(), SetupError> {
    fs::write(path, content).map_err(io_step(format!("write {}", path.display())))
}

fn etc_files(spec: &InitSpec) -> Vec<(&'static str, String)> {
    vec![
        ("passwd", format!("root:x:0:0:root:/root:/usr/sbin/nologin\nmayfly:x:{SANDBOX_UID}:{SANDBOX_GID}:Mayfly session:/work:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")),
        ("group", format!("root:x:0:\nmayfly:x:{SANDBOX_GID}:\nnogroup:x:65534:\n")),
        ("hostname", format!("{}\n", spec.hostname)),
        ("hosts", format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{}\n", spec.hostname)),
        ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n".into()),
        ("timezone", format!("{}\n", spec.timezone)),
    ]
}

/// Builds the new root under [`NEW_ROOT`] and pivots into it. The caller has
/// already made the mount tree private.
pub fn build(spec: &InitSpec) -> Result<(), SetupError> {
    let root = Path::new(NEW_ROOT);
    let host_mounts = HostMounts::read();

    // 0. Open the profile's mount sources first: the root tmpfs covers /tmp,
    //    where a source may live.
    let mut profile_sources = Vec::new();
    for bind in &spec.mounts {
        let source = fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(&bind.source)
            .map_err(|error| {
                let hint = if error.kind() == std::io::ErrorKind::PermissionDenied {
                    "; init opens it as an unprivileged host uid, so the source and every directory above it must be traversable by others (chmod o+x)"
                } else {
                    ""
                };
                SetupError::new(format!("open profile mount source {}", bind.source.display()), format!("{error}{hint}"))
            })?;
        profile_sources.push(source);
    }

    // 1. The root tmpfs. It holds only directories, links and the generated
    //    /etc files, and becomes read-only at the end.
    mount_tmpfs(root, "size=4m,mode=0755", MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;

    // 2. The host's /usr and the usr-merged entries beside it.
    mkdir(&root.join("usr"), 0o755)?;
    bind_read_only(&host_mounts, Path::new("/usr"), &root.join("usr"))?;
    for name in USR_MERGED {
        let host = Path::new("/").join(name);
        let Ok(metadata) = fs::symlink_metadata(&host) else { continue };
        let target = root.join(name);
        if metadata.file_type().is_symlink() {
            let link = fs::read_link(&host).map_err(io_step(format!("read link /{name}")))?;
            symlink(&link, &target).map_err(io_step(format!("create link /{name}")))?;
        } else if metadata.is_dir() {
            mkdir(&target, 0o755)?;
            bind_read_only(&host_mounts, &host, &target)?;
        }
    }

    // 3. /etc: generated identity files and the few host entries listed in HOST_ETC.
    let etc = root.join("etc");
    mkdir(&etc, 0o755)?;
    for (name, content) in etc_files(spec) {
        write_file(&etc.join(name), &content)?;
    }
    let zone = format!("/usr/share/zoneinfo/{}", spec.timezone);
    symlink(&zone, etc.join("localtime")).map_err(io_step("create /etc/localtime"))?;
    for (name, _) in HOST_ETC {
        let host = Path::new("/etc").join(name);
        let Ok(metadata) = fs::metadata(&host) else { continue };
        let target = etc.join(name);
        if metadata.is_dir() {
            mkdir(&target, 0o755)?;
        } else {
            if let Some(parent) = target.parent() {
                mkdir(parent, 0o755)?;
            }
            write_file(&target, "")?;
        }
        bind_read_only(&host_mounts, &host, &target)?;
    }

    // 4. A minimal /dev: a few harmless nodes, a private devpts and /dev/shm.
    let dev = root.join("dev");
    mkdir(&dev, 0o755)?;
    mount_tmpfs(&dev, "size=64k,mode=0755", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)?;
    for name in DEVICES {
        bind_device(name, &dev)?;
    }
    for (name, target) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")] {
        symlink(target, dev.join(name)).map_err(io_step(format!("create link /dev/{name}")))?;
    }
    mkdir(&dev.join("pts"), 0o755)?;
    mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(step("mount devpts on /dev/pts"))?;
    mkdir(&dev.join("shm"), 0o1777)?;
    mount_tmpfs(&dev.join("shm"), &format!("size={},mode=1777", spec.shm_bytes), MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;

    // 5. A fresh /proc for the session's PID namespace, with host kernel
    //    interfaces masked or read-only.
    let proc = root.join("proc");
    mkdir(&proc, 0o555)?;
    mount(Some("proc"), &proc, Some("proc"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None::<&str>)
        .map_err(step("mount /proc"))?;
    for name in PROC_MASKED_FILES {
        let target = proc.join(name);
        if target.exists() {
            mount(Some("/dev/null"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(step(format!("mask /proc/{name}")))?;
        }
    }
    for name in PROC_READ_ONLY {
        let target = proc.join(name);
        if target.exists() {
            bind_read_only(&host_mounts, &target, &target)?;
        }
    }

    // 6. The writable tmpfs mounts: /tmp, and /work owned by the sandbox user.
    mkdir(&root.join("tmp"), 0o1777)?;
    mount_tmpfs(&root.join("tmp"), &format!("size={},mode=1777", spec.tmp_bytes), MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    mkdir(&root.join("work"), 0o755)?;
    mount_tmpfs(
        &root.join("work"),
        &format!("size={},mode=0755,uid={SANDBOX_UID},gid={SANDBOX_GID}", spec.work_bytes),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    mkdir(&root.join("var"), 0o755)?;
    symlink("/tmp", root.join("var/tmp")).map_err(io_step("create link /var/tmp"))?;

    // 7. Read-only host paths that the profile names, bound through the
    //    descriptors opened before /tmp was covered.
    for (bind, source) in spec.mounts.iter().zip(&profile_sources) {
        let relative = bind.target.strip_prefix("/").unwrap_or(&bind.target);
        let target = root.join(relative);
        let source_is_dir = source.metadata().map_err(io_step(format!("profile mount source {}", bind.source.display())))?.is_dir();
        if source_is_dir {
            mkdir(&target, 0o755)?;
        } else {
            if let Some(parent) = target.parent() {
                mkdir(parent, 0o755)?;
            }
            write_file(&target, "")?;
        }
        let through = PathBuf::from(format!("/proc/self/fd/{}", source.as_raw_fd()));
        bind_read_only_from(&host_mounts, &through, &bind.source, &target)?;
    }

    // 8. Switch to the new root. The old root now lies on top of the new
    //    one at "/", where no path from the new root leads, until
    //    `detach_old_root`.
    chdir(root).map_err(step("enter the new root"))?;
    pivot_root(".", ".").map_err(step("pivot_root"))?;
    Ok(())
}

/// Detaches the old root that [`build`] left on top of the new one, so that
/// nothing of the host's tree stays mounted in the session. The working
/// directory must still be the one `build` left: the new root, on which
/// the old root lies. Detaching waits for an RCU grace period, so init
/// does it while the command's child confines itself.
pub fn detach_old_root() -> Result<(), SetupError> {
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the old root"))?;
    chdir("/").map_err(step("enter / after pivot_root"))?;
    Ok(())
}

/// Makes the root tmpfs read-only once init has written everything it needs.
pub fn seal_root() -> Result<(), SetupError> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(None::<&str>, "/", None::<&str>, flags, None::<&str>).map_err(step("remount / read-only"))
}
