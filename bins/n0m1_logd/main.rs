//! `n0m1_logd`: the log writer. Started by boot; see `n0m1_logd` crate docs.

use n0m1_core::resident_args::{self, Usage};

const USAGE: Usage = Usage {
    name: "n0m1_logd",
    about: "n0m1's log writer: reads run/logs/ FIFOs, rotates log files by size",
    options: &[],
};

fn main() -> std::process::ExitCode {
    n0m1_core::logging::init("n0m1_logd", "info");
    let home = match resident_args::parse(&USAGE, std::env::args_os().skip(1), |_, _| Ok(false)) {
        Ok(home) => home,
        Err(code) => return code,
    };
    n0m1_core::exit_code::<anyhow::Error>((|| {
        n0m1_logd::run(home.resolve()?)?;
        Ok(())
    })())
}
