//! `n0m1_logd`: the log writer. Started by boot; see `n0m1_logd` crate docs.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "n0m1_logd",
    about = "n0m1's log writer: reads run/logs/ FIFOs, rotates log files by size"
)]
struct Args {
    #[command(flatten)]
    home: n0m1_core::home::HomeArg,
}

fn main() -> std::process::ExitCode {
    n0m1_core::logging::init("n0m1_logd", "info");
    let args = Args::parse();
    n0m1_core::exit_code::<anyhow::Error>((|| {
        let home = args.home.resolve()?;
        n0m1_logd::run(home)?;
        Ok(())
    })())
}
