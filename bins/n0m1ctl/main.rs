//! `n0m1ctl`: how a person drives n0m1. Parsing here; every command lives in n0m1-ctl.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    restore_default_sigpipe();
    n0m1_core::logging::init("n0m1ctl", "warn");
    match n0m1_ctl::run(n0m1_ctl::Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", n0m1_core::text::error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so `n0m1ctl status | head` would panic on the closed pipe; a command
/// line tool should instead end quietly, as `cat` does.
#[allow(unsafe_code)]
fn restore_default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL installs no
    // handler code, so no async-signal-safety question arises.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
