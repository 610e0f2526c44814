//! `n0m1_web`: the dashboard, the JSON API and Prometheus metrics (see the n0m1-web crate).

use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "n0m1_web",
    about = "n0m1's dashboard, JSON API (/api/v1) and Prometheus metrics (/metrics)"
)]
struct Args {
    #[command(flatten)]
    home: n0m1_core::home::HomeArg,
    /// Address to listen on. A non-loopback address needs `"web": {"read_requires_token": true}`
    /// in config.json.
    #[arg(long, default_value = n0m1_web::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// The manager passes every component its run type (`--run_type`, the original's spelling).
    #[arg(long = "run_type", alias = "run-type", default_value = "PRIMARY_RUN")]
    run_type: String,
}

fn main() -> std::process::ExitCode {
    n0m1_core::logging::init("n0m1_web", "info");
    let args = Args::parse();
    n0m1_core::exit_code::<anyhow::Error>((|| {
        let home = args.home.resolve()?;
        n0m1_web::run(n0m1_web::Options {
            home,
            listen: args.listen,
        })
    })())
}
