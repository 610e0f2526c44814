//! The incident rules, pure: which lifecycle events open an incident (one per component
//! while it is open), and when a component has recovered. The alerter's loop feeds them
//! events and states and performs what they decide (`evidence` gathers, the table records).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use n0m1_core::incidents::{IncidentKind, SuggestedAction};
use n0m1_core::state::RunState;

/// This many crashes within `CRASH_LOOP_WINDOW` are a crash loop.
pub const CRASH_LOOP_CRASHES: usize = 3;
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);
/// Running this long without a new problem is a recovery.
pub const STABLE_FOR: Duration = Duration::from_secs(5);

/// One lifecycle event as the rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed<'a> {
    pub event_id: i64,
    pub component: &'a str,
    pub event: &'a str,
    pub message: &'a str,
}

/// An incident to open.
#[derive(Debug, Clone, PartialEq)]
pub struct Opening {
    pub component: String,
    pub kind: IncidentKind,
    pub trigger_event: i64,
    pub summary: String,
    pub suggested: SuggestedAction,
}

/// What is known of an open incident's component now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    pub state: RunState,
    /// Its recorded process is the live one.
    pub alive: bool,
    /// How long the current process has run.
    pub uptime: Duration,
}

#[derive(Debug, Default)]
pub struct IncidentRules {
    crashes: HashMap<String, VecDeque<Instant>>,
    /// Component → (incident id, kind).
    open: HashMap<String, (i64, IncidentKind)>,
}

impl IncidentRules {
    /// What the table says is open (after a restart of the alerter).
    pub fn opened(&mut self, component: &str, id: i64, kind: IncidentKind) {
        self.open.insert(component.to_owned(), (id, kind));
        self.crashes.remove(component);
    }

    pub fn closed(&mut self, component: &str) {
        self.open.remove(component);
    }

    pub fn open_incidents(&self) -> impl Iterator<Item = (&str, i64, IncidentKind)> {
        self.open
            .iter()
            .map(|(component, (id, kind))| (component.as_str(), *id, *kind))
    }

    /// The incident `seen` opens, if any: none while the component has one open.
    pub fn on_event(&mut self, seen: &Observed<'_>, now: Instant) -> Option<Opening> {
        let kind = match seen.event {
            "FAILED" => IncidentKind::Failed,
            "UNHEALTHY" => IncidentKind::Unhealthy,
            "OOM_KILLED" => IncidentKind::OomKilled,
            "METRIC_ALERT" => IncidentKind::MetricAlert,
            "STOP_REQUESTED" if seen.message.contains("dependency") => {
                IncidentKind::DependencyHalted
            }
            "CRASHED" => {
                let times = self.crashes.entry(seen.component.to_owned()).or_default();
                times.push_back(now);
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > CRASH_LOOP_WINDOW)
                {
                    times.pop_front();
                }
                if times.len() < CRASH_LOOP_CRASHES {
                    return None;
                }
                IncidentKind::CrashLoop
            }
            _ => return None,
        };
        if self.open.contains_key(seen.component) {
            return None;
        }
        let crashes = self.crashes.get(seen.component).map_or(0, VecDeque::len);
        let summary = match kind {
            IncidentKind::CrashLoop => format!(
                "{} crashed {crashes} times within {} s; the last: {}",
                seen.component,
                CRASH_LOOP_WINDOW.as_secs(),
                seen.message
            ),
            IncidentKind::Failed => format!("{} is FAILED: {}", seen.component, seen.message),
            IncidentKind::Unhealthy => {
                format!("{} was found unhealthy: {}", seen.component, seen.message)
            }
            IncidentKind::OomKilled => format!(
                "{} was killed by its memory limit: {}",
                seen.component, seen.message
            ),
            IncidentKind::DependencyHalted => {
                format!("{} was stopped: {}", seen.component, seen.message)
            }
            IncidentKind::MetricAlert => format!("{}: {}", seen.component, seen.message),
        };
        Some(Opening {
            component: seen.component.to_owned(),
            kind,
            trigger_event: seen.event_id,
            summary,
            suggested: suggestion(kind),
        })
    }

    /// The open metric incident a `METRIC_RECOVERED` event closes, if any.
    pub fn on_recovered(&self, seen: &Observed<'_>) -> Option<i64> {
        if seen.event != "METRIC_RECOVERED" {
            return None;
        }
        match self.open.get(seen.component) {
            Some((id, IncidentKind::MetricAlert)) => Some(*id),
            _ => None,
        }
    }

    /// The open incidents whose component has recovered: running, its process alive, for
    /// `STABLE_FOR` at least. `standing` answers for a component (None: no state row).
    pub fn recovered(&self, standing: impl Fn(&str) -> Option<Standing>) -> Vec<(String, i64)> {
        let mut done: Vec<(String, i64)> = self
            .open
            .iter()
            .filter(|(_, (_, kind))| *kind != IncidentKind::MetricAlert)
            .filter(|(component, _)| {
                standing(component).is_some_and(|s| {
                    s.state == RunState::Running && s.alive && s.uptime >= STABLE_FOR
                })
            })
            .map(|(component, (id, _))| (component.clone(), *id))
            .collect();
        done.sort();
        done
    }
}

/// The one action the rules suggest for a kind of problem.
pub fn suggestion(kind: IncidentKind) -> SuggestedAction {
    match kind {
        // Restarting a loop repeats it; stopping it ends the noise while the cause is fixed.
        IncidentKind::CrashLoop => SuggestedAction::Stop,
        // Already down: the cause is in its log, and `enable` is the operator's.
        IncidentKind::Failed => SuggestedAction::None,
        IncidentKind::Unhealthy => SuggestedAction::Restart,
        IncidentKind::DependencyHalted => SuggestedAction::StartDependency,
        IncidentKind::OomKilled => SuggestedAction::RaiseLimit,
        IncidentKind::MetricAlert => SuggestedAction::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(id: i64, component: &'a str, event: &'a str, message: &'a str) -> Observed<'a> {
        Observed {
            event_id: id,
            component,
            event,
            message,
        }
    }

    #[test]
    fn events_open_one_incident_per_component_and_kind_by_rule() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // (seconds, component, event, message, the kind opened)
        let table: &[(u64, &str, &str, &str, Option<IncidentKind>)] = &[
            (0, "a", "CRASHED", "exit code 3", None),
            (1, "a", "CRASHED", "exit code 3", None),
            (
                2,
                "a",
                "CRASHED",
                "exit code 3",
                Some(IncidentKind::CrashLoop),
            ),
            // Open already: the FAILED that follows is the same problem.
            (3, "a", "FAILED", "3 quick deaths", None),
            (3, "a", "CRASHED", "exit code 3", None),
            // Crashes spread wider than the window are no loop.
            (0, "b", "CRASHED", "signal 9", None),
            (61, "b", "CRASHED", "signal 9", None),
            (122, "b", "CRASHED", "signal 9", None),
            (
                5,
                "c",
                "UNHEALTHY",
                "no watchdog ping for 2 s",
                Some(IncidentKind::Unhealthy),
            ),
            (
                5,
                "d",
                "OOM_KILLED",
                "over memory_max 64.0 MiB",
                Some(IncidentKind::OomKilled),
            ),
            (
                5,
                "e",
                "STOP_REQUESTED",
                "its dependency base is disabled",
                Some(IncidentKind::DependencyHalted),
            ),
            (5, "f", "STOP_REQUESTED", "desired state is inactive", None),
            (
                5,
                "g",
                "FAILED",
                "dependency never ready",
                Some(IncidentKind::Failed),
            ),
            (5, "h", "STARTED_SUCCESSFULLY", "", None),
            (
                6,
                "nano_cpu_usage",
                "METRIC_ALERT",
                "ALERT: CPU usage 100.0 > 90 (cpu_usage_log row 3)",
                Some(IncidentKind::MetricAlert),
            ),
        ];
        let mut rules = IncidentRules::default();
        for (n, (secs, component, event, message, want)) in table.iter().enumerate() {
            let got = rules.on_event(&seen(n as i64, component, event, message), at(*secs));
            if let Some(opening) = &got {
                assert!(opening.summary.contains(component), "{opening:?}");
                rules.opened(component, n as i64, opening.kind);
            }
            assert_eq!(got.map(|o| o.kind), *want, "{component} {event} at {secs}");
        }
        assert_eq!(
            suggestion(IncidentKind::OomKilled),
            SuggestedAction::RaiseLimit
        );
    }

    #[test]
    fn a_component_recovers_after_running_stably() {
        let mut rules = IncidentRules::default();
        rules.opened("a", 1, IncidentKind::CrashLoop);
        rules.opened("m", 2, IncidentKind::MetricAlert);
        let standing = |state, alive, secs| {
            move |_: &str| {
                Some(Standing {
                    state,
                    alive,
                    uptime: Duration::from_secs(secs),
                })
            }
        };
        // (state, alive, uptime, recovered)
        for (state, alive, secs, want) in [
            (RunState::Running, true, 1, false),
            (RunState::Running, false, 60, false),
            (RunState::Backoff, true, 60, false),
            (RunState::Failed, false, 60, false),
            (RunState::Running, true, 5, true),
        ] {
            let done = rules.recovered(standing(state, alive, secs));
            assert_eq!(!done.is_empty(), want, "{state} alive {alive} for {secs} s");
            // A metric alert closes on its RECOVERED row, never on a state.
            assert!(done.iter().all(|(c, _)| c != "m"));
        }
        assert!(rules.recovered(|_| None).is_empty());
        rules.closed("a");
        assert_eq!(rules.open_incidents().count(), 1);
    }
}
