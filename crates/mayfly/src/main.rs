//! The `mayfly` command. A `mayfly run` on this host runs here; every other
//! command line goes to `mayfly-full` (see the crate's documentation).

/// Keeps freed memory for reuse; see its documentation.
#[global_allocator]
static ALLOCATOR: mayfly::allocator::FrontAllocator = mayfly::allocator::FrontAllocator::new();

fn main() {
    mayfly::run_init_if_requested();
    // SAFETY: first thing in `main`, as `prestart_for_run` requires.
    if unsafe { mayfly::prestart_for_run() } {
        // Help and errors come from `mayfly-full`, whose parser has every command.
        if let Some(args) = mayfly::cli::parse_run(std::env::args_os().skip(1)) {
            mayfly::init_logging();
            std::process::exit(mayfly::run::local(args));
        }
    }
    mayfly::exec_full()
}
