//! `component_resource_log`: what each component's process tree uses, sampled by its manager
//! every `resources.interval` seconds. The one module that spells the table's columns.

use rusqlite::{Connection, params};

use crate::process::{self, ProcStat};
use crate::schema::COMPONENT_RESOURCE_LOG;

/// One sample of one component's tree.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResourceSample {
    pub component_id: String,
    pub manager: String,
    /// Unix time.
    pub sampled_at: f64,
    pub rss_bytes: u64,
    /// User + system CPU time of the tree's live processes.
    pub cpu_seconds: f64,
    pub processes: u32,
}

/// What a tree uses: the group its leader leads and every descendant that left the group.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TreeUsage {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub processes: u32,
}

/// Sums the tree of `leader` in a snapshot taken with `process::all_processes` (one snapshot
/// serves every component of a manager).
pub fn tree_usage(snapshot: &[ProcStat], leader: i32) -> TreeUsage {
    let ticks = process::clock_ticks_per_second().max(1) as f64;
    let mut members: Vec<&ProcStat> = snapshot
        .iter()
        .filter(|p| p.is_alive() && (p.pid == leader || p.pgrp == leader))
        .collect();
    let escaped = process::descendants_in(snapshot, leader);
    for stat in &escaped {
        if !members.iter().any(|m| m.pid == stat.pid)
            && let Some(found) = snapshot.iter().find(|p| p.pid == stat.pid)
        {
            members.push(found);
        }
    }
    sum(members.into_iter(), ticks)
}

/// Sums the processes of a cgroup (its `cgroup.procs`), each read from /proc: a component
/// whose memory its cgroup does not count (no memory limit on a v1 host, where it is not in a
/// memory cgroup) is still in its membership cgroup, escaped descendants included, so its
/// few processes are read instead of all of /proc.
pub fn members_usage(pids: &[i32]) -> TreeUsage {
    let ticks = process::clock_ticks_per_second().max(1) as f64;
    let stats: Vec<ProcStat> = pids
        .iter()
        .filter_map(|pid| ProcStat::read(*pid))
        .filter(ProcStat::is_alive)
        .collect();
    sum(stats.iter(), ticks)
}

fn sum<'a>(members: impl Iterator<Item = &'a ProcStat>, ticks: f64) -> TreeUsage {
    let mut usage = TreeUsage::default();
    for stat in members {
        usage.rss_bytes += process::rss_kib(stat) * 1024;
        usage.cpu_seconds += (stat.utime_ticks + stat.stime_ticks) as f64 / ticks;
        usage.processes += 1;
    }
    usage
}

impl ResourceSample {
    pub fn write(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.prepare_cached(&format!(
            "INSERT INTO {COMPONENT_RESOURCE_LOG}
             (component_id, manager, sampled_at, rss_bytes, cpu_seconds, processes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        ))?
        .execute(params![
            self.component_id,
            self.manager,
            self.sampled_at,
            self.rss_bytes as i64,
            self.cpu_seconds,
            self.processes
        ])?;
        Ok(())
    }
}

const COLUMNS: &str = "component_id, manager, sampled_at, rss_bytes, cpu_seconds, processes";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ResourceSample> {
    Ok(ResourceSample {
        component_id: row.get(0)?,
        manager: row.get(1)?,
        sampled_at: row.get(2)?,
        rss_bytes: row.get::<_, i64>(3)?.max(0) as u64,
        cpu_seconds: row.get(4)?,
        processes: row.get(5)?,
    })
}

/// A component's samples after `since` (Unix time), oldest first, at most `limit` (the newest).
pub fn since(
    conn: &Connection,
    component_id: &str,
    since: f64,
    limit: u32,
) -> rusqlite::Result<Vec<ResourceSample>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT * FROM (SELECT {COLUMNS} FROM {COMPONENT_RESOURCE_LOG}
           WHERE component_id = ?1 AND sampled_at > ?2 ORDER BY sampled_at DESC LIMIT ?3)
         ORDER BY sampled_at"
    ))?;
    let rows = statement.query_map(params![component_id, since, limit], from_row)?;
    rows.collect()
}

/// The newest sample of every component sampled after `since`.
pub fn latest(conn: &Connection, since: f64) -> rusqlite::Result<Vec<ResourceSample>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {COMPONENT_RESOURCE_LOG} AS r
         WHERE sampled_at > ?1 AND id = (SELECT max(id) FROM {COMPONENT_RESOURCE_LOG}
                                         WHERE component_id = r.component_id)
         ORDER BY component_id"
    ))?;
    let rows = statement.query_map([since], from_row)?;
    rows.collect()
}

/// Deletes up to `batch` of one manager's samples older than `before`; returns how many.
pub fn prune(conn: &Connection, manager: &str, before: f64, batch: u32) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "DELETE FROM {COMPONENT_RESOURCE_LOG} WHERE id IN
               (SELECT id FROM {COMPONENT_RESOURCE_LOG}
                WHERE manager = ?1 AND sampled_at < ?2 ORDER BY id LIMIT ?3)"
        ),
        params![manager, before, batch],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: i32, ppid: i32, pgrp: i32, ticks: u64, pages: i64) -> ProcStat {
        ProcStat {
            pid,
            state: 'S',
            ppid,
            pgrp,
            utime_ticks: ticks,
            stime_ticks: ticks,
            start_ticks: 1,
            rss_pages: pages,
        }
    }

    #[test]
    fn a_tree_is_its_group_and_the_descendants_that_left_it() {
        let snapshot = [
            stat(10, 1, 10, 50, 100),
            stat(11, 10, 10, 50, 100),
            // Left the group (setsid), still a descendant.
            stat(12, 11, 12, 50, 100),
            // Someone else entirely.
            stat(20, 1, 20, 999, 999),
            ProcStat {
                state: 'Z',
                ..stat(13, 10, 10, 999, 999)
            },
        ];
        let usage = tree_usage(&snapshot, 10);
        let ticks = process::clock_ticks_per_second() as f64;
        assert_eq!(usage.processes, 3);
        assert_eq!(usage.rss_bytes, 3 * process::rss_kib(&snapshot[0]) * 1024);
        assert!((usage.cpu_seconds - 300.0 / ticks).abs() < 1e-9);
    }

    #[test]
    fn a_cgroups_members_are_read_one_by_one_and_the_gone_skipped() {
        #[allow(clippy::disallowed_methods)] // a test's own short-lived child
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pids = [std::process::id() as i32, child.id() as i32, i32::MAX];
        let usage = members_usage(&pids);
        let stats: Vec<ProcStat> = pids[..2]
            .iter()
            .map(|pid| ProcStat::read(*pid).unwrap())
            .collect();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(usage.processes, 2, "the pid that does not exist is skipped");
        // This process's own memory moves with the other tests; the sleeper's does not.
        let sleeper = process::rss_kib(&stats[1]) * 1024;
        assert!(
            usage.rss_bytes > sleeper,
            "{usage:?} against the sleeper's {sleeper}"
        );
    }

    #[test]
    fn samples_are_read_back_newest_last_and_pruned_per_manager() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrations().to_latest(&mut conn).unwrap();
        let sample = |id: &str, manager: &str, at: f64| ResourceSample {
            component_id: id.into(),
            manager: manager.into(),
            sampled_at: at,
            rss_bytes: 4096,
            cpu_seconds: at / 10.0,
            processes: 1,
        };
        for at in [1.0, 2.0, 3.0] {
            sample("a", "m1", at).write(&conn).unwrap();
            sample("b", "m2", at).write(&conn).unwrap();
        }
        let a = since(&conn, "a", 1.5, 10).unwrap();
        assert_eq!(
            a.iter().map(|s| s.sampled_at).collect::<Vec<_>>(),
            [2.0, 3.0]
        );
        assert_eq!(since(&conn, "a", 0.0, 1).unwrap()[0].sampled_at, 3.0);
        let newest = latest(&conn, 0.0).unwrap();
        assert_eq!(newest.len(), 2);
        assert!(newest.iter().all(|s| s.sampled_at == 3.0));
        assert_eq!(prune(&conn, "m1", 2.5, 100).unwrap(), 2);
        assert_eq!(since(&conn, "a", 0.0, 10).unwrap().len(), 1);
        assert_eq!(since(&conn, "b", 0.0, 10).unwrap().len(), 3);
    }
}
