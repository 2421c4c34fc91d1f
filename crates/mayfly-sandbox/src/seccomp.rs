//! The command's seccomp filter: an allow list, with an architecture check
//! that kills the process on any foreign ABI (such as `int 0x80` on x86_64).
//!
//! Every allowed system call is listed below with what needs it. A call that
//! is not listed fails with EPERM. Calls that would let the command leave or
//! widen its sandbox are deliberately absent: unshare, setns, mount and the
//! new mount API, pivot_root, chroot, ptrace, process_vm_readv/writev, bpf,
//! perf_event_open, keyctl, add_key, request_key, the module calls,
//! io_uring_setup/enter/register, userfaultfd, kexec, reboot, swapon,
//! open_by_handle_at, iopl, ioperm, modify_ldt, mknod, syslog, clock and
//! hostname setters.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as ArgLen, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompFilter,
    SeccompRule,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("failed to build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("failed to install the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
    #[error("seccomp filters are only defined for x86_64, not {0}")]
    UnsupportedArch(&'static str),
}

/// Namespace flags that `clone` may never carry.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u64;

/// System calls allowed without conditions, grouped by what needs them.
const ALLOWED: &[(&str, &[i64])] = &[
    ("file I/O", &[
        libc::SYS_read, libc::SYS_write, libc::SYS_readv, libc::SYS_writev, libc::SYS_pread64, libc::SYS_pwrite64,
        libc::SYS_preadv, libc::SYS_pwritev, libc::SYS_preadv2, libc::SYS_pwritev2, libc::SYS_lseek,
        libc::SYS_sendfile, libc::SYS_splice, libc::SYS_tee, libc::SYS_copy_file_range, libc::SYS_fadvise64,
        libc::SYS_readahead, libc::SYS_fsync, libc::SYS_fdatasync, libc::SYS_sync, libc::SYS_syncfs,
        libc::SYS_sync_file_range, libc::SYS_fallocate, libc::SYS_truncate, libc::SYS_ftruncate,
    ]),
    ("opening and describing files", &[
        libc::SYS_open, libc::SYS_openat, libc::SYS_openat2, libc::SYS_creat, libc::SYS_close, libc::SYS_close_range,
        libc::SYS_stat, libc::SYS_fstat, libc::SYS_lstat, libc::SYS_newfstatat, libc::SYS_statx, libc::SYS_statfs,
        libc::SYS_fstatfs, libc::SYS_access, libc::SYS_faccessat, libc::SYS_faccessat2, libc::SYS_readlink,
        libc::SYS_readlinkat, libc::SYS_getdents, libc::SYS_getdents64, libc::SYS_dup, libc::SYS_dup2, libc::SYS_dup3,
        libc::SYS_fcntl, libc::SYS_flock, libc::SYS_pipe, libc::SYS_pipe2, libc::SYS_memfd_create, libc::SYS_umask,
    ]),
    ("changing the file tree (confined to tmpfs by the mounts and Landlock)", &[
        libc::SYS_getcwd, libc::SYS_chdir, libc::SYS_fchdir, libc::SYS_mkdir, libc::SYS_mkdirat, libc::SYS_rmdir,
        libc::SYS_unlink, libc::SYS_unlinkat, libc::SYS_rename, libc::SYS_renameat, libc::SYS_renameat2,
        libc::SYS_link, libc::SYS_linkat, libc::SYS_symlink, libc::SYS_symlinkat, libc::SYS_chmod, libc::SYS_fchmod,
        libc::SYS_fchmodat, 452 /* fchmodat2 */, libc::SYS_chown, libc::SYS_fchown, libc::SYS_lchown, libc::SYS_fchownat,
        libc::SYS_utime, libc::SYS_utimes, libc::SYS_utimensat, libc::SYS_futimesat,
        libc::SYS_getxattr, libc::SYS_lgetxattr, libc::SYS_fgetxattr, libc::SYS_listxattr, libc::SYS_llistxattr,
        libc::SYS_flistxattr, libc::SYS_setxattr, libc::SYS_lsetxattr, libc::SYS_fsetxattr, libc::SYS_removexattr,
        libc::SYS_lremovexattr, libc::SYS_fremovexattr,
    ]),
    ("watching files (build tools, editors)", &[
        libc::SYS_inotify_init, libc::SYS_inotify_init1, libc::SYS_inotify_add_watch, libc::SYS_inotify_rm_watch,
    ]),
    ("memory", &[
        libc::SYS_mmap, libc::SYS_munmap, libc::SYS_mprotect, libc::SYS_mremap, libc::SYS_brk, libc::SYS_madvise,
        libc::SYS_msync, libc::SYS_mincore, libc::SYS_mlock, libc::SYS_munlock, libc::SYS_mlock2, libc::SYS_mlockall,
        libc::SYS_munlockall, libc::SYS_membarrier, libc::SYS_pkey_alloc, libc::SYS_pkey_free, libc::SYS_pkey_mprotect,
        libc::SYS_get_mempolicy, libc::SYS_set_mempolicy, libc::SYS_mbind, 453 /* map_shadow_stack */,
    ]),
    ("processes and threads (clone is allowed below, without namespace flags)", &[
        libc::SYS_fork, libc::SYS_vfork, libc::SYS_execve, libc::SYS_execveat, libc::SYS_exit, libc::SYS_exit_group,
        libc::SYS_wait4, libc::SYS_waitid, libc::SYS_set_tid_address, libc::SYS_set_robust_list,
        libc::SYS_get_robust_list, libc::SYS_rseq, libc::SYS_futex, libc::SYS_futex_waitv, libc::SYS_arch_prctl,
        libc::SYS_prctl, libc::SYS_sched_yield, libc::SYS_sched_getaffinity, libc::SYS_sched_setaffinity,
        libc::SYS_sched_getparam, libc::SYS_sched_setparam, libc::SYS_sched_getscheduler, libc::SYS_sched_setscheduler,
        libc::SYS_sched_get_priority_max, libc::SYS_sched_get_priority_min, libc::SYS_sched_getattr,
        libc::SYS_sched_setattr, libc::SYS_sched_rr_get_interval, libc::SYS_getcpu, libc::SYS_getpriority,
        libc::SYS_setpriority, libc::SYS_ioprio_get, libc::SYS_ioprio_set,
    ]),
    ("identity (no capabilities remain, so these cannot gain privilege)", &[
        libc::SYS_getpid, libc::SYS_getppid, libc::SYS_gettid, libc::SYS_getuid, libc::SYS_geteuid, libc::SYS_getgid,
        libc::SYS_getegid, libc::SYS_getgroups, libc::SYS_getresuid, libc::SYS_getresgid, libc::SYS_setuid,
        libc::SYS_setgid, libc::SYS_setreuid, libc::SYS_setregid, libc::SYS_setresuid, libc::SYS_setresgid,
        libc::SYS_setgroups, libc::SYS_setfsuid, libc::SYS_setfsgid, libc::SYS_setsid, libc::SYS_setpgid,
        libc::SYS_getpgid, libc::SYS_getpgrp, libc::SYS_getsid, libc::SYS_capget, libc::SYS_capset,
    ]),
    ("resource limits and accounting", &[
        libc::SYS_getrlimit, libc::SYS_setrlimit, libc::SYS_prlimit64, libc::SYS_getrusage, libc::SYS_times,
        libc::SYS_sysinfo, libc::SYS_uname,
    ]),
    ("signals", &[
        libc::SYS_rt_sigaction, libc::SYS_rt_sigprocmask, libc::SYS_rt_sigreturn, libc::SYS_rt_sigsuspend,
        libc::SYS_rt_sigpending, libc::SYS_rt_sigtimedwait, libc::SYS_rt_sigqueueinfo, libc::SYS_rt_tgsigqueueinfo,
        libc::SYS_sigaltstack, libc::SYS_pause, libc::SYS_alarm, libc::SYS_kill, libc::SYS_tkill, libc::SYS_tgkill,
        libc::SYS_signalfd, libc::SYS_signalfd4, libc::SYS_pidfd_open, libc::SYS_pidfd_send_signal,
    ]),
    ("time and timers (reading only; setting the clock is absent)", &[
        libc::SYS_nanosleep, libc::SYS_clock_nanosleep, libc::SYS_clock_gettime, libc::SYS_clock_getres,
        libc::SYS_gettimeofday, libc::SYS_time, libc::SYS_timer_create, libc::SYS_timer_settime,
        libc::SYS_timer_gettime, libc::SYS_timer_getoverrun, libc::SYS_timer_delete, libc::SYS_timerfd_create,
        libc::SYS_timerfd_settime, libc::SYS_timerfd_gettime, libc::SYS_getitimer, libc::SYS_setitimer,
    ]),
    ("waiting for events", &[
        libc::SYS_poll, libc::SYS_ppoll, libc::SYS_select, libc::SYS_pselect6, libc::SYS_epoll_create,
        libc::SYS_epoll_create1, libc::SYS_epoll_ctl, libc::SYS_epoll_wait, libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2, libc::SYS_eventfd, libc::SYS_eventfd2, libc::SYS_restart_syscall,
    ]),
    ("sockets in the session's own network namespace (socket itself is filtered below)", &[
        libc::SYS_socketpair, libc::SYS_bind, libc::SYS_listen, libc::SYS_accept, libc::SYS_accept4,
        libc::SYS_connect, libc::SYS_getsockname, libc::SYS_getpeername, libc::SYS_sendto, libc::SYS_recvfrom,
        libc::SYS_sendmsg, libc::SYS_recvmsg, libc::SYS_sendmmsg, libc::SYS_recvmmsg, libc::SYS_shutdown,
        libc::SYS_setsockopt, libc::SYS_getsockopt,
    ]),
    ("System V and POSIX IPC (private to the session's IPC namespace)", &[
        libc::SYS_shmget, libc::SYS_shmat, libc::SYS_shmdt, libc::SYS_shmctl, libc::SYS_semget, libc::SYS_semop,
        libc::SYS_semtimedop, libc::SYS_semctl, libc::SYS_msgget, libc::SYS_msgsnd, libc::SYS_msgrcv,
        libc::SYS_msgctl, libc::SYS_mq_open, libc::SYS_mq_unlink, libc::SYS_mq_timedsend,
        libc::SYS_mq_timedreceive, libc::SYS_mq_notify, libc::SYS_mq_getsetattr,
    ]),
    ("randomness and self-restriction (can only narrow what is allowed)", &[
        libc::SYS_getrandom, libc::SYS_seccomp, libc::SYS_landlock_create_ruleset, libc::SYS_landlock_add_rule,
        libc::SYS_landlock_restrict_self,
    ]),
];

/// Terminal ioctls that push bytes into a terminal's input queue or control
/// the console. Blocked so that a session can never type into a terminal.
pub const BLOCKED_IOCTLS: &[(u64, &str)] = &[(libc::TIOCSTI, "TIOCSTI"), (libc::TIOCLINUX, "TIOCLINUX")];

/// Socket families a command may create: local sockets, IP inside its own
/// network namespace, and netlink, which glibc's getaddrinfo uses.
const SOCKET_FAMILIES: &[i32] = &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK];

/// personality(2) arguments that are allowed: PER_LINUX and the query value.
const PERSONALITIES: &[u64] = &[0, 0xffff_ffff];

fn condition(index: u8, len: ArgLen, op: Op, value: u64) -> Result<Cond, SeccompError> {
    Ok(Cond::new(index, len, op, value)?)
}

fn rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, calls) in ALLOWED {
        for call in *calls {
            rules.insert(*call, Vec::new());
        }
    }

    // clone: only without namespace flags. clone3 passes its flags in memory,
    // where seccomp cannot look, so the second filter makes it fail with ENOSYS
    // and the C library falls back to clone.
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![condition(0, ArgLen::Qword, Op::MaskedEq(NAMESPACE_FLAGS), 0)?])?],
    );

    // ioctl: anything but the terminal injection requests. The kernel reads the
    // request as a 32-bit value, so only the low 32 bits are compared.
    let ioctl_conditions = BLOCKED_IOCTLS
        .iter()
        .map(|(request, _)| condition(1, ArgLen::Dword, Op::Ne, *request))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, vec![SeccompRule::new(ioctl_conditions)?]);

    let socket_rules = SOCKET_FAMILIES
        .iter()
        .map(|family| Ok(SeccompRule::new(vec![condition(0, ArgLen::Dword, Op::Eq, *family as u64)?])?))
        .collect::<Result<Vec<_>, SeccompError>>()?;
    rules.insert(libc::SYS_socket, socket_rules);

    let personality_rules = PERSONALITIES
        .iter()
        .map(|value| Ok(SeccompRule::new(vec![condition(0, ArgLen::Dword, Op::Eq, *value)?])?))
        .collect::<Result<Vec<_>, SeccompError>>()?;
    rules.insert(libc::SYS_personality, personality_rules);
    Ok(rules)
}

fn target_arch() -> Result<seccompiler::TargetArch, SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(seccompiler::TargetArch::x86_64),
        other => Err(SeccompError::UnsupportedArch(other)),
    }
}

/// Builds the two BPF programs of the command's filter: the allow list, and a
/// second filter that turns clone3 into ENOSYS.
pub fn command_filters() -> Result<[BpfProgram; 2], SeccompError> {
    let arch = target_arch()?;
    let allow_list = SeccompFilter::new(rules()?, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, arch)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok([allow_list.try_into()?, clone3.try_into()?])
}

/// Installs filters built by [`command_filters`] on the calling thread. The
/// kernel runs the most recently installed filter first and keeps its result
/// among equal actions, so clone3 gets ENOSYS rather than EPERM.
pub fn install(filters: &[BpfProgram; 2]) -> Result<(), SeccompError> {
    for filter in filters {
        seccompiler::apply_filter(filter)?;
    }
    Ok(())
}

/// Returns the number of distinct system calls the allow list names, for reports.
pub fn allowed_count() -> usize {
    rules().map(|r| r.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build() {
        let [allow_list, clone3] = command_filters().unwrap();
        assert!(allow_list.len() > 100);
        assert!(!clone3.is_empty());
    }

    #[test]
    fn escape_calls_are_not_allowed() {
        let rules = rules().unwrap();
        let forbidden = [
            libc::SYS_unshare, libc::SYS_setns, libc::SYS_mount, libc::SYS_umount2, libc::SYS_pivot_root,
            libc::SYS_chroot, libc::SYS_ptrace, libc::SYS_bpf, libc::SYS_perf_event_open, libc::SYS_keyctl,
            libc::SYS_add_key, libc::SYS_request_key, libc::SYS_init_module, libc::SYS_finit_module,
            libc::SYS_delete_module, libc::SYS_io_uring_setup, libc::SYS_io_uring_enter, libc::SYS_io_uring_register,
            libc::SYS_userfaultfd, libc::SYS_kexec_load, libc::SYS_reboot, libc::SYS_open_by_handle_at,
            libc::SYS_process_vm_readv, libc::SYS_process_vm_writev, libc::SYS_clone3, libc::SYS_mknod,
            libc::SYS_mknodat, libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_modify_ldt, libc::SYS_fsopen,
            libc::SYS_fsmount, libc::SYS_move_mount, libc::SYS_open_tree, libc::SYS_settimeofday,
            libc::SYS_clock_settime, libc::SYS_sethostname, libc::SYS_swapon, libc::SYS_syslog, libc::SYS_kcmp,
            libc::SYS_pidfd_getfd,
        ];
        for call in forbidden {
            assert!(!rules.contains_key(&call), "system call {call} must not be allowed");
        }
    }

    #[test]
    fn clone_rule_masks_namespace_flags() {
        assert_ne!(NAMESPACE_FLAGS & libc::CLONE_NEWUSER as u64, 0);
        assert_ne!(NAMESPACE_FLAGS & libc::CLONE_NEWNET as u64, 0);
        assert_eq!(NAMESPACE_FLAGS & libc::CLONE_THREAD as u64, 0);
        assert_eq!(NAMESPACE_FLAGS & libc::CLONE_VM as u64, 0);
    }
}
