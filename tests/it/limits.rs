//! Resource limits through the real binaries on this machine's cgroups (root, hybrid
//! layout): an OOM kill named and restarted, a CPU quota, a task limit, trees killed by
//! cgroup however they escape, two homes kept apart, nothing left after `stop`, a component
//! run as `nobody`, and a system run without permission.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use predicates::str::contains;

use crate::support::{TestEnv, alive, bin, root_or_skip, wait_until};

const T: Duration = Duration::from_secs(30);

/// Every directory of this home's cgroup subtree, in every hierarchy.
fn home_cgroups(env: &TestEnv) -> Vec<PathBuf> {
    let id = n0m1_core::cgroup::home_id(env.home.root());
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == id.as_str()) {
                found.push(path);
            } else if path.components().count() < 12 {
                stack.push(path);
            }
        }
    }
    found
}

/// CPU time (user + system) of a process, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = n0m1_core::process::ProcStat::read(pid).unwrap();
    (stat.utime_ticks + stat.stime_ticks) as f64
        / n0m1_core::process::clock_ticks_per_second() as f64
}

fn processes_with(marker: &str) -> Vec<i32> {
    crate::support::live_processes_mentioning(marker)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn a_component_past_its_memory_limit_is_oom_killed_by_name_and_restarted_alone() {
    if !root_or_skip() {
        return;
    }
    let env = TestEnv::new();
    env.script(
        "hog.py",
        "import time\nheld = []\nwhile True:\n    held.append(b'x' * (1 << 20))\n    time.sleep(0.002)\n",
    );
    env.add_component("hog", "hog.py", "daemon_manager", "{}");
    env.add_component("bystander", "sleeper.sh", "daemon_manager", "{}");
    env.ctl(&["limit", "hog", "--memory", "64M"])
        .success()
        .stdout(contains("memory_max 64.0 MiB"));
    env.ctl(&["start"]).success();
    let boot = env.pid_of("boot_system").unwrap();
    let manager = env.wait_pid("daemon_manager", "the manager");
    let logd = env.pid_of("n0m1_logd").unwrap();
    let bystander = env.wait_pid("bystander", "the bystander");
    wait_until(T, "an OOM kill of hog", || {
        env.count_events("hog", "OOM_KILLED") >= 1
    });
    let message = env.last_message("hog", "OOM_KILLED");
    assert!(
        message.contains("over memory_max 64.0 MiB (peak "),
        "{message}"
    );
    // The restart policy applies: a new process (a second START_ATTEMPT).
    wait_until(T, "hog restarted", || {
        env.count_events("hog", "START_ATTEMPT") >= 2
    });
    assert_eq!(env.pid_of("boot_system"), Some(boot));
    assert_eq!(env.pid_of("daemon_manager"), Some(manager));
    assert_eq!(env.pid_of("n0m1_logd"), Some(logd));
    assert_eq!(env.pid_of("bystander"), Some(bystander));
    assert_eq!(env.count_events("bystander", "START_ATTEMPT"), 1);
    let detail = env.status_json("hog");
    assert_eq!(detail["limits"]["memory_max"], 64 << 20);
    env.ctl(&["stop"]).success();
    assert!(home_cgroups(&env).is_empty(), "{:?}", home_cgroups(&env));
}

#[test]
fn a_busy_loop_under_a_fifth_of_a_core_gets_at_most_a_quarter_and_limits_change_live() {
    if !root_or_skip() {
        return;
    }
    let env = TestEnv::new();
    env.script("spin.sh", "#!/bin/sh\nwhile :; do :; done\n");
    env.add_component("spin", "spin.sh", "daemon_manager", "{}");
    env.ctl(&["limit", "spin", "--cpu", "0.2"]).success();
    env.ctl(&["start"]).success();
    let pid = env.wait_pid("spin", "the busy loop");
    std::thread::sleep(Duration::from_millis(300));
    let (start, used_before) = (Instant::now(), cpu_seconds(pid));
    std::thread::sleep(Duration::from_secs(5));
    let share = (cpu_seconds(pid) - used_before) / start.elapsed().as_secs_f64();
    assert!(share <= 0.25, "used {:.0} % of a core", share * 100.0);
    assert!(share > 0.05, "it ran at all: {:.0} %", share * 100.0);
    // Lifted while it runs: the same process, more CPU, no restart.
    env.ctl(&["limit", "spin", "--cpu", "1"]).success();
    wait_until(T, "LIMITS_APPLIED", || {
        env.count_events("spin", "LIMITS_APPLIED") == 1
    });
    let (start, used_before) = (Instant::now(), cpu_seconds(pid));
    std::thread::sleep(Duration::from_secs(2));
    let share = (cpu_seconds(pid) - used_before) / start.elapsed().as_secs_f64();
    assert!(share > 0.4, "unthrottled it used {:.0} %", share * 100.0);
    assert_eq!(env.pid_of("spin"), Some(pid));
    assert_eq!(env.count_events("spin", "START_ATTEMPT"), 1);
    env.ctl(&["stop"]).success();
}

#[test]
fn a_component_under_a_task_limit_cannot_hold_more_tasks() {
    if !root_or_skip() {
        return;
    }
    let env = TestEnv::new();
    env.script(
        "forker.py",
        "import os, sys, time\nrefused = 0\nfor _ in range(30):\n    try:\n        if os.fork() == 0:\n            time.sleep(1000)\n            os._exit(0)\n    except OSError as error:\n        refused += 1\n        last = error\nprint(f'refused {refused}: {last}', file=sys.stderr, flush=True)\ntime.sleep(1000)\n",
    );
    env.add_component("forker", "forker.py", "daemon_manager", "{}");
    env.ctl(&["limit", "forker", "--pids", "10"]).success();
    env.ctl(&["start"]).success();
    env.wait_pid("forker", "the forker");
    let err = env.home.component_logs("forker").1;
    wait_until(T, "forks refused", || {
        std::fs::read_to_string(&err).is_ok_and(|text| text.contains("refused"))
    });
    let said = std::fs::read_to_string(&err).unwrap();
    assert!(said.contains("Resource temporarily unavailable"), "{said}");
    let tasks = env.status_json("forker")["limits"]["tasks"]
        .as_u64()
        .unwrap();
    assert!(tasks <= 10, "{tasks} tasks");
    assert!(tasks >= 5, "it forked up to the limit: {tasks}");
    env.ctl(&["stop"]).success();
}

/// setsid, a double fork and `env -i`: the grandchild is in no process group of the
/// component, is not its descendant any more and carries neither N0M1_HOME nor
/// N0M1_COMPONENT_ID. Its cgroup still holds it.
#[test]
fn an_escaped_descendant_dies_with_its_component_and_stop_leaves_no_cgroup() {
    if !root_or_skip() {
        return;
    }
    let env = TestEnv::new();
    let marker = format!("{}", 4_000 + std::process::id() % 900);
    env.script(
        "escaper.sh",
        &format!(
            "#!/bin/sh\nsetsid sh -c '(env -i /bin/sleep {marker}1 &) ; exit 0'\nexec sleep {marker}2\n"
        ),
    );
    env.add_component("escaper", "escaper.sh", "daemon_manager", "{}");
    // Any limit: a cgroup is made for it either way; this one shows in status.
    env.ctl(&["limit", "escaper", "--memory", "256M"]).success();
    env.ctl(&["start"]).success();
    env.wait_pid("escaper", "the escaper");
    // Until `env` has exec'd, the shells and `env` itself mention the marker too: the
    // grandchild is the process that runs /bin/sleep.
    let escaped = format!("/bin/sleep {marker}1");
    let grandchildren = || -> Vec<i32> {
        crate::support::live_processes_mentioning(&escaped)
            .into_iter()
            .filter(|(_, cmdline)| cmdline.starts_with(&escaped))
            .map(|(pid, _)| pid)
            .collect()
    };
    wait_until(T, "the escaped grandchild", || grandchildren().len() == 1);
    let grandchild = grandchildren()[0];
    let environ = std::fs::read(format!("/proc/{grandchild}/environ")).unwrap();
    assert!(environ.is_empty(), "env -i left no environment");
    env.ctl(&["disable", "escaper"]).success();
    let disabled = Instant::now();
    wait_until(
        Duration::from_secs(2),
        "every process gone 2 s after disable",
        || processes_with(&format!("sleep {marker}")).is_empty(),
    );
    assert!(disabled.elapsed() <= Duration::from_secs(2));
    assert!(!alive(grandchild));

    env.ctl(&["enable", "escaper"]).success();
    wait_until(T, "the escaped grandchild again", || {
        grandchildren().len() == 1
    });
    assert!(!home_cgroups(&env).is_empty(), "the home has its cgroups");
    env.ctl(&["stop"]).success();
    assert!(processes_with(&format!("sleep {marker}")).is_empty());
    assert!(
        home_cgroups(&env).is_empty(),
        "n0m1ctl stop left {:?}",
        home_cgroups(&env)
    );
}

#[test]
fn two_homes_with_the_same_component_id_never_touch_each_other() {
    if !root_or_skip() {
        return;
    }
    let one = TestEnv::new();
    let two = TestEnv::new();
    for env in [&one, &two] {
        env.add_component("twin", "sleeper.sh", "daemon_manager", "{}");
        env.ctl(&["limit", "twin", "--pids", "50"]).success();
        env.ctl(&["start"]).success();
    }
    let pid_one = one.wait_pid("twin", "twin one");
    let pid_two = two.wait_pid("twin", "twin two");
    let cgroup = |env: &TestEnv| {
        env.status_json("twin")["limits"]["cgroup"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (cgroup_one, cgroup_two) = (cgroup(&one), cgroup(&two));
    assert_ne!(cgroup_one, cgroup_two);
    let members = |dir: &str| std::fs::read_to_string(format!("{dir}/cgroup.procs")).unwrap();
    assert!(members(&cgroup_one).contains(&pid_one.to_string()));
    assert!(!members(&cgroup_one).contains(&pid_two.to_string()));
    one.ctl(&["disable", "twin"]).success();
    wait_until(T, "twin one stopped", || !alive(pid_one));
    one.ctl(&["stop"]).success();
    assert!(alive(pid_two), "the other home's twin runs on");
    assert_eq!(two.pid_of("twin"), Some(pid_two));
    assert!(std::path::Path::new(&cgroup_two).is_dir());
    two.ctl(&["stop"]).success();
}

#[test]
fn a_component_run_as_nobody_has_its_uid_and_cannot_read_the_database() {
    if !root_or_skip() {
        return;
    }
    let env = TestEnv::new();
    env.script(
        "who.sh",
        "#!/bin/sh\nif cat \"$N0M1_HOME/n0m1_agi.db\" > /dev/null 2>&1; then r=READABLE; else r=DENIED; fi\necho \"uid $(id -u) database $r\"\nexec sleep 1000\n",
    );
    env.add_component("who", "who.sh", "daemon_manager", "{}");
    env.ctl(&["limit", "who", "--user", "no_such_user_here"])
        .failure()
        .stderr(contains("no user named no_such_user_here"));
    env.ctl(&["limit", "who", "--user", "nobody"]).success();
    env.ctl(&["start"]).success();
    let pid = env.wait_pid("who", "who");
    let log = env.home.component_logs("who").0;
    wait_until(T, "its line", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("uid "))
    });
    let line = std::fs::read_to_string(&log).unwrap();
    assert!(line.contains("uid 65534 database DENIED"), "{line}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("65534")),
        "{status}"
    );
    env.ctl(&["stop"]).success();
}

/// As a user without any cgroup permission: `limit` refuses, naming what it cannot create
/// and how to get it, and the system runs as before with one LIMITS_UNAVAILABLE per manager.
#[test]
fn without_permission_limits_are_refused_by_name_and_the_system_runs() {
    if !root_or_skip() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    const NOBODY: u32 = 65534;
    let tmp = tempfile::Builder::new()
        .prefix("n0m1-it-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    let as_nobody = |args: &[&str]| {
        use assert_cmd::assert::OutputAssertExt;
        use std::os::unix::process::CommandExt;
        #[allow(clippy::disallowed_methods)] // the test drives the binary under test
        let mut command = std::process::Command::new(bin("n0m1ctl"));
        command
            .arg("--home")
            .arg(&home)
            .args(args)
            .env("HOME", tmp.path())
            .uid(NOBODY)
            .gid(NOBODY);
        command.assert()
    };
    as_nobody(&["init", "--quiet"]).success();
    std::fs::write(home.join("config.json"), crate::support::FAST_CONFIG).unwrap();
    std::os::unix::fs::chown(home.join("config.json"), Some(NOBODY), Some(NOBODY)).unwrap();
    let db = rusqlite::Connection::open(home.join("n0m1_agi.db")).unwrap();
    db.execute_batch(
        "UPDATE autorun_components SET desired_state = 'inactive';
         INSERT INTO autorun_components (component_id, base_script_name, manager_affinity, desired_state, launch_args_json)
         VALUES ('plain', 'sleeper.sh', 'daemon_manager', 'active', '{}');",
    )
    .unwrap();
    drop(db);
    let script = home.join("components/sleeper.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&script, Some(NOBODY), Some(NOBODY)).unwrap();
    as_nobody(&["limit", "plain", "--memory", "64M"])
        .failure()
        .stderr(contains(
            "limits for plain are refused: cannot create /sys/fs/cgroup",
        ))
        .stderr(contains("Delegate=yes"));
    as_nobody(&["limit", "plain", "--user", "root"])
        .failure()
        .stderr(contains("only n0m1 running as root"));
    as_nobody(&["start"]).success();
    let pid_file = home.join("pids/plain.pid");
    wait_until(T, "plain to run", || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .is_some_and(alive)
    });
    let unavailable: i64 = rusqlite::Connection::open(home.join("n0m1_agi.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM component_lifecycle_log WHERE event_type = 'LIMITS_UNAVAILABLE' AND component_id = 'daemon_manager' AND message LIKE '%Delegate=yes%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unavailable, 1);
    as_nobody(&["stop"]).success();
}
