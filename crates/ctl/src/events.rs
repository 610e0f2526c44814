//! `events`: the lifecycle log, the last N events or followed like `journalctl -f`.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use n0m1_core::Home;
use n0m1_core::lifecycle::{self, LoggedEvent};
use n0m1_core::schema::COMPONENT_LIFECYCLE_LOG;
use n0m1_core::text::printable;

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Only this component's (or manager's) events.
    #[arg(long, value_name = "ID")]
    pub component: Option<String>,
    /// How many of the latest events to show first.
    #[arg(short = 'n', long = "lines", default_value_t = 20)]
    pub lines: usize,
    /// Keep printing new events as they are recorded (Ctrl-C to stop).
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// The most events one request returns.
pub const MAX_PAGE: usize = 1000;

/// Events after row `after`, oldest first (`newest`: the last `limit` of them).
pub fn page(
    conn: &rusqlite::Connection,
    after: i64,
    component: Option<&str>,
    limit: usize,
    newest: bool,
) -> anyhow::Result<Vec<LoggedEvent>> {
    lifecycle::page(conn, after, component, limit.min(MAX_PAGE), newest)
        .with_context(|| format!("reading {COMPONENT_LIFECYCLE_LOG}"))
}

/// One line per event: `id time component event [pid N]: message`.
pub fn print(event: &LoggedEvent) -> bool {
    print_line(&line(event))
}

/// An event as `print` writes it, without the line's end.
pub fn line(event: &LoggedEvent) -> String {
    format!(
        "{:>7} {} {} {}{}: {}",
        event.id,
        printable(&event.timestamp),
        printable(&event.component_id),
        printable(&event.event_type),
        event.pid.map(|p| format!(" pid {p}")).unwrap_or_default(),
        printable(event.message.as_deref().unwrap_or(""))
    )
}

/// Writes a line to stdout; false once stdout is closed (`events -f | head` ends quietly).
pub fn print_line(line: &str) -> bool {
    use std::io::Write;
    let line = format!("{line}\n");
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

pub fn run(home: &Home, args: &EventsArgs) -> anyhow::Result<()> {
    let conn = crate::open_database(home)?;
    let component = args.component.as_deref();
    // An id that is no row and has no event is a typo, not a quiet component (the API
    // answers 404 for it too).
    if let Some(id) = component {
        let known = n0m1_core::components::find(&conn, id)?.is_some()
            || !lifecycle::page(&conn, 0, Some(id), 1, true)?.is_empty();
        if !known {
            return Err(crate::components::unknown(&conn, id));
        }
    }
    let mut last = 0;
    for event in page(&conn, 0, component, args.lines, true)? {
        last = event.id;
        if !print(&event) {
            return Ok(());
        }
    }
    if !args.follow {
        return Ok(());
    }
    if last == 0 {
        last = lifecycle::last_id(&conn)
            .with_context(|| format!("reading {COMPONENT_LIFECYCLE_LOG}"))?;
    }
    loop {
        for event in page(&conn, last, component, MAX_PAGE, false)? {
            last = event.id;
            if !print(&event) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
