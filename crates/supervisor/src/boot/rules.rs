//! Boot's rules as pure functions: what to do about a manager that died, and whether a live
//! one is healthy. `Boot` performs what they decide.

use std::time::Duration;

use n0m1_core::config::SupervisorPolicy;
use n0m1_core::pidfile::PidStatus;

use super::STABLE_UPTIME;

/// What boot does about a manager that died while it should run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum ManagerVerdict {
    /// Start it again after `delay`; `quick_deaths` is the new count.
    Restart { delay: Duration, quick_deaths: u32 },
    /// Not critical: report it and leave it down.
    LeaveDown,
}

/// Boot's restart rule, pure: a critical manager is restarted at once the first time, then with
/// the supervisor's backoff while it keeps dying within `STABLE_UPTIME` of starting; a manager
/// that is not critical is left down.
pub(super) fn after_manager_death(
    critical: bool,
    uptime: Duration,
    quick_deaths: u32,
    policy: &SupervisorPolicy,
) -> ManagerVerdict {
    if !critical {
        return ManagerVerdict::LeaveDown;
    }
    let quick_deaths = if uptime >= STABLE_UPTIME {
        0
    } else {
        quick_deaths
    };
    let delay = if quick_deaths == 0 {
        Duration::ZERO
    } else {
        policy.backoff(quick_deaths)
    };
    ManagerVerdict::Restart {
        delay,
        quick_deaths: quick_deaths + 1,
    }
}

/// Boot's health rule, pure: what is wrong with a manager, given who holds its PID file and
/// how old its heartbeat is, or `None` if it is healthy.
pub(super) fn health_problem(
    pid: i32,
    status: &PidStatus,
    heartbeat_age: Option<Duration>,
    tolerance: Duration,
    pid_path: &std::path::Path,
) -> Option<String> {
    match status {
        PidStatus::Live { pid: Some(owner) } if *owner == pid => match heartbeat_age {
            Some(age) if age <= tolerance => None,
            Some(age) => Some(format!("heartbeat is {:.0} s old", age.as_secs_f64())),
            None => Some("no heartbeat".to_owned()),
        },
        PidStatus::Live { pid: owner } => Some(format!(
            "its PID file {} is held by pid {}, not {pid}",
            pid_path.display(),
            owner.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
        )),
        PidStatus::Stale { .. } => Some(format!("its PID file {} is not held", pid_path.display())),
        PidStatus::Absent => Some(format!("its PID file {} is missing", pid_path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_critical_manager_restarts_at_once_then_backs_off_and_a_stable_run_resets() {
        let policy = SupervisorPolicy {
            backoff_initial: n0m1_core::config::Seconds(0.5),
            backoff_max: n0m1_core::config::Seconds(2.0),
            ..SupervisorPolicy::default()
        };
        let quick = Duration::from_secs(1);
        let restart = |delay: f64, quick_deaths| ManagerVerdict::Restart {
            delay: Duration::from_secs_f64(delay),
            quick_deaths,
        };
        // (critical, uptime, quick deaths so far) -> verdict
        let table = [
            (true, quick, 0, restart(0.0, 1)),
            (true, quick, 1, restart(0.5, 2)),
            (true, quick, 2, restart(1.0, 3)),
            (true, quick, 5, restart(2.0, 6)),
            (true, STABLE_UPTIME, 5, restart(0.0, 1)),
            (false, quick, 0, ManagerVerdict::LeaveDown),
            (false, STABLE_UPTIME, 3, ManagerVerdict::LeaveDown),
        ];
        for (critical, uptime, deaths, expected) in table {
            assert_eq!(
                after_manager_death(critical, uptime, deaths, &policy),
                expected,
                "critical {critical}, uptime {uptime:?}, {deaths} quick deaths"
            );
        }
    }

    #[test]
    fn a_manager_is_healthy_only_with_its_own_fresh_heartbeat() {
        let path = std::path::Path::new("/home/pids/daemon_manager.pid");
        let tolerance = Duration::from_secs(10);
        let own = PidStatus::Live { pid: Some(7) };
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(health_problem(7, &own, secs(3), tolerance, path), None);
        assert_eq!(
            health_problem(7, &own, secs(12), tolerance, path).as_deref(),
            Some("heartbeat is 12 s old")
        );
        assert_eq!(
            health_problem(7, &own, None, tolerance, path).as_deref(),
            Some("no heartbeat")
        );
        let other = PidStatus::Live { pid: Some(8) };
        assert!(
            health_problem(7, &other, secs(1), tolerance, path)
                .unwrap()
                .contains("held by pid 8, not 7")
        );
        assert!(
            health_problem(
                7,
                &PidStatus::Stale { pid: Some(7) },
                secs(1),
                tolerance,
                path
            )
            .unwrap()
            .contains("is not held")
        );
        assert!(
            health_problem(7, &PidStatus::Absent, None, tolerance, path)
                .unwrap()
                .contains("is missing")
        );
    }
}
