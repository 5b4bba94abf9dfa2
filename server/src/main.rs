//! The `openspimed` binary: the composition root is `openspimed::cli::main`.

fn main() -> std::process::ExitCode {
    openspimed::cli::main()
}
