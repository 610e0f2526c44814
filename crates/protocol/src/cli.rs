//! Command lines of the protocol components, with the original's underscore flags.

use std::process::ExitCode;

use clap::{Args, Parser};

use crate::runtime::{Runtime, component_id_or};

/// Flags every component takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub home: n0m1_core::home::HomeArg,
    /// The run type the manager passes (PRIMARY_RUN, ONESHOT, …); recorded in events.
    #[arg(long = "run_type", alias = "run-type", default_value = "PRIMARY_RUN")]
    pub run_type: String,
}

impl CommonArgs {
    pub fn home(&self) -> anyhow::Result<n0m1_core::Home> {
        Ok(self.home.resolve()?)
    }
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Turn llm_io_config reload flags into CONFIG_RELOAD notifications"
)]
struct DaemonArgs {
    #[command(flatten)]
    common: CommonArgs,
}

/// `main` of `llm_config_daemon` and `llm_command_daemon`.
pub fn daemon_main(
    name: &str,
    run: fn(Runtime, &n0m1_core::Home) -> anyhow::Result<()>,
) -> ExitCode {
    n0m1_core::logging::init(name, "info");
    let args = DaemonArgs::parse();
    n0m1_core::exit_code::<anyhow::Error>((|| {
        let home = args.common.home()?;
        let runtime = Runtime::start(
            &home.db_path(),
            &component_id_or(name),
            &args.common.run_type,
        )?;
        run(runtime, &home)
    })())
}
