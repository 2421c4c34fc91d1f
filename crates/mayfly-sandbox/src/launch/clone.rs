//! clone3 for the launcher: its argument structure, and a trampoline that
//! runs the child on a stack of its own.

/// clone3's flag for starting the child in the cgroup given by `cgroup`, from
/// linux/sched.h. libc declares it with a type too narrow for its value.
pub(crate) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of linux/sched.h, version 2 (Linux 5.7).
#[repr(C)]
#[derive(Default)]
pub(crate) struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// Calls clone3 with `args` in fork mode: the child returns from this call
/// with 0, on a copy of the caller's memory. Returns the child's pid in the
/// parent, or the negated errno.
///
/// # Safety
/// As for fork: in a multi-threaded caller, the child may run only
/// async-signal-safe code. `args` must not ask for `CLONE_VM`.
pub(crate) unsafe fn clone3_fork(args: &CloneArgs) -> i64 {
    let result = libc::syscall(libc::SYS_clone3, args as *const CloneArgs, std::mem::size_of::<CloneArgs>());
    if result < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL) as i64)
    } else {
        result
    }
}

/// Calls clone3 with `args`, whose `stack` and `stack_size` give the
/// child's stack, and runs `entry(data)` on that stack in the child.
/// Returns the child's pid, or the negated errno.
///
/// # Safety
/// As for clone3 itself. With `CLONE_VM`, `entry` must respect what the
/// shared memory demands, and `data` and the stack must outlive its use.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn clone3_with_stack(args: &CloneArgs, entry: unsafe extern "C" fn(*mut libc::c_void) -> !, data: *mut libc::c_void) -> i64 {
    let result: i64;
    // The child returns from the system call on its new stack, so it must
    // not touch the caller's frame: it calls `entry` at once.
    std::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "xor ebp, ebp",
        "mov rdi, r12",
        "call r13",
        "ud2",
        "2:",
        inlateout("rax") libc::SYS_clone3 => result,
        in("rdi") args as *const CloneArgs,
        in("rsi") std::mem::size_of::<CloneArgs>(),
        in("r12") data,
        in("r13") entry,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    result
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn clone3_with_stack(_: &CloneArgs, _: unsafe extern "C" fn(*mut libc::c_void) -> !, _: *mut libc::c_void) -> i64 {
    // The seccomp filter exists for x86_64 only, so no sandbox starts elsewhere.
    -(libc::ENOSYS as i64)
}
