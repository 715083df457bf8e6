//! The `hsm-sync` binary: everything lives in the library; `main` only maps the outcome
//! of [`hsm_sync::run`] to a process exit code.

fn main() -> std::process::ExitCode {
    hsm_sync::run(std::env::args_os())
}
