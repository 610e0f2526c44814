//! `mem_usage_daemon`: samples one metric into its table (see n0m1-metrics).

fn main() -> std::process::ExitCode {
    n0m1_metrics::daemon_main(n0m1_metrics::Metric::Memory)
}
