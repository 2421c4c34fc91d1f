//! Every command of `mayfly`, which `mayfly` execs for all but a run on this host.

fn main() {
    mayfly::main_full()
}
