//! Boot's timers: scheduled starts and backoffs, each running manager's heartbeat, and
//! the next moment boot must wake for them.

use std::time::{Duration, Instant};

use n0m1_core::home::LOGD_STEM;
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::pidfile::PidFile;
use n0m1_core::process;
use nix::sys::signal::Signal;

use super::rules::health_problem;
use super::{BOOT_COMPONENT_ID, Boot, HEALTH_POLL, MIN_HEARTBEAT_TOLERANCE, Phase, boot_event_id};

impl Boot {
    pub(super) fn on_timers(&mut self, now: Instant) {
        // Before any manager is (re)started: one stat, on every turn (at least each
        // HEALTH_POLL while managers run).
        if self.database_gone.is_none() {
            self.database_replaced();
        }
        self.record_disk_report();
        // Boot's own log (the files `n0m1ctl start` gave it) is bounded like the others.
        let (stdout, stderr) = self
            .options
            .home
            .manager_logs(n0m1_core::home::BOOT_LOG_STEM);
        n0m1_core::logpipe::rotate_own_output(
            &stdout,
            &stderr,
            self.config.logs.max_bytes,
            self.config.logs.keep,
        );
        if let Some(deadline) = self.shutdown_deadline {
            self.stop_next_manager();
            if now >= deadline {
                for supervised in &self.managers {
                    if let Some(pid) = supervised.pid() {
                        process::signal_process(pid, Signal::SIGKILL);
                    }
                }
                self.shutdown_deadline = Some(now + Duration::from_secs(1));
            }
            return;
        }
        for index in 0..self.managers.len() {
            match self.managers[index].phase {
                Phase::Scheduled { at } | Phase::Backoff { until: at } if at <= now => {
                    self.start_manager(index)
                }
                Phase::Running {
                    pid, next_health, ..
                } if next_health <= now => self.check_health(index, pid, now),
                _ => {}
            }
        }
    }

    /// The log writer's report of a full disk (`n0m1_core::disk_report`) becomes one
    /// `DISK_FULL` per episode and one `DISK_FULL_CLEARED`, stamped with their own times (the
    /// journal keeps them queued while the database is on the full disk too).
    fn record_disk_report(&mut self) {
        let Some(report) = n0m1_core::disk_report::read(&self.options.home.disk_report()) else {
            return;
        };
        let (mut episode, mut cleared) = self.disk_recorded;
        if report.episode < episode {
            // A log writer restarted: its episodes count from one again.
            (episode, cleared) = (0, false);
            self.disk_recorded = (0, false);
        }
        if report.episode == 0 {
            return;
        }
        if report.episode > episode {
            self.journal.event(
                LifecycleRecord::new(LOGD_STEM, LifecycleEvent::DiskFull)
                    .at(report.since)
                    .message(report.full_message()),
            );
            self.disk_recorded = (report.episode, false);
        }
        if let Some(at) = report.cleared
            && !(report.episode == episode && cleared)
        {
            self.journal.event(
                LifecycleRecord::new(LOGD_STEM, LifecycleEvent::DiskFullCleared)
                    .at(at)
                    .message(report.cleared_message()),
            );
            self.disk_recorded = (report.episode, true);
        }
    }

    /// Alive is not enough: the manager's heartbeat (its PID file's mtime) must be fresh, or
    /// it is hung and, if critical, killed so it is restarted.
    fn check_health(&mut self, index: usize, pid: i32, now: Instant) {
        let home = &self.options.home;
        let supervised = &mut self.managers[index];
        let interval = supervised.spec.health_check_interval.duration();
        if let Phase::Running { next_health, .. } = &mut supervised.phase {
            *next_health = now + HEALTH_POLL;
        }
        let pid_path = home.pid_file(&supervised.spec.binary);
        let tolerance = interval.max(MIN_HEARTBEAT_TOLERANCE);
        let problem = match PidFile::inspect(&pid_path) {
            Ok(status) => {
                let age = PidFile::heartbeat(&pid_path).and_then(|t| t.elapsed().ok());
                health_problem(pid, &status, age, tolerance, &pid_path)
            }
            Err(error) => Some(error.to_string()),
        };
        let Phase::Running {
            reported_unhealthy, ..
        } = &mut supervised.phase
        else {
            return;
        };
        let Some(problem) = problem else {
            *reported_unhealthy = false;
            return;
        };
        if std::mem::replace(reported_unhealthy, true) {
            return;
        }
        let critical = supervised.spec.critical;
        let action = if critical {
            "killing it so it is restarted"
        } else {
            "not critical, leaving it"
        };
        self.journal.event(
            LifecycleRecord::new(
                boot_event_id(&supervised.spec.binary),
                LifecycleEvent::ManagerUnhealthy,
            )
            .pid(pid)
            .manager(BOOT_COMPONENT_ID.to_owned())
            .message(format!(
                "{} is unhealthy: {problem}; {action}",
                supervised.spec.name
            )),
        );
        if critical {
            process::signal_process(pid, Signal::SIGKILL);
        }
    }

    pub(super) fn next_deadline(&self) -> Instant {
        let idle = Instant::now() + Duration::from_secs(60);
        // Until READY=1 is out, look often: managers take their PID files on their own time.
        let idle = if self.told_ready || self.shutdown_deadline.is_some() {
            idle
        } else {
            idle.min(Instant::now() + Duration::from_millis(50))
        };
        let idle = self.watchdog.due().map_or(idle, |due| due.min(idle));
        if let Some(deadline) = self.shutdown_deadline {
            return deadline.min(idle);
        }
        self.managers
            .iter()
            .filter_map(|m| match m.phase {
                Phase::Scheduled { at } | Phase::Backoff { until: at } => Some(at),
                Phase::Running { next_health, .. } => Some(next_health),
                _ => None,
            })
            .min()
            .unwrap_or(idle)
            .min(idle)
    }
}
