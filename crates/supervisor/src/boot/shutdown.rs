//! How boot stops: the managers in reverse order, then whatever they left behind, and at
//! once when the database file is deleted or replaced.

use std::time::{Duration, Instant};

use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::notify;
use n0m1_core::process;
use n0m1_core::writer::Writer;
use nix::sys::signal::Signal;

use crate::reaper;

use super::{BOOT_COMPONENT_ID, Boot, Phase, SWEEP_GRACE, Supervised, boot_event_id};

impl Boot {
    pub(super) fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        if let Err(error) = notify::notify("STOPPING=1") {
            tracing::warn!("cannot tell systemd that n0m1 is stopping: {error}");
        }
        // Managers stop one after another, so each gets its own grace period for its
        // components, plus a margin.
        let each = self.config.supervisor.stop_timeout.duration() + Duration::from_secs(5);
        let count = u32::try_from(self.managers.len())
            .unwrap_or(u32::MAX)
            .max(1);
        self.shutdown_deadline = Some(Instant::now() + each * count);
        for supervised in &mut self.managers {
            if !matches!(supervised.phase, Phase::Running { .. }) {
                supervised.stop(&self.journal, "boot shutting down");
            }
        }
        self.stop_next_manager();
    }

    /// In reverse start order, one at a time: a later manager's components (the nano
    /// instances, the processor) depend on an earlier one's (the metric and config daemons),
    /// and dependents stop first.
    pub(super) fn stop_next_manager(&mut self) {
        if self
            .managers
            .iter()
            .any(|m| matches!(m.phase, Phase::Stopping { .. }))
        {
            return;
        }
        if let Some(last) = self
            .managers
            .iter_mut()
            .rev()
            .find(|m| matches!(m.phase, Phase::Running { .. }))
        {
            last.stop(&self.journal, "boot shutting down");
        }
    }

    /// A database deleted or replaced under the running system: its rows and history are no
    /// longer where anyone reads them, so boot stops everything (a restarted manager would
    /// otherwise open the new file while the old components write into the old one) and
    /// exits with the reason; `n0m1ctl start` then runs on the file that is there.
    pub(super) fn database_replaced(&mut self) {
        let Err(error) = self.database.check() else {
            return;
        };
        tracing::error!("{error}");
        self.journal.event(
            LifecycleRecord::new(BOOT_COMPONENT_ID, LifecycleEvent::CriticalError)
                .pid(std::process::id() as i32)
                .message(error.to_string()),
        );
        self.database_gone = Some(error);
        self.begin_shutdown();
    }

    /// After the managers: anything still below boot (components of a manager that was
    /// killed, re-parented to us) gets SIGTERM, then SIGKILL, and is reaped.
    pub(super) fn sweep_leftovers(&mut self) {
        let me = std::process::id() as i32;
        let leftovers = process::descendants(me);
        if leftovers.is_empty() {
            return;
        }
        for stat in &leftovers {
            process::signal_group(stat.pgrp, Signal::SIGTERM);
            process::signal_process(stat.pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + SWEEP_GRACE;
        while Instant::now() < deadline && !process::descendants(me).is_empty() {
            reaper::reap_exited();
            std::thread::sleep(Duration::from_millis(20));
        }
        for stat in process::descendants(me) {
            process::signal_process(stat.pid, Signal::SIGKILL);
        }
        let deadline = Instant::now() + SWEEP_GRACE;
        while Instant::now() < deadline && !process::descendants(me).is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            reaper::reap_exited();
        }
        reaper::reap_exited();
        self.journal.event(
            LifecycleRecord::new(BOOT_COMPONENT_ID, LifecycleEvent::Error)
                .pid(me)
                .message(format!(
                    "{} processes outlived their managers and were stopped by boot",
                    leftovers.len()
                )),
        );
    }
}

impl Supervised {
    /// SIGTERM to a running manager (recorded); one not started yet is just not started.
    pub(super) fn stop(&mut self, journal: &Writer, reason: &str) {
        let supervised = self;
        match supervised.phase {
            Phase::Running { pid, .. } => {
                process::signal_process(pid, Signal::SIGTERM);
                journal.event(
                    LifecycleRecord::new(
                        boot_event_id(&supervised.spec.binary),
                        LifecycleEvent::ManagerShutdownRequested,
                    )
                    .pid(pid)
                    .manager(BOOT_COMPONENT_ID.to_owned())
                    .message(format!("{reason}; SIGTERM sent")),
                );
                supervised.phase = Phase::Stopping { pid };
            }
            Phase::Scheduled { .. } | Phase::Backoff { .. } => supervised.phase = Phase::Down,
            Phase::Stopping { .. } | Phase::Down => {}
        }
    }
}
