use std::time::Duration;

use n0m1_core::defaults::DEFAULT_COMPONENTS;
use n0m1_core::schema::{COMPONENT_STATE, ORIGINAL_TABLES};
use predicates::str::contains;
use rusqlite::Connection;

use crate::support::bin;

fn init(home: &std::path::Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    assert_cmd::Command::new(bin("n0m1ctl"))
        .arg("--home")
        .arg(home)
        .arg("init")
        .args(extra)
        .timeout(Duration::from_secs(30))
        .assert()
}

/// The schema and every row, as text: equal dumps mean nothing changed.
fn dump(path: &std::path::Path) -> String {
    let conn = Connection::open(path).unwrap();
    let mut out = String::new();
    let mut tables: Vec<(String, String)> = conn
        .prepare("SELECT name, COALESCE(sql, '') FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    for (name, sql) in &tables {
        out.push_str(sql);
        out.push('\n');
        if sql.starts_with("CREATE TABLE") {
            let mut statement = conn.prepare(&format!("SELECT * FROM \"{name}\"")).unwrap();
            let columns = statement.column_count();
            let rows = statement
                .query_map([], |row| {
                    (0..columns)
                        .map(|i| {
                            row.get::<_, rusqlite::types::Value>(i)
                                .map(|v| format!("{v:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap();
            for row in rows {
                out.push_str(&row.unwrap().join("|"));
                out.push('\n');
            }
        }
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    out.push_str(&format!("user_version {version}\n"));
    out
}

#[test]
fn init_creates_every_table_and_a_second_run_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home, &[])
        .success()
        .stdout(contains("created"))
        .stdout(contains("daemon_manager:"));
    let db = home.join("n0m1_agi.db");
    let conn = Connection::open(&db).unwrap();
    for table in ORIGINAL_TABLES.iter().chain([&COMPONENT_STATE]) {
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "table {table}");
    }
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM autorun_components", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as usize, DEFAULT_COMPONENTS.len());
    drop(conn);
    let before = dump(&db);
    init(&home, &[])
        .success()
        .stdout(contains("0 default rows added"));
    assert_eq!(before, dump(&db));
}

#[test]
fn init_keeps_operator_changes_to_default_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home, &["--quiet"]).success();
    let db = home.join("n0m1_agi.db");
    Connection::open(&db)
        .unwrap()
        .execute("UPDATE autorun_components SET desired_state = 'inactive' WHERE component_id = 'cpu_usage_daemon'", [])
        .unwrap();
    init(&home, &["--quiet"]).success();
    let state: String = Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT desired_state FROM autorun_components WHERE component_id = 'cpu_usage_daemon'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(state, "inactive");
}

#[test]
fn a_database_made_by_the_original_is_upgraded_with_every_row_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let db = home.join("n0m1_agi.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(include_str!("../fixtures/original_schema.sql"))
        .unwrap();
    let count = |conn: &Connection, table: &str| -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    let before: Vec<i64> = ORIGINAL_TABLES.iter().map(|t| count(&conn, t)).collect();
    drop(conn);

    assert_cmd::Command::new(bin("init_database"))
        .arg("--home")
        .arg(&home)
        .assert()
        .success()
        .stdout(contains(format!(
            "upgraded from schema version 0 to {}",
            n0m1_core::schema::latest_version()
        )));

    let conn = Connection::open(&db).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version as usize, n0m1_core::schema::latest_version());
    // Operator rows kept as they were; missing defaults added beside them.
    let (state, args): (String, String) = conn
        .query_row(
            "SELECT desired_state, launch_args_json FROM autorun_components WHERE component_id = 'cpu_usage_daemon'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (state.as_str(), args.as_str()),
        ("inactive", r#"{"--interval": "30"}"#)
    );
    assert_eq!(
        count(&conn, "autorun_components") as usize,
        DEFAULT_COMPONENTS.len() + 1
    );
    for (table, old) in ORIGINAL_TABLES.iter().zip(&before) {
        let now = count(&conn, table);
        if !matches!(*table, "autorun_components" | "nano_prompts") {
            assert_eq!(now, *old, "rows of {table}");
        }
        assert!(now >= *old, "rows of {table}");
    }
    let prompt: (String, i64) = conn
        .query_row(
            "SELECT prompt, needs_reload FROM nano_prompts WHERE nano_id = 'cpu_usage'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(prompt, ("Summarise CPU load".to_owned(), 1));
    assert_eq!(count(&conn, COMPONENT_STATE), 0);
    // And the binaries that only open it accept it now.
    drop(conn);
    n0m1_core::db::open(&db).unwrap();
}

#[test]
fn reset_needs_yes_when_stdin_is_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home, &["--quiet"]).success();
    let db = home.join("n0m1_agi.db");
    Connection::open(&db)
        .unwrap()
        .execute("INSERT INTO cpu_usage_log (cpu_usage) VALUES (1.0)", [])
        .unwrap();
    init(&home, &["--reset"])
        .failure()
        .stderr(contains("--yes"));
    let kept: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM cpu_usage_log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 1);
    init(&home, &["--reset", "--yes", "--quiet"]).success();
    let gone: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM cpu_usage_log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(gone, 0);
}

#[test]
fn garbage_database_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("n0m1_agi.db"), vec![0x42u8; 8192]).unwrap();
    init(&home, &[])
        .failure()
        .stderr(contains("n0m1_agi.db"))
        .stderr(contains("not an SQLite database"));
    assert_cmd::Command::new(bin("n0m1ctl"))
        .arg("--home")
        .arg(&home)
        .arg("status")
        .assert()
        .failure()
        .stderr(contains("not an SQLite database"));
}

#[test]
fn home_database_and_logs_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home, &["--quiet"]).success();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700);
    for dir in ["logs", "logs_managers", "pids", "components"] {
        assert_eq!(mode(&home.join(dir)), 0o700, "{dir}");
    }
    assert_eq!(mode(&home.join("n0m1_agi.db")), 0o600);
}
