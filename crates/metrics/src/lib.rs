//! n0m1-metrics: the metric daemons (`sample` computes, `daemon` samples and writes) and
//! the shared command line of their three binaries.

pub mod daemon;
pub mod sample;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use n0m1_core::home::ENV_COMPONENT_ID;

pub use n0m1_core::metric::Metric;

#[derive(Debug, Parser)]
#[command(version, about = "Sample one metric into its n0m1 table")]
struct DaemonArgs {
    #[command(flatten)]
    home: n0m1_core::home::HomeArg,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0, value_parser = parse_interval)]
    interval: f64,
    /// The run type the manager passes (PRIMARY_RUN, ONESHOT, …); recorded in events.
    #[arg(long = "run_type", alias = "run-type", default_value = "PRIMARY_RUN")]
    run_type: String,
}

fn parse_interval(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.001..=86_400.0).contains(&value) {
        return Err(format!("{value} is outside 0.001..=86400 seconds"));
    }
    Ok(value)
}

/// `main` of the three metric daemons.
pub fn daemon_main(kind: Metric) -> ExitCode {
    n0m1_core::logging::init(kind.daemon(), "info");
    let args = DaemonArgs::parse();
    let result = args
        .home
        .resolve()
        .map_err(anyhow::Error::from)
        .and_then(|home| {
            let component_id = std::env::var(ENV_COMPONENT_ID)
                .ok()
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| kind.daemon().to_owned());
            daemon::run(daemon::DaemonOptions {
                home,
                kind,
                component_id,
                interval: Duration::from_secs_f64(args.interval),
                run_type: args.run_type,
                proc_root: std::env::var_os("N0M1_PROC_ROOT")
                    .map_or_else(|| PathBuf::from("/proc"), PathBuf::from),
                sys_root: std::env::var_os("N0M1_SYS_ROOT")
                    .map_or_else(|| PathBuf::from("/sys"), PathBuf::from),
            })
            .map_err(anyhow::Error::from)
        });
    n0m1_core::exit_code(result)
}
