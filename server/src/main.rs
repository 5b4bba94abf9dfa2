//! The `openspimed` binary: the composition root is `openspimed::cli::main`.
//!
//! The system allocator stays: mimalloc (measured, without transparent huge pages) routed
//! ~25% more messages per CPU-second but kept 19.4 KiB per idle TLS session against
//! glibc's 16.0 (`openspimed-bench idle --sessions 2000`, fresh server), and idle memory is
//! the scarcer resource at tens of thousands of sessions.

fn main() -> std::process::ExitCode {
    openspimed::cli::main()
}
