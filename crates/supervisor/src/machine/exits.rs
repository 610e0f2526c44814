//! The rules for what ends: a leader's exit (restart, backoff, FAILED, ONESHOT), a stop's
//! completion, and the timers (backoff over, stop timeout to SIGKILL, SIGKILL that fails).

use super::{AfterStop, Component, Context, Effect, KILL_GRACE, Phase};
use crate::reaper::ExitCause;
use n0m1_core::lifecycle::LifecycleEvent;

impl Component {
    /// The leader exited.
    pub(super) fn on_exit(
        &mut self,
        pid: i32,
        cause: ExitCause,
        cx: &Context<'_>,
        out: &mut Vec<Effect>,
    ) {
        if self.proc().is_none_or(|proc| proc.pid != pid) {
            return;
        }
        // A probe still out would outlive what it checks (one signal, nothing slower).
        if let Some(probe) = self.proc().and_then(|proc| proc.checks.probe_pid()) {
            out.push(Effect::KillProbe { pid: probe });
        }
        self.last_exit = Some(cause.describe());
        if let Phase::Stopping { leader_exit, .. } = &mut self.phase {
            *leader_exit = Some(cause);
            return;
        }
        let Phase::Running(proc) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        // Whatever the leader left in its group goes with it, so the replacement never runs
        // beside a half of its predecessor.
        out.push(Effect::Kill { pid });
        out.push(Effect::ReleasePidFile);
        let uptime = cx.now.saturating_duration_since(proc.started);
        let exit_record = match self.out_of_memory.take() {
            // Killed by its own memory limit: said as such, then handled as any crash.
            Some(detail) => self
                .record(LifecycleEvent::OomKilled)
                .pid(pid)
                .message(format!(
                    "{detail}; {} after {:.3} s",
                    cause.describe(),
                    uptime.as_secs_f64()
                )),
            None => {
                let event = if cause.is_clean() {
                    LifecycleEvent::Exited
                } else {
                    LifecycleEvent::Crashed
                };
                self.record(event).pid(pid).message(format!(
                    "{} after {:.3} s",
                    cause.describe(),
                    uptime.as_secs_f64()
                ))
            }
        };
        if self.scheduled_exit(pid, &cause, exit_record.clone(), cx, out) {
            out.push(Effect::KillOrphans);
            return;
        }
        if self.row.is_oneshot() && cause.is_clean() {
            self.phase = Phase::Completed;
            self.settled_row = Some(self.row.clone());
            out.push(Effect::Record(
                self.record(LifecycleEvent::Stopped)
                    .pid(pid)
                    .message("one-shot run completed"),
            ));
            out.push(Effect::save());
        } else if cx.shutting_down || !self.row.desired_active {
            out.push(Effect::Record(exit_record));
            out.push(Effect::save());
        } else if uptime >= cx.policy.min_uptime.duration() && !self.crash_looping(cx) {
            self.quick_deaths = 0;
            self.restarts += 1;
            // Spawn first: the record is only queued after the replacement runs.
            self.spawn(out);
            out.push(Effect::Record(exit_record));
        } else {
            out.push(Effect::Record(exit_record));
            let what = if uptime >= cx.policy.min_uptime.duration() {
                format!(
                    "{}; {} exits within {} s",
                    cause.describe(),
                    self.recent_exits.len(),
                    cx.policy.crash_window.0
                )
            } else {
                cause.describe()
            };
            self.quick_death(&what, cx, out);
        }
        // Descendants that left the group and were orphaned to the manager go too; looked for
        // after the replacement's spawn, so the search never delays a restart.
        out.push(Effect::KillOrphans);
    }

    /// Counts this exit; true when `max_crashes_in_window` exits fell within `crash_window`:
    /// a component that always dies just after `min_uptime` is a crash loop too.
    fn crash_looping(&mut self, cx: &Context<'_>) -> bool {
        let window = cx.policy.crash_window.duration();
        self.recent_exits.push_back(cx.now);
        while self
            .recent_exits
            .front()
            .is_some_and(|t| cx.now.saturating_duration_since(*t) > window)
        {
            self.recent_exits.pop_front();
        }
        self.recent_exits.len() >= cx.policy.max_crashes_in_window as usize
    }

    /// A death before `min_uptime`: back off, or give up after too many in a row.
    pub(super) fn quick_death(&mut self, what: &str, cx: &Context<'_>, out: &mut Vec<Effect>) {
        let policy = cx.policy;
        self.quick_deaths += 1;
        if self.quick_deaths >= policy.max_quick_deaths {
            let message = format!(
                "{} quick deaths in a row (each within {} s of starting, or beyond {} exits \
                 within {} s; last: {what}); staying down until `n0m1ctl enable {}`",
                self.quick_deaths,
                policy.min_uptime.0,
                policy.max_crashes_in_window,
                policy.crash_window.0,
                self.row.component_id
            );
            self.settle_failed(LifecycleEvent::Failed, message, out);
            return;
        }
        let delay = policy.backoff(self.quick_deaths);
        self.phase = Phase::Backoff {
            until: cx.now + delay,
        };
        self.restarts += 1;
        out.push(Effect::Record(
            self.record(LifecycleEvent::RestartScheduled)
                .message(format!(
                    "quick death {} of {} ({what}); restarting in {:.1} s",
                    self.quick_deaths,
                    policy.max_quick_deaths,
                    delay.as_secs_f64()
                )),
        ));
        out.push(Effect::save());
    }

    pub(super) fn settle_failed(
        &mut self,
        event: LifecycleEvent,
        message: String,
        out: &mut Vec<Effect>,
    ) {
        self.phase = Phase::Failed;
        self.settled_row = Some(self.row.clone());
        self.last_exit = Some(message.clone());
        out.push(Effect::Record(
            self.record(event)
                .run_type(self.row.run_type.clone())
                .message(message),
        ));
        out.push(Effect::save());
    }

    /// The stopped component's tree is gone: the stop is complete.
    pub(super) fn finish_stop(&mut self, cx: &Context<'_>, out: &mut Vec<Effect>) {
        let Phase::Stopping {
            proc,
            killed,
            then,
            leader_exit: Some(cause),
            ..
        } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return;
        };
        let event = if killed {
            LifecycleEvent::StoppedForcefully
        } else {
            LifecycleEvent::StoppedSuccessfully
        };
        let uptime = cx.now.saturating_duration_since(proc.started);
        out.push(Effect::Record(self.record(event).pid(proc.pid).message(
            format!("{} after {:.3} s", cause.describe(), uptime.as_secs_f64()),
        )));
        out.push(Effect::ReleasePidFile);
        match then {
            AfterStop::Restart if !cx.shutting_down && self.row.desired_active => {
                // Through the gate: stopped because a dependency was disabled, it waits.
                if self.gate() == &super::Gate::Open {
                    self.restarts += 1;
                }
                self.start(cx, out);
            }
            AfterStop::Forget => {
                out.push(Effect::save());
                out.push(Effect::Forget);
            }
            // Stopped for the run due after it (`overlap kill`).
            AfterStop::Stop if self.scheduled() && self.row.desired_active && !cx.shutting_down => {
                self.after_run(cx, out)
            }
            _ => out.push(Effect::save()),
        }
        out.push(Effect::KillOrphans);
    }

    pub(super) fn on_tick(&mut self, cx: &Context<'_>, out: &mut Vec<Effect>) {
        self.schedule_tick(cx, out);
        match self.phase {
            Phase::Running(_) => return self.health_tick(cx, out),
            Phase::Waiting { .. } => return self.waiting_tick(cx, out),
            _ => {}
        }
        match &mut self.phase {
            Phase::Backoff { until } if *until <= cx.now => {
                if cx.shutting_down {
                    self.phase = Phase::Idle;
                    out.push(Effect::save());
                } else {
                    self.spawn(out);
                }
            }
            Phase::Stopping {
                proc,
                deadline,
                killed: killed @ false,
                ..
            } if *deadline <= cx.now => {
                // The grace period is over.
                out.push(Effect::Kill { pid: proc.pid });
                *killed = true;
                *deadline = cx.now + KILL_GRACE;
            }
            Phase::Stopping {
                proc,
                deadline,
                killed: true,
                ..
            } if *deadline <= cx.now => {
                let pid = proc.pid;
                out.push(Effect::Record(self.record(LifecycleEvent::StopFailed).pid(pid).message(
                    format!(
                        "process group {pid} survived SIGKILL for {} s (uninterruptible sleep?); no longer waiting",
                        KILL_GRACE.as_secs()
                    ),
                )));
                out.push(Effect::ReleasePidFile);
                out.push(Effect::KillOrphans);
                self.phase = Phase::Idle;
                self.last_exit = Some("stop failed: survived SIGKILL".to_owned());
                out.push(Effect::save());
            }
            _ => {}
        }
    }
}
