//! `/metrics` in the Prometheus text format 0.0.4, built from the same view as `n0m1ctl
//! status` plus the managers' resource samples and the metric daemons' latest values.
//!
//! Written here rather than with a client library: the scrape is a fresh snapshot each time
//! (no long-lived registry to keep in step with the tables), and `prometheus-client` encodes
//! OpenMetrics, not the 0.0.4 text `promtool check metrics` reads. Labels are component and
//! manager names and states only: never a pid or a message, whose values would never repeat.

use std::fmt::Write;

use n0m1_core::resources::ResourceSample;
use n0m1_core::state::RunState;
use n0m1_ctl::status::SystemView;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every state a component can show, so `n0m1_component_state` has each series every scrape.
pub const STATES: &[RunState] = RunState::ALL;

/// The latest value of each system metric, when there is one.
#[derive(Debug, Clone, Default)]
pub struct LatestMetrics {
    pub cpu_usage_percent: Option<f64>,
    pub memory_usage_percent: Option<f64>,
    pub cpu_temperature_celsius: Option<f64>,
}

/// What one scrape shows.
pub struct Snapshot<'a> {
    pub view: &'a SystemView,
    /// The newest resource sample of each component, recent enough to be current.
    pub resources: &'a [ResourceSample],
    pub metrics: LatestMetrics,
    /// `OOM_KILLED` events in the lifecycle log, by component.
    pub oom_kills: &'a std::collections::HashMap<String, u64>,
}

/// Escapes a label value: backslash, double quote and newline.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A float as Prometheus writes it.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", label(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }
}

/// The whole exposition.
pub fn render(snapshot: &Snapshot<'_>) -> String {
    let view = snapshot.view;
    let mut out = String::with_capacity(256 + view.components.len() * 900);
    let components = &view.components;

    let mut f = Family::header(
        &mut out,
        "n0m1_component_up",
        "gauge",
        "1 while the component's process runs, else 0.",
    );
    for c in components {
        let up = matches!(c.actual, RunState::Running) && c.pid.is_some();
        f.sample(
            "n0m1_component_up",
            &[
                ("component", c.component_id.as_str()),
                ("manager", n0m1_core::components::manager_name(&c.manager)),
            ],
            f64::from(u8::from(up)),
        );
    }
    let mut f = Family::header(
        &mut out,
        "n0m1_component_state",
        "gauge",
        "1 for the state the component is in, 0 for the others.",
    );
    for c in components {
        for state in STATES {
            f.sample(
                "n0m1_component_state",
                &[
                    ("component", c.component_id.as_str()),
                    ("state", state.as_str()),
                ],
                f64::from(u8::from(c.actual == *state)),
            );
        }
    }
    let mut f = Family::header(
        &mut out,
        "n0m1_component_restarts_total",
        "counter",
        "Restarts of the component recorded by its manager.",
    );
    for c in components {
        f.sample(
            "n0m1_component_restarts_total",
            &[("component", &c.component_id)],
            f64::from(c.restarts),
        );
    }
    let running = |id: &str| {
        components
            .iter()
            .any(|c| c.component_id == id && c.pid.is_some())
    };
    let sampled: Vec<&ResourceSample> = snapshot
        .resources
        .iter()
        .filter(|s| running(&s.component_id))
        .collect();
    let mut f = Family::header(
        &mut out,
        "n0m1_component_resident_memory_bytes",
        "gauge",
        "Resident memory of the component's process tree at its manager's last sample.",
    );
    for s in &sampled {
        f.sample(
            "n0m1_component_resident_memory_bytes",
            &[("component", &s.component_id)],
            s.rss_bytes as f64,
        );
    }
    let mut f = Family::header(
        &mut out,
        "n0m1_component_cpu_seconds_total",
        "counter",
        "CPU time (user + system) of the live processes of the component's tree at the last sample.",
    );
    for s in &sampled {
        f.sample(
            "n0m1_component_cpu_seconds_total",
            &[("component", &s.component_id)],
            s.cpu_seconds,
        );
    }
    let mut f = Family::header(
        &mut out,
        "n0m1_component_oom_kills_total",
        "counter",
        "Kills of the component's processes by its own memory limit (OOM_KILLED events).",
    );
    for c in components {
        f.sample(
            "n0m1_component_oom_kills_total",
            &[("component", &c.component_id)],
            snapshot
                .oom_kills
                .get(&c.component_id)
                .copied()
                .unwrap_or(0) as f64,
        );
    }
    let mut f = Family::header(
        &mut out,
        "n0m1_component_memory_limit_bytes",
        "gauge",
        "The component's memory_max (components with one).",
    );
    for c in components {
        if let Some(limit) = c.limits.as_ref().and_then(|l| l.memory_max) {
            f.sample(
                "n0m1_component_memory_limit_bytes",
                &[("component", &c.component_id)],
                limit as f64,
            );
        }
    }
    let mut f = Family::header(
        &mut out,
        "n0m1_component_memory_bytes",
        "gauge",
        "Memory charged to the component's cgroup now (every process in it, page cache included).",
    );
    for c in components {
        if let Some(bytes) = c.limits.as_ref().and_then(|l| l.memory_bytes) {
            f.sample(
                "n0m1_component_memory_bytes",
                &[("component", &c.component_id)],
                bytes as f64,
            );
        }
    }
    let mut f = Family::header(
        &mut out,
        "n0m1_component_start_time_seconds",
        "gauge",
        "Unix time at which the component's current process started.",
    );
    for c in components {
        if let Some(started) = c.started_at.filter(|_| c.pid.is_some()) {
            f.sample(
                "n0m1_component_start_time_seconds",
                &[("component", &c.component_id)],
                started,
            );
        }
    }
    let processes: Vec<_> = std::iter::once(&view.boot).chain(&view.managers).collect();
    let mut f = Family::header(
        &mut out,
        "n0m1_manager_up",
        "gauge",
        "1 while boot_system, the log writer or a manager holds its PID file, else 0.",
    );
    for p in &processes {
        f.sample(
            "n0m1_manager_up",
            &[("manager", &p.name)],
            f64::from(u8::from(p.state == "running")),
        );
    }
    let mut f = Family::header(
        &mut out,
        "n0m1_manager_heartbeat_age_seconds",
        "gauge",
        "Seconds since a running manager last touched its PID file.",
    );
    for p in &processes {
        if let Some(age) = p.heartbeat_age_secs {
            f.sample(
                "n0m1_manager_heartbeat_age_seconds",
                &[("manager", &p.name)],
                age,
            );
        }
    }
    let metrics = [
        (
            "n0m1_cpu_usage_percent",
            "CPU usage of the machine, latest sample of cpu_usage_daemon.",
            snapshot.metrics.cpu_usage_percent,
        ),
        (
            "n0m1_memory_usage_percent",
            "Memory in use on the machine, latest sample of mem_usage_daemon.",
            snapshot.metrics.memory_usage_percent,
        ),
        (
            "n0m1_cpu_temperature_celsius",
            "CPU temperature, latest sample of temp_main_daemon (absent without a sensor).",
            snapshot.metrics.cpu_temperature_celsius,
        ),
    ];
    for (name, help, value) in metrics {
        if let Some(value) = value {
            Family::header(&mut out, name, "gauge", help).sample(name, &[], value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use n0m1_ctl::status::{ComponentView, ProcessView};

    fn process(name: &str, state: &str) -> ProcessView {
        ProcessView {
            name: name.into(),
            state: state.into(),
            pid: (state == "running").then_some(10),
            uptime_secs: None,
            heartbeat_age_secs: (state == "running").then_some(0.5),
            rss_kib: None,
            cpu_percent: None,
        }
    }

    fn component(id: &str, actual: RunState, pid: Option<i32>) -> ComponentView {
        ComponentView {
            component_id: id.into(),
            manager: "daemon_manager.py".into(),
            desired: "active".into(),
            actual,
            pid,
            started_at: pid.map(|_| 1_700_000_000.5),
            uptime_secs: None,
            restarts: 3,
            last_exit: Some("signal SIGKILL\nwith \"quotes\"".into()),
            rss_kib: None,
            cpu_percent: None,
            ready: true,
            status_text: None,
            waiting_for: None,
            problem: None,
            limits: (id == "a").then(|| n0m1_ctl::limits::LimitsView {
                memory_max: Some(64 << 20),
                memory_bytes: Some(1 << 20),
                summary: "memory_max 64.0 MiB".into(),
                ..Default::default()
            }),
            schedule: None,
        }
    }

    #[test]
    fn the_exposition_has_every_family_escaped_labels_and_no_pid_or_message() {
        let view = SystemView {
            home_id: "h0000000000".into(),
            home: "/h".into(),
            boot: process("boot_system", "running"),
            managers: vec![
                process("daemon_manager", "running"),
                process("nano_manager", "stopped"),
            ],
            components: vec![
                component("a", RunState::Running, Some(42)),
                component("we\"ird\\id", RunState::Failed, None),
            ],
            recent_errors: Vec::new(),
            warnings: Vec::new(),
        };
        let resources = [ResourceSample {
            component_id: "a".into(),
            manager: "daemon_manager".into(),
            sampled_at: 1.0,
            rss_bytes: 4096,
            cpu_seconds: 1.25,
            processes: 2,
        }];
        let oom_kills = [("a".to_owned(), 2)].into_iter().collect();
        let text = render(&Snapshot {
            view: &view,
            resources: &resources,
            oom_kills: &oom_kills,
            metrics: LatestMetrics {
                cpu_usage_percent: Some(12.5),
                memory_usage_percent: Some(40.0),
                cpu_temperature_celsius: None,
            },
        });
        for line in [
            "n0m1_component_up{component=\"a\",manager=\"daemon_manager\"} 1",
            "n0m1_component_up{component=\"we\\\"ird\\\\id\",manager=\"daemon_manager\"} 0",
            "n0m1_component_state{component=\"a\",state=\"running\"} 1",
            "n0m1_component_state{component=\"a\",state=\"failed\"} 0",
            "n0m1_component_state{component=\"we\\\"ird\\\\id\",state=\"failed\"} 1",
            "n0m1_component_restarts_total{component=\"a\"} 3",
            "n0m1_component_resident_memory_bytes{component=\"a\"} 4096",
            "n0m1_component_cpu_seconds_total{component=\"a\"} 1.25",
            "n0m1_component_start_time_seconds{component=\"a\"} 1700000000.5",
            "n0m1_component_oom_kills_total{component=\"a\"} 2",
            "n0m1_component_oom_kills_total{component=\"we\\\"ird\\\\id\"} 0",
            "n0m1_component_memory_limit_bytes{component=\"a\"} 67108864",
            "n0m1_component_memory_bytes{component=\"a\"} 1048576",
            "n0m1_manager_up{manager=\"nano_manager\"} 0",
            "n0m1_manager_heartbeat_age_seconds{manager=\"daemon_manager\"} 0.5",
            "n0m1_cpu_usage_percent 12.5",
            "n0m1_memory_usage_percent 40",
            "# TYPE n0m1_component_restarts_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains("n0m1_cpu_temperature_celsius"),
            "no sensor, no series"
        );
        assert!(!text.contains("42"), "a pid never appears");
        assert!(!text.contains("SIGKILL"), "a message never appears");
        // Each family's HELP and TYPE once.
        assert_eq!(text.matches("# TYPE n0m1_component_state gauge").count(), 1);
    }
}
