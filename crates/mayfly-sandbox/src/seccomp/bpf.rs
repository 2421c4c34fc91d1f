//! A small compiler from a per-system-call policy to a classic BPF program
//! for seccomp, laid out as a binary search over system call numbers.
//!
//! A linear filter of a few hundred rules costs the kernel close to a
//! millisecond at install time, because it runs the filter once for every
//! system call number to build its cache of always-allowed calls. A search
//! tree visits about thirty instructions per call instead of hundreds.

/// The filter's decision for one system call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Allow,
    /// Fail with this errno.
    Errno(u32),
    /// Allow when the low 32 bits of argument `arg` share no bit with `mask`.
    AllowIfClear { arg: u8, mask: u32 },
    /// Allow when the low 32 bits of argument `arg` equal one of `values`.
    AllowIfOneOf { arg: u8, values: Vec<u32> },
    /// Allow unless the low 32 bits of argument `arg` equal one of `values`.
    AllowUnlessOneOf { arg: u8, values: Vec<u32> },
}

/// Instruction codes, from linux/bpf_common.h: BPF_LD | BPF_W | BPF_ABS, then
/// BPF_JMP with BPF_JA, BPF_JEQ, BPF_JGE and BPF_JSET (all with BPF_K), and
/// BPF_RET | BPF_K.
const LD_ABS_W: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGE_K: u16 = 0x35;
const JMP_JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

/// Offsets into `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
fn arg_low_offset(arg: u8) -> u32 {
    16 + 8 * u32::from(arg)
}

/// System call numbers with this bit set belong to the x32 ABI, which shares
/// x86_64's audit architecture value.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label(usize);

#[derive(Debug, Clone)]
enum Op {
    Load(u32),
    Return(u32),
    /// Jump to `then` when the condition holds, to `otherwise` when not.
    Branch { code: u16, k: u32, then: Label, otherwise: Label },
    Goto(Label),
    Mark(Label),
}

struct Builder {
    ops: Vec<Op>,
    labels: usize,
}

impl Builder {
    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Emits the search over `entries[range]`, sorted by number, jumping to
    /// each entry's label on a match and to `deny` otherwise.
    fn search(&mut self, entries: &[(u32, Label)], deny: Label) {
        if entries.len() <= 3 {
            for (nr, target) in entries {
                let next = self.label();
                self.push(Op::Branch { code: JMP_JEQ_K, k: *nr, then: *target, otherwise: next });
                self.push(Op::Mark(next));
            }
            self.push(Op::Goto(deny));
            return;
        }
        let middle = entries.len() / 2;
        let (low, high) = entries.split_at(middle);
        let high_label = self.label();
        let low_label = self.label();
        self.push(Op::Branch { code: JMP_JGE_K, k: high[0].0, then: high_label, otherwise: low_label });
        self.push(Op::Mark(low_label));
        self.search(low, deny);
        self.push(Op::Mark(high_label));
        self.search(high, deny);
    }
}

/// Encodes one instruction.
fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Resolves labels. Every branch becomes three instructions (the test, then
/// one unconditional jump for each outcome), so no 8-bit offset can overflow.
fn assemble(ops: &[Op], labels: usize) -> Vec<libc::sock_filter> {
    let size = |op: &Op| match op {
        Op::Branch { .. } => 3,
        Op::Mark(_) => 0,
        _ => 1,
    };
    let mut positions = vec![usize::MAX; labels];
    let mut position = 0;
    for op in ops {
        if let Op::Mark(label) = op {
            positions[label.0] = position;
        }
        position += size(op);
    }
    let offset = |from: usize, to: Label| -> u32 {
        let target = positions[to.0];
        assert_ne!(target, usize::MAX, "every label is placed");
        assert!(target > from, "every label is placed after the jumps to it");
        (target - from - 1) as u32
    };
    let mut program = Vec::with_capacity(position);
    for op in ops {
        let here = program.len();
        match op {
            Op::Load(offset) => program.push(insn(LD_ABS_W, 0, 0, *offset)),
            Op::Return(value) => program.push(insn(RET_K, 0, 0, *value)),
            Op::Goto(target) => program.push(insn(JMP_JA, 0, 0, offset(here, *target))),
            Op::Branch { code, k, then, otherwise } => {
                program.push(insn(*code, 0, 1, *k));
                program.push(insn(JMP_JA, 0, 0, offset(here + 1, *then)));
                program.push(insn(JMP_JA, 0, 0, offset(here + 2, *otherwise)));
            }
            Op::Mark(_) => {}
        }
    }
    program
}

/// Compiles a policy. System calls not in `policy` fail with `default_errno`;
/// a foreign architecture kills the process; x32 numbers fail like unknown calls.
pub fn compile(arch: u32, policy: &[(u32, Action)], default_errno: u32) -> Vec<libc::sock_filter> {
    let mut builder = Builder { ops: Vec::new(), labels: 0 };
    let allow = builder.label();
    let deny = builder.label();
    let native = builder.label();
    let kill = builder.label();
    let not_x32 = builder.label();

    // 1. The architecture check, before the number means anything.
    builder.push(Op::Load(ARCH_OFFSET));
    builder.push(Op::Branch { code: JMP_JEQ_K, k: arch, then: native, otherwise: kill });
    builder.push(Op::Mark(kill));
    builder.push(Op::Return(RET_KILL_PROCESS));
    builder.push(Op::Mark(native));

    // 2. The number, with x32 calls sent to the default.
    builder.push(Op::Load(NR_OFFSET));
    builder.push(Op::Branch { code: JMP_JSET_K, k: X32_SYSCALL_BIT, then: deny, otherwise: not_x32 });
    builder.push(Op::Mark(not_x32));

    // 3. One label per action; plain allows share the final allow.
    let mut entries: Vec<(u32, Label)> = Vec::new();
    let mut blocks: Vec<(Label, &Action)> = Vec::new();
    let mut sorted: Vec<&(u32, Action)> = policy.iter().collect();
    sorted.sort_by_key(|(nr, _)| *nr);
    for (nr, action) in sorted {
        let target = if *action == Action::Allow {
            allow
        } else {
            let label = builder.label();
            blocks.push((label, action));
            label
        };
        entries.push((*nr, target));
    }
    builder.search(&entries, deny);

    // 4. The argument checks.
    for (label, action) in blocks {
        builder.push(Op::Mark(label));
        match action {
            Action::Allow => builder.push(Op::Goto(allow)),
            Action::Errno(errno) => builder.push(Op::Return(RET_ERRNO | (errno & 0xffff))),
            Action::AllowIfClear { arg, mask } => {
                builder.push(Op::Load(arg_low_offset(*arg)));
                builder.push(Op::Branch { code: JMP_JSET_K, k: *mask, then: deny, otherwise: allow });
            }
            Action::AllowIfOneOf { arg, values } => {
                builder.push(Op::Load(arg_low_offset(*arg)));
                for value in values {
                    let next = builder.label();
                    builder.push(Op::Branch { code: JMP_JEQ_K, k: *value, then: allow, otherwise: next });
                    builder.push(Op::Mark(next));
                }
                builder.push(Op::Goto(deny));
            }
            Action::AllowUnlessOneOf { arg, values } => {
                builder.push(Op::Load(arg_low_offset(*arg)));
                for value in values {
                    let next = builder.label();
                    builder.push(Op::Branch { code: JMP_JEQ_K, k: *value, then: deny, otherwise: next });
                    builder.push(Op::Mark(next));
                }
                builder.push(Op::Goto(allow));
            }
        }
    }

    // 5. The shared outcomes.
    builder.push(Op::Mark(deny));
    builder.push(Op::Return(RET_ERRNO | (default_errno & 0xffff)));
    builder.push(Op::Mark(allow));
    builder.push(Op::Return(RET_ALLOW));
    assemble(&builder.ops, builder.labels)
}

/// Runs a program the way the kernel does, for tests: returns the action value.
#[cfg(test)]
pub fn run(program: &[libc::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (index, arg) in args.iter().enumerate() {
        data[16 + 8 * index..24 + 8 * index].copy_from_slice(&arg.to_le_bytes());
    }
    let mut accumulator: u32 = 0;
    let mut pc = 0usize;
    loop {
        let op = program[pc];
        pc += 1;
        match op.code {
            LD_ABS_W => {
                let at = op.k as usize;
                accumulator = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
            }
            RET_K => return op.k,
            JMP_JA => pc += op.k as usize,
            JMP_JEQ_K | JMP_JGE_K | JMP_JSET_K => {
                let holds = match op.code {
                    JMP_JEQ_K => accumulator == op.k,
                    JMP_JGE_K => accumulator >= op.k,
                    _ => accumulator & op.k != 0,
                };
                pc += if holds { op.jt as usize } else { op.jf as usize };
            }
            other => panic!("unexpected instruction code {other:#x}"),
        }
    }
}
