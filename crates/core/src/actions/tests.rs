use super::*;

fn action(kind: ActionKind, id: &str) -> Action {
    Action {
        kind,
        component_id: id.to_owned(),
        memory_max: None,
    }
}

#[test]
fn commands_parse_and_bad_ones_say_why() {
    use ActionKind::*;
    type Want<'a> = (ActionKind, &'a str, Option<u64>);
    let table: &[(&str, Want)] = &[
        ("CMD:START nano_cpu", (Start, "nano_cpu", None)),
        (
            "CMD:stop  cpu_usage_daemon\nand more text",
            (Stop, "cpu_usage_daemon", None),
        ),
        ("\n CMD:Restart\tx", (Restart, "x", None)),
        ("CMD:LIMIT x memory=64M", (Limit, "x", Some(64 << 20))),
        ("CMD:RESTART x\r\n", (Restart, "x", None)),
    ];
    for (line, want) in table {
        let got = parse_command(line).unwrap().unwrap();
        let (kind, id, memory) = *want;
        assert_eq!(
            got,
            Action {
                kind,
                component_id: id.into(),
                memory_max: memory
            },
            "{line:?}"
        );
    }
    assert_eq!(parse_command("hello CMD:STOP x"), None);
    assert_eq!(parse_command("cmd:stop x"), None);
    for (line, reason) in [
        ("CMD:", "no verb"),
        ("CMD:RUN x", "unknown verb \"RUN\""),
        ("CMD:ЅTOP x", "unknown verb"),
        ("CMD:START", "names no component id"),
        ("CMD:START ../../bin/sh", "invalid component id"),
        ("CMD:START a b", "unexpected \"b\""),
        ("CMD:START x;rm", "only letters, digits"),
        ("CMD:STOP x\nCMD:STOP y", "more than one `CMD:` line"),
        ("CMD:STOP x\x1b[2J", "control character"),
        ("CMD:LIMIT x", "needs memory=SIZE"),
        ("CMD:LIMIT x cpu=2", "LIMIT takes memory=SIZE"),
        ("CMD:LIMIT x memory=1K", "below the least limit"),
        ("CMD:LIMIT x memory=lots", "memory:"),
        ("CMD:LIMIT x memory=64M y", "unexpected \"y\""),
    ] {
        let error = parse_command(line).unwrap().unwrap_err();
        assert!(error.reason.contains(reason), "{line:?}: {error}");
    }
    let huge = format!("CMD:START {}", "a".repeat(1_000_000));
    assert!(
        parse_command(&huge)
            .unwrap()
            .unwrap_err()
            .reason
            .contains("longer than")
    );
}

#[test]
fn globs_match_like_a_shell() {
    for (glob, text, want) in [
        ("*", "", true),
        ("*", "anything", true),
        ("nano_*", "nano_cpu", true),
        ("nano_*", "nano_", true),
        ("nano_*", "xnano_cpu", false),
        ("*_daemon", "cpu_usage_daemon", true),
        ("n?no_*", "nano_x", true),
        ("a*b*c", "aXbYbZc", true),
        ("a*b*c", "aXbYbZ", false),
        ("exact", "exact", true),
        ("exact", "exactly", false),
    ] {
        assert_eq!(glob_matches(glob, text), want, "{glob} ~ {text}");
    }
}

fn rule(
    id: i64,
    action: Option<ActionKind>,
    glob: &str,
    decision: Decision,
    max: Option<u32>,
) -> PolicyRule {
    PolicyRule {
        id,
        action,
        component_glob: glob.into(),
        decision,
        max_per_hour: max,
    }
}

#[test]
fn the_most_specific_rule_decides_and_the_reserved_are_always_denied() {
    use ActionKind::*;
    let rules = [
        rule(1, Some(Start), "nano_*", Decision::Auto, Some(2)),
        rule(2, None, "*", Decision::Approve, None),
        rule(3, Some(Stop), "cpu_*", Decision::Deny, None),
        rule(4, None, "*", Decision::Auto, None),
        rule(5, None, "*", Decision::Auto, None),
    ];
    let is = |verdict: &Verdict| match verdict {
        Verdict::Auto(_) => "auto",
        Verdict::Approve(_) => "approve",
        Verdict::Deny(_) => "deny",
    };
    // (action, id, script, proposals in the last hour, verdict)
    let table = [
        (Start, "nano_cpu", Some("nano_instance"), 0, "auto"),
        (Start, "nano_cpu", Some("nano_instance"), 2, "deny"),
        (Stop, "nano_cpu", Some("nano_instance"), 0, "approve"),
        (Restart, "anything", None, 0, "approve"),
        (
            Stop,
            "cpu_usage_daemon",
            Some("cpu_usage_daemon.py"),
            0,
            "deny",
        ),
        (
            Start,
            "cpu_usage_daemon",
            Some("cpu_usage_daemon.py"),
            0,
            "approve",
        ),
        (Stop, "daemon_manager", None, 0, "deny"),
        (Stop, "boot_system", None, 0, "deny"),
        (Stop, "n0m1_logd", None, 0, "deny"),
        (Stop, "n0m1_alerts", Some("n0m1_alerts"), 0, "deny"),
        (Stop, "renamed_web", Some("n0m1_web"), 0, "deny"),
        (
            Restart,
            "llm_command_daemon",
            Some("llm_command_daemon.py"),
            0,
            "deny",
        ),
        (Start, "nano_manager", None, 0, "deny"),
    ];
    for (kind, id, script, recent, want) in table {
        let verdict = decide(&action(kind, id), script, &rules, recent);
        assert_eq!(is(&verdict), want, "{kind} {id}: {verdict:?}");
    }
    // The reason names the row, or the rate limit, or why it is reserved.
    let Verdict::Deny(reason) = decide(&action(Start, "nano_x"), None, &rules, 2) else {
        panic!()
    };
    assert!(
        reason.contains("rate limit") && reason.contains("action_policy row 1"),
        "{reason}"
    );
    let Verdict::Deny(reason) = decide(&action(Stop, "daemon_manager"), None, &rules, 0) else {
        panic!()
    };
    assert!(reason.contains("manager"), "{reason}");
    // Equal specificity: the oldest row.
    let Verdict::Approve(by) = decide(&action(Restart, "y"), None, &rules, 0) else {
        panic!()
    };
    assert!(by.contains("row 2"), "{by}");
    // No rule at all: an operator decides.
    assert!(matches!(
        decide(&action(Start, "nano_x"), None, &[], 0),
        Verdict::Approve(_)
    ));
}

#[test]
fn policy_rows_are_read_and_bad_ones_named() {
    let mut conn = Connection::open_in_memory().unwrap();
    crate::schema::migrations().to_latest(&mut conn).unwrap();
    let (rules, errors) = policy(&conn).unwrap();
    assert!(errors.is_empty());
    assert_eq!(rules.len(), 2, "the defaults: {rules:?}");
    assert_eq!(rules[0].action, Some(ActionKind::Start));
    assert_eq!(rules[0].decision, Decision::Auto);
    conn.execute_batch(
        "INSERT INTO action_policy (action, component_glob, decision, max_per_hour) VALUES
           ('DANCE', 'x', 'auto', NULL), ('stop', 'y', 'deny', -1), ('stop', 'z', 'deny', 3)",
    )
    .unwrap();
    let (rules, errors) = policy(&conn).unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(errors.len(), 2);
    assert!(
        errors[0]
            .to_string()
            .contains("action_policy row 3: action: \"DANCE\""),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].to_string().contains("max_per_hour: -1"),
        "{}",
        errors[1]
    );
    // The table itself refuses a decision it does not know.
    assert!(
        conn.execute("INSERT INTO action_policy (decision) VALUES ('maybe')", [])
            .is_err()
    );
}

#[test]
fn a_proposal_moves_once_and_waits_at_most_its_time() {
    let mut conn = Connection::open_in_memory().unwrap();
    crate::schema::migrations().to_latest(&mut conn).unwrap();
    let new = |at: f64| NewProposal {
        created_at: at,
        source: "llm_outputs row 1",
        action: "RESTART",
        component_id: Some("x"),
        argument: None,
        reason: "CMD:RESTART x",
        state: ProposalState::Proposed,
        decided_by: None,
    };
    let old = insert(&conn, &new(100.0)).unwrap();
    let fresh = insert(&conn, &new(1000.0)).unwrap();
    assert_eq!(
        waiting_like(&conn, &action(ActionKind::Restart, "x")).unwrap(),
        Some(old)
    );
    assert_eq!(count_since(&conn, "x", 0.0).unwrap(), 2);
    assert_eq!(expire(&conn, 1000.0, 600.0).unwrap(), 1);
    assert_eq!(
        get(&conn, old).unwrap().unwrap().state,
        ProposalState::Expired
    );
    // Two approvals at once: one moves it.
    assert!(
        decide_row(
            &conn,
            fresh,
            ProposalState::Proposed,
            ProposalState::Approved,
            "a",
            1.0,
            None
        )
        .unwrap()
    );
    assert!(
        !decide_row(
            &conn,
            fresh,
            ProposalState::Proposed,
            ProposalState::Approved,
            "b",
            1.0,
            None
        )
        .unwrap()
    );
    finish(
        &conn,
        fresh,
        ProposalState::Executed,
        "pid 1 → 2",
        "{}",
        "{}",
    )
    .unwrap();
    let row = get(&conn, fresh).unwrap().unwrap();
    assert_eq!(
        (row.state, row.decided_by.as_deref()),
        (ProposalState::Executed, Some("a"))
    );
    assert_eq!(row.parsed(), Some(action(ActionKind::Restart, "x")));
    assert_eq!(list(&conn, true, 10).unwrap().len(), 0);
    assert_eq!(list(&conn, false, 10).unwrap().len(), 2);
}

proptest::proptest! {
    #[test]
    fn parsing_never_panics_and_accepts_only_safe_commands(content in "\\PC{0,300}") {
        if let Some(Ok(action)) = parse_command(&content) {
            proptest::prop_assert!(validate_component_id(&action.component_id).is_ok());
        }
    }
}
