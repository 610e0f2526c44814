//! `n0m1ctl schedule`: when a ONESHOT component runs on its own (`component_schedules`), and
//! the view of it (spec, next run, last start) that `status` and the API show.

use std::collections::HashMap;

use anyhow::{Context, bail};
use n0m1_core::Home;
use n0m1_core::components::{self, ComponentRow};
use n0m1_core::schedules::{self, ScheduleRow};
use n0m1_core::schema::{AUTORUN_COMPONENTS, COMPONENT_SCHEDULES};
use serde::{Deserialize, Serialize};

use n0m1_core::text::printable;

#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleArgs {
    pub component_id: String,
    /// Run every DURATION (`30s`, `2h`, `1h30m`), on whole multiples of it since the Unix
    /// epoch (`every 1h` runs on the hour).
    #[arg(long, value_name = "DURATION", conflicts_with = "cron")]
    pub every: Option<String>,
    /// Run at the times of a cron expression, seconds optional (`0 */5 * * * *`, `@hourly`),
    /// in local time or after `TZ=<zone> `.
    #[arg(long, value_name = "EXPR")]
    pub cron: Option<String>,
    /// A run due while the last one still runs: skip (default), queue or kill.
    #[arg(long, value_name = "RULE")]
    pub overlap: Option<String>,
    /// A run due while n0m1 was not running: skip (default) or once.
    #[arg(long, value_name = "RULE")]
    pub missed: Option<String>,
    /// Remove the schedule (the component then stays done until started by hand).
    #[arg(long, conflicts_with_all = ["every", "cron", "overlap", "missed"])]
    pub clear: bool,
}

/// What `status` shows of a schedule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScheduleView {
    pub spec: String,
    pub overlap: String,
    pub missed: String,
    /// The next time it runs (Unix seconds), and as its zone shows it.
    pub next_run: Option<f64>,
    pub next_run_text: Option<String>,
    /// When it last started on its schedule (Unix seconds).
    pub last_run: Option<f64>,
    /// Why the manager does not follow it (a bad row, not a ONESHOT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The row checked the way its manager will check it, for a component that can run on it.
fn checked(row: &ComponentRow, schedule: &ScheduleRow) -> Result<schedules::Schedule, String> {
    if !row.is_oneshot() {
        return Err(format!(
            "{} is not a ONESHOT (run_type_on_boot is {:?}): only a one-shot runs on a schedule; `n0m1ctl add … --oneshot`, or UPDATE {AUTORUN_COMPONENTS} SET run_type_on_boot = 'ONESHOT'",
            printable(&row.component_id),
            row.run_type
        ));
    }
    schedule.check().map_err(|error| error.to_string())
}

fn view(row: &ComponentRow, schedule: &ScheduleRow, last_run: Option<f64>) -> ScheduleView {
    let (next_run, next_run_text, problem) = match checked(row, schedule) {
        Ok(checked) => {
            let next = checked.spec.next_after(n0m1_core::state::unix_now());
            (
                next,
                next.map(|unix| schedules::describe_time(&checked.spec, unix)),
                None,
            )
        }
        Err(problem) => (None, None, Some(problem)),
    };
    ScheduleView {
        spec: schedule.spec.clone(),
        overlap: schedule.overlap.clone(),
        missed: schedule.missed.clone(),
        next_run,
        next_run_text,
        last_run,
        problem,
    }
}

/// Every scheduled component's view (empty when the table cannot be read).
pub fn views(conn: &rusqlite::Connection, rows: &[ComponentRow]) -> HashMap<String, ScheduleView> {
    let (Ok(stored), Ok(last_runs)) = (schedules::all(conn), schedules::last_runs(conn)) else {
        return HashMap::new();
    };
    let rows: HashMap<&str, &ComponentRow> =
        rows.iter().map(|r| (r.component_id.as_str(), r)).collect();
    stored
        .iter()
        .filter_map(|schedule| {
            let row = rows.get(schedule.component_id.as_str())?;
            Some((
                schedule.component_id.clone(),
                view(
                    row,
                    schedule,
                    last_runs.get(&schedule.component_id).copied(),
                ),
            ))
        })
        .collect()
}

/// Shows, sets or clears a component's schedule; returns the sentence to print.
pub fn run(home: &Home, args: &ScheduleArgs) -> anyhow::Result<String> {
    let conn = crate::open_database(home)?;
    let id = &args.component_id;
    let Some(row) =
        components::find(&conn, id).with_context(|| format!("reading {AUTORUN_COMPONENTS}"))?
    else {
        return Err(crate::components::unknown(&conn, id));
    };
    let current =
        schedules::get(&conn, id).with_context(|| format!("reading {COMPONENT_SCHEDULES}"))?;
    if args.clear {
        schedules::clear(&conn, id).with_context(|| format!("writing {COMPONENT_SCHEDULES}"))?;
        return Ok(match current {
            Some(_) => format!(
                "schedule of {id} cleared; it stays done until started (`n0m1ctl restart {id}`)"
            ),
            None => format!("{id} had no schedule"),
        });
    }
    let spec = match (&args.every, &args.cron) {
        (Some(every), None) => Some(format!("every {}", every.trim())),
        (None, Some(cron)) => Some(cron.trim().to_owned()),
        _ => None,
    };
    let Some(spec) = spec.or_else(|| current.as_ref().map(|c| c.spec.clone())) else {
        if args.overlap.is_some() || args.missed.is_some() {
            bail!("{id} has no schedule yet: give --every or --cron");
        }
        return Ok(format!("{id} has no schedule"));
    };
    let wanted = ScheduleRow {
        component_id: id.clone(),
        spec,
        overlap: args
            .overlap
            .clone()
            .or_else(|| current.as_ref().map(|c| c.overlap.clone()))
            .unwrap_or_else(|| "skip".to_owned()),
        missed: args
            .missed
            .clone()
            .or_else(|| current.as_ref().map(|c| c.missed.clone()))
            .unwrap_or_else(|| "skip".to_owned()),
    };
    let changes = args.every.is_some()
        || args.cron.is_some()
        || args.overlap.is_some()
        || args.missed.is_some();
    let checked = checked(&row, &wanted).map_err(|problem| {
        anyhow::anyhow!("the schedule of {} is refused: {problem}", printable(id))
    })?;
    if changes {
        schedules::set(&conn, &wanted)?;
    }
    let next = checked
        .spec
        .next_after(n0m1_core::state::unix_now())
        .map_or_else(
            || "no next run".to_owned(),
            |unix| format!("next run {}", schedules::describe_time(&checked.spec, unix)),
        );
    Ok(format!(
        "schedule of {id}: {} (overlap {}, missed {}); {next}{}",
        wanted.spec,
        wanted.overlap,
        wanted.missed,
        if changes && !row.desired_active {
            format!("; it is disabled: `n0m1ctl enable {id}` to follow it")
        } else {
            String::new()
        }
    ))
}
