//! `n0m1ctl export | plan | apply` through the real n0m1ctl on real databases.

use predicates::str::contains;

use crate::support::TestEnv;

fn export(env: &TestEnv) -> String {
    let out = env.ctl(&["export"]).success();
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

fn stdout(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stdout).into_owned()
}

/// A home with a row in every section.
fn furnished() -> TestEnv {
    let env = TestEnv::new();
    env.add_component(
        "worker",
        "sleeper.sh",
        "daemon_manager",
        r#"{"--name": "w \"1\""}"#,
    );
    env.ctl(&[
        "add",
        "job",
        "--script",
        "oneshot.sh",
        "--manager",
        "daemon_manager",
        "--oneshot",
        "--inactive",
    ])
    .success();
    env.ctl(&[
        "schedule",
        "job",
        "--cron",
        "0 30 7 * * 1-5",
        "--missed",
        "once",
    ])
    .success();
    env.sql(
        "INSERT INTO component_dependencies (component_id, depends_on, condition) VALUES ('job', 'worker', 'started');
         INSERT INTO component_health (component_id, watchdog_s) VALUES ('worker', 2.5);
         INSERT INTO component_limits (component_id, memory_max, cpu_max, pids_max) VALUES ('worker', 67108864, 0.5, 50);
         INSERT INTO alert_rules (id, event_types, action, target, min_interval_s) VALUES (7, 'FAILED,RECOVERED', 'webhook', 'https://alerts.example/hook', 60);
         INSERT INTO action_policy (action, component_glob, decision, max_per_hour) VALUES ('RESTART', 'worker', 'auto', 2);",
    );
    env
}

#[test]
fn export_apply_into_a_fresh_home_and_export_again_gives_the_same_file() {
    let one = furnished();
    let file = one.home.root().join("stack.toml");
    one.ctl(&["export", "--output", file.to_str().unwrap()])
        .success();
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text, export(&one), "--output writes what stdout shows");
    for comment in [
        "# components (autorun_components)",
        "# schedules (component_schedules)",
        "# action_policy (action_policy)",
    ] {
        assert!(text.contains(comment), "{comment} in\n{text}");
    }
    assert!(text.contains("[[limits]]\ncomponent_id = \"worker\"\nmemory_max = 67108864\ncpu_max = 0.5\npids_max = 50\n"), "{text}");
    assert!(text.contains("enabled = true"), "{text}");

    let two = TestEnv::new();
    let fresh = export(&two);
    let planned = two
        .ctl(&["plan", file.to_str().unwrap(), "--prune"])
        .success();
    assert!(
        stdout(&planned).contains("+ components.worker: "),
        "{}",
        stdout(&planned)
    );
    assert_eq!(export(&two), fresh, "plan changed nothing");
    let applied = two
        .ctl(&["apply", file.to_str().unwrap(), "--prune"])
        .success();
    assert!(
        stdout(&applied).contains("applied: "),
        "{}",
        stdout(&applied)
    );
    assert_eq!(export(&two), text, "the same file, byte for byte");
    two.ctl(&["plan", file.to_str().unwrap(), "--prune"])
        .success()
        .stdout(contains("no changes"));
}

#[test]
fn an_edited_file_plans_exactly_its_edit_and_apply_makes_it_so() {
    let env = furnished();
    let original = export(&env);
    let edited = original
        .replacen(
            "component_id = \"worker\"\nbase_script_name = \"sleeper.sh\"\nmanager_affinity = \"daemon_manager\"\ndesired_state = \"active\"",
            "component_id = \"worker\"\nbase_script_name = \"sleeper.sh\"\nmanager_affinity = \"daemon_manager\"\ndesired_state = \"inactive\"",
            1,
        )
        .replacen("pids_max = 50", "pids_max = 60", 1);
    assert_ne!(edited, original);
    let file = env.home.root().join("edited.toml");
    std::fs::write(&file, &edited).unwrap();
    let plan = stdout(&env.ctl(&["plan", file.to_str().unwrap()]).success());
    assert_eq!(
        plan.lines().collect::<Vec<_>>(),
        [
            "~ components.worker: desired_state \"active\" -> \"inactive\"",
            "~ limits.worker: pids_max 50 -> 60",
            "plan: 0 to add, 2 to change, 0 to remove",
        ],
        "{plan}"
    );
    assert_eq!(export(&env), original, "plan applies nothing");
    env.ctl(&["apply", file.to_str().unwrap()])
        .success()
        .stdout(contains("applied: 0 added, 2 changed, 0 removed"));
    assert_eq!(export(&env), edited);
    // Left out of the file: kept, unless --prune.
    let start = edited.find("[[alert_rules]]").unwrap();
    let end = edited.find("\n# action_policy").unwrap();
    let fewer = format!("{}{}", &edited[..start], &edited[end..]);
    std::fs::write(&file, &fewer).unwrap();
    env.ctl(&["plan", file.to_str().unwrap()])
        .success()
        .stdout(contains(
            "no changes (1 row only in the database kept; --prune removes it)",
        ));
    let pruned = stdout(
        &env.ctl(&["plan", file.to_str().unwrap(), "--prune"])
            .success(),
    );
    assert_eq!(
        pruned.lines().collect::<Vec<_>>(),
        [
            "- alert_rules.7",
            "plan: 0 to add, 0 to change, 1 to remove"
        ]
    );
    let renamed = edited.replace("[[alert_rules]]\nid = 7\n", "[[gone]]\nid = 7\n");
    std::fs::write(&file, &renamed).unwrap();
    env.ctl(&["plan", file.to_str().unwrap()])
        .failure()
        .stderr(contains("unknown section [[gone]]"));
}

#[test]
fn a_bad_file_is_refused_by_name_and_applies_nothing() {
    let env = furnished();
    let before = export(&env);
    let file = env.home.root().join("bad.toml");
    let worker_row = "[[components]]\ncomponent_id = \"worker\"\n";
    let cases: Vec<(String, &str)> = vec![
        (
            before.replacen("desired_state = \"active\"", "desired_state = \"active\"\ncolour = \"red\"", 1),
            "unknown key \"colour\"",
        ),
        (
            before.replacen(worker_row, &format!("{worker_row}base_script_name = \"sleeper.sh\"\nmanager_affinity = \"daemon_manager\"\n\n{worker_row}"), 1),
            "component_id worker appears twice",
        ),
        (
            format!("{before}\n[[dependencies]]\ncomponent_id = \"worker\"\ndepends_on = \"job\"\n"),
            "cycle",
        ),
        (
            before.replacen("spec = \"0 30 7 * * 1-5\"", "spec = \"0 0 30 2 *\"", 1),
            "never fires",
        ),
        (
            before.replacen("pids_max = 50", "pids_max = \"fifty\"", 1),
            "pids_max must be an integer",
        ),
        (
            before.replacen("manager_affinity = \"daemon_manager\"", "manager_affinity = \"nobody_manager\"", 1),
            "no manager is called 'nobody_manager'",
        ),
        (
            format!("{before}\n[[schedules]]\ncomponent_id = \"worker\"\nspec = \"every 5s\"\n"),
            "schedules worker: the component is not a ONESHOT",
        ),
        (
            before.replacen("decision = \"auto\"", "decision = \"always\"", 1),
            "decision",
        ),
    ];
    for (text, says) in cases {
        std::fs::write(&file, &text).unwrap();
        for verb in ["plan", "apply"] {
            env.ctl(&[verb, file.to_str().unwrap()])
                .failure()
                .stderr(contains(says))
                .stderr(contains("bad.toml"));
        }
        assert_eq!(export(&env), before, "{says}: nothing applied");
    }
    std::fs::write(&file, b"[[components]]\ncomponent_id = \"\xff\"\n").unwrap();
    env.ctl(&["apply", file.to_str().unwrap()])
        .failure()
        .stderr(contains("is not UTF-8"));
    assert_eq!(export(&env), before);
}
