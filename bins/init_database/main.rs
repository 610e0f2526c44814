//! `init_database`: create or upgrade the n0m1 database (same as `n0m1ctl init`).

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "init_database",
    version,
    about = "Create or upgrade the n0m1 database and insert default rows"
)]
struct Args {
    #[command(flatten)]
    home: n0m1_core::home::HomeArg,
    #[command(flatten)]
    init: n0m1_ctl::init::InitArgs,
}

fn main() -> ExitCode {
    n0m1_core::logging::init("init_database", "warn");
    let args = Args::parse();
    let result = args
        .home
        .resolve()
        .map_err(anyhow::Error::from)
        .and_then(|home| n0m1_ctl::init::run(&home, &args.init));
    n0m1_core::exit_code(result)
}
