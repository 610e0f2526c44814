//! What to send, as a pure function of the rules, the events and the time: at most one
//! delivery per (rule, component, event type) per `min_interval` (later ones counted and
//! reported in the next), a reminder every `remind` while a component stays FAILED, and one
//! RECOVERED when it runs again. Tested by tables; `crate::run` performs the decisions.

use std::collections::HashMap;
use std::time::Instant;

use crate::rules::Rule;

/// One event, as the alerter reads it from the lifecycle log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub component: String,
    pub event: String,
    pub message: String,
    pub timestamp: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub rule_id: i64,
    pub component: String,
    pub event: String,
    pub message: String,
    pub timestamp: String,
    /// Matching events not delivered since the last delivery of this key.
    pub suppressed: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Send(Alert),
    Suppress {
        rule_id: i64,
        component: String,
        event: String,
    },
}

type Key = (i64, String, String);

#[derive(Debug, Default)]
pub struct Tracker {
    last_sent: HashMap<Key, Instant>,
    suppressed: HashMap<Key, u32>,
    /// (rule, component) → since when it is FAILED, and the last alert or reminder.
    failed: HashMap<(i64, String), (Instant, Instant, String)>,
}

/// Events that mean a component runs again.
const RUNS_AGAIN: &[&str] = &["START_ATTEMPT", "ADOPTED", "MANAGER_STARTED"];

impl Tracker {
    fn offer(
        &mut self,
        rule: &Rule,
        seen: &Seen,
        event: &str,
        now: Instant,
        out: &mut Vec<Decision>,
    ) {
        let key = (rule.id, seen.component.clone(), event.to_owned());
        let due = self
            .last_sent
            .get(&key)
            .is_none_or(|last| now.saturating_duration_since(*last) >= rule.min_interval);
        if !due {
            *self.suppressed.entry(key).or_default() += 1;
            out.push(Decision::Suppress {
                rule_id: rule.id,
                component: seen.component.clone(),
                event: event.to_owned(),
            });
            return;
        }
        let suppressed = self.suppressed.remove(&key).unwrap_or(0);
        self.last_sent.insert(key, now);
        out.push(Decision::Send(Alert {
            rule_id: rule.id,
            component: seen.component.clone(),
            event: event.to_owned(),
            message: seen.message.clone(),
            timestamp: seen.timestamp.clone(),
            suppressed,
        }));
    }

    pub fn on_event(&mut self, rules: &[Rule], seen: &Seen, now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        for rule in rules.iter().filter(|r| r.matches(&seen.component)) {
            let key = (rule.id, seen.component.clone());
            if RUNS_AGAIN.contains(&seen.event.as_str())
                && self.failed.remove(&key).is_some()
                && rule.wants("RECOVERED")
            {
                // Once per FAILED episode, whatever the interval.
                let recovered = Seen {
                    event: "RECOVERED".into(),
                    message: format!("running again ({})", seen.event),
                    ..seen.clone()
                };
                let alert_key = (rule.id, seen.component.clone(), "RECOVERED".to_owned());
                self.last_sent.remove(&alert_key);
                self.offer(rule, &recovered, "RECOVERED", now, &mut out);
            }
            let failed = matches!(
                seen.event.as_str(),
                "FAILED" | "START_FAILED" | "STOP_FAILED"
            );
            if rule.wants(&seen.event) {
                if failed {
                    self.failed.insert(key, (now, now, seen.message.clone()));
                }
                self.offer(rule, seen, &seen.event, now, &mut out);
            }
        }
        out
    }

    /// Reminders for components still FAILED.
    pub fn on_tick(&mut self, rules: &[Rule], now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        for ((rule_id, component), (since, last, message)) in &mut self.failed {
            let Some(rule) = rules.iter().find(|r| r.id == *rule_id) else {
                continue;
            };
            let Some(every) = rule.remind else {
                continue;
            };
            if now.saturating_duration_since(*last) < every {
                continue;
            }
            *last = now;
            out.push(Decision::Send(Alert {
                rule_id: *rule_id,
                component: component.clone(),
                event: "FAILED".into(),
                message: format!(
                    "reminder: still failed after {:.0} s ({message})",
                    now.saturating_duration_since(*since).as_secs_f64()
                ),
                timestamp: String::new(),
                suppressed: 0,
            }));
        }
        out
    }

    /// When the next reminder is due.
    pub fn next_deadline(&self, rules: &[Rule]) -> Option<Instant> {
        self.failed
            .iter()
            .filter_map(|((rule_id, _), (_, last, _))| {
                let every = rules.iter().find(|r| r.id == *rule_id)?.remind?;
                Some(*last + every)
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rules::{Action, Rule};

    fn rule(events: &[&str], min_interval_ms: u64, remind_ms: Option<u64>) -> Rule {
        Rule {
            id: 1,
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            glob: glob::Pattern::new("crash*").unwrap(),
            action: Action::Webhook("http://x".into()),
            min_interval: Duration::from_millis(min_interval_ms),
            remind: remind_ms.map(Duration::from_millis),
        }
    }

    fn seen(component: &str, event: &str) -> Seen {
        Seen {
            component: component.into(),
            event: event.into(),
            message: format!("{event} of {component}"),
            timestamp: "t".into(),
        }
    }

    /// `send FAILED 0` / `suppress FAILED` for short.
    fn short(decisions: &[Decision]) -> Vec<String> {
        decisions
            .iter()
            .map(|d| match d {
                Decision::Send(a) => format!("send {} {}", a.event, a.suppressed),
                Decision::Suppress { event, .. } => format!("suppress {event}"),
            })
            .collect()
    }

    #[test]
    fn one_delivery_per_interval_the_rest_counted_then_recovered_once() {
        let rules = [rule(&["FAILED", "RECOVERED"], 1000, None)];
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let steps: &[(u64, Seen, &[&str])] = &[
            (0, seen("crashy", "FAILED"), &["send FAILED 0"]),
            (10, seen("other", "FAILED"), &[]),
            (10, seen("crashy", "CRASHED"), &[]),
            (100, seen("crashy", "START_ATTEMPT"), &["send RECOVERED 0"]),
            (200, seen("crashy", "FAILED"), &["suppress FAILED"]),
            (300, seen("crashy", "FAILED"), &["suppress FAILED"]),
            (1100, seen("crashy", "FAILED"), &["send FAILED 2"]),
            (1200, seen("crashy", "START_ATTEMPT"), &["send RECOVERED 0"]),
            (1300, seen("crashy", "START_ATTEMPT"), &[]),
        ];
        for (ms, event, expected) in steps {
            assert_eq!(
                short(&t.on_event(&rules, event, at(*ms))),
                *expected,
                "at {ms} ms: {event:?}"
            );
        }
    }

    #[test]
    fn a_component_that_stays_failed_is_reminded() {
        let rules = [rule(&["FAILED"], 0, Some(500))];
        let mut t = Tracker::default();
        let t0 = Instant::now();
        assert_eq!(
            short(&t.on_event(&rules, &seen("crashy", "FAILED"), t0)),
            ["send FAILED 0"]
        );
        assert_eq!(
            t.next_deadline(&rules),
            Some(t0 + Duration::from_millis(500))
        );
        assert!(
            t.on_tick(&rules, t0 + Duration::from_millis(400))
                .is_empty()
        );
        let reminders = t.on_tick(&rules, t0 + Duration::from_millis(500));
        assert_eq!(short(&reminders), ["send FAILED 0"]);
        let Decision::Send(alert) = &reminders[0] else {
            unreachable!()
        };
        assert!(
            alert.message.starts_with("reminder: still failed"),
            "{}",
            alert.message
        );
        // Running again ends the reminders.
        t.on_event(
            &rules,
            &seen("crashy", "START_ATTEMPT"),
            t0 + Duration::from_millis(600),
        );
        assert!(t.on_tick(&rules, t0 + Duration::from_secs(10)).is_empty());
    }
}
