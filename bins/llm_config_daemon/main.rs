//! `llm_config_daemon`: see n0m1-protocol's `config_daemon`.

fn main() -> std::process::ExitCode {
    n0m1_protocol::cli::daemon_main("llm_config_daemon", n0m1_protocol::config_daemon::run)
}
