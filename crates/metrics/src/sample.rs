//! The three measurements, computed the way node_exporter, psutil and Telegraf do, from text
//! read once per sample (only the files needed: /proc/stat's first line, two lines of
//! /proc/meminfo, one hwmon file).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The aggregate `cpu` line of /proc/stat, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// Parses the first (`cpu `) line of /proc/stat. `guest` and `guest_nice` are already
    /// counted in `user` and `nice`, so they are left out of the total (psutil's rule).
    pub fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let get = |i: usize| fields.get(i).copied().unwrap_or(0);
        if fields.len() < 4 {
            return None;
        }
        Some(CpuTimes {
            user: get(0),
            nice: get(1),
            system: get(2),
            idle: get(3),
            iowait: get(4),
            irq: get(5),
            softirq: get(6),
            steal: get(7),
        })
    }

    fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }

    /// Percent of all CPUs busy between `earlier` and `self`: busy = Δtotal − Δidle − Δiowait.
    /// `None` when no time passed (or the counters went backwards).
    pub fn busy_percent_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total().checked_sub(earlier.total())?;
        if total == 0 {
            return None;
        }
        let idle = (self.idle + self.iowait).checked_sub(earlier.idle + earlier.iowait)?;
        let busy = total.saturating_sub(idle);
        Some((busy as f64 / total as f64 * 100.0).clamp(0.0, 100.0))
    }
}

/// Percent of RAM in use: 100 × (MemTotal − MemAvailable) / MemTotal.
pub fn memory_percent(meminfo: &str) -> Option<f64> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(':'))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    if total == 0 {
        return None;
    }
    Some(total.saturating_sub(available) as f64 / total as f64 * 100.0)
}

/// Percent CPU over the interval between two calls. The first call only takes a baseline:
/// the since-boot average it would otherwise give is not a usage figure (the original's first
/// row was 100.0 on an idle machine). Calls closer than `MIN_WINDOW` return the last value.
#[derive(Debug)]
pub struct CpuSampler {
    proc_root: PathBuf,
    last: Option<(Instant, CpuTimes)>,
    last_value: Option<f64>,
}

pub const MIN_WINDOW: Duration = Duration::from_millis(200);

impl CpuSampler {
    pub fn new(proc_root: &Path) -> CpuSampler {
        CpuSampler {
            proc_root: proc_root.to_path_buf(),
            last: None,
            last_value: None,
        }
    }

    pub fn sample(&mut self) -> std::io::Result<Option<f64>> {
        let now = Instant::now();
        if let Some((at, _)) = self.last
            && now.duration_since(at) < MIN_WINDOW
        {
            return Ok(self.last_value);
        }
        let text = read_head(&self.proc_root.join("stat"), 256)?;
        let current = CpuTimes::parse(&text)
            .ok_or_else(|| std::io::Error::other("no aggregate cpu line in /proc/stat"))?;
        if let Some((_, earlier)) = self.last
            && let Some(value) = current.busy_percent_since(&earlier)
        {
            self.last_value = Some(value);
        }
        self.last = Some((now, current));
        Ok(self.last_value)
    }
}

/// Reads at most `limit` bytes: /proc/stat's first line is all we need of a file that grows
/// with the number of CPUs and interrupts.
fn read_head(path: &Path, limit: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buffer = vec![0u8; limit];
    let mut file = std::fs::File::open(path)?;
    let mut filled = 0;
    while filled < limit {
        let n = file.read(&mut buffer[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buffer.truncate(filled);
    Ok(String::from_utf8_lossy(&buffer).into_owned())
}

pub fn read_memory_percent(proc_root: &Path) -> std::io::Result<Option<f64>> {
    Ok(memory_percent(&read_head(&proc_root.join("meminfo"), 512)?))
}

/// hwmon drivers whose sensors measure the CPU package.
pub const CPU_HWMON_DRIVERS: &[&str] = &[
    "coretemp",
    "k10temp",
    "zenpower",
    "cpu_thermal",
    "soc_thermal",
];
/// Labels that name the package (or control) temperature, preferred over per-core ones.
const PACKAGE_LABELS: &[&str] = &["Package id 0", "Tctl", "Tdie", "CPU"];
/// thermal_zone types that are the CPU package.
pub const CPU_THERMAL_ZONES: &[&str] =
    &["x86_pkg_temp", "cpu-thermal", "cpu_thermal", "soc-thermal"];

/// Where the CPU temperature is read from, once found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemperatureSensor {
    pub input: PathBuf,
    pub description: String,
}

impl TemperatureSensor {
    /// Looks for the CPU package sensor under `sys_root` (normally /sys).
    pub fn find(sys_root: &Path) -> Option<TemperatureSensor> {
        let hwmon = sys_root.join("class/hwmon");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&hwmon)
            .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        dirs.sort();
        for driver in CPU_HWMON_DRIVERS {
            for dir in &dirs {
                let name = std::fs::read_to_string(dir.join("name")).unwrap_or_default();
                if name.trim() != *driver {
                    continue;
                }
                let mut inputs: Vec<PathBuf> = std::fs::read_dir(dir)
                    .ok()?
                    .filter_map(|e| Some(e.ok()?.path()))
                    .filter(|p| {
                        let file = p.file_name().and_then(|f| f.to_str()).unwrap_or("");
                        file.starts_with("temp") && file.ends_with("_input")
                    })
                    .collect();
                inputs.sort();
                let label_of = |input: &Path| {
                    let label = input.to_string_lossy().replace("_input", "_label");
                    std::fs::read_to_string(label)
                        .unwrap_or_default()
                        .trim()
                        .to_owned()
                };
                let chosen = inputs
                    .iter()
                    .find(|i| PACKAGE_LABELS.contains(&label_of(i).as_str()))
                    .or_else(|| inputs.first());
                if let Some(input) = chosen {
                    return Some(TemperatureSensor {
                        description: format!("hwmon {driver} {}", label_of(input))
                            .trim()
                            .to_owned(),
                        input: input.clone(),
                    });
                }
            }
        }
        Self::find_thermal_zone(sys_root)
    }

    fn find_thermal_zone(sys_root: &Path) -> Option<TemperatureSensor> {
        let thermal = sys_root.join("class/thermal");
        let mut zones: Vec<PathBuf> = std::fs::read_dir(thermal)
            .ok()?
            .filter_map(|e| Some(e.ok()?.path()))
            .collect();
        zones.sort();
        zones.into_iter().find_map(|zone| {
            let kind = std::fs::read_to_string(zone.join("type")).ok()?;
            CPU_THERMAL_ZONES
                .contains(&kind.trim())
                .then(|| TemperatureSensor {
                    input: zone.join("temp"),
                    description: format!("thermal zone {}", kind.trim()),
                })
        })
    }

    /// Degrees Celsius (the files hold millidegrees).
    pub fn read_celsius(&self) -> std::io::Result<f64> {
        let text = std::fs::read_to_string(&self.input)?;
        let milli: f64 = text.trim().parse().map_err(|_| {
            std::io::Error::other(format!(
                "{} holds {text:?}, not a number",
                self.input.display()
            ))
        })?;
        Ok(milli / 1000.0)
    }

    /// What `find` looks for, for the NO_SENSOR message.
    pub fn searched(sys_root: &Path) -> String {
        format!(
            "hwmon drivers {} under {}, thermal zones {} under {}",
            CPU_HWMON_DRIVERS.join("/"),
            sys_root.join("class/hwmon").display(),
            CPU_THERMAL_ZONES.join("/"),
            sys_root.join("class/thermal").display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_A: &str =
        "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nintr 1234\n";
    const STAT_B: &str = "cpu  160 5 70 1100 40 3 2 1 9 0\ncpu0 80 2 35 550 20 1 1 0 0 0\n";

    #[test]
    fn cpu_usage_is_busy_share_of_the_delta() {
        let a = CpuTimes::parse(STAT_A).unwrap();
        let b = CpuTimes::parse(STAT_B).unwrap();
        // Δtotal = (60 + 0 + 20 + 100 + 20) = 200; Δidle+iowait = 120; busy 80 → 40 %.
        assert_eq!(b.busy_percent_since(&a), Some(40.0));
        assert_eq!(a.busy_percent_since(&a), None, "no time passed");
        assert_eq!(a.busy_percent_since(&b), None, "counters went backwards");
    }

    #[test]
    fn old_kernels_with_four_fields_parse() {
        let t = CpuTimes::parse("cpu 1 2 3 4\n").unwrap();
        assert_eq!((t.user, t.idle, t.iowait), (1, 4, 0));
        assert!(CpuTimes::parse("intr 5\n").is_none());
        assert!(CpuTimes::parse("cpu x y z\n").is_none());
    }

    #[test]
    fn memory_percent_uses_mem_available() {
        let meminfo = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n";
        assert_eq!(memory_percent(meminfo), Some(75.0));
        assert_eq!(memory_percent("MemTotal: 10 kB\n"), None);
    }

    #[test]
    fn first_sample_is_a_baseline_and_close_samples_repeat() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("stat"), STAT_A).unwrap();
        let mut sampler = CpuSampler::new(tmp.path());
        assert_eq!(
            sampler.sample().unwrap(),
            None,
            "the since-boot average is never reported"
        );
        std::fs::write(tmp.path().join("stat"), STAT_B).unwrap();
        assert_eq!(
            sampler.sample().unwrap(),
            None,
            "closer than 200 ms: old value (none yet)"
        );
        std::thread::sleep(MIN_WINDOW);
        assert_eq!(sampler.sample().unwrap(), Some(40.0));
    }

    fn fake_hwmon(root: &Path, index: usize, name: &str, temps: &[(&str, &str)]) {
        let dir = root.join(format!("class/hwmon/hwmon{index}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("name"), format!("{name}\n")).unwrap();
        for (i, (label, milli)) in temps.iter().enumerate() {
            std::fs::write(dir.join(format!("temp{}_input", i + 1)), milli).unwrap();
            std::fs::write(dir.join(format!("temp{}_label", i + 1)), label).unwrap();
        }
    }

    #[test]
    fn finds_the_package_sensor_and_reads_celsius() {
        let tmp = tempfile::tempdir().unwrap();
        fake_hwmon(tmp.path(), 0, "nvme", &[("Composite", "38000")]);
        fake_hwmon(
            tmp.path(),
            1,
            "coretemp",
            &[("Core 0", "50000"), ("Package id 0", "55500")],
        );
        let sensor = TemperatureSensor::find(tmp.path()).unwrap();
        assert_eq!(sensor.read_celsius().unwrap(), 55.5);
        assert!(sensor.description.contains("coretemp"));
    }

    #[test]
    fn no_sensor_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        fake_hwmon(tmp.path(), 0, "nvme", &[("Composite", "38000")]);
        assert_eq!(TemperatureSensor::find(tmp.path()), None);
        assert_eq!(TemperatureSensor::find(&tmp.path().join("nothing")), None);
    }

    #[test]
    fn thermal_zone_is_the_fallback() {
        let tmp = tempfile::tempdir().unwrap();
        let zone = tmp.path().join("class/thermal/thermal_zone0");
        std::fs::create_dir_all(&zone).unwrap();
        std::fs::write(zone.join("type"), "x86_pkg_temp\n").unwrap();
        std::fs::write(zone.join("temp"), "61000\n").unwrap();
        assert_eq!(
            TemperatureSensor::find(tmp.path())
                .unwrap()
                .read_celsius()
                .unwrap(),
            61.0
        );
    }
}
