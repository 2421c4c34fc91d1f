//! A small compiler from a per-system-call policy to a classic BPF program
//! for seccomp, laid out as a binary search over ranges of system call
//! numbers that share a decision.
//!
//! A linear filter of a few hundred rules costs the kernel close to a
//! millisecond at install time, because it runs the filter once for every
//! system call number to build its cache of always-allowed calls. A search
//! tree visits a few instructions per call instead of hundreds. The
//! kernel's install time also grows with the program's length, because it
//! checks, converts and JIT-compiles every instruction, so the search runs
//! over ranges rather than single numbers, and branches take one
//! instruction wherever their targets are in reach.

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

    /// Emits a binary search over `runs`: sorted, contiguous ranges of
    /// system call numbers, each given by its first number and the label
    /// that all its numbers jump to. The first run starts at the lowest
    /// number that reaches this point.
    fn search(&mut self, runs: &[(u32, Label)]) {
        if let [(_, target)] = runs {
            self.push(Op::Goto(*target));
            return;
        }
        let (low, high) = runs.split_at(runs.len() / 2);
        // A side with one run branches straight to that run's label.
        let side_label = |builder: &mut Builder, side: &[(u32, Label)]| if let [(_, target)] = side { *target } else { builder.label() };
        let high_label = side_label(self, high);
        let low_label = side_label(self, low);
        self.push(Op::Branch { code: JMP_JGE_K, k: high[0].0, then: high_label, otherwise: low_label });
        if low.len() > 1 {
            self.push(Op::Mark(low_label));
            self.search(low);
        }
        if high.len() > 1 {
            self.push(Op::Mark(high_label));
            self.search(high);
        }
    }
}

/// Groups `entries`, sorted by number, into runs of consecutive numbers
/// with one label, with `deny` for the numbers between and after them.
fn runs(entries: &[(u32, Label)], deny: Label) -> Vec<(u32, Label)> {
    let mut runs: Vec<(u32, Label)> = Vec::new();
    let mut next = 0u32;
    for (nr, target) in entries {
        if *nr > next {
            runs.push((next, deny));
        }
        if runs.last().is_none_or(|(_, last)| last != target) {
            runs.push((*nr, *target));
        }
        next = nr + 1;
    }
    runs.push((next, deny));
    runs
}

/// Encodes one instruction.
fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Resolves labels. A branch whose targets lie within the 8-bit offsets of
/// a conditional jump is one instruction. A farther one becomes three: the
/// test, then an unconditional jump with a 32-bit offset for each outcome.
/// Lengthening one branch can push others out of reach, so the layout is
/// repeated until no branch changes.
fn assemble(ops: &[Op], labels: usize) -> Vec<libc::sock_filter> {
    let mut long = vec![false; ops.len()];
    let (positions, length) = loop {
        let (positions, length) = layout(ops, &long, labels);
        let mut changed = false;
        let mut position = 0;
        for (index, op) in ops.iter().enumerate() {
            if let Op::Branch { then, otherwise, .. } = op {
                let reach = |to: &Label| positions[to.0] - position - 1;
                if !long[index] && (reach(then) > u8::MAX as usize || reach(otherwise) > u8::MAX as usize) {
                    long[index] = true;
                    changed = true;
                }
            }
            position += size(op, long[index]);
        }
        if !changed {
            break (positions, length);
        }
    };
    let offset = |from: usize, to: Label| -> usize {
        let target = positions[to.0];
        assert!(target > from, "every label is placed after the jumps to it");
        target - from - 1
    };
    let mut program = Vec::with_capacity(length);
    for (index, op) in ops.iter().enumerate() {
        let here = program.len();
        match op {
            Op::Load(offset) => program.push(insn(LD_ABS_W, 0, 0, *offset)),
            Op::Return(value) => program.push(insn(RET_K, 0, 0, *value)),
            Op::Goto(target) => program.push(insn(JMP_JA, 0, 0, offset(here, *target) as u32)),
            Op::Branch { code, k, then, otherwise } if long[index] => {
                program.push(insn(*code, 0, 1, *k));
                program.push(insn(JMP_JA, 0, 0, offset(here + 1, *then) as u32));
                program.push(insn(JMP_JA, 0, 0, offset(here + 2, *otherwise) as u32));
            }
            Op::Branch { code, k, then, otherwise } => {
                program.push(insn(*code, offset(here, *then) as u8, offset(here, *otherwise) as u8, *k));
            }
            Op::Mark(_) => {}
        }
    }
    program
}

/// Instructions that `op` takes.
fn size(op: &Op, long: bool) -> usize {
    match op {
        Op::Branch { .. } if long => 3,
        Op::Branch { .. } => 1,
        Op::Mark(_) => 0,
        _ => 1,
    }
}

/// Returns the position of every label, and the program's length, with
/// the branches marked in `long` taking three instructions.
fn layout(ops: &[Op], long: &[bool], labels: usize) -> (Vec<usize>, usize) {
    let mut positions = vec![usize::MAX; labels];
    let mut position = 0;
    for (index, op) in ops.iter().enumerate() {
        if let Op::Mark(label) = op {
            positions[label.0] = position;
        }
        position += size(op, long[index]);
    }
    assert!(positions.iter().all(|p| *p != usize::MAX), "every label is placed");
    (positions, position)
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
    let runs = runs(&entries, deny);
    builder.search(&runs);

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

#[cfg(test)]
mod tests {
    use super::*;

    const ARCH: u32 = 0xc000_003e;
    const DENIED: u32 = RET_ERRNO | 1;

    /// Returns the decision of `policy` for one call, evaluated directly.
    fn expected(policy: &[(u32, Action)], nr: u32, args: [u64; 6]) -> u32 {
        if nr & X32_SYSCALL_BIT != 0 {
            return DENIED;
        }
        let Some((_, action)) = policy.iter().find(|(number, _)| *number == nr) else { return DENIED };
        let low = |arg: &u8| args[usize::from(*arg)] as u32;
        let allowed = match action {
            Action::Allow => true,
            Action::Errno(errno) => return RET_ERRNO | errno,
            Action::AllowIfClear { arg, mask } => low(arg) & mask == 0,
            Action::AllowIfOneOf { arg, values } => values.contains(&low(arg)),
            Action::AllowUnlessOneOf { arg, values } => !values.contains(&low(arg)),
        };
        if allowed { RET_ALLOW } else { DENIED }
    }

    fn check_every_number(policy: &[(u32, Action)]) -> usize {
        let program = compile(ARCH, policy, 1);
        let argument_sets = [[0u64; 6], [7; 6], [0x2000_0000; 6], [u64::MAX; 6]];
        for nr in (0..700).chain([0x3fff_ffff, 0x4000_0000, 0x4000_0005, 0x8000_0000, u32::MAX]) {
            for args in argument_sets {
                assert_eq!(run(&program, nr, ARCH, args), expected(policy, nr, args), "system call {nr} with {args:?}");
            }
        }
        assert_eq!(run(&program, 0, ARCH + 1, [0; 6]), RET_KILL_PROCESS);
        program.len()
    }

    #[test]
    fn ranges_and_gaps_match_the_policy() {
        let mut policy: Vec<(u32, Action)> = (0..40).map(|nr| (nr, Action::Allow)).collect();
        policy.extend((41..60).step_by(2).map(|nr| (nr, Action::Allow)));
        policy.push((60, Action::Errno(38)));
        policy.push((61, Action::AllowIfClear { arg: 0, mask: 0x2000_0000 }));
        policy.extend((200..210).map(|nr| (nr, Action::Allow)));
        policy.push((699, Action::Allow));
        check_every_number(&policy);
    }

    #[test]
    fn empty_policy_denies_everything() {
        let length = check_every_number(&[]);
        assert!(length <= 8, "{length} instructions");
    }

    #[test]
    fn far_targets_take_long_branches() {
        // 300 compared values push the argument block's exits far beyond
        // the 255 instructions that a conditional jump reaches.
        let values: Vec<u32> = (1000..1300).chain([7]).collect();
        let policy = vec![
            (1, Action::AllowIfOneOf { arg: 1, values: values.clone() }),
            (2, Action::AllowUnlessOneOf { arg: 2, values }),
            (3, Action::Allow),
            (500, Action::Allow),
        ];
        let length = check_every_number(&policy);
        assert!(length > 600, "{length} instructions");
    }
}
