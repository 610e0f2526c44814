//! Health checks of a running component: the watchdog (`WATCHDOG=1` at least every
//! `watchdog`) and the probe (an executable run every `interval`, killed after `timeout`;
//! `failures` failed runs in a row are a miss). A miss is an `UNHEALTHY` event, then SIGKILL
//! of the group: the exit that follows is handled like any crash, so the normal restart
//! policy (immediate restart, backoff, FAILED) applies.

use std::time::Instant;

use n0m1_core::health::HealthCheck;
use n0m1_core::lifecycle::LifecycleEvent;

use super::{Component, Context, Effect, Phase};

/// The checks' state for one process.
#[derive(Debug, Clone, PartialEq)]
pub struct Checks {
    /// The last `WATCHDOG=1`, or the start.
    last_ping: Instant,
    next_probe: Option<Instant>,
    probe: Option<RunningProbe>,
    /// Failed probe runs in a row.
    failures: u32,
    /// A miss was acted on: the process is being killed, nothing more is checked.
    unhealthy: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct RunningProbe {
    /// Known once the executor answers `RunProbe`.
    pid: Option<i32>,
    deadline: Instant,
    timed_out: bool,
}

impl Checks {
    pub fn new(now: Instant, health: &HealthCheck) -> Checks {
        Checks {
            last_ping: now,
            next_probe: health.probe.as_ref().map(|p| now + p.interval),
            probe: None,
            failures: 0,
            unhealthy: false,
        }
    }

    /// When the checks next need a `Tick`.
    pub fn deadline(&self, health: &HealthCheck) -> Option<Instant> {
        if self.unhealthy {
            return None;
        }
        let watchdog = health.watchdog.map(|period| self.last_ping + period);
        let probe = match &self.probe {
            Some(running) if !running.timed_out => Some(running.deadline),
            Some(_) => None,
            None => self.next_probe,
        };
        [watchdog, probe].into_iter().flatten().min()
    }

    pub fn ping(&mut self, now: Instant) {
        self.last_ping = now;
    }

    /// The pid of a probe still running, to kill when its component goes.
    pub fn probe_pid(&self) -> Option<i32> {
        self.probe.as_ref().and_then(|p| p.pid)
    }
}

impl Component {
    /// New health settings apply to the running process from now, without a restart.
    pub(super) fn on_health(&mut self, health: HealthCheck, cx: &Context<'_>) {
        if self.health == health {
            return;
        }
        self.health = health;
        if let Phase::Running(proc) = &mut self.phase {
            let probe = proc.checks.probe.take();
            proc.checks = Checks::new(cx.now, &self.health);
            // A probe already out is still collected (and its result ignored).
            proc.checks.probe = probe;
        }
    }

    pub(super) fn health_tick(&mut self, cx: &Context<'_>, out: &mut Vec<Effect>) {
        let Phase::Running(proc) = &mut self.phase else {
            return;
        };
        let checked_pid = proc.pid;
        let checks = &mut proc.checks;
        if checks.unhealthy {
            return;
        }
        if let Some(period) = self.health.watchdog
            && cx.now >= checks.last_ping + period
        {
            let silent = cx.now.saturating_duration_since(checks.last_ping);
            let reason = format!(
                "no WATCHDOG=1 for {:.1} s (watchdog_s = {})",
                silent.as_secs_f64(),
                period.as_secs_f64()
            );
            self.unhealthy(reason, out);
            return;
        }
        let Some(probe) = &self.health.probe else {
            return;
        };
        match &mut checks.probe {
            Some(running) if !running.timed_out && cx.now >= running.deadline => {
                running.timed_out = true;
                if let Some(pid) = running.pid {
                    out.push(Effect::KillProbe { pid });
                }
            }
            Some(_) => {}
            None if checks.next_probe.is_some_and(|at| cx.now >= at) => {
                checks.probe = Some(RunningProbe {
                    pid: None,
                    deadline: cx.now + probe.timeout,
                    timed_out: false,
                });
                checks.next_probe = None;
                out.push(Effect::RunProbe {
                    program: probe.program.clone(),
                    checked_pid,
                });
            }
            None => {}
        }
    }

    pub(super) fn on_probe_started(&mut self, pid: i32) {
        if let Phase::Running(proc) = &mut self.phase
            && let Some(running) = &mut proc.checks.probe
        {
            running.pid = Some(pid);
        }
    }

    /// A probe run ended (`ok`: exit 0 within the timeout); `how` says how it ended.
    pub(super) fn on_probe_done(
        &mut self,
        pid: Option<i32>,
        ok: bool,
        how: String,
        cx: &Context<'_>,
        out: &mut Vec<Effect>,
    ) {
        let Phase::Running(proc) = &mut self.phase else {
            return;
        };
        let checks = &mut proc.checks;
        let Some(running) = &checks.probe else {
            return;
        };
        if pid.is_some() && running.pid != pid {
            return;
        }
        let timed_out = running.timed_out;
        checks.probe = None;
        let Some(probe) = &self.health.probe else {
            return;
        };
        checks.next_probe = Some(cx.now + probe.interval);
        if ok && !timed_out {
            checks.failures = 0;
            return;
        }
        checks.failures += 1;
        if checks.failures < probe.failures || checks.unhealthy {
            return;
        }
        let how = if timed_out {
            format!("timed out after {} s", probe.timeout.as_secs_f64())
        } else {
            how
        };
        let reason = format!(
            "probe {} failed {} times in a row (last: {how})",
            probe.program.display(),
            checks.failures
        );
        self.unhealthy(reason, out);
    }

    fn unhealthy(&mut self, reason: String, out: &mut Vec<Effect>) {
        let Phase::Running(proc) = &mut self.phase else {
            return;
        };
        proc.checks.unhealthy = true;
        let pid = proc.pid;
        let probe = proc.checks.probe_pid();
        out.push(Effect::Record(
            self.record(LifecycleEvent::Unhealthy)
                .pid(pid)
                .message(format!("{reason}; killing its group so it is restarted")),
        ));
        out.push(Effect::Kill { pid });
        if let Some(pid) = probe {
            out.push(Effect::KillProbe { pid });
        }
    }
}
