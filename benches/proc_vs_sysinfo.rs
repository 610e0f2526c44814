//! /proc read by hand (what the metric daemons and `status` do) against the sysinfo crate, for
//! the same readings: prints figures, asserts nothing.
//!
//! `cargo bench --bench proc_vs_sysinfo`. Each way runs in its own copy of this binary (the
//! same executable, so the same mapped text), which takes 2,000 CPU + memory samples, then reads
//! every process's CPU time and RSS 20 times (what `status --detailed` needs), and reports its
//! CPU time per sample and its resident memory (VmRSS after the work, VmHWM peak).

use std::path::Path;
use std::time::Instant;

use nix::sys::resource::{UsageWho, getrusage};

const MODE_ENV: &str = "N0M1_BENCH_SAMPLER";
const SAMPLES: u32 = 2_000;
const PROCESS_SCANS: u32 = 20;

fn cpu_seconds() -> f64 {
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    seconds(usage.user_time()) + seconds(usage.system_time())
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn run(mode: &str) {
    let proc_root = Path::new("/proc");
    let started = cpu_seconds();
    let wall = Instant::now();
    let mut checksum = 0.0f64;
    let processes;
    match mode {
        "proc" => {
            let mut cpu = n0m1_metrics::sample::CpuSampler::new(proc_root);
            for _ in 0..SAMPLES {
                checksum += cpu.sample().unwrap().unwrap_or(0.0);
                checksum += n0m1_metrics::sample::read_memory_percent(proc_root)
                    .unwrap()
                    .unwrap_or(0.0);
            }
            let sample_cpu = cpu_seconds() - started;
            let scan_start = cpu_seconds();
            let mut count = 0;
            for _ in 0..PROCESS_SCANS {
                let all = n0m1_core::process::all_processes();
                count = all.len();
                checksum += all
                    .iter()
                    .map(|p| {
                        (p.utime_ticks + p.stime_ticks) as f64
                            + n0m1_core::process::rss_kib(p) as f64
                    })
                    .sum::<f64>();
            }
            processes = (count, sample_cpu, cpu_seconds() - scan_start);
        }
        "sysinfo" => {
            use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
            let mut system = System::new().unwrap();
            for _ in 0..SAMPLES {
                system.refresh_cpu_usage();
                system.refresh_memory();
                checksum += f64::from(system.global_cpu_usage());
                checksum += 100.0 * (system.total_memory() - system.available_memory()) as f64
                    / system.total_memory().max(1) as f64;
            }
            let sample_cpu = cpu_seconds() - started;
            let scan_start = cpu_seconds();
            let mut count = 0;
            for _ in 0..PROCESS_SCANS {
                system.refresh_processes_specifics(
                    ProcessesToUpdate::All,
                    true,
                    ProcessRefreshKind::nothing().with_cpu().with_memory(),
                );
                count = system.processes().len();
                checksum += system
                    .processes()
                    .values()
                    .map(|p| p.accumulated_cpu_time() as f64 + p.memory() as f64)
                    .sum::<f64>();
            }
            processes = (count, sample_cpu, cpu_seconds() - scan_start);
        }
        other => panic!("unknown mode {other}"),
    }
    let (count, sample_cpu, scan_cpu) = processes;
    println!(
        "{mode:<8} CPU per CPU+memory sample {:.1} µs; CPU per scan of {count} processes {:.2} ms; \
         VmRSS {} KiB, VmHWM {} KiB ({:.1} s wall, checksum {:.0})",
        sample_cpu / f64::from(SAMPLES) * 1e6,
        scan_cpu / f64::from(PROCESS_SCANS) * 1e3,
        status_kib("VmRSS:"),
        status_kib("VmHWM:"),
        wall.elapsed().as_secs_f64(),
        checksum % 1000.0
    );
}

fn main() {
    if let Ok(mode) = std::env::var(MODE_ENV) {
        run(&mode);
        return;
    }
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for mode in ["proc", "sysinfo", "proc", "sysinfo"] {
        #[allow(clippy::disallowed_methods)] // the benchmark runs its own copies
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .env(MODE_ENV, mode)
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
    }
}
