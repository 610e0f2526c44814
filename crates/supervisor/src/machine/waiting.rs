//! Start order: a component whose dependencies do not meet their conditions waits
//! (`RunState::Waiting`) instead of starting; once they do, it starts; after
//! `start_timeout` it is FAILED with what it waited for. A component in a dependency cycle is
//! refused with an ERROR naming the cycle and waits (no timeout) until the cycle is broken.

use std::time::Instant;

use n0m1_core::lifecycle::LifecycleEvent;

use super::{Component, Context, Effect, Phase};

/// What the component's dependencies allow, as the manager computed it from the tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Gate {
    /// No dependency, or every one met.
    #[default]
    Open,
    /// What it waits for: `cpu_usage_daemon (ready)`.
    Waiting(String),
    /// It is part of this cycle: `a → b → a`.
    Cycle(String),
    /// A dependency is disabled: a running component is stopped (dependents go first), a
    /// stopped one waits, without a timeout, until it is enabled again.
    Halt(String),
}

impl Component {
    /// Starts the component now if its gate is open, else makes it wait.
    pub(super) fn start(&mut self, cx: &Context<'_>, out: &mut Vec<Effect>) {
        if self.gate == Gate::Open {
            self.spawn(out);
            return;
        }
        self.phase = Phase::Waiting {
            since: cx.now,
            give_up: cx.now + cx.policy.start_timeout.duration(),
        };
        self.report_cycle(out);
        out.push(Effect::save());
    }

    pub(super) fn on_gate(&mut self, gate: Gate, cx: &Context<'_>, out: &mut Vec<Effect>) {
        if self.gate == gate {
            return;
        }
        // The start timeout counts from when the dependencies could come: a dependent that
        // waited for a disabled (or cyclic) dependency starts its clock when that ends.
        let clock_starts =
            !matches!(self.gate, Gate::Waiting(_)) && matches!(gate, Gate::Waiting(_));
        self.gate = gate;
        if clock_starts && let Phase::Waiting { since, give_up } = &mut self.phase {
            *since = cx.now;
            *give_up = cx.now + cx.policy.start_timeout.duration();
        }
        if let (Phase::Running(_), Gate::Halt(reason)) = (&self.phase, &self.gate) {
            let reason = reason.clone();
            self.begin_stop(super::AfterStop::Restart, &reason, cx, out);
            return;
        }
        if let Phase::Waiting { .. } = self.phase {
            if self.gate == Gate::Open && !cx.shutting_down {
                self.spawn(out);
            } else {
                self.report_cycle(out);
            }
        }
    }

    /// A cycle is said once per cycle text.
    fn report_cycle(&mut self, out: &mut Vec<Effect>) {
        let Gate::Cycle(cycle) = &self.gate else {
            return;
        };
        if self.reported_cycle.as_ref() == Some(cycle) {
            return;
        }
        self.reported_cycle = Some(cycle.clone());
        out.push(Effect::Record(self.record(LifecycleEvent::Error).message(format!(
            "dependency cycle {cycle}: nothing in it starts until a row of component_dependencies breaks it"
        ))));
    }

    /// When a waiting component gives up (a cycle waits without end: it is reported).
    pub(super) fn waiting_deadline(&self, give_up: Instant) -> Option<Instant> {
        match self.gate {
            Gate::Waiting(_) => Some(give_up),
            _ => None,
        }
    }

    pub(super) fn waiting_tick(&mut self, cx: &Context<'_>, out: &mut Vec<Effect>) {
        let Phase::Waiting { since, give_up } = self.phase else {
            return;
        };
        let Gate::Waiting(what) = &self.gate else {
            return;
        };
        if cx.now < give_up {
            return;
        }
        let message = format!(
            "waited {:.1} s (supervisor.start_timeout) for {what}; staying down until `n0m1ctl enable {}`",
            cx.now.saturating_duration_since(since).as_secs_f64(),
            self.row.component_id
        );
        self.settle_failed(LifecycleEvent::Failed, message, out);
    }
}
