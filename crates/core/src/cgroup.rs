//! The one owner of n0m1's cgroups: where they are, creating them, writing limits, placing a
//! process, killing a tree, reading usage and OOM kills, and removing them.
//!
//! Every component gets `n0m1/<home id>/<manager>/<component>` below the cgroup boot runs in,
//! in each hierarchy that matters: the cgroup2 ("unified") tree for membership, freezing and
//! CPU time, and for each controller (memory, cpu, pids) the cgroup2 tree when it
//! offers the controller, else its v1 hierarchy (systemd's "hybrid" layout, as on this
//! project's machines; cpuacct for CPU usage and freezer for kills where v1 is all there is).
//! Two homes never share a subtree: the home id is derived from the home's path.
//!
//! Written here rather than with cgroups-rs: what n0m1 needs is the hybrid split above
//! (membership in one tree, controllers in others), descriptors opened before the fork so
//! the child joins with nothing but write(2) (`join_files`), and a handful of files; the
//! crate models each hierarchy as a whole and brings its own process spawning.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::limits::{Limits, format_size};

/// The subtree of every n0m1 home below the cgroup boot runs in.
pub const SUBTREE: &str = "n0m1";
/// CFS period used for `cpu_max` (the kernel's default, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;

/// What a limit or a reading is made of, and in which tree it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Membership, kill and events (the cgroup2 tree), or the v1 hierarchy standing in.
    Membership,
    Memory,
    Cpu,
    CpuUsage,
    Pids,
    Freezer,
}

/// A mounted hierarchy and where this process is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// The mount point (`/sys/fs/cgroup/memory`).
    pub mount: PathBuf,
    /// This process's cgroup in it, relative (`/process_api/x`), with any n0m1 subtree it
    /// is already in removed: managers and boot share one base.
    pub base: PathBuf,
    pub v2: bool,
}

impl Hierarchy {
    fn dir(&self, relative: &Path) -> PathBuf {
        let base = self.base.strip_prefix("/").unwrap_or(&self.base);
        self.mount.join(base).join(relative)
    }
}

/// The hierarchies n0m1 uses on this machine, by role.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    pub roles: BTreeMap<Role, Hierarchy>,
}

/// Why limits cannot be had here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy is mounted (/proc/self/mounts has no cgroup or cgroup2)")]
    NotMounted,
    #[error(
        "the {controller} controller is not available (neither the cgroup2 tree nor a v1 hierarchy offers it)"
    )]
    NoController { controller: &'static str },
    #[error(
        "cannot create {path}: {reason} (run n0m1 as root, or under systemd with Delegate=yes)"
    )]
    NotWritable { path: PathBuf, reason: String },
    #[error("cannot write {value} to {path}: {reason}")]
    Write {
        path: PathBuf,
        value: String,
        reason: String,
    },
}

impl Layout {
    /// This machine's layout, from `/proc/self/mounts` and `/proc/self/cgroup`.
    pub fn detect() -> Result<Layout, CgroupError> {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let membership = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Layout::from_text(&mounts, &membership, |unified| {
            fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default()
        })
    }

    /// The layout the given mount table and membership describe; `controllers` reads a
    /// cgroup2 tree's `cgroup.controllers` (tests hand in their own tree).
    pub fn from_text(
        mounts: &str,
        membership: &str,
        controllers: impl Fn(&Path) -> String,
    ) -> Result<Layout, CgroupError> {
        let mut unified = None;
        let mut v1: BTreeMap<String, PathBuf> = BTreeMap::new();
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, mount, kind, options, ..] = fields[..] else {
                continue;
            };
            match kind {
                "cgroup2" => unified = Some(PathBuf::from(mount)),
                "cgroup" => {
                    for option in options.split(',') {
                        v1.insert(option.to_owned(), PathBuf::from(mount));
                    }
                }
                _ => {}
            }
        }
        if unified.is_none() && v1.is_empty() {
            return Err(CgroupError::NotMounted);
        }
        // `N:controllers:path` for v1, `0::path` for cgroup2.
        let mut own_v1: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut own_v2 = PathBuf::from("/");
        for line in membership.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(names), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if names.is_empty() {
                own_v2 = PathBuf::from(path);
            } else {
                for name in names.split(',') {
                    own_v1.insert(name.to_owned(), PathBuf::from(path));
                }
            }
        }
        let mut layout = Layout::default();
        let offered = unified.as_deref().map(&controllers).unwrap_or_default();
        let offered: Vec<&str> = offered.split_whitespace().collect();
        let v2_hierarchy = unified.as_ref().map(|mount| Hierarchy {
            mount: mount.clone(),
            base: outside_subtree(&own_v2),
            v2: true,
        });
        let v1_hierarchy = |name: &str| {
            Some(Hierarchy {
                mount: v1.get(name)?.clone(),
                base: outside_subtree(own_v1.get(name).map_or(Path::new("/"), PathBuf::as_path)),
                v2: false,
            })
        };
        let pick = |v2_name: &str, v1_name: &str| match &v2_hierarchy {
            Some(h) if offered.contains(&v2_name) => Some(h.clone()),
            _ => v1_hierarchy(v1_name),
        };
        if let Some(h) = v2_hierarchy
            .clone()
            .or_else(|| v1_hierarchy("pids").or_else(|| v1_hierarchy("memory")))
        {
            layout.roles.insert(Role::Membership, h);
        }
        for (role, v2_name, v1_name) in [
            (Role::Memory, "memory", "memory"),
            (Role::Cpu, "cpu", "cpu"),
            (Role::Pids, "pids", "pids"),
        ] {
            if let Some(h) = pick(v2_name, v1_name) {
                layout.roles.insert(role, h);
            }
        }
        // CPU time is in every cgroup2 cgroup's cpu.stat; v1 keeps it in cpuacct.
        if let Some(h) = v2_hierarchy.clone().or_else(|| v1_hierarchy("cpuacct")) {
            layout.roles.insert(Role::CpuUsage, h);
        }
        if let Some(h) = v1_hierarchy("freezer") {
            layout.roles.insert(Role::Freezer, h);
        }
        Ok(layout)
    }

    /// The controllers a limit needs that this layout lacks, by name.
    pub fn missing(&self, limits: &Limits) -> Option<CgroupError> {
        wanted_controllers(limits)
            .into_iter()
            .find(|(needed, role, _)| *needed && !self.roles.contains_key(role))
            .map(|(_, _, controller)| CgroupError::NoController { controller })
    }

    /// The subtree of one home as it is, nothing created (for readers such as `status`).
    pub fn existing_home(&self, home_id: &str) -> HomeCgroups {
        HomeCgroups {
            layout: self.clone(),
            relative: PathBuf::from(SUBTREE).join(home_id),
        }
    }

    /// The subtree of one home: `n0m1/<home id>` in each hierarchy, created if need be. This
    /// is the permission check: `Err` names the directory that cannot be made and why.
    pub fn home(&self, home_id: &str) -> Result<HomeCgroups, CgroupError> {
        let relative = PathBuf::from(SUBTREE).join(home_id);
        let mut seen = Vec::new();
        for hierarchy in self.roles.values() {
            let dir = hierarchy.dir(&relative);
            if seen.contains(&dir) {
                continue;
            }
            fs::create_dir_all(&dir).map_err(|error| CgroupError::NotWritable {
                path: dir.clone(),
                reason: error.to_string(),
            })?;
            // Writable too: a directory made by someone else may still refuse us.
            if rustix::fs::access(&dir, rustix::fs::Access::WRITE_OK).is_err() {
                return Err(CgroupError::NotWritable {
                    path: dir,
                    reason: "permission denied".to_owned(),
                });
            }
            seen.push(dir);
        }
        if self.roles.is_empty() {
            return Err(CgroupError::NotMounted);
        }
        // cgroup2 hands a controller down only where each ancestor enables it for its
        // children: the delegated base, `n0m1` and the home (the manager's folder when a
        // component's cgroup is made).
        if let Some((tree, controllers)) = self.v2_controllers() {
            let mut dir = tree.dir(Path::new(""));
            for step in ["", SUBTREE, home_id] {
                dir.push(step);
                enable_controllers(&dir, &controllers);
            }
        }
        Ok(HomeCgroups {
            layout: self.clone(),
            relative,
        })
    }

    /// The cgroup2 tree and the controllers n0m1 takes from it, when it takes any.
    fn v2_controllers(&self) -> Option<(&Hierarchy, Vec<&'static str>)> {
        let names: Vec<&'static str> = [
            (Role::Memory, "memory"),
            (Role::Cpu, "cpu"),
            (Role::Pids, "pids"),
        ]
        .into_iter()
        .filter(|(role, _)| self.roles.get(role).is_some_and(|h| h.v2))
        .map(|(_, name)| name)
        .collect();
        let tree = self.roles.values().find(|h| h.v2)?;
        (!names.is_empty()).then_some((tree, names))
    }

    /// On a cgroup2 tree with controllers, a cgroup that enables them for its children may
    /// hold no process itself: boot (and the managers it starts after this) moves into
    /// `n0m1/<home id>/supervisors`, a leaf beside the managers' folders. Nothing to do on a
    /// hybrid host, whose v1 controllers have no such rule.
    pub fn move_supervisors(&self, home_id: &str) -> Result<(), CgroupError> {
        let Some((tree, _)) = self.v2_controllers() else {
            return Ok(());
        };
        let leaf = tree.dir(&PathBuf::from(SUBTREE).join(home_id).join("supervisors"));
        fs::create_dir_all(&leaf).map_err(|error| CgroupError::NotWritable {
            path: leaf.clone(),
            reason: error.to_string(),
        })?;
        write(&leaf, "cgroup.procs", "0")
    }
}

/// Whether `limits` needs each controller: (needed, its role, its name).
fn wanted_controllers(limits: &Limits) -> [(bool, Role, &'static str); 3] {
    [
        (limits.limits_memory(), Role::Memory, "memory"),
        (limits.limits_cpu(), Role::Cpu, "cpu"),
        (limits.pids_max.is_some(), Role::Pids, "pids"),
    ]
}

/// A path with any n0m1 subtree it ends in removed (`/a/n0m1/h1/daemon_manager` → `/a`).
fn outside_subtree(path: &Path) -> PathBuf {
    let mut kept = PathBuf::from("/");
    for part in path.components().skip_while(|c| c.as_os_str() == "/") {
        if part.as_os_str() == SUBTREE {
            break;
        }
        kept.push(part);
    }
    kept
}

/// The short, stable name of a home: `h` and 10 hex digits of its absolute path's hash.
pub fn home_id(home_root: &Path) -> String {
    let path = std::path::absolute(home_root).unwrap_or_else(|_| home_root.to_owned());
    let hash = crate::text::fnv1a(path.as_os_str().as_encoded_bytes());
    format!("h{:010x}", hash & 0xff_ffff_ffff)
}

/// One home's subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeCgroups {
    layout: Layout,
    relative: PathBuf,
}

impl HomeCgroups {
    /// The cgroup of `component` under `manager` (not created yet).
    pub fn component(&self, manager: &str, component: &str) -> ComponentCgroup {
        let relative = self.relative.join(manager).join(component);
        ComponentCgroup {
            dirs: self
                .layout
                .roles
                .iter()
                .map(|(role, h)| (*role, h.dir(&relative), h.v2))
                .collect(),
        }
    }

    /// Removes whatever is empty of this home's subtree (each manager's folder, then the
    /// home's, then `n0m1` if no other home uses it): `n0m1ctl stop` leaves nothing behind.
    pub fn remove_empty(&self) {
        for hierarchy in self.layout.roles.values() {
            let home = hierarchy.dir(&self.relative);
            remove_empty_below(&home);
            let _ = fs::remove_dir(&home);
            if let Some(subtree) = home.parent() {
                let _ = fs::remove_dir(subtree);
            }
        }
    }

    /// Every process in any cgroup of this home (what `n0m1ctl stop` must not leave
    /// behind, whatever environment or session it has).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let mut stack: Vec<PathBuf> = self.membership_dir().into_iter().collect();
        while let Some(dir) = stack.pop() {
            pids.extend(
                fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|line| line.trim().parse::<i32>().ok()),
            );
            if let Ok(entries) = fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        pids
    }

    /// The home's folder in the membership tree (for `status`).
    pub fn membership_dir(&self) -> Option<PathBuf> {
        self.layout
            .roles
            .get(&Role::Membership)
            .map(|h| h.dir(&self.relative))
    }
}

/// Removes every empty cgroup below `dir`, deepest first (a cgroup is removed with rmdir).
fn remove_empty_below(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_below(&entry.path());
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// Memory in use by a cgroup and the most it ever used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    pub current: u64,
    pub peak: Option<u64>,
}

/// One component's cgroup, in each hierarchy of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentCgroup {
    dirs: Vec<(Role, PathBuf, bool)>,
}

impl ComponentCgroup {
    fn dir(&self, role: Role) -> Option<(&Path, bool)> {
        self.dirs
            .iter()
            .find(|(r, _, _)| *r == role)
            .map(|(_, dir, v2)| (dir.as_path(), *v2))
    }

    /// Each distinct directory once (a role may share its tree with another).
    fn distinct(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::new();
        for (_, dir, _) in &self.dirs {
            if !out.contains(&dir.as_path()) {
                out.push(dir);
            }
        }
        out
    }

    /// Its folder in the membership tree (what `status` shows).
    pub fn path(&self) -> Option<&Path> {
        self.dir(Role::Membership).map(|(dir, _)| dir)
    }

    pub fn create(&self) -> Result<(), CgroupError> {
        for dir in self.distinct() {
            fs::create_dir_all(dir).map_err(|error| CgroupError::NotWritable {
                path: dir.to_owned(),
                reason: error.to_string(),
            })?;
        }
        // The manager's folder hands the cgroup2 controllers down to its components.
        let v2: Vec<&'static str> = [
            (Role::Memory, "memory"),
            (Role::Cpu, "cpu"),
            (Role::Pids, "pids"),
        ]
        .into_iter()
        .filter(|(role, _)| self.dir(*role).is_some_and(|(_, v2)| v2))
        .map(|(_, name)| name)
        .collect();
        if let Some((dir, _)) = self
            .dir(Role::Memory)
            .or(self.dir(Role::Cpu))
            .or(self.dir(Role::Pids))
            .filter(|(_, v2)| *v2)
            && let Some(manager) = dir.parent()
        {
            enable_controllers(manager, &v2);
        }
        Ok(())
    }

    /// Writes every limit (a `None` writes "no limit"), to a running process as to a new one.
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Some((dir, v2)) = self.dir(Role::Memory) {
            if v2 {
                write(dir, "memory.high", &max_or(limits.memory_high))?;
                write(dir, "memory.max", &max_or(limits.memory_max))?;
                // No swapping past the limit: the kill is the point of a hard limit.
                if limits.memory_max.is_some() {
                    let _ = write(dir, "memory.swap.max", "0");
                }
            } else {
                let unlimited = "-1".to_owned();
                let max = limits
                    .memory_max
                    .map_or(unlimited.clone(), |b| b.to_string());
                // memsw must stay >= the limit: raise it first, set it after.
                let _ = write(dir, "memory.memsw.limit_in_bytes", &unlimited);
                write(dir, "memory.limit_in_bytes", &max)?;
                if limits.memory_max.is_some() && dir.join("memory.memsw.limit_in_bytes").exists() {
                    let _ = write(dir, "memory.memsw.limit_in_bytes", &max);
                }
                write(
                    dir,
                    "memory.soft_limit_in_bytes",
                    &limits.memory_high.map_or(unlimited, |b| b.to_string()),
                )?;
            }
        }
        if let Some((dir, v2)) = self.dir(Role::Cpu) {
            let quota = limits
                .cpu_max
                .map(|cores| ((cores * CPU_PERIOD_US as f64).round() as u64).max(1000));
            if v2 {
                let max = quota.map_or("max".to_owned(), |q| q.to_string());
                write(dir, "cpu.max", &format!("{max} {CPU_PERIOD_US}"))?;
                write(
                    dir,
                    "cpu.weight",
                    &limits.cpu_weight.unwrap_or(100).to_string(),
                )?;
            } else {
                write(dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                write(
                    dir,
                    "cpu.cfs_quota_us",
                    &quota.map_or("-1".to_owned(), |q| q.to_string()),
                )?;
                // systemd's conversion: weight 100 is 1024 shares.
                let shares = u64::from(limits.cpu_weight.unwrap_or(100)) * 1024 / 100;
                write(dir, "cpu.shares", &shares.max(2).to_string())?;
            }
        }
        if let Some((dir, _)) = self.dir(Role::Pids) {
            write(dir, "pids.max", &max_or(limits.pids_max))?;
        }
        Ok(())
    }

    /// The hierarchies a process of this component must be in: the membership tree always
    /// (tracking, kill, CPU time), a v1 controller's hierarchy only when a limit needs it (a
    /// move into a cgroup costs the kernel an RCU grace period, several milliseconds: an
    /// unlimited component is never moved on a hybrid host), and the v1 freezer where the
    /// membership tree cannot freeze (a v1-only host).
    fn needed(&self, limits: &Limits) -> Vec<Role> {
        let mut roles = vec![Role::Membership];
        roles.extend(
            wanted_controllers(limits)
                .into_iter()
                .filter(|(wanted, _, _)| *wanted)
                .map(|(_, role, _)| role),
        );
        if !self.dir(Role::Membership).is_some_and(|(_, v2)| v2) {
            roles.push(Role::Freezer);
        }
        roles
    }

    /// The directories of `roles`, each once, the membership tree's first.
    fn dirs_of(&self, roles: &[Role]) -> Vec<(&Path, bool)> {
        let mut out: Vec<(&Path, bool)> = Vec::new();
        for role in roles {
            if let Some((dir, v2)) = self.dir(*role)
                && !out.iter().any(|(d, _)| *d == dir)
            {
                out.push((dir, v2));
            }
        }
        out
    }

    /// What a new process needs to start inside: the cgroup2 cgroup to be born in
    /// (`clone3(CLONE_INTO_CGROUP)`, no move), and the `cgroup.procs` of every other
    /// hierarchy it needs, open for writing, which the child writes `0` to between fork and
    /// exec (`process::spawn_placed`). Either way it runs inside from its program's first
    /// instruction.
    pub fn placement(
        &self,
        limits: &Limits,
    ) -> Result<(Option<crate::process::BirthCgroup>, Vec<OwnedFd>), CgroupError> {
        let open = |path: PathBuf, flags: rustix::fs::OFlags| {
            rustix::fs::open(
                &path,
                flags | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|error| CgroupError::Write {
                path,
                value: "0".to_owned(),
                reason: error.to_string(),
            })
        };
        let mut birth = None;
        let mut joins = Vec::new();
        for (dir, v2) in self.dirs_of(&self.needed(limits)) {
            let procs = open(dir.join("cgroup.procs"), rustix::fs::OFlags::WRONLY)?;
            if v2 && birth.is_none() {
                birth = Some(crate::process::BirthCgroup {
                    dir: open(
                        dir.to_owned(),
                        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                    )?,
                    procs,
                });
            } else {
                joins.push(procs);
            }
        }
        Ok((birth, joins))
    }

    /// Moves the running processes into the hierarchies `limits` now needs (a limit set on a
    /// running component): off the restart path, so the move's cost does not count there.
    pub fn enter(&self, limits: &Limits) {
        let pids = self.pids();
        for (dir, _) in self.dirs_of(&self.needed(limits)) {
            for pid in &pids {
                // A process that exits meanwhile is no error.
                let _ = write(dir, "cgroup.procs", &pid.to_string());
            }
        }
    }

    /// Whether this component's processes are in `role`'s hierarchy (a v1 controller is
    /// joined only with a limit; readings from one it is not in would be someone else's).
    fn joined(&self, role: Role) -> bool {
        match self.dir(role) {
            Some((_, true)) => true,
            Some((dir, false)) => fs::read_to_string(dir.join("cgroup.procs"))
                .is_ok_and(|procs| !procs.trim().is_empty()),
            None => false,
        }
    }

    /// Moves a running process in (adoption, and the tests' reference for `join_files`).
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.distinct() {
            write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in it (from the membership tree).
    pub fn pids(&self) -> Vec<i32> {
        let Some((dir, _)) = self.dir(Role::Membership) else {
            return Vec::new();
        };
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// Does it exist (a manager adopting a component finds its cgroup from a previous life)?
    pub fn exists(&self) -> bool {
        self.path().is_some_and(Path::is_dir)
    }

    /// SIGKILL to every process in it, however it got there (setsid, double forks, a cleared
    /// environment). Each member is killed by pid, again while new ones appear (a process
    /// that forked meanwhile); one that keeps forking is frozen first (cgroup2's
    /// `cgroup.freeze`, else the v1 freezer), killed and thawed.
    ///
    /// Not `cgroup.kill`: on this project's kernel (6.18) every child later born into a
    /// cgroup that was ever killed that way (`clone3(CLONE_INTO_CGROUP)`, how components are
    /// started) is SIGKILLed at birth, so a restart would die with its predecessor.
    pub fn kill(&self) {
        let mut signalled: Vec<i32> = Vec::new();
        for _ in 0..4 {
            let fresh: Vec<i32> = self
                .pids()
                .into_iter()
                .filter(|pid| !signalled.contains(pid))
                .collect();
            if fresh.is_empty() {
                return;
            }
            for pid in &fresh {
                crate::process::signal_process(*pid, nix::sys::signal::Signal::SIGKILL);
            }
            signalled.extend(fresh);
        }
        self.freeze_and_kill();
    }

    /// Freeze, SIGKILL each member, thaw: nothing forks while the list is read.
    fn freeze_and_kill(&self) {
        let (file, frozen_value, thawed_value) = match self.dir(Role::Membership) {
            Some((dir, true)) => (dir.join("cgroup.freeze"), "1", "0"),
            _ => match self.dir(Role::Freezer) {
                Some((dir, _)) => (dir.join("freezer.state"), "FROZEN", "THAWED"),
                None => {
                    for pid in self.pids() {
                        crate::process::signal_process(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                    return;
                }
            },
        };
        let (dir, name) = (
            file.parent().unwrap_or(Path::new("/")),
            file.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default(),
        );
        let frozen = write(dir, name, frozen_value).is_ok();
        if frozen {
            // cgroup2 says so in cgroup.events; v1 in freezer.state itself.
            let done = || {
                let events = fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
                keyed(&events, "frozen") == Some(1)
                    || fs::read_to_string(&file).is_ok_and(|state| state.trim() == "FROZEN")
            };
            let deadline = Instant::now() + Duration::from_millis(200);
            while !done() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for pid in self.pids() {
            crate::process::signal_process(pid, nix::sys::signal::Signal::SIGKILL);
        }
        if frozen {
            let _ = write(dir, name, thawed_value);
        }
    }

    /// Removes it once empty (rmdir in each hierarchy); `false` while processes remain.
    pub fn remove(&self) -> bool {
        if !self.is_empty() {
            return false;
        }
        for dir in self.distinct() {
            let _ = fs::remove_dir(dir);
        }
        true
    }

    /// How many processes its memory limit has killed (v2 `memory.events`, v1
    /// `memory.oom_control`); `None` where there is no memory controller.
    pub fn oom_kills(&self) -> Option<u64> {
        let (dir, v2) = self.dir(Role::Memory)?;
        if !v2 && !self.joined(Role::Memory) && !dir.join("memory.oom_control").exists() {
            return None;
        }
        let (file, key) = if v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        keyed(&fs::read_to_string(dir.join(file)).ok()?, key)
    }

    /// Memory charged to it now and at most, while its processes are in the memory
    /// hierarchy (`None` where that is another cgroup's account).
    pub fn memory(&self) -> Option<MemoryUse> {
        if !self.joined(Role::Memory) {
            return None;
        }
        self.memory_counters()
    }

    /// The memory cgroup's counters as they stand (after an OOM kill it is empty, and its
    /// peak is still the one to report).
    fn memory_counters(&self) -> Option<MemoryUse> {
        let (dir, v2) = self.dir(Role::Memory)?;
        let read = |file: &str| -> Option<u64> {
            fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
        };
        if v2 {
            Some(MemoryUse {
                current: read("memory.current")?,
                peak: read("memory.peak"),
            })
        } else {
            Some(MemoryUse {
                current: read("memory.usage_in_bytes")?,
                peak: read("memory.max_usage_in_bytes"),
            })
        }
    }

    /// CPU time used by everything that ran in it, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let (dir, v2) = self.dir(Role::CpuUsage)?;
        if v2 {
            let usec = keyed(
                &fs::read_to_string(dir.join("cpu.stat")).ok()?,
                "usage_usec",
            )?;
            Some(usec as f64 / 1e6)
        } else {
            let nsec: u64 = fs::read_to_string(dir.join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some(nsec as f64 / 1e9)
        }
    }

    /// The memory limit in force, for the OOM message.
    pub fn describe_oom(&self, limits: &Limits, pid: i32) -> String {
        let limit = limits
            .memory_max
            .map_or("its memory limit".to_owned(), |b| {
                format!("memory_max {}", format_size(b))
            });
        match self.memory_counters().and_then(|m| m.peak) {
            Some(peak) => format!("pid {pid}: over {limit} (peak {})", format_size(peak)),
            None => format!("pid {pid}: over {limit}"),
        }
    }
}

/// `key value` lines (`memory.events`, `cpu.stat`, `memory.oom_control`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next()? == key).then(|| parts.next()?.parse().ok())?
    })
}

/// Writes `+memory +cpu …` to a cgroup2 cgroup's `cgroup.subtree_control` (those already
/// enabled are accepted again; a failure shows later as a missing interface file, named).
fn enable_controllers(dir: &Path, controllers: &[&str]) {
    if controllers.is_empty() {
        return;
    }
    let wanted: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    if let Err(error) = write(dir, "cgroup.subtree_control", &wanted.join(" ")) {
        tracing::debug!("{error}");
    }
}

fn max_or(value: Option<u64>) -> String {
    value.map_or("max".to_owned(), |v| v.to_string())
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let result = fs::OpenOptions::new()
        .write(true)
        // Interface files exist in a real cgroup (creating one there fails); a tree a test
        // lays out in a temporary folder gets them as plain files.
        .create(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    result.map_err(|error: io::Error| CgroupError::Write {
        path,
        value: value.to_owned(),
        reason: error.to_string(),
    })
}

#[cfg(test)]
mod tests;
