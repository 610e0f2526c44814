use super::*;

/// Unix seconds of a civil time in a zone.
fn at(zone: &str, civil: &str) -> f64 {
    let zone = zone_named("test", zone).unwrap();
    let time: jiff::civil::DateTime = civil.parse().unwrap();
    time.to_zoned(zone).unwrap().timestamp().as_second() as f64
}

/// The civil time of `unix` in `zone`, as `2026-03-29T03:00:00`.
fn civil(zone: &str, unix: f64) -> String {
    let zone = zone_named("test", zone).unwrap();
    Timestamp::from_second(unix as i64)
        .unwrap()
        .to_zoned(zone)
        .datetime()
        .to_string()
}

/// The next `n` firings of `spec` after a civil time, in the spec's zone.
fn firings(spec: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
    let spec = Spec::parse(spec).unwrap();
    let mut t = at(zone, after);
    (0..n)
        .map(|_| {
            t = spec.next_after(t).unwrap();
            civil(zone, t)
        })
        .collect()
}

// Central European time as a POSIX string: the same rules as Europe/Berlin, without the
// machine's zoneinfo.
const CET: &str = "CET-1CEST,M3.5.0,M10.5.0/3";

#[test]
fn cron_times_across_dst_changes_month_ends_and_leap_days() {
    #[rustfmt::skip]
    let table: &[(&str, &str, &str, &[&str])] = &[
        // Spring forward (2026-03-29, 02:00 → 03:00): a time in the gap runs once, at the jump.
        (&format!("TZ={CET} 30 2 * * *"), CET, "2026-03-28T12:00:00",
            &["2026-03-29T03:00:00", "2026-03-30T02:30:00"]),
        // Hourly through the gap: 01:00, then 03:00 (02:00 does not exist), then 04:00.
        (&format!("TZ={CET} 0 * * * *"), CET, "2026-03-29T00:30:00",
            &["2026-03-29T01:00:00", "2026-03-29T03:00:00", "2026-03-29T04:00:00"]),
        // Fall back (2026-10-25, 03:00 → 02:00): 02:30 happens twice and runs once.
        (&format!("TZ={CET} 30 2 * * *"), CET, "2026-10-24T12:00:00",
            &["2026-10-25T02:30:00", "2026-10-26T02:30:00"]),
        // Month ends: the 31st skips the shorter months; L is the last day of each.
        (&format!("TZ={CET} 0 0 31 * *"), CET, "2026-01-31T12:00:00",
            &["2026-03-31T00:00:00", "2026-05-31T00:00:00", "2026-07-31T00:00:00"]),
        (&format!("TZ={CET} 0 0 L * *"), CET, "2027-01-15T00:00:00",
            &["2027-01-31T00:00:00", "2027-02-28T00:00:00", "2027-03-31T00:00:00"]),
        // Leap days: the 29th of February comes every four years; L finds it.
        (&format!("TZ={CET} 0 0 29 2 *"), CET, "2026-03-01T00:00:00",
            &["2028-02-29T00:00:00", "2032-02-29T00:00:00"]),
        (&format!("TZ={CET} 0 12 L 2 *"), CET, "2027-06-01T00:00:00",
            &["2028-02-29T12:00:00", "2029-02-28T12:00:00"]),
        // Seconds, and the aliases.
        ("TZ=UTC 15 */5 * * * *", "UTC", "2026-12-07T10:00:20",
            &["2026-12-07T10:05:15", "2026-12-07T10:10:15"]),
        ("TZ=UTC @hourly", "UTC", "2026-12-07T10:00:00",
            &["2026-12-07T11:00:00", "2026-12-07T12:00:00"]),
        ("TZ=UTC @daily", "UTC", "2026-12-31T23:59:59",
            &["2027-01-01T00:00:00", "2027-01-02T00:00:00"]),
    ];
    for (spec, zone, after, expected) in table {
        assert_eq!(
            firings(spec, zone, after, expected.len()),
            *expected,
            "{spec} after {after}"
        );
    }
}

#[test]
fn every_fires_on_multiples_of_its_interval_since_the_epoch() {
    let two = Spec::parse("every 2s").unwrap();
    assert_eq!(two.next_after(100.0), Some(102.0));
    assert_eq!(two.next_after(101.5), Some(102.0));
    let hour = Spec::parse("every 1h").unwrap();
    let after = at("UTC", "2026-12-07T10:20:00");
    assert_eq!(
        civil("UTC", hour.next_after(after).unwrap()),
        "2026-12-07T11:00:00"
    );
    assert_eq!(
        Spec::parse("every 1h30m").unwrap(),
        Spec::parse("every 90m").unwrap()
    );
}

impl PartialEq for Spec {
    fn eq(&self, other: &Spec) -> bool {
        match (self, other) {
            (Spec::Every(a), Spec::Every(b)) => a == b,
            _ => false,
        }
    }
}

#[test]
fn bad_specs_are_refused_by_name() {
    let table = [
        ("every 0s", "below the shortest"),
        ("every 500ms", "below the shortest"),
        ("every soon", "is not a duration"),
        ("every -5s", "negative"),
        ("0 0 30 2 *", "never fires"),
        ("*/0 * * * *", "not a cron expression"),
        ("61 * * * *", "not a cron expression"),
        ("TZ=Mars/Olympus 0 * * * *", "neither a time zone"),
        ("TZ=UTC", "nothing follows the time zone"),
        ("", "it is empty"),
    ];
    for (spec, says) in table {
        let error = Spec::parse(spec).unwrap_err().to_string();
        assert!(error.contains(says), "{spec:?}: {error}");
        assert!(error.contains("component_schedules.spec"), "{error}");
    }
    let row = |overlap: &str, missed: &str| ScheduleRow {
        component_id: "job".into(),
        spec: "every 5s".into(),
        overlap: overlap.into(),
        missed: missed.into(),
    };
    assert!(row("skip", "once").check().is_ok());
    assert_eq!(
        row("sometimes", "skip").check().unwrap_err().to_string(),
        "component_schedules.overlap \"sometimes\" is not one of skip, queue, kill"
    );
    assert!(
        row("kill", "twice")
            .check()
            .unwrap_err()
            .to_string()
            .contains("missed")
    );
}

#[test]
fn rows_round_trip_and_last_runs_come_from_the_lifecycle_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    crate::db::initialise(&path).unwrap();
    let conn = crate::db::open(&path).unwrap();
    let row = ScheduleRow {
        component_id: "job".into(),
        spec: " every 2s ".into(),
        overlap: "queue".into(),
        missed: "once".into(),
    };
    set(&conn, &row).unwrap();
    let stored = get(&conn, "job").unwrap().unwrap();
    assert_eq!(stored.spec, "every 2s");
    assert_eq!(all(&conn).unwrap(), vec![stored]);
    let bad = ScheduleRow {
        spec: "every 0s".into(),
        ..row.clone()
    };
    assert!(matches!(set(&conn, &bad), Err(SetError::Invalid(_))));
    assert!(last_runs(&conn).unwrap().is_empty());
    crate::lifecycle::LifecycleRecord::new("job", LifecycleEvent::ScheduledStart)
        .at(1_800_000_000)
        .write(&conn)
        .unwrap();
    assert_eq!(last_runs(&conn).unwrap()["job"], 1_800_000_000.0);
    assert!(clear(&conn, "job").unwrap());
    assert!(!clear(&conn, "job").unwrap());
}
