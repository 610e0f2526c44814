//! `n0m1ctl init` and `init_database`: create or upgrade the schema, insert defaults, and
//! print the configuration by manager, as the original's init script did.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use clap::Args;
use n0m1_core::components;
use n0m1_core::schema::{AUTORUN_COMPONENTS, MANAGERS};
use n0m1_core::{Home, PidFile, db};
use rusqlite::Connection;

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Delete the database (all data) and create it anew. Needs --yes unless confirmed at a
    /// terminal prompt.
    #[arg(long)]
    pub reset: bool,
    /// Confirm --reset without asking.
    #[arg(long)]
    pub yes: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(home: &Home, args: &InitArgs) -> anyhow::Result<()> {
    home.ensure()
        .with_context(|| format!("preparing home {}", home.root().display()))?;
    let db_path = home.db_path();
    if args.reset && db_path.exists() {
        if PidFile::inspect(&home.boot_pid_file())?
            .live_pid()
            .is_some()
        {
            bail!(
                "n0m1 is running: stop it (`n0m1ctl stop`) before resetting {}",
                db_path.display()
            );
        }
        if !args.yes && !confirm(&format!("Delete all data in {}? [y/N] ", db_path.display()))? {
            bail!(
                "refusing to delete {} without confirmation: pass --yes to reset non-interactively",
                db_path.display()
            );
        }
        db::remove(&db_path)?;
    }
    // A fresh file beside a system that still runs on the deleted one would look like a
    // repair and be none: say so instead.
    crate::check_running_database(home)?;
    let (conn, report) = db::initialise(&db_path)?;
    if args.quiet {
        return Ok(());
    }
    let how = if report.created {
        "created".to_owned()
    } else if report.from_version == report.to_version {
        format!("schema version {} is current", report.to_version)
    } else {
        format!(
            "upgraded from schema version {} to {}",
            report.from_version, report.to_version
        )
    };
    println!(
        "Database {}: {how}; {} default rows added",
        db_path.display(),
        report.default_rows_inserted
    );
    print_configuration(&conn)?;
    Ok(())
}

/// Asks at a terminal; never prompts (answers no) when stdin is not one.
fn confirm(question: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(false);
    }
    print!("{question}");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Components grouped by manager: state, id, script and arguments.
pub fn print_configuration(conn: &Connection) -> anyhow::Result<()> {
    let rows: Vec<(String, String, String, String, String)> = components::all(conn)
        .with_context(|| format!("reading {AUTORUN_COMPONENTS}"))?
        .into_iter()
        .map(|row| {
            let desired = row.desired_state().to_owned();
            (
                row.manager_affinity,
                row.component_id,
                desired,
                row.base_script_name,
                row.launch_args_json.unwrap_or_else(|| "{}".to_owned()),
            )
        })
        .collect();
    let mut managers: Vec<&str> = MANAGERS.to_vec();
    for (manager, ..) in &rows {
        if !managers.contains(&manager.as_str()) {
            managers.push(manager);
        }
    }
    println!("\nComponent configuration:");
    for manager in managers {
        let mine: Vec<_> = rows.iter().filter(|r| r.0 == manager).collect();
        if mine.is_empty() {
            continue;
        }
        println!("\n{}:", n0m1_core::text::printable(manager));
        for (_, id, desired, script, args) in mine {
            let mark = if desired == "active" { "✓" } else { "✗" };
            use n0m1_core::text::printable;
            println!(
                "  {mark} {:<22} {desired:<8} {} {}",
                printable(id),
                printable(script),
                printable(args)
            );
        }
    }
    Ok(())
}
