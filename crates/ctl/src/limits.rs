//! `n0m1ctl limit`: a component's memory, CPU and task limits and the account it runs as,
//! and the view of them with the current use from its cgroup that `status` and the API show.

use std::collections::HashMap;

use anyhow::{Context, bail};
use n0m1_core::Home;
use n0m1_core::cgroup::{ComponentCgroup, HomeCgroups, Layout, home_id};
use n0m1_core::components::{self, ComponentRow};
use n0m1_core::limits::{self, Limits, MachineSize, parse_size};
use n0m1_core::process::Account;
use n0m1_core::schema::COMPONENT_LIMITS;
use n0m1_supervisor::launch::runs_a_model;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    pub component_id: String,
    /// Memory limit (hard: the kernel kills the component above it), e.g. 64M or 2G.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory throttle (reclaimed and slowed above it), at most --memory.
    #[arg(long = "memory-high", value_name = "SIZE", allow_hyphen_values = true)]
    pub memory_high: Option<String>,
    /// CPU time in cores: 0.5 is half of one core.
    #[arg(long, value_name = "CORES", allow_negative_numbers = true)]
    pub cpu: Option<f64>,
    /// CPU share when the machine is busy, 1-10000 (100 is the default).
    #[arg(long = "cpu-weight", value_name = "N", allow_negative_numbers = true)]
    pub cpu_weight: Option<i64>,
    /// Most tasks (processes and threads) at once.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub pids: Option<i64>,
    /// Run as this user (n0m1 must run as root).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Run with this group (default: the user's own).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Remove every limit and the account.
    #[arg(long, conflicts_with_all = ["memory", "memory_high", "cpu", "cpu_weight", "pids", "user", "group"])]
    pub clear: bool,
}

impl LimitArgs {
    fn changes(&self) -> bool {
        self.memory.is_some()
            || self.memory_high.is_some()
            || self.cpu.is_some()
            || self.cpu_weight.is_some()
            || self.pids.is_some()
            || self.user.is_some()
            || self.group.is_some()
    }
}

/// Shows, sets or clears a component's limits; returns the sentence to print.
pub fn run(home: &Home, args: &LimitArgs) -> anyhow::Result<String> {
    let conn = crate::open_database(home)?;
    let id = &args.component_id;
    if components::find(&conn, id)
        .with_context(|| format!("reading {}", n0m1_core::schema::AUTORUN_COMPONENTS))?
        .is_none()
    {
        return Err(crate::components::unknown(&conn, id));
    }
    let current = limits::of(&conn, id).with_context(|| format!("reading {COMPONENT_LIMITS}"))?;
    if !args.clear && !args.changes() {
        return Ok(format!("limits of {id}: {}", current.describe()));
    }
    let wanted = if args.clear {
        Limits::default()
    } else {
        merged(&current, args)?
    };
    wanted.validate(&MachineSize::here())?;
    if let Some(user) = &wanted.user {
        Account::resolve(user, wanted.group.as_deref()).map_err(anyhow::Error::msg)?;
        if !runs_as_root(home) {
            bail!(
                "--user {user}: only n0m1 running as root can start a component as another user (boot here runs as uid {})",
                system_uid(home)
            );
        }
    }
    if !wanted.unlimited() {
        // The permission check: this home's cgroups can be made (and the controllers are
        // there), or the limit is refused with the reason.
        let layout = Layout::detect().context("limits need cgroups")?;
        if let Some(missing) = layout.missing(&wanted) {
            bail!("limits for {id} are refused: {missing}");
        }
        let cgroups = layout
            .home(&home_id(home.root()))
            .map_err(|error| anyhow::anyhow!("limits for {id} are refused: {error}"))?;
        // Made to prove they can be: where nothing of this home runs, nothing is left of them.
        if cgroups.pids().is_empty() {
            cgroups.remove_empty();
        }
    }
    limits::store(&conn, id, &wanted).with_context(|| format!("writing {COMPONENT_LIMITS}"))?;
    Ok(if wanted.is_empty() {
        format!("limits of {id} cleared; its manager lifts them from the running process")
    } else {
        format!(
            "limits of {id}: {}; its manager applies them to the running process at once{}",
            wanted.describe(),
            if wanted.user != current.user || wanted.group != current.group {
                " (the account at its next start: `n0m1ctl restart` for now)"
            } else {
                ""
            }
        )
    })
}

/// The current row with the flags given laid over it.
fn merged(current: &Limits, args: &LimitArgs) -> anyhow::Result<Limits> {
    let size =
        |flag: &str, text: &Option<String>, old: Option<u64>| -> anyhow::Result<Option<u64>> {
            match text {
                None => Ok(old),
                Some(text) => parse_size(text)
                    .map(Some)
                    .map_err(|error| anyhow::anyhow!("--{flag}: {error}")),
            }
        };
    let count = |flag: &str, value: Option<i64>, old: Option<u64>| -> anyhow::Result<Option<u64>> {
        match value {
            None => Ok(old),
            Some(n) if n < 1 => bail!("--{flag} {n} is refused: it must be at least 1"),
            Some(n) => Ok(Some(n as u64)),
        }
    };
    Ok(Limits {
        memory_max: size("memory", &args.memory, current.memory_max)?,
        memory_high: size("memory-high", &args.memory_high, current.memory_high)?,
        cpu_max: args.cpu.or(current.cpu_max),
        cpu_weight: match args.cpu_weight {
            None => current.cpu_weight,
            Some(n) => Some(u32::try_from(n).unwrap_or(0)),
        },
        pids_max: count("pids", args.pids, current.pids_max)?,
        user: args.user.clone().or_else(|| current.user.clone()),
        group: args.group.clone().or_else(|| current.group.clone()),
    })
}

/// The uid boot runs as (ours when it is not running).
fn system_uid(home: &Home) -> u32 {
    n0m1_core::PidFile::inspect(&home.boot_pid_file())
        .ok()
        .and_then(|status| status.live_pid())
        .and_then(|pid| std::fs::metadata(format!("/proc/{pid}")).ok())
        .map_or_else(
            || nix::unistd::Uid::effective().as_raw(),
            |meta| std::os::unix::fs::MetadataExt::uid(&meta),
        )
}

fn runs_as_root(home: &Home) -> bool {
    system_uid(home) == 0
}

/// A component's limits and what it uses now, as `status` and the API show them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitsView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_high: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The limits in words (`memory_max 64.0 MiB, cpu_max 0.5 cores`), or `none`.
    pub summary: String,
    /// Its cgroup (in the membership tree) while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<usize>,
}

/// This home's cgroups as they are (none is created here).
pub fn home_cgroups(home: &Home) -> Option<HomeCgroups> {
    Layout::detect()
        .ok()
        .map(|layout| layout.existing_home(&home_id(home.root())))
}

/// The effective limits of each row (`config`'s `models.memory_max` for model
/// components without their own) with their cgroup's readings; rows with neither are left
/// out.
pub fn views(
    conn: &rusqlite::Connection,
    home: &Home,
    config: &n0m1_core::Config,
    rows: &[ComponentRow],
) -> HashMap<String, LimitsView> {
    let mut stored = limits::all(conn).unwrap_or_default();
    let model_default = config.models.memory_max.map(|size| size.0);
    let cgroups = home_cgroups(home);
    rows.iter()
        .filter_map(|row| {
            let mut limits = stored.remove(&row.component_id).unwrap_or_default();
            if limits.memory_max.is_none() && runs_a_model(&row.base_script_name) {
                limits.memory_max = model_default;
            }
            let cgroup = cgroups
                .as_ref()
                .map(|c| {
                    c.component(
                        components::manager_name(&row.manager_affinity),
                        &row.component_id,
                    )
                })
                .filter(ComponentCgroup::exists);
            if limits.is_empty() && cgroup.is_none() {
                return None;
            }
            let memory = cgroup.as_ref().and_then(ComponentCgroup::memory);
            Some((
                row.component_id.clone(),
                LimitsView {
                    summary: limits.describe(),
                    memory_max: limits.memory_max,
                    memory_high: limits.memory_high,
                    cpu_max: limits.cpu_max,
                    cpu_weight: limits.cpu_weight,
                    pids_max: limits.pids_max,
                    user: limits.user,
                    group: limits.group,
                    cgroup: cgroup
                        .as_ref()
                        .and_then(|c| c.path())
                        .map(|p| p.display().to_string()),
                    memory_bytes: memory.map(|m| m.current),
                    memory_peak_bytes: memory.and_then(|m| m.peak),
                    cpu_seconds: cgroup.as_ref().and_then(ComponentCgroup::cpu_seconds),
                    tasks: cgroup.as_ref().map(|c| c.pids().len()),
                },
            ))
        })
        .collect()
}
