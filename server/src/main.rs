//! The `openspimed` binary: the composition root is `openspimed::cli::main`.

/// mimalloc instead of glibc's malloc: a routed message allocates and frees a few dozen
/// small blocks (parser events, the element tree, TLS records) across threads, and glibc
/// spent ~15% of the server's CPU in `malloc`/`free`/`malloc_consolidate` under the
/// `messages` benchmark (perf, README "Performance").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    openspimed::cli::main()
}
