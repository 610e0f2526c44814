//! The command line shared by the three manager binaries, which differ only in affinity.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use n0m1_core::resident_args::{self, Usage, ValueExt};

use crate::manager::{Manager, ManagerOptions};

/// How often a manager checks the database for changes unless told otherwise, and the bounds.
const WATCH_INTERVAL_MS: u64 = 200;
const WATCH_INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 10..=10_000;

fn run(
    manager: &str,
    home: n0m1_core::home::HomeArg,
    watch_interval_ms: u64,
) -> anyhow::Result<()> {
    let home = home.resolve()?;
    let bin_dir = n0m1_core::process::own_bin_dir()
        .with_context(|| format!("cannot find the folder of the {manager} executable"))?;
    Manager::run(ManagerOptions {
        home,
        manager: manager.to_owned(),
        bin_dir,
        watch_interval: Duration::from_millis(watch_interval_ms),
    })
    .with_context(|| format!("{manager} stopped with an error"))
}

/// `main` of `daemon_manager`, `nano_manager` and `main_llm_manager`.
pub fn manager_main(manager: &'static str) -> ExitCode {
    n0m1_core::logging::init(manager, "info");
    let usage = Usage {
        name: manager,
        about: "Supervise the autorun_components rows of one manager affinity",
        options: &[(
            "--watch-interval-ms <MS>",
            "How often to check the database for changes, in milliseconds (10-10000) [default: 200]",
        )],
    };
    let mut watch_interval_ms = WATCH_INTERVAL_MS;
    let home = resident_args::parse(&usage, std::env::args_os().skip(1), |name, parser| {
        if name != "watch-interval-ms" {
            return Ok(false);
        }
        let value: u64 = parser.value()?.parse()?;
        if !WATCH_INTERVAL_RANGE_MS.contains(&value) {
            return Err(
                format!("--watch-interval-ms {value} is not in 10..=10000 (milliseconds)").into(),
            );
        }
        watch_interval_ms = value;
        Ok(true)
    });
    match home {
        Ok(home) => n0m1_core::exit_code(run(manager, home, watch_interval_ms)),
        Err(code) => code,
    }
}
