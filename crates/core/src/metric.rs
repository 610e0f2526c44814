//! The three metrics the original samples, with everything said about each in one place:
//! its table and column, the combined `system_metrics_log` column, its unit, the daemon
//! that samples it, the name the API and n0m1ctl use, and the original's alert threshold.

use crate::schema::{CPU_TEMPERATURE_LOG, CPU_USAGE_LOG, MEMORY_USAGE_LOG};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    CpuTemperature,
    CpuUsage,
    Memory,
}

impl Metric {
    /// In the order `n0m1ctl metrics` and the dashboard show them.
    pub const ALL: [Metric; 3] = [Metric::CpuUsage, Metric::Memory, Metric::CpuTemperature];

    /// The name the API, `/metrics` and `n0m1ctl metrics --json` use.
    pub fn name(self) -> &'static str {
        match self {
            Metric::CpuUsage => "cpu_usage",
            Metric::Memory => "memory",
            Metric::CpuTemperature => "cpu_temperature",
        }
    }

    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The table its daemon writes.
    pub fn table(self) -> &'static str {
        match self {
            Metric::CpuTemperature => CPU_TEMPERATURE_LOG,
            Metric::CpuUsage => CPU_USAGE_LOG,
            Metric::Memory => MEMORY_USAGE_LOG,
        }
    }

    /// The value's column in `table()`.
    pub fn column(self) -> &'static str {
        match self {
            Metric::CpuTemperature => "temperature_celsius",
            Metric::CpuUsage => "cpu_usage",
            Metric::Memory => "mem_usage",
        }
    }

    /// Its column in the original's combined `system_metrics_log`.
    pub fn combined_column(self) -> &'static str {
        match self {
            Metric::CpuTemperature => "cpu_temp",
            Metric::CpuUsage => "cpu_usage",
            Metric::Memory => "mem_usage",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::CpuTemperature => "°C",
            Metric::CpuUsage | Metric::Memory => "%",
        }
    }

    /// The component id (and binary name) of the original's daemon that samples it.
    pub fn daemon(self) -> &'static str {
        match self {
            Metric::CpuTemperature => "temp_main_daemon",
            Metric::CpuUsage => "cpu_usage_daemon",
            Metric::Memory => "mem_usage_daemon",
        }
    }

    /// Its heading in `n0m1ctl metrics` and on the dashboard.
    pub fn label(self) -> &'static str {
        match self {
            Metric::CpuTemperature => "CPU temperature",
            Metric::CpuUsage => "CPU usage",
            Metric::Memory => "Memory",
        }
    }

    /// What it is, in words (alert texts).
    pub fn describe(self) -> &'static str {
        match self {
            Metric::CpuTemperature => "CPU temperature",
            Metric::CpuUsage => "CPU usage",
            Metric::Memory => "memory usage",
        }
    }

    /// The original's alert threshold (a value above it alerts).
    pub fn alert_threshold(self) -> f64 {
        match self {
            Metric::CpuTemperature => 80.0,
            Metric::CpuUsage | Metric::Memory => 90.0,
        }
    }

    /// The metric a column holds, in its own table or in `system_metrics_log`.
    pub fn of_column(column: &str) -> Option<Metric> {
        Metric::ALL
            .into_iter()
            .find(|m| m.column() == column || m.combined_column() == column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_columns_find_their_metric() {
        for metric in Metric::ALL {
            assert_eq!(Metric::parse(metric.name()), Some(metric));
            assert_eq!(Metric::of_column(metric.column()), Some(metric));
            assert_eq!(Metric::of_column(metric.combined_column()), Some(metric));
        }
        assert_eq!(Metric::of_column("cpu_temp"), Some(Metric::CpuTemperature));
        assert_eq!(Metric::parse("load"), None);
    }
}
