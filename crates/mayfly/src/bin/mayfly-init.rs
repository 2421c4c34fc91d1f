//! The sandbox init, as a small program of its own.

fn main() {
    mayfly_sandbox::init::main();
}
