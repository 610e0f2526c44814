//! `n0m1_logd`: the log writer. Started by boot; see `n0m1_logd` crate docs.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "n0m1_logd",
    about = "n0m1's log writer: reads run/logs/ FIFOs, rotates log files by size"
)]
struct Args {
    /// The n0m1 home folder (default: $N0M1_HOME, else ~/n0m1_agi).
    #[arg(long)]
    home: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    n0m1_core::logging::init("n0m1_logd", "info");
    let args = Args::parse();
    n0m1_core::exit_code::<anyhow::Error>((|| {
        let home = n0m1_core::Home::resolve(args.home.as_deref())?;
        n0m1_logd::run(home)?;
        Ok(())
    })())
}
