//! `status`: boot, each manager and each component as they really are. PID files count only
//! when locked, and a component's pid only when /proc shows the same process (start time).

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use n0m1_core::dependencies;
use n0m1_core::lifecycle;
use n0m1_core::pidfile::PidStatus;
use n0m1_core::process::{self, ProcStat};
use n0m1_core::schema::{AUTORUN_COMPONENTS, COMPONENT_STATE};
use n0m1_core::state::{self, ComponentState, RunState, unix_now};
use n0m1_core::text::printable;
use n0m1_core::{Config, Home, PidFile, components};
use serde::{Deserialize, Serialize};

fn run_state_text<S: serde::Serializer>(
    state: &RunState,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(state.as_str())
}

fn run_state_from_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<RunState, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse()
        .map_err(|_| serde::de::Error::custom(format!("unknown state {text:?}")))
}

use crate::EXIT_NOT_RUNNING;
use crate::components::{cannot_run, known_managers};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessView {
    pub name: String,
    /// running, stopped, or stale (a PID file nobody holds).
    pub state: String,
    pub pid: Option<i32>,
    pub uptime_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_age_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_kib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentView {
    pub component_id: String,
    pub manager: String,
    pub desired: String,
    /// One of `RunState`: running, stopped, stopping, backoff, failed, completed, dead (the
    /// recorded process is gone and no manager noticed) or unsupervised (alive, its manager
    /// is not).
    #[serde(
        serialize_with = "run_state_text",
        deserialize_with = "run_state_from_text"
    )]
    pub actual: RunState,
    pub pid: Option<i32>,
    /// Unix time at which the current process started (while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    pub uptime_secs: Option<f64>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_kib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// It said `READY=1` on its notification socket (only while running).
    pub ready: bool,
    /// Its last `STATUS=` text, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<String>,
    /// While `actual` is waiting: the dependencies not met yet, or the cycle it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Why no manager will ever run this row (then `actual` is failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Its limits and account, and what its cgroup says it uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::limits::LimitsView>,
    /// Its schedule, next run and last start, if it runs on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::schedule::ScheduleView>,
}

/// What waiting components wait for, from the same rules the managers apply.
struct WaitingView {
    deps: Vec<dependencies::Dependency>,
    cycles: std::collections::BTreeMap<String, String>,
    standings: HashMap<String, dependencies::Standing>,
}

impl WaitingView {
    fn read(
        conn: &rusqlite::Connection,
        rows: &[components::ComponentRow],
        saved: &HashMap<String, ComponentState>,
    ) -> WaitingView {
        let known = rows.iter().map(|r| r.component_id.clone()).collect();
        let (deps, _) =
            dependencies::validate(&dependencies::all(conn).unwrap_or_default(), &known);
        let standings = saved
            .iter()
            .map(|(id, s)| (id.clone(), dependencies::Standing::of(s)))
            .collect();
        WaitingView {
            cycles: dependencies::cycles(&deps),
            deps,
            standings,
        }
    }

    fn describe(&self, id: &str) -> Option<String> {
        if let Some(cycle) = self.cycles.get(id) {
            return Some(format!("a dependency cycle ({cycle})"));
        }
        dependencies::waiting_for(id, &self.deps, &self.standings)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorView {
    pub timestamp: String,
    pub component_id: String,
    pub event_type: String,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemView {
    pub home: String,
    /// The home's short id: its cgroups are `n0m1/<home_id>/<manager>/<component>`.
    #[serde(default)]
    pub home_id: String,
    pub boot: ProcessView,
    pub managers: Vec<ProcessView>,
    pub components: Vec<ComponentView>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_errors: Vec<ErrorView>,
    /// What an operator should know first (plain HTTP off loopback).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Memory and average CPU since start, from /proc.
fn usage(stat: &ProcStat) -> (u64, f64) {
    let ticks = process::clock_ticks_per_second() as f64;
    let uptime = process::uptime_seconds().unwrap_or(0.0);
    let age = (uptime - stat.start_ticks as f64 / ticks).max(0.001);
    let cpu = (stat.utime_ticks + stat.stime_ticks) as f64 / ticks / age * 100.0;
    (process::rss_kib(stat), (cpu * 10.0).round() / 10.0)
}

fn process_age(stat: &ProcStat) -> Option<f64> {
    let uptime = process::uptime_seconds()?;
    Some((uptime - stat.start_ticks as f64 / process::clock_ticks_per_second() as f64).max(0.0))
}

fn view_pid_file(home: &Home, name: &str, stem: &str, detailed: bool) -> ProcessView {
    let path = home.pid_file(stem);
    let status = PidFile::inspect(&path).unwrap_or(PidStatus::Absent);
    let (state, pid) = match status {
        PidStatus::Live { pid } => ("running", pid),
        PidStatus::Stale { pid } => ("stale", pid),
        PidStatus::Absent => ("stopped", None),
    };
    let stat = pid.filter(|_| state == "running").and_then(ProcStat::read);
    let (rss_kib, cpu_percent) = match (&stat, detailed) {
        (Some(stat), true) => {
            let (rss, cpu) = usage(stat);
            (Some(rss), Some(cpu))
        }
        _ => (None, None),
    };
    let heartbeat_age_secs = (state == "running" && stem != n0m1_core::home::BOOT_PID_STEM)
        .then(|| {
            PidFile::heartbeat(&path)
                .and_then(|t| t.elapsed().ok())
                .map(|d| d.as_secs_f64())
        })
        .flatten();
    ProcessView {
        name: name.to_owned(),
        state: state.to_owned(),
        pid,
        uptime_secs: stat.as_ref().and_then(process_age),
        heartbeat_age_secs,
        rss_kib,
        cpu_percent,
    }
}

pub fn collect(home: &Home, detailed: bool) -> anyhow::Result<SystemView> {
    collect_from(&crate::open_database(home)?, home, detailed)
}

/// `collect` on a connection the caller already opened (and goes on using).
pub fn collect_from(
    conn: &rusqlite::Connection,
    home: &Home,
    detailed: bool,
) -> anyhow::Result<SystemView> {
    let boot = view_pid_file(
        home,
        "boot_system",
        n0m1_core::home::BOOT_PID_STEM,
        detailed,
    );
    let config = Config::load(&home.config_path()).unwrap_or_default();
    let manager_names = known_managers(&config);
    let log_writer = view_pid_file(
        home,
        n0m1_core::home::LOGD_STEM,
        n0m1_core::home::LOGD_STEM,
        detailed,
    );
    let managers: Vec<ProcessView> = std::iter::once(log_writer)
        .chain(
            manager_names
                .iter()
                .map(|name| view_pid_file(home, name, name, detailed)),
        )
        .collect();
    let manager_alive = |name: &str| {
        let name = components::manager_name(name);
        managers
            .iter()
            .any(|m| m.name == name && m.state == "running")
    };

    let rows = components::all(conn).with_context(|| format!("reading {AUTORUN_COMPONENTS}"))?;
    let saved: HashMap<String, ComponentState> = state::load_all(conn, None)
        .with_context(|| format!("reading {COMPONENT_STATE}"))?
        .into_iter()
        .map(|s| (s.component_id.clone(), s))
        .collect();
    let now = unix_now();
    let waiting = WaitingView::read(conn, &rows, &saved);
    let mut limits = crate::limits::views(conn, home, &config, &rows);
    let mut schedules = crate::schedule::views(conn, &rows);
    let components = rows
        .into_iter()
        .map(|row| {
            let saved = saved.get(&row.component_id);
            let recorded = saved.map(|s| s.state);
            let recorded_stat = match saved.and_then(|s| Some((s.pid?, s.pid_start_ticks?))) {
                Some((pid, ticks)) => {
                    ProcStat::read(pid).filter(|s| s.is_alive() && s.start_ticks == ticks)
                }
                None => None,
            };
            // The row is behind the process (its manager could not write it yet: a locked
            // database, a full disk): the PID file its manager holds names the live one.
            let (stat, behind) = match recorded_stat {
                Some(stat) => (Some(stat), false),
                None => {
                    let live = n0m1_core::home::validate_component_id(&row.component_id)
                        .ok()
                        .and_then(|()| PidFile::inspect(&home.pid_file(&row.component_id)).ok())
                        .and_then(|status| status.live_pid())
                        .and_then(ProcStat::read)
                        .filter(|s| s.is_alive());
                    let behind = live.is_some();
                    (live, behind)
                }
            };
            let supervised = manager_alive(&row.manager_affinity);
            let problem = cannot_run(&row.component_id, &row.manager_affinity, &manager_names);
            let waiting_for = (recorded == Some(RunState::Waiting))
                .then(|| waiting.describe(&row.component_id))
                .flatten();
            let actual = match (recorded, &stat) {
                (_, None) if problem.is_some() => RunState::Failed,
                (_, Some(_)) if !supervised => RunState::Unsupervised,
                (_, Some(_)) if behind => RunState::Running,
                (Some(RunState::Running | RunState::Stopping), None) => RunState::Dead,
                (Some(state), _) => state,
                (None, Some(_)) => RunState::Running,
                (None, None) => RunState::Stopped,
            };
            let alive = stat.is_some();
            let (rss_kib, cpu_percent) = match (&stat, detailed) {
                (Some(stat), true) => {
                    let (rss, cpu) = usage(stat);
                    (Some(rss), Some(cpu))
                }
                _ => (None, None),
            };
            let own_limits = limits.remove(&row.component_id);
            let schedule = schedules.remove(&row.component_id);
            ComponentView {
                desired: row.desired_state().to_owned(),
                component_id: row.component_id,
                manager: row.manager_affinity,
                actual,
                pid: stat.as_ref().map(|s| s.pid),
                started_at: saved
                    .and_then(|s| s.started_at)
                    .filter(|_| alive && !behind),
                uptime_secs: saved
                    .and_then(|s| s.started_at)
                    .filter(|_| alive && !behind)
                    .map(|t| (now - t).max(0.0)),
                restarts: saved.map_or(0, |s| s.restarts),
                last_exit: saved
                    .and_then(|s| s.last_exit.clone())
                    .filter(|s| !s.is_empty()),
                rss_kib,
                cpu_percent,
                waiting_for,
                ready: alive && !behind && saved.is_some_and(|s| s.ready),
                status_text: saved
                    .and_then(|s| s.status_text.clone())
                    .filter(|_| alive && !behind),
                problem,
                limits: own_limits,
                schedule,
            }
        })
        .collect();
    let recent_errors = if detailed {
        lifecycle::recent(conn, 10, true)?
            .into_iter()
            .map(|e| ErrorView {
                timestamp: e.timestamp,
                component_id: e.component_id,
                event_type: e.event_type,
                message: e.message,
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut warnings = Vec::new();
    if config.web.insecure_http
        && config.web.tls.is_none()
        && let Some(served) = crate::web::served_address(home)
        && served
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|addr| !addr.ip().is_loopback())
    {
        warnings.push(format!(
            "n0m1_web serves plain HTTP on {served} (web.insecure_http): its token crosses the network in clear; set web.tls"
        ));
    }
    Ok(SystemView {
        home_id: n0m1_core::cgroup::home_id(home.root()),
        home: home.root().display().to_string(),
        boot,
        managers,
        components,
        recent_errors,
        warnings,
    })
}

pub fn duration(secs: Option<f64>) -> String {
    let Some(secs) = secs else {
        return "-".to_owned();
    };
    let secs = secs as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

pub fn run(home: &Home, detailed: bool, json: bool) -> anyhow::Result<ExitCode> {
    print(&collect(home, detailed)?, detailed, json)
}

/// The head of the components table.
pub const COMPONENT_HEADER: &str = "COMPONENT              MANAGER           DESIRED  ACTUAL       READY      PID    UPTIME RESTARTS  STATUS / LAST EXIT";

/// A component's line in the components table (`--fleet status` leads it with its host).
pub fn component_line(c: &ComponentView) -> String {
    let ready = match (c.pid, c.ready) {
        (None, _) => "-",
        (Some(_), true) => "yes",
        (Some(_), false) => "no",
    };
    // What the component says of itself while it runs; otherwise how it last ended.
    let waiting = c.waiting_for.as_ref().map(|w| format!("waiting for {w}"));
    let next = c
        .schedule
        .as_ref()
        .filter(|_| c.actual == RunState::Scheduled)
        .map(|schedule| schedule_note(schedule, c.last_exit.as_deref()));
    let note = c
        .problem
        .as_deref()
        .or(waiting.as_deref())
        .or(next.as_deref())
        .or(c.status_text.as_deref())
        .or(c.last_exit.as_deref())
        .unwrap_or("-");
    format!(
        "{:<22} {:<17} {:<8} {:<12} {:<5} {:>8} {:>9} {:>8}  {}",
        printable(&c.component_id),
        printable(&c.manager),
        printable(&c.desired),
        c.actual.as_str(),
        ready,
        opt(c.pid),
        duration(c.uptime_secs),
        c.restarts,
        printable(note)
    )
}

/// Prints a view (collected here or fetched from `n0m1_web`) and returns status's exit code.
pub fn print(view: &SystemView, detailed: bool, json: bool) -> anyhow::Result<ExitCode> {
    let code = if view.boot.state == "running" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_RUNNING)
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(code);
    }
    println!("n0m1 home: {} (cgroups n0m1/{})", view.home, view.home_id);
    for warning in &view.warnings {
        println!("WARNING: {}", printable(warning));
    }
    println!(
        "\n{:<20} {:<9} {:>8} {:>9} {:>10}",
        "PROCESS", "STATE", "PID", "UPTIME", "HEARTBEAT"
    );
    for p in std::iter::once(&view.boot).chain(view.managers.iter()) {
        let mut line = format!(
            "{:<20} {:<9} {:>8} {:>9} {:>10}",
            p.name,
            p.state,
            opt(p.pid),
            duration(p.uptime_secs),
            p.heartbeat_age_secs
                .map_or("-".to_owned(), |a| format!("{a:.0}s ago"))
        );
        if detailed {
            line.push_str(&format!(
                "  rss {} KiB, cpu {}%",
                opt(p.rss_kib),
                opt(p.cpu_percent)
            ));
        }
        println!("{line}");
    }
    println!("\n{COMPONENT_HEADER}");
    for c in &view.components {
        let mut line = component_line(c);
        if detailed && c.pid.is_some() {
            line.push_str(&format!(
                "  rss {} KiB, cpu {}%",
                opt(c.rss_kib),
                opt(c.cpu_percent)
            ));
        }
        if let Some(limits) = c.limits.as_ref().filter(|_| detailed) {
            line.push_str(&format!("  limits: {}", printable(&limits.summary)));
        }
        println!("{line}");
    }
    if detailed {
        println!("\nRecent errors:");
        if view.recent_errors.is_empty() {
            println!("  none");
        }
        for e in &view.recent_errors {
            println!(
                "  {} {} {} {}",
                printable(&e.timestamp),
                printable(&e.component_id),
                printable(&e.event_type),
                printable(e.message.as_deref().unwrap_or(""))
            );
        }
    }
    Ok(code)
}

/// What the table says of a scheduled component between runs.
fn schedule_note(schedule: &crate::schedule::ScheduleView, last_exit: Option<&str>) -> String {
    let next = match (&schedule.problem, &schedule.next_run_text) {
        (Some(problem), _) => return format!("schedule not followed: {problem}"),
        (None, Some(next)) => format!("next run {next}"),
        (None, None) => "no next run".to_owned(),
    };
    format!("{next}; last run: {}", last_exit.unwrap_or("none yet"))
}

/// `status ID`: one component as `systemctl status` shows a unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentDetail {
    pub component: ComponentView,
    /// Whether its manager runs (else nothing acts on the row).
    pub manager_running: bool,
    pub log: Vec<crate::logs::LogFileTail>,
}

/// Lines of log shown by `status ID`.
pub const DETAIL_LOG_LINES: usize = 10;

pub fn detail(home: &Home, component_id: &str) -> anyhow::Result<ComponentDetail> {
    let conn = crate::open_database(home)?;
    let view = collect_from(&conn, home, true)?;
    let Some(component) = view
        .components
        .into_iter()
        .find(|c| c.component_id == component_id)
    else {
        return Err(crate::components::unknown(&conn, component_id));
    };
    let manager = components::manager_name(&component.manager);
    let manager_running = view
        .managers
        .iter()
        .any(|m| m.name == manager && m.state == "running");
    let log = crate::logs::tail(home, component_id, DETAIL_LOG_LINES).unwrap_or_default();
    Ok(ComponentDetail {
        component,
        manager_running,
        log,
    })
}

pub fn print_detail(detail: &ComponentDetail, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(detail)?);
        return Ok(ExitCode::SUCCESS);
    }
    let c = &detail.component;
    let mark = match c.actual {
        RunState::Running => "●",
        RunState::Failed | RunState::Dead => "×",
        _ => "○",
    };
    println!(
        "{mark} {} (manager {})",
        printable(&c.component_id),
        printable(&c.manager)
    );
    println!("     Desired: {}", printable(&c.desired));
    let mut actual = c.actual.as_str().to_owned();
    if let Some(uptime) = c.uptime_secs {
        actual.push_str(&format!(" for {}", duration(Some(uptime))));
    }
    if c.pid.is_some() {
        actual.push_str(if c.ready { ", ready" } else { ", not ready" });
    }
    println!("      Actual: {actual}");
    if !detail.manager_running {
        println!("     Manager: not running: nothing acts on this row until it is");
    }
    println!("         PID: {}", opt(c.pid));
    if let (Some(rss), Some(cpu)) = (c.rss_kib, c.cpu_percent) {
        println!("      Memory: {rss} KiB (cpu {cpu}% since start)");
    }
    println!("    Restarts: {}", c.restarts);
    println!(
        "   Last exit: {}",
        printable(c.last_exit.as_deref().unwrap_or("-"))
    );
    if let Some(text) = &c.status_text {
        println!("      Status: {}", printable(text));
    }
    if let Some(waiting) = &c.waiting_for {
        println!("  Waits for: {}", printable(waiting));
    }
    if let Some(problem) = &c.problem {
        println!("     Problem: {}", printable(problem));
    }
    if let Some(schedule) = &c.schedule {
        println!(
            "    Schedule: {} (overlap {}, missed {})",
            printable(&schedule.spec),
            schedule.overlap,
            schedule.missed
        );
        match &schedule.problem {
            Some(problem) => println!("              not followed: {}", printable(problem)),
            None => println!(
                "    Next run: {}",
                schedule.next_run_text.as_deref().unwrap_or("never")
            ),
        }
    }
    if let Some(limits) = &c.limits {
        println!("      Limits: {}", printable(&limits.summary));
        let mut usage = Vec::new();
        if let Some(bytes) = limits.memory_bytes {
            let mut memory = format!("memory {}", n0m1_core::limits::format_size(bytes));
            if let Some(peak) = limits.memory_peak_bytes {
                memory.push_str(&format!(" (peak {})", n0m1_core::limits::format_size(peak)));
            }
            usage.push(memory);
        }
        if let Some(cpu) = limits.cpu_seconds {
            usage.push(format!("cpu {cpu:.1} s"));
        }
        if let Some(tasks) = limits.tasks {
            usage.push(format!("{tasks} processes"));
        }
        if !usage.is_empty() {
            println!("       Usage: {}", usage.join(", "));
        }
        if let Some(cgroup) = &limits.cgroup {
            println!("      Cgroup: {}", printable(cgroup));
        }
    }
    for file in &detail.log {
        println!("\n==> {} <==", printable(&file.path));
        for line in &file.lines {
            println!("{}", printable(line));
        }
    }
    Ok(match c.actual {
        // Between runs a scheduled component is where it should be.
        RunState::Running | RunState::Scheduled => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_NOT_RUNNING),
    })
}
