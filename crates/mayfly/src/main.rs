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
            let code = mayfly::run::local(args);
            // The caller waits for this exit. `std::process::exit` would also
            // unmap the main thread's signal stack, which in a process with
            // threads can interrupt the other CPU. So standard output, the
            // one buffered stream, is flushed here, and `_exit` ends at once.
            let _ = std::io::Write::flush(&mut std::io::stdout());
            // SAFETY: _exit ends the process; the audit log and the report
            // are written and closed, and nothing else needs a destructor.
            unsafe { libc::_exit(code) }
        }
    }
    mayfly::exec_full()
}
