//! `n0m1_alerts`: the alerter, a bundled component (see the n0m1-alerts crate).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "n0m1_alerts",
    about = "n0m1's alerter: lifecycle events to hooks and webhooks"
)]
struct Args {
    #[command(flatten)]
    home: n0m1_core::home::HomeArg,
    /// The manager passes every component its run type (`--run_type`, the original's spelling).
    #[arg(long = "run_type", alias = "run-type", default_value = "PRIMARY_RUN")]
    run_type: String,
}

fn main() -> std::process::ExitCode {
    n0m1_core::logging::init("n0m1_alerts", "info");
    let args = Args::parse();
    n0m1_core::exit_code::<anyhow::Error>((|| {
        let home = args.home.resolve()?;
        let id = std::env::var(n0m1_core::home::ENV_COMPONENT_ID)
            .unwrap_or_else(|_| "n0m1_alerts".into());
        n0m1_alerts::run(home, id)
    })())
}
