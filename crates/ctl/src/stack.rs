//! `n0m1ctl export`, `plan` and `apply`: the stack as a TOML file. One array of tables per
//! section of `n0m1_core::stack` (`[[components]]`, `[[dependencies]]`, …), one key per
//! column, in a stable order with a comment naming each section, so a file round-trips
//! byte for byte. `plan` and `apply` run the same steps: the file is read and checked
//! (unknown sections and keys, wrong types, missing or duplicate keys), the components as
//! `add` checks them; then, in one transaction, the changes are written and every row the
//! file names is checked again by its table's owner as the tables now stand (a dependency
//! cycle, a bad schedule, a limit above the machine); `apply` commits, `plan` rolls back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use n0m1_core::Home;
use n0m1_core::components::{self, ComponentRow};
use n0m1_core::schema;
use n0m1_core::stack::{Change, Key, Kind, Row, SECTIONS, Section, diff, shown, write};
use n0m1_core::text::printable;
use n0m1_supervisor::launch::{ScriptResolver, launch_args};
use rusqlite::types::Value;

/// The largest stack file read: far beyond any real stack, small enough to refuse a mistake.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

const HEADER: &str =
    "# The n0m1 stack, written by `n0m1ctl export`. `n0m1ctl plan FILE` shows what applying it
# would add, change and remove; `n0m1ctl apply FILE [--prune]` applies it in one transaction
# (rows the file leaves out are removed only with --prune). One [[section]] table per row,
# one key per column; a column left out takes its table's default.
";

/// The whole stack as the file's text.
pub fn export(conn: &rusqlite::Connection) -> anyhow::Result<String> {
    let mut text = HEADER.to_owned();
    for section in SECTIONS {
        let rows = section
            .read(conn)
            .with_context(|| format!("reading {}", section.table))?;
        write!(
            text,
            "\n# {} ({}): {}.\n",
            section.name, section.table, section.about
        )?;
        if rows.is_empty() {
            text.push_str("# (none)\n");
        }
        for (index, row) in rows.values().enumerate() {
            if index > 0 {
                text.push('\n');
            }
            writeln!(text, "[[{}]]", section.name)?;
            for column in section.columns {
                if let Some(value) = row.get(column.name) {
                    writeln!(text, "{} = {}", column.name, literal(column.kind, value))?;
                }
            }
        }
    }
    Ok(text)
}

/// A value as TOML writes it (toml's own literals: strings escaped, floats with a point).
fn literal(kind: Kind, value: &Value) -> String {
    let value = match (kind, value) {
        (Kind::Flag, Value::Integer(n)) => toml::Value::Boolean(*n != 0),
        (_, Value::Integer(n)) => toml::Value::Integer(*n),
        (_, Value::Real(x)) => toml::Value::Float(*x),
        (_, Value::Text(text)) => toml::Value::String(text.clone()),
        (_, Value::Blob(_) | Value::Null) => toml::Value::String(String::new()),
    };
    value.to_string()
}

/// `export [--output FILE]`.
pub fn run_export(home: &Home, output: Option<&Path>) -> anyhow::Result<()> {
    let conn = crate::open_database(home)?;
    write_out(&export(&conn)?, output)
}

/// A stack's text to standard output, or to `output` (0600: webhook URLs and accounts are
/// in it, private like the home's own files).
pub fn write_out(text: &str, output: Option<&Path>) -> anyhow::Result<()> {
    match output {
        None => print!("{text}"),
        Some(path) => n0m1_core::home::write_private(path, text.as_bytes())?,
    }
    Ok(())
}

/// The rows a file asks for, by section and key.
type Wanted = Vec<BTreeMap<Key, Row>>;

/// The file's text: a regular file of at most `MAX_FILE_BYTES`, UTF-8.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Some(kind) = n0m1_core::home::not_a_regular_file(&meta.file_type()) {
        bail!("{} is {kind}, not a stack file", path.display());
    }
    if meta.len() > MAX_FILE_BYTES {
        bail!(
            "{} is larger than {} MiB: not a stack file",
            path.display(),
            MAX_FILE_BYTES >> 20
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|error| {
        anyhow::anyhow!(
            "{} is not UTF-8 (byte {}): a stack file is TOML text",
            path.display(),
            error.utf8_error().valid_up_to()
        )
    })
}

/// Parses and checks the file's shape (`name` in messages): everything that needs no
/// database.
fn parse(text: &str, name: &str) -> anyhow::Result<Wanted> {
    let table: toml::Table =
        toml::from_str(text).map_err(|error| anyhow::anyhow!("{name}: {error}"))?;
    let mut problems = Vec::new();
    for name in table.keys() {
        if !SECTIONS.iter().any(|s| s.name == name) {
            let known: Vec<&str> = SECTIONS.iter().map(|s| s.name).collect();
            problems.push(format!(
                "unknown section [[{}]]; the sections are {}",
                printable(name),
                known.join(", ")
            ));
        }
    }
    let mut wanted = Vec::new();
    for section in SECTIONS {
        let mut rows = BTreeMap::new();
        let entries = match table.get(section.name) {
            None => &Vec::new(),
            Some(toml::Value::Array(entries)) => entries,
            Some(_) => {
                problems.push(format!(
                    "{} must be written as [[{}]] tables, one per row",
                    section.name, section.name
                ));
                &Vec::new()
            }
        };
        for (index, entry) in entries.iter().enumerate() {
            let place = format!("{} row {}", section.name, index + 1);
            let Some(entry) = entry.as_table() else {
                problems.push(format!("{place}: not a table"));
                continue;
            };
            match row_of(section, entry, &place) {
                Ok(row) => {
                    let key = section.key_of(&row);
                    if rows.insert(key.clone(), row).is_some() {
                        problems.push(format!(
                            "{place}: {} {key} appears twice",
                            section.key.join(" and ")
                        ));
                    }
                }
                Err(mut found) => problems.append(&mut found),
            }
        }
        wanted.push(rows);
    }
    if !problems.is_empty() {
        bail!(
            "{name} is refused, nothing applied:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(wanted)
}

/// One row of a section, each key a known column of the right type.
fn row_of(section: &Section, entry: &toml::Table, place: &str) -> Result<Row, Vec<String>> {
    let mut row = Row::new();
    let mut problems = Vec::new();
    for (name, value) in entry {
        let Some(column) = section.column(name) else {
            let known: Vec<&str> = section.columns.iter().map(|c| c.name).collect();
            problems.push(format!(
                "{place}: unknown key {:?}; the keys of {} are {}",
                printable(name),
                section.name,
                known.join(", ")
            ));
            continue;
        };
        let converted = match (column.kind, value) {
            (Kind::Text, toml::Value::String(text)) => Some(Value::Text(text.clone())),
            (Kind::Integer, toml::Value::Integer(n)) => Some(Value::Integer(*n)),
            (Kind::Real, toml::Value::Float(x)) if x.is_finite() => Some(Value::Real(*x)),
            (Kind::Real, toml::Value::Integer(n)) => Some(Value::Real(*n as f64)),
            (Kind::Flag, toml::Value::Boolean(b)) => Some(Value::Integer(i64::from(*b))),
            _ => None,
        };
        match converted {
            Some(value) => {
                row.insert(column.name.to_owned(), value);
            }
            None => problems.push(format!(
                "{place}: {name} must be {}",
                match column.kind {
                    Kind::Text => "a string",
                    Kind::Integer => "an integer",
                    Kind::Real => "a number",
                    Kind::Flag => "true or false",
                }
            )),
        }
    }
    for column in section.columns.iter().filter(|c| c.required) {
        if !row.contains_key(column.name) {
            problems.push(format!("{place}: {} is required", column.name));
        }
    }
    if problems.is_empty() {
        Ok(row)
    } else {
        Err(problems)
    }
}

fn text_of<'a>(row: &'a Row, column: &str) -> Option<&'a str> {
    match row.get(column) {
        Some(Value::Text(text)) => Some(text),
        _ => None,
    }
}

/// The components as `add` checks them: id, manager, script, arguments, desired state.
fn check_components(home: &Home, rows: &BTreeMap<Key, Row>) -> Vec<String> {
    let config = n0m1_core::Config::load(&home.config_path()).unwrap_or_default();
    let managers = crate::components::known_managers(&config);
    let resolver = ScriptResolver::new(home, n0m1_core::process::own_bin_dir().unwrap_or_default());
    let mut problems = Vec::new();
    for (key, row) in rows {
        let place = format!("components {key}");
        let id = text_of(row, "component_id").unwrap_or_default();
        let manager = text_of(row, "manager_affinity").unwrap_or_default();
        if let Some(problem) = crate::components::cannot_run(id, manager, &managers) {
            problems.push(format!("{place}: {problem}"));
        }
        match text_of(row, "desired_state").unwrap_or("active") {
            components::DESIRED_ACTIVE | components::DESIRED_INACTIVE => {}
            other => problems.push(format!(
                "{place}: desired_state {:?} is not active or inactive",
                printable(other)
            )),
        }
        let run_type = text_of(row, "run_type_on_boot").unwrap_or(components::RUN_TYPE_PRIMARY);
        if let Err(error) = launch_args(text_of(row, "launch_args_json"), run_type) {
            problems.push(format!("{place}: launch_args_json: {error}"));
        }
        if let Err(error) = resolver.resolve(text_of(row, "base_script_name").unwrap_or_default()) {
            problems.push(format!("{place}: base_script_name: {error}"));
        }
    }
    problems
}

/// The rows the file names, checked by their tables' owners as the tables now stand.
fn check_written(
    home: &Home,
    conn: &rusqlite::Connection,
    wanted: &Wanted,
) -> anyhow::Result<Vec<String>> {
    let index_of = |table: &str| SECTIONS.iter().position(|s| s.table == table).unwrap();
    let named = |table: &str| -> BTreeSet<String> {
        let index = index_of(table);
        wanted[index]
            .values()
            .filter_map(|row| text_of(row, "component_id").map(str::to_owned))
            .collect()
    };
    let mut problems = Vec::new();
    let rows: Vec<ComponentRow> = components::all(conn)?;
    let by_id: BTreeMap<&str, &ComponentRow> =
        rows.iter().map(|r| (r.component_id.as_str(), r)).collect();
    let known: BTreeSet<String> = by_id.keys().map(|id| id.to_string()).collect();

    let (deps, errors) =
        n0m1_core::dependencies::validate(&n0m1_core::dependencies::all(conn)?, &known);
    let dependents = named(schema::COMPONENT_DEPENDENCIES);
    problems.extend(
        errors
            .iter()
            .filter(|e| dependents.contains(&e.component_id))
            .map(ToString::to_string),
    );
    for (id, cycle) in n0m1_core::dependencies::cycles(&deps) {
        if dependents.contains(&id) {
            problems.push(format!("dependencies: {id} is in a cycle ({cycle})"));
        }
    }
    let checked = named(schema::COMPONENT_HEALTH);
    for row in n0m1_core::health::all(conn)? {
        if checked.contains(&row.component_id)
            && let Err(error) = row.check(&home.hooks_dir())
        {
            problems.push(error.to_string());
        }
    }
    let scheduled = named(schema::COMPONENT_SCHEDULES);
    for row in n0m1_core::schedules::all(conn)? {
        if !scheduled.contains(&row.component_id) {
            continue;
        }
        match by_id.get(row.component_id.as_str()) {
            None => problems.push(format!(
                "schedules {}: no component has this id",
                printable(&row.component_id)
            )),
            Some(component) if !component.is_oneshot() => problems.push(format!(
                "schedules {}: the component is not a ONESHOT (run_type_on_boot = 'ONESHOT')",
                printable(&row.component_id)
            )),
            Some(_) => {
                if let Err(error) = row.check() {
                    problems.push(format!(
                        "schedules {}: {error}",
                        printable(&row.component_id)
                    ));
                }
            }
        }
    }
    let limited = named(schema::COMPONENT_LIMITS);
    let machine = n0m1_core::limits::MachineSize::here();
    for (id, limits) in n0m1_core::limits::all(conn)? {
        if limited.contains(&id)
            && let Err(error) = limits.validate(&machine)
        {
            problems.push(format!("limits {}: {error}", printable(&id)));
        }
    }
    let rule_index = index_of(schema::ALERT_RULES);
    for row in n0m1_core::alert_rules::all(conn)? {
        let named = wanted[rule_index]
            .values()
            .any(|r| r.get("id") == Some(&Value::Integer(row.id)));
        if named && let Err(error) = row.validate(&home.hooks_dir()) {
            problems.push(error.to_string());
        }
    }
    let (_, errors) = n0m1_core::actions::policy(conn)?;
    problems.extend(errors.iter().map(ToString::to_string));
    Ok(problems)
}

/// What `plan` and `apply` print, and whether anything changes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub text: String,
    pub changes: usize,
}

/// Reads, checks and applies the file in a transaction; commits only when `commit`.
pub fn prepare(home: &Home, path: &Path, prune: bool, commit: bool) -> anyhow::Result<Outcome> {
    let text = read_text(path)?;
    prepare_text(home, &text, &path.display().to_string(), prune, commit)
}

/// `prepare` on a file's text (`name` in messages): what the API's plan and apply run.
pub fn prepare_text(
    home: &Home,
    file: &str,
    name: &str,
    prune: bool,
    commit: bool,
) -> anyhow::Result<Outcome> {
    let wanted = parse(file, name)?;
    let problems = check_components(home, &wanted[0]);
    if !problems.is_empty() {
        bail!(
            "{name} is refused, nothing applied:\n  {}",
            problems.join("\n  ")
        );
    }
    let mut conn = crate::open_database(home)?;
    let tx = conn
        .transaction()
        .context("starting the stack's transaction")?;
    let mut text = String::new();
    let (mut added, mut changed, mut removed, mut kept) = (0, 0, 0, 0);
    let mut all_changes = Vec::new();
    for (section, rows) in SECTIONS.iter().zip(&wanted) {
        let current = section
            .read(&tx)
            .with_context(|| format!("reading {}", section.table))?;
        let (changes, only_here) = diff(section, &current, rows, prune);
        kept += only_here.len();
        for (key, change) in changes {
            match &change {
                Change::Add(row) => {
                    added += 1;
                    let columns: Vec<String> = section
                        .columns
                        .iter()
                        .filter(|c| !section.key.contains(&c.name))
                        .filter_map(|c| Some(format!("{} {}", c.name, shown(row.get(c.name)?))))
                        .collect();
                    writeln!(text, "+ {}.{key}: {}", section.name, columns.join(", "))?;
                }
                Change::Update { columns, .. } => {
                    changed += 1;
                    for (name, before, after) in columns {
                        writeln!(
                            text,
                            "~ {}.{key}: {name} {} -> {}",
                            section.name,
                            shown(before),
                            shown(after)
                        )?;
                    }
                }
                Change::Remove(_) => {
                    removed += 1;
                    writeln!(text, "- {}.{key}", section.name)?;
                }
            }
            all_changes.push((section, key, change));
        }
    }
    // Removals first, dependents before what they depend on; then additions and updates. A
    // row the table's own constraints refuse is named with the file.
    let removals = all_changes
        .iter()
        .rev()
        .filter(|(_, _, change)| matches!(change, Change::Remove(_)));
    let others = all_changes
        .iter()
        .filter(|(_, _, change)| !matches!(change, Change::Remove(_)));
    for (section, key, change) in removals.chain(others) {
        if let Err(error) = write(&tx, section, change) {
            bail!(
                "{name} is refused, nothing applied:\n  {}.{key}: {} refuses it: {error}",
                section.name,
                section.table
            );
        }
    }
    let problems = check_written(home, &tx, &wanted)?;
    if !problems.is_empty() {
        bail!(
            "{name} is refused, nothing applied:\n  {}",
            problems.join("\n  ")
        );
    }
    let changes = added + changed + removed;
    if changes == 0 {
        text.push_str("no changes");
    } else {
        if commit {
            write!(
                text,
                "applied: {added} added, {changed} changed, {removed} removed"
            )?;
        } else {
            write!(
                text,
                "plan: {added} to add, {changed} to change, {removed} to remove"
            )?;
        }
    }
    if kept > 0 {
        write!(
            text,
            " ({kept} row{} only in the database kept; --prune removes {})",
            if kept == 1 { "" } else { "s" },
            if kept == 1 { "it" } else { "them" }
        )?;
    }
    if commit {
        tx.commit().context("committing the stack")?;
    }
    Ok(Outcome { text, changes })
}
