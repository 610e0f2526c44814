//! What a manager learns besides exits and rows: its components' sd_notify datagrams, and
//! samples of their trees' memory and CPU.

use n0m1_core::cgroup::ComponentCgroup;
use n0m1_core::process::{self, ProcStat};
use n0m1_core::resources::{self, ResourceSample};
use n0m1_core::state::unix_now;
use std::time::{Duration, Instant};

use super::Manager;
use super::slot::PidOwner;
use crate::machine::Input;

impl Manager {
    /// One `component_resource_log` row per running component: its tree's RSS and CPU time.
    /// Off the restart path (a timer, not a SIGCHLD), but on the loop's thread: a crash that
    /// comes in meanwhile waits for it, so it reads as little as it can.
    pub(super) fn sample_resources(&mut self) {
        self.check_oom_kills();
        let running: Vec<(&String, i32, Option<&ComponentCgroup>, bool)> = self
            .slots
            .iter()
            .filter_map(|(id, slot)| {
                let pid = slot.machine.proc()?.pid;
                Some((id, pid, slot.cgroup.as_ref(), slot.memory_counted))
            })
            .collect();
        if running.is_empty() {
            return;
        }
        // A cgroup's own counters are cheaper than reading /proc and count every descendant,
        // escaped ones included; where its memory is not counted (not in a memory cgroup),
        // its members are read one by one: a few /proc files, where a scan reads hundreds.
        let counted: Vec<Option<resources::TreeUsage>> = running
            .iter()
            .map(|(_, _, cgroup, memory_counted)| {
                let cgroup = (*cgroup)?;
                let counters = || {
                    Some(resources::TreeUsage {
                        rss_bytes: cgroup.memory()?.current,
                        cpu_seconds: cgroup.cpu_seconds()?,
                        processes: cgroup.pids().len() as u32,
                    })
                };
                let counted = if *memory_counted { counters() } else { None };
                Some(counted.unwrap_or_else(|| resources::members_usage(&cgroup.pids())))
            })
            .collect();
        // The /proc scan only for components without a cgroup.
        let snapshot = counted
            .iter()
            .any(Option::is_none)
            .then(process::all_processes)
            .unwrap_or_default();
        let sampled_at = unix_now();
        let samples = running
            .into_iter()
            .zip(counted)
            .map(|((id, pid, _, _), counted)| {
                let usage = counted.unwrap_or_else(|| resources::tree_usage(&snapshot, pid));
                ResourceSample {
                    component_id: id.clone(),
                    manager: self.options.manager.clone(),
                    sampled_at,
                    rss_bytes: usage.rss_bytes,
                    cpu_seconds: usage.cpu_seconds,
                    processes: usage.processes,
                }
            })
            .collect();
        self.exec.writer.resources(samples);
    }

    /// Every waiting sd_notify datagram, each given to the component whose process group
    /// sent it (the kernel names the sender; a component leads its own group, so a helper
    /// such as `systemd-notify` run by its script counts as the component).
    pub(super) fn notifications(&mut self) {
        let Some(socket) = &self.notify else {
            return;
        };
        let mut received = Vec::new();
        while let Some(datagram) = socket.receive() {
            received.push(datagram);
        }
        let pids = &self.exec.pids;
        let leader_of = |pid: i32| match pids.get(&pid) {
            Some(PidOwner::Leader(id)) => Some(id.clone()),
            _ => None,
        };
        let owners: Vec<_> = received
            .into_iter()
            .map(|(pid, notices)| {
                let owner = leader_of(pid).or_else(|| leader_of(ProcStat::read(pid)?.pgrp));
                (pid, owner, notices)
            })
            .collect();
        for (pid, owner, notices) in owners {
            match owner {
                Some(id) if !notices.is_empty() => self.dispatch(&id, Input::Notified(notices)),
                Some(_) => {}
                None => {
                    if let Some(summary) = self.stray_notices.note(pid, Instant::now()) {
                        tracing::warn!("{summary}; ignored ({})", self.options.manager);
                    }
                }
            }
        }
    }
}

/// Datagrams from processes of no component: counted, and said at most once a second (a
/// flood must not rotate the manager's own history out of its log).
#[derive(Debug, Default)]
pub(super) struct StrayNotices {
    count: u64,
    last_pid: i32,
    said_at: Option<Instant>,
}

impl StrayNotices {
    /// Counts one; the sentence to log when a second has passed since the last one.
    pub fn note(&mut self, pid: i32, now: Instant) -> Option<String> {
        self.count += 1;
        self.last_pid = pid;
        if self
            .said_at
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return None;
        }
        let summary = if self.count == 1 {
            format!("a notification from pid {pid}, which belongs to no component")
        } else {
            format!(
                "{} notifications from processes of no component (the last from pid {pid})",
                self.count
            )
        };
        self.count = 0;
        self.said_at = Some(now);
        Some(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stray_notifications_are_said_at_most_once_a_second() {
        let mut stray = StrayNotices::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(stray.note(7, at(0)).unwrap().contains("pid 7"));
        for i in 1..=1000 {
            assert_eq!(stray.note(8, at(i % 999)), None);
        }
        let summary = stray.note(9, at(1000)).unwrap();
        assert!(summary.starts_with("1001 notifications"), "{summary}");
        assert!(summary.contains("pid 9"));
    }
}
