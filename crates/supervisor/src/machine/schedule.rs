//! Scheduled one-shots (`component_schedules`): between runs the component is `Scheduled`
//! and its next time is a deadline like any other; at that time it runs (`SCHEDULED_START`);
//! a run that ends goes back to waiting, never restarted between runs. A run due while the
//! last one runs is skipped (`SKIPPED_OVERLAP`), queued (one) or replaces it, as the row says;
//! a run missed while no manager ran is skipped or run once when the manager is back. A failed
//! run counts as a quick death: `max_quick_deaths` failed runs in a row end FAILED.

use std::time::{Duration, Instant};

use n0m1_core::lifecycle::LifecycleEvent;
use n0m1_core::schedules::{self, Missed, Overlap, Schedule};

use super::{AfterStop, Component, Context, Effect, Phase};
use crate::reaper::ExitCause;

/// What the manager read of a component's schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Timing {
    /// No schedule: its run type decides.
    Unscheduled,
    /// A checked schedule, and when the lifecycle log last saw it start on it.
    Scheduled {
        schedule: Schedule,
        last_run: Option<f64>,
    },
    /// A schedule row that does not check (the manager says why in an ERROR event): the
    /// component does not run until the row is fixed.
    Broken,
}

/// A scheduled component's clock.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Timer {
    /// `None` while its row is broken.
    schedule: Option<Schedule>,
    /// When it last started on its schedule (Unix seconds).
    last_run: Option<f64>,
    /// Its next time, as Unix seconds and on the monotonic clock.
    next: Option<(f64, Instant)>,
    /// A run waits behind the current one (`overlap queue`, or `kill` while it stops).
    queued: bool,
    /// The missed-run rule was applied (once, when the manager first plans it).
    missed_checked: bool,
}

impl Timer {
    /// The next time, if it has come.
    fn due(&self, now: Instant) -> Option<f64> {
        self.next.filter(|(_, at)| *at <= now).map(|(unix, _)| unix)
    }

    /// The next time after `after` (Unix seconds), on both clocks.
    fn plan(&mut self, after: f64, cx: &Context<'_>) {
        self.next = self
            .schedule
            .as_ref()
            .and_then(|schedule| schedule.spec.next_after(after))
            .map(|unix| {
                let wait = Duration::from_secs_f64((unix - cx.unix_now).max(0.0));
                (unix, cx.now + wait)
            });
    }

    fn describe_next(&self) -> String {
        match (&self.schedule, self.next) {
            (Some(schedule), Some((unix, _))) => {
                format!("next at {}", schedules::describe_time(&schedule.spec, unix))
            }
            _ => "no next run".to_owned(),
        }
    }
}

impl Component {
    pub fn scheduled(&self) -> bool {
        self.timer.is_some()
    }

    /// The next scheduled time (Unix seconds), for status.
    pub fn next_run(&self) -> Option<f64> {
        self.timer.as_ref()?.next.map(|(unix, _)| unix)
    }

    pub(super) fn timer_deadline(&self) -> Option<Instant> {
        self.timer.as_ref()?.next.map(|(_, at)| at)
    }

    pub(super) fn on_timing(&mut self, timing: Timing, cx: &Context<'_>, out: &mut Vec<Effect>) {
        let (schedule, last_run) = match timing {
            Timing::Unscheduled => {
                if self.timer.take().is_some() && self.phase == Phase::Scheduled {
                    // Its schedule was removed: it is done until its row changes.
                    self.phase = Phase::Completed;
                    self.settled_row = Some(self.row.clone());
                    out.push(Effect::save());
                }
                return;
            }
            Timing::Scheduled { schedule, last_run } => (Some(schedule), last_run),
            Timing::Broken => (None, None),
        };
        if self.timer.as_ref().is_some_and(|t| t.schedule == schedule) {
            return;
        }
        let previous = self.timer.take();
        self.timer = Some(Timer {
            schedule,
            last_run: previous.as_ref().map_or(last_run, |t| t.last_run),
            next: None,
            queued: false,
            missed_checked: previous.is_some_and(|t| t.missed_checked),
        });
        match self.phase {
            Phase::Scheduled => self.wait_for_next(cx, out),
            // A one-shot that ran before it had a schedule now follows it.
            Phase::Completed if self.row.desired_active => {
                self.settled_row = None;
                self.wait_for_next(cx, out);
            }
            Phase::Running(_) | Phase::Stopping { .. } => {
                if let Some(timer) = &mut self.timer {
                    timer.plan(cx.unix_now, cx);
                }
            }
            _ => {}
        }
    }

    /// Between runs: waits for the next time (at once for a run missed while no manager
    /// ran, with `missed once`).
    pub(super) fn wait_for_next(&mut self, cx: &Context<'_>, out: &mut Vec<Effect>) {
        let Some(timer) = &mut self.timer else {
            return;
        };
        self.phase = Phase::Scheduled;
        timer.plan(cx.unix_now, cx);
        if !timer.missed_checked {
            timer.missed_checked = true;
            let missed = match (&timer.schedule, timer.last_run) {
                (Some(schedule), Some(last)) if schedule.missed == Missed::Once => schedule
                    .spec
                    .next_after(last)
                    .filter(|due| *due < cx.unix_now - 1.0),
                _ => None,
            };
            if let Some(due) = missed {
                let when = timer
                    .schedule
                    .as_ref()
                    .map(|s| schedules::describe_time(&s.spec, due))
                    .unwrap_or_default();
                return self.run_scheduled(
                    &format!("the run due at {when} was missed while n0m1 was down (missed once)"),
                    cx,
                    out,
                );
            }
        }
        out.push(Effect::save());
    }

    /// Starts a run now (through its dependencies' gate) and says why.
    pub(super) fn run_scheduled(&mut self, why: &str, cx: &Context<'_>, out: &mut Vec<Effect>) {
        let Some(timer) = &mut self.timer else {
            return;
        };
        timer.last_run = Some(cx.unix_now);
        timer.queued = false;
        timer.plan(cx.unix_now, cx);
        let next = timer.describe_next();
        // Spawn first: the record is only queued after the run starts.
        self.start(cx, out);
        out.push(Effect::Record(
            self.record(LifecycleEvent::ScheduledStart)
                .message(format!("{why}; {next}")),
        ));
    }

    /// A tick: runs what is due, or applies the overlap rule to a run still going.
    pub(super) fn schedule_tick(&mut self, cx: &Context<'_>, out: &mut Vec<Effect>) {
        let Some(timer) = &mut self.timer else {
            return;
        };
        let Some(due) = timer.due(cx.now) else {
            return;
        };
        let run_going = matches!(
            self.phase,
            Phase::Starting | Phase::Running(_) | Phase::Stopping { .. } | Phase::Waiting { .. }
        );
        if self.phase != Phase::Scheduled && !run_going {
            // Failed, disabled or done: nothing is due until it waits again.
            timer.next = None;
            return;
        }
        let Some(schedule) = timer.schedule.clone() else {
            return;
        };
        if self.phase == Phase::Scheduled {
            if !cx.shutting_down {
                self.run_scheduled(&format!("scheduled ({})", schedule.text), cx, out);
            }
            return;
        }
        // Due while a run is still going (or stopping, or waiting for its dependencies).
        timer.plan(cx.unix_now.max(due), cx);
        let due_text = schedules::describe_time(&schedule.spec, due);
        match schedule.overlap {
            Overlap::Skip => {
                let next = timer.describe_next();
                let running = self
                    .proc()
                    .map_or_else(|| "the last run".to_owned(), |p| format!("pid {}", p.pid));
                out.push(Effect::Record(
                    self.record(LifecycleEvent::SkippedOverlap).message(format!(
                        "the run due at {due_text} was skipped: {running} still runs (overlap skip); {next}"
                    )),
                ));
            }
            Overlap::Queue => timer.queued = true,
            Overlap::Kill => {
                timer.queued = true;
                if matches!(self.phase, Phase::Running(_)) {
                    self.begin_stop(
                        AfterStop::Stop,
                        &format!("the run due at {due_text} replaces it (overlap kill)"),
                        cx,
                        out,
                    );
                }
            }
        }
    }

    /// A scheduled run ended: back to waiting (or the queued run now), FAILED after too many
    /// failed runs in a row. Returns false when the schedule does not apply (shutting down,
    /// disabled): the usual rules do.
    pub(super) fn scheduled_exit(
        &mut self,
        pid: i32,
        cause: &ExitCause,
        exit_record: n0m1_core::lifecycle::LifecycleRecord,
        cx: &Context<'_>,
        out: &mut Vec<Effect>,
    ) -> bool {
        if self.timer.is_none() || cx.shutting_down || !self.row.desired_active {
            return false;
        }
        if cause.is_clean() && exit_record.event != LifecycleEvent::OomKilled {
            self.quick_deaths = 0;
            out.push(Effect::Record(
                self.record(LifecycleEvent::Stopped)
                    .pid(pid)
                    .message(format!("scheduled run completed: {}", cause.describe())),
            ));
        } else {
            out.push(Effect::Record(exit_record));
            self.quick_deaths += 1;
            if self.quick_deaths >= cx.policy.max_quick_deaths {
                let message = format!(
                    "{} scheduled runs in a row failed (last: {}); staying down until `n0m1ctl enable {}`",
                    self.quick_deaths,
                    cause.describe(),
                    self.row.component_id
                );
                self.settle_failed(LifecycleEvent::Failed, message, out);
                return true;
            }
        }
        self.after_run(cx, out);
        true
    }

    /// The run is over: the queued one now, else wait for the next time.
    pub(super) fn after_run(&mut self, cx: &Context<'_>, out: &mut Vec<Effect>) {
        if self.timer.as_ref().is_some_and(|t| t.queued) && !cx.shutting_down {
            self.run_scheduled("the run due while the last one ran", cx, out);
        } else {
            self.wait_for_next(cx, out);
        }
    }
}
