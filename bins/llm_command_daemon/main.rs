//! `llm_command_daemon`: see n0m1-protocol's `command_daemon`.

fn main() -> std::process::ExitCode {
    n0m1_protocol::cli::daemon_main("llm_command_daemon", n0m1_protocol::command_daemon::run)
}
