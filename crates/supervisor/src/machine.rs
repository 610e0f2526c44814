//! The supervision policy as a pure state machine, one per component:
//! `(state, input) -> (state, effects)`.
//!
//! Nothing here makes a syscall, reads a clock or touches SQL: the time comes in the
//! `Context`, what happened to processes comes in as `Input`, and what should happen goes out
//! as `Effect`s, which the manager's executor performs in order (spawning first, so a restart
//! never waits for anything it writes). Every rule of the README's supervision policy is a
//! unit test of this file (`machine/tests.rs`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use n0m1_core::components::{ComponentRow, LaunchKey};
use n0m1_core::config::SupervisorPolicy;
use n0m1_core::home::validate_supervised_id;
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::limits::Limits;
use n0m1_core::notify::Notice;
use n0m1_core::state::{ComponentState, Request, RunState};

use crate::reaper::ExitCause;

mod health;
mod schedule;
mod waiting;
pub use health::Checks;
use n0m1_core::health::HealthCheck;
pub use schedule::Timing;
pub use waiting::Gate;

/// How long after SIGKILL a process may take to vanish before the stop is called failed.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// While a stopped leader's group still has members, how often to look again.
pub const GROUP_POLL: Duration = Duration::from_millis(20);

/// What the machine may know of the world besides its input.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub now: Instant,
    /// The same moment as Unix time, for `component_state.started_at`.
    pub unix_now: f64,
    pub policy: &'a SupervisorPolicy,
    /// The manager is stopping: nothing starts or restarts any more.
    pub shutting_down: bool,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The component's row, as the latest pass over `autorun_components` read it.
    Row {
        row: ComponentRow,
        /// An operator's pending request (`n0m1ctl enable` or `restart`).
        request: Option<Request>,
    },
    /// The row was deleted or moved to another manager.
    RowGone,
    /// The executor performed `Effect::Spawn`.
    Spawned {
        pid: i32,
        start_ticks: u64,
        script_path: String,
    },
    /// The row cannot be run as written (unknown script, bad arguments): no retry helps.
    LaunchFailed { reason: String },
    /// The program could not be executed (fork/exec error): counted as a quick death.
    SpawnFailed { reason: String },
    /// A process of this component survived its manager's death and was identified.
    Adopted {
        pid: i32,
        start_ticks: u64,
        started_unix: f64,
        age: Duration,
        restarts: u32,
        last_exit: Option<String>,
        /// What its previous manager knew of its readiness (`component_readiness`).
        ready: bool,
        status_text: Option<String>,
    },
    /// Datagrams on the notification socket from the component's process group (sd_notify).
    Notified(Vec<Notice>),
    /// The component's `component_health` settings, as the latest pass read them.
    Health(HealthCheck),
    /// What its dependencies allow, as the latest pass read `component_dependencies` and the
    /// states of what it depends on.
    Dependencies(Gate),
    /// The executor started the probe asked for by `Effect::RunProbe`.
    ProbeStarted { pid: i32 },
    /// A probe run ended: `ok` for exit 0; `how` describes the end. `pid` is `None` when the
    /// probe could not even be started.
    ProbeDone {
        pid: Option<i32>,
        ok: bool,
        how: String,
    },
    /// The process recorded for this component by a previous life of its manager is gone:
    /// it died while no manager watched it.
    Vanished { pid: i32, restarts: u32 },
    /// The component's leader exited.
    Exited { pid: i32, cause: ExitCause },
    /// After its leader exited, the stopping component's group and escaped descendants are
    /// gone too.
    TreeGone,
    /// The component's `component_limits` row (memory, CPU, tasks, account), as the latest
    /// pass read it (with config.json's model default applied).
    Limits(Limits),
    /// The component's own memory limit killed a process of it (its cgroup's OOM counter
    /// rose): said before the leader's `Exited`, which is then recorded as `OOM_KILLED`.
    OutOfMemory { pid: i32, detail: String },
    /// The component's `component_schedules` row, as the latest pass read it.
    Timing(Timing),
    /// Time passed (backoff over, stop deadline reached, a scheduled time come).
    Tick,
    /// The manager is stopping.
    Shutdown,
}

/// What to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Run the health probe (an executable in `hooks/`); answer with `ProbeStarted` or
    /// `ProbeDone`.
    RunProbe {
        program: std::path::PathBuf,
        /// The pid of the process it checks (`N0M1_CHECKED_PID`).
        checked_pid: i32,
    },
    /// SIGKILL a probe that overran its timeout (its exit then comes as `ProbeDone`).
    KillProbe { pid: i32 },
    /// Resolve the script and arguments and spawn them; answer with `Spawned`,
    /// `LaunchFailed` or `SpawnFailed`.
    Spawn {
        /// What the row says to run.
        launch: LaunchKey,
        /// The `WATCHDOG_USEC` period the process is started with, if it has a watchdog.
        watchdog: Option<Duration>,
        /// Its limits and account, applied before its program runs.
        limits: Limits,
    },
    /// Apply changed limits to the running process's cgroup (no restart).
    ApplyLimits(Limits),
    /// SIGTERM to the process group and to descendants that left it.
    Terminate { pid: i32 },
    /// SIGKILL to the process group and to descendants that left it.
    Kill { pid: i32 },
    /// Give up the component's PID file (its process is gone).
    ReleasePidFile,
    /// SIGKILL the component's orphans: processes with its id in their environment that
    /// were re-parented to the manager (a subreaper) after the process that forked them died.
    KillOrphans,
    /// Queue a lifecycle row (the executor adds the manager's name).
    Record(LifecycleRecord),
    /// Queue this `component_state` row: the component as it is after the input (the
    /// executor adds the manager's name).
    SaveState(ComponentState),
    /// Drop the component: its row is gone and so is its process.
    Forget,
}

impl Effect {
    /// A `SaveState` whose row `Component::handle` fills in once the input is handled.
    fn save() -> Effect {
        Effect::SaveState(ComponentState {
            component_id: String::new(),
            manager: String::new(),
            state: RunState::Stopped,
            pid: None,
            pid_start_ticks: None,
            started_at: None,
            restarts: 0,
            last_exit: None,
            request: None,
            ready: false,
            status_text: None,
        })
    }
}

/// A live process of a component.
#[derive(Debug, Clone, PartialEq)]
pub struct Proc {
    pub pid: i32,
    pub start_ticks: u64,
    pub started: Instant,
    /// Unix time of the start, for `component_state` and status's uptime.
    pub started_unix: f64,
    /// Adopted processes are not our children: their exit comes through a pidfd.
    pub adopted: bool,
    launch_key: LaunchKey,
    /// It said `READY=1`.
    pub ready: bool,
    /// Its last `STATUS=` text.
    pub status_text: Option<String>,
    /// Watchdog and probe state.
    pub checks: Checks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    /// Stay down.
    Stop,
    /// Start again (the row changed while running).
    Restart,
    /// The row is gone: drop the component.
    Forget,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Idle,
    /// `Effect::Spawn` is out; the executor answers within the same turn.
    Starting,
    Running(Proc),
    Stopping {
        proc: Proc,
        deadline: Instant,
        killed: bool,
        then: AfterStop,
        /// Set once the leader has exited; the stop completes when its tree is gone too.
        leader_exit: Option<ExitCause>,
    },
    Backoff {
        until: Instant,
    },
    /// Desired running, held back by its dependencies since `since`; FAILED at `give_up`
    /// unless they are met first.
    Waiting {
        since: Instant,
        give_up: Instant,
    },
    Failed,
    Completed,
    /// A scheduled one-shot between runs (`schedule.rs`).
    Scheduled,
}

/// One supervised component.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    row: ComponentRow,
    phase: Phase,
    restarts: u32,
    quick_deaths: u32,
    last_exit: Option<String>,
    /// When its recent runs ended, for the crash-loop rule (oldest first, within the window).
    recent_exits: VecDeque<Instant>,
    /// The row as it was when the component failed or completed: any later edit of it (a
    /// fixed argument, or any UPDATE, which moves `modified_timestamp`) gives it another go.
    settled_row: Option<ComponentRow>,
    /// Its `component_health` row, validated (none: nothing is checked).
    health: HealthCheck,
    gate: Gate,
    /// Its `component_limits` row.
    limits: Limits,
    /// Why the running process's last kill was its memory limit (`Input::OutOfMemory`).
    out_of_memory: Option<String>,
    /// The cycle last reported, so it is said once.
    reported_cycle: Option<String>,
    /// Its schedule's clock, if it is a scheduled one-shot.
    timer: Option<schedule::Timer>,
}

impl Component {
    pub fn new(row: ComponentRow) -> Component {
        Component {
            row,
            phase: Phase::Idle,
            restarts: 0,
            quick_deaths: 0,
            last_exit: None,
            recent_exits: VecDeque::new(),
            settled_row: None,
            health: HealthCheck::default(),
            gate: Gate::Open,
            limits: Limits::default(),
            out_of_memory: None,
            reported_cycle: None,
            timer: None,
        }
    }

    pub fn row(&self) -> &ComponentRow {
        &self.row
    }
    pub fn health(&self) -> &HealthCheck {
        &self.health
    }
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    pub fn gate(&self) -> &Gate {
        &self.gate
    }
    pub fn restarts(&self) -> u32 {
        self.restarts
    }
    pub fn last_exit(&self) -> Option<&str> {
        self.last_exit.as_deref()
    }

    /// The state `component_state` and `status` show.
    pub fn run_state(&self) -> RunState {
        match self.phase {
            Phase::Idle => RunState::Stopped,
            Phase::Waiting { .. } => RunState::Waiting,
            Phase::Starting | Phase::Running(_) => RunState::Running,
            Phase::Stopping { .. } => RunState::Stopping,
            Phase::Backoff { .. } => RunState::Backoff,
            Phase::Failed => RunState::Failed,
            Phase::Completed => RunState::Completed,
            Phase::Scheduled => RunState::Scheduled,
        }
    }

    /// The running process said `READY=1`.
    pub fn ready(&self) -> bool {
        matches!(&self.phase, Phase::Running(proc) if proc.ready)
    }

    /// The running process's last `STATUS=` text.
    pub fn status_text(&self) -> Option<&str> {
        match &self.phase {
            Phase::Running(proc) => proc.status_text.as_deref(),
            _ => None,
        }
    }

    /// `READY=1` is recorded once per process; a new `STATUS=` text is saved (the writer
    /// keeps only the newest state row per component, so a chatty sender costs one row per
    /// batch). Only a running process is heard: a stopping one has nothing left to announce.
    fn on_notified(&mut self, notices: Vec<Notice>, cx: &Context<'_>, out: &mut Vec<Effect>) {
        let Phase::Running(proc) = &mut self.phase else {
            return;
        };
        let mut changed = false;
        let mut became_ready = false;
        for notice in notices {
            match notice {
                Notice::Ready if !proc.ready => {
                    proc.ready = true;
                    became_ready = true;
                    changed = true;
                }
                Notice::Status(text) if proc.status_text.as_deref() != Some(text.as_str()) => {
                    proc.status_text = Some(text);
                    changed = true;
                }
                Notice::Watchdog => proc.checks.ping(cx.now),
                _ => {}
            }
        }
        if became_ready {
            let pid = proc.pid;
            let message = match &proc.status_text {
                Some(text) => format!("ready: {text}"),
                None => "ready".to_owned(),
            };
            out.push(Effect::Record(
                self.record(LifecycleEvent::Ready).pid(pid).message(message),
            ));
        }
        if changed {
            out.push(Effect::save());
        }
    }

    /// The live process, if any.
    pub fn proc(&self) -> Option<&Proc> {
        match &self.phase {
            Phase::Running(proc) | Phase::Stopping { proc, .. } => Some(proc),
            _ => None,
        }
    }

    /// When the machine next needs a `Tick`.
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        match &self.phase {
            Phase::Running(proc) => {
                let health = proc.checks.deadline(&self.health);
                match (health, self.timer_deadline()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::Scheduled => self.timer_deadline(),
            Phase::Waiting { give_up, .. } => self.waiting_deadline(*give_up),
            Phase::Backoff { until } => Some(*until),
            Phase::Stopping {
                deadline,
                leader_exit: Some(_),
                ..
            } => Some((*deadline).min(now + GROUP_POLL)),
            Phase::Stopping { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// The leader's pid while a stop waits for the rest of its tree to go (`TreeGone`).
    pub fn awaiting_tree(&self) -> Option<i32> {
        match &self.phase {
            Phase::Stopping {
                proc,
                leader_exit: Some(_),
                ..
            } => Some(proc.pid),
            _ => None,
        }
    }

    /// The transition function.
    pub fn handle(&mut self, input: Input, cx: &Context<'_>) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Row { row, request } => self.on_row(row, request, cx, &mut out),
            Input::RowGone => match &mut self.phase {
                Phase::Running(_) => self.begin_stop(
                    AfterStop::Forget,
                    "row removed or moved to another manager",
                    cx,
                    &mut out,
                ),
                Phase::Stopping { then, .. } => *then = AfterStop::Forget,
                _ => out.push(Effect::Forget),
            },
            Input::Spawned {
                pid,
                start_ticks,
                script_path,
            } => self.on_spawned(pid, start_ticks, script_path, cx, &mut out),
            Input::LaunchFailed { reason } => self.settle_failed(
                LifecycleEvent::StartFailed,
                format!("cannot start: {reason}"),
                &mut out,
            ),
            Input::SpawnFailed { reason } => {
                out.push(Effect::Record(
                    self.record(LifecycleEvent::StartFailed)
                        .message(reason.clone()),
                ));
                self.phase = Phase::Idle;
                self.quick_death(&reason, cx, &mut out);
            }
            Input::Adopted {
                pid,
                start_ticks,
                started_unix,
                age,
                restarts,
                last_exit,
                ready,
                status_text,
            } => {
                self.restarts = restarts;
                self.last_exit = last_exit;
                self.phase = Phase::Running(Proc {
                    pid,
                    start_ticks,
                    started: cx.now.checked_sub(age).unwrap_or(cx.now),
                    started_unix,
                    adopted: true,
                    launch_key: self.row.launch_key(),
                    ready,
                    status_text,
                    checks: Checks::new(cx.now, &self.health),
                });
                out.push(Effect::Record(
                    LifecycleRecord::new(&self.row.component_id, LifecycleEvent::Adopted)
                        .pid(pid)
                        .message(format!(
                            "still running after a manager restart; watching pid {pid}"
                        )),
                ));
                out.push(Effect::save());
            }
            Input::Notified(notices) => self.on_notified(notices, cx, &mut out),
            Input::Health(health) => self.on_health(health, cx),
            Input::Limits(limits) => self.on_limits(limits, &mut out),
            Input::OutOfMemory { pid, detail } => {
                if self.proc().is_some_and(|proc| proc.pid == pid) {
                    self.out_of_memory = Some(detail);
                }
            }
            Input::Dependencies(gate) => self.on_gate(gate, cx, &mut out),
            Input::Timing(timing) => self.on_timing(timing, cx, &mut out),
            Input::ProbeStarted { pid } => self.on_probe_started(pid),
            Input::ProbeDone { pid, ok, how } => self.on_probe_done(pid, ok, how, cx, &mut out),
            Input::Vanished { pid, restarts } if self.phase == Phase::Idle => {
                // Its history carries over; the row decides whether it runs again.
                self.restarts = restarts + 1;
                let message = "died while its manager was down (exit status unknown)";
                self.last_exit = Some(message.to_owned());
                out.push(Effect::Record(
                    self.record(LifecycleEvent::Crashed)
                        .pid(pid)
                        .message(message),
                ));
                out.push(Effect::save());
            }
            Input::Vanished { .. } => {}
            Input::Exited { pid, cause } => self.on_exit(pid, cause, cx, &mut out),
            Input::TreeGone => self.finish_stop(cx, &mut out),
            Input::Tick => self.on_tick(cx, &mut out),
            Input::Shutdown => match &mut self.phase {
                Phase::Running(_) => {
                    self.begin_stop(AfterStop::Stop, "manager shutting down", cx, &mut out)
                }
                Phase::Stopping { then, .. } => *then = AfterStop::Stop,
                Phase::Backoff { .. } | Phase::Waiting { .. } | Phase::Scheduled => {
                    self.phase = Phase::Idle;
                    out.push(Effect::save());
                }
                _ => {}
            },
        }
        // A saved row is the state after the whole input, wherever in the batch it is queued.
        let mut snapshot = None;
        for effect in &mut out {
            if let Effect::SaveState(row) = effect {
                *row = snapshot.get_or_insert_with(|| self.snapshot()).clone();
            }
        }
        out
    }

    /// The component's `component_state` row (the manager's name left to the executor).
    pub fn snapshot(&self) -> ComponentState {
        let proc = self.proc();
        ComponentState {
            component_id: self.row.component_id.clone(),
            manager: String::new(),
            state: self.run_state(),
            pid: proc.map(|p| p.pid),
            pid_start_ticks: proc.map(|p| p.start_ticks),
            started_at: proc.map(|p| p.started_unix),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            request: None,
            ready: self.ready(),
            status_text: self.status_text().map(str::to_owned),
        }
    }

    /// New limits apply to a running process at once; an account change needs a new
    /// process, so the row's restart rule takes it (it is part of what a spawn carries).
    fn on_limits(&mut self, limits: Limits, out: &mut Vec<Effect>) {
        if self.limits == limits {
            return;
        }
        let resources_changed = {
            let mut old = self.limits.clone();
            old.user.clone_from(&limits.user);
            old.group.clone_from(&limits.group);
            old != limits
        };
        self.limits = limits;
        if resources_changed && matches!(self.phase, Phase::Running(_)) {
            out.push(Effect::ApplyLimits(self.limits.clone()));
        }
    }

    fn record(&self, event: LifecycleEvent) -> LifecycleRecord {
        LifecycleRecord::new(&self.row.component_id, event)
    }

    /// Moves the component toward its row's desired state.
    fn on_row(
        &mut self,
        row: ComponentRow,
        request: Option<Request>,
        cx: &Context<'_>,
        out: &mut Vec<Effect>,
    ) {
        if let Err(error) = validate_supervised_id(&row.component_id) {
            // Refused once, when first seen; the row stays refused until it is deleted.
            if self.phase == Phase::Idle && self.settled_row.is_none() {
                self.row = row;
                self.settle_failed(LifecycleEvent::StartFailed, error.to_string(), out);
            }
            return;
        }
        let restart = request == Some(Request::Restart);
        let reset = request.is_some()
            || self
                .settled_row
                .as_ref()
                .is_some_and(|settled| *settled != row);
        self.row = row;
        let active = self.row.desired_active;
        let scheduled = self.timer.is_some() && self.row.is_oneshot();
        match (&mut self.phase, active) {
            (Phase::Idle, true) if scheduled => {
                self.quick_deaths = 0;
                self.wait_for_next(cx, out);
            }
            (Phase::Idle, true) => {
                self.quick_deaths = 0;
                self.start(cx, out);
            }
            (Phase::Failed | Phase::Completed, true) if reset => {
                self.quick_deaths = 0;
                self.recent_exits.clear();
                self.settled_row = None;
                let then = if scheduled {
                    "reset by an operator; waiting for its next time"
                } else {
                    "reset by an operator; starting again"
                };
                out.push(Effect::Record(
                    self.record(LifecycleEvent::Reset).message(then),
                ));
                if scheduled {
                    self.wait_for_next(cx, out);
                } else {
                    self.start(cx, out);
                }
            }
            (Phase::Scheduled, true) if restart => {
                self.run_scheduled("run now by an operator (`n0m1ctl restart`)", cx, out)
            }
            (Phase::Running(_), true) if restart => self.begin_stop(
                AfterStop::Restart,
                "restart requested by an operator",
                cx,
                out,
            ),
            (Phase::Backoff { .. }, true) if restart => {
                self.quick_deaths = 0;
                out.push(Effect::Record(
                    self.record(LifecycleEvent::Reset)
                        .message("restart requested by an operator; starting now"),
                ));
                self.start(cx, out);
            }
            (Phase::Running(proc), true) if proc.launch_key != self.row.launch_key() => self
                .begin_stop(
                    AfterStop::Restart,
                    "its row changed; restarting with the new settings",
                    cx,
                    out,
                ),
            (Phase::Stopping { then, .. }, true) if *then == AfterStop::Stop => {
                *then = AfterStop::Restart
            }
            (Phase::Running(_), false) => {
                self.begin_stop(AfterStop::Stop, "desired state is inactive", cx, out)
            }
            (Phase::Stopping { then, .. }, false) if *then == AfterStop::Restart => {
                *then = AfterStop::Stop
            }
            (
                Phase::Backoff { .. }
                | Phase::Failed
                | Phase::Completed
                | Phase::Waiting { .. }
                | Phase::Scheduled,
                false,
            ) => {
                self.phase = Phase::Idle;
                self.settled_row = None;
                out.push(Effect::save());
            }
            _ => {}
        }
    }

    fn spawn(&mut self, out: &mut Vec<Effect>) {
        self.phase = Phase::Starting;
        self.out_of_memory = None;
        out.push(Effect::Spawn {
            launch: self.row.launch_key(),
            watchdog: self.health.watchdog,
            limits: self.limits.clone(),
        });
    }

    fn on_spawned(
        &mut self,
        pid: i32,
        start_ticks: u64,
        script_path: String,
        cx: &Context<'_>,
        out: &mut Vec<Effect>,
    ) {
        self.phase = Phase::Running(Proc {
            pid,
            start_ticks,
            started: cx.now,
            started_unix: cx.unix_now,
            adopted: false,
            launch_key: self.row.launch_key(),
            ready: false,
            status_text: None,
            checks: Checks::new(cx.now, &self.health),
        });
        out.push(Effect::Record(
            self.record(LifecycleEvent::StartAttempt)
                .pid(pid)
                .run_type(self.row.run_type.clone())
                .script_path(script_path)
                .message(format!("spawned as pid {pid} (process group leader)")),
        ));
        out.push(Effect::save());
    }

    fn begin_stop(
        &mut self,
        then: AfterStop,
        reason: &str,
        cx: &Context<'_>,
        out: &mut Vec<Effect>,
    ) {
        let Phase::Running(proc) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        out.push(Effect::Terminate { pid: proc.pid });
        out.push(Effect::Record(
            self.record(LifecycleEvent::StopRequested)
                .pid(proc.pid)
                .message(format!(
                    "{reason}; SIGTERM sent to process group {}",
                    proc.pid
                )),
        ));
        self.phase = Phase::Stopping {
            proc,
            deadline: cx.now + cx.policy.stop_timeout.duration(),
            killed: false,
            then,
            leader_exit: None,
        };
        out.push(Effect::save());
    }
}

mod exits;

#[cfg(test)]
mod tests;
