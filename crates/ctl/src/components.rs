//! Editing `autorun_components` and asking managers for things: `enable`, `disable`,
//! `restart`, `add`, `remove`. Running managers notice within a second.
//!
//! Each returns the sentence `n0m1ctl` prints, so `n0m1_web`'s API answers with the same words.

use anyhow::{Context, bail};
use n0m1_core::Config;
use n0m1_core::schema::{AUTORUN_COMPONENTS, MANAGERS};
use n0m1_core::state::{self, Request};
use n0m1_core::text::printable;
use n0m1_core::{Home, PidFile, components};
use n0m1_supervisor::launch::{ScriptResolver, launch_args};

/// The manager a row names, if it is running (a row may name one by its script).
fn manager_running(home: &Home, affinity: &str) -> anyhow::Result<bool> {
    let manager = components::manager_name(affinity);
    if n0m1_core::home::validate_component_id(manager).is_err() {
        return Ok(false);
    }
    Ok(PidFile::inspect(&home.pid_file(manager))?
        .live_pid()
        .is_some())
}

/// What follows the verb: when the change takes effect.
fn when(home: &Home, affinity: &str) -> anyhow::Result<String> {
    Ok(if manager_running(home, affinity)? {
        "its manager acts on it within a second".to_owned()
    } else {
        format!(
            "its manager {} is not running, so it takes effect when that starts",
            printable(components::manager_name(affinity))
        )
    })
}

pub(crate) fn unknown(conn: &rusqlite::Connection, component_id: &str) -> anyhow::Error {
    let mut known: Vec<String> = components::all(conn)
        .map(|rows| {
            rows.into_iter()
                .map(|row| printable(&row.component_id).into_owned())
                .collect()
        })
        .unwrap_or_default();
    known.sort();
    anyhow::anyhow!(
        "unknown component '{}'; known components: {}",
        printable(component_id),
        known.join(", ")
    )
}

fn find(
    conn: &rusqlite::Connection,
    component_id: &str,
) -> anyhow::Result<components::ComponentRow> {
    components::find(conn, component_id)
        .with_context(|| format!("reading {AUTORUN_COMPONENTS}"))?
        .ok_or_else(|| unknown(conn, component_id))
}

/// `enable` / `disable`.
pub fn set_desired(home: &Home, component_id: &str, active: bool) -> anyhow::Result<String> {
    let conn = crate::open_database(home)?;
    let row = find(&conn, component_id)?;
    if active {
        // Enabling a row no manager will run would claim a success that never comes.
        let config = n0m1_core::Config::load(&home.config_path()).unwrap_or_default();
        let managers = known_managers(&config);
        if let Some(problem) = cannot_run(component_id, &row.manager_affinity, &managers) {
            bail!(
                "cannot enable '{}': {problem}; fix the row in {AUTORUN_COMPONENTS} first",
                printable(component_id)
            );
        }
    }
    if !components::set_desired(&conn, component_id, active)
        .with_context(|| format!("updating {component_id} in {AUTORUN_COMPONENTS}"))?
    {
        return Err(unknown(&conn, component_id));
    }
    if active {
        state::request_reset(&conn, component_id)
            .with_context(|| format!("asking the manager to reset {component_id}"))?;
    }
    let verb = if active { "enabled" } else { "disabled" };
    Ok(format!(
        "{verb} {component_id}; {}",
        when(home, &row.manager_affinity)?
    ))
}

/// `restart`: stop and start one component; its desired state stays as it is.
pub fn restart(home: &Home, component_id: &str) -> anyhow::Result<String> {
    let conn = crate::open_database(home)?;
    let row = find(&conn, component_id)?;
    if !row.desired_active {
        bail!(
            "'{}' is inactive, so there is nothing to restart: `n0m1ctl enable {}` starts it",
            printable(component_id),
            printable(component_id)
        );
    }
    if !manager_running(home, &row.manager_affinity)? {
        bail!(
            "its manager {} is not running, so nothing runs '{}': `n0m1ctl start` starts it",
            printable(&row.manager_affinity),
            printable(component_id)
        );
    }
    let filed = state::request(&conn, component_id, Request::Restart)
        .with_context(|| format!("asking the manager to restart {component_id}"))?;
    if !filed {
        bail!(
            "'{}' has not been started by its manager yet ({} has no state for it): see `n0m1ctl status {}`",
            printable(component_id),
            row.manager_affinity,
            printable(component_id)
        );
    }
    Ok(format!(
        "restart of {component_id} requested; its manager stops and starts it within a second"
    ))
}

/// What `add` inserts.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub component_id: String,
    pub script: String,
    pub manager: String,
    pub args_json: String,
    pub active: bool,
    pub oneshot: bool,
}

/// `add`: a new row, checked the way its manager will check it, so a row that cannot run is
/// refused here rather than failing later in the lifecycle log.
pub fn add(home: &Home, new: &NewRow) -> anyhow::Result<String> {
    let conn = crate::open_database(home)?;
    let config = n0m1_core::Config::load(&home.config_path()).unwrap_or_default();
    let managers = known_managers(&config);
    if let Some(problem) = cannot_run(&new.component_id, &new.manager, &managers) {
        bail!("cannot add '{}': {problem}", printable(&new.component_id));
    }
    let run_type = if new.oneshot {
        components::RUN_TYPE_ONESHOT
    } else {
        components::RUN_TYPE_PRIMARY
    };
    launch_args(Some(&new.args_json), run_type)
        .with_context(|| format!("cannot add '{}': --args", printable(&new.component_id)))?;
    let bin_dir = n0m1_core::process::own_bin_dir().unwrap_or_default();
    ScriptResolver::new(home, bin_dir)
        .resolve(&new.script)
        .with_context(|| format!("cannot add '{}': --script", printable(&new.component_id)))?;
    let inserted = components::insert_if_missing(
        &conn,
        components::NewComponent {
            component_id: &new.component_id,
            base_script_name: &new.script,
            manager_affinity: &new.manager,
            active: new.active,
            launch_args_json: &new.args_json,
            run_type,
            description: "added with n0m1ctl add",
        },
    )
    .with_context(|| format!("inserting {} into {AUTORUN_COMPONENTS}", new.component_id))?;
    if !inserted {
        bail!(
            "'{}' already exists: `n0m1ctl remove {}` first, or edit its row",
            printable(&new.component_id),
            printable(&new.component_id)
        );
    }
    let state = match (new.active, new.oneshot) {
        (true, false) => "active",
        (false, false) => "inactive",
        (true, true) => "active, one-shot",
        (false, true) => "inactive, one-shot",
    };
    Ok(format!(
        "added {} ({state}, {}); {}",
        new.component_id,
        new.manager,
        when(home, &new.manager)?
    ))
}

/// `remove`: delete the row; its manager stops the process and forgets it.
pub fn remove(home: &Home, component_id: &str) -> anyhow::Result<String> {
    let conn = crate::open_database(home)?;
    let row = find(&conn, component_id)?;
    if !components::remove(&conn, component_id)
        .with_context(|| format!("deleting {component_id} from {AUTORUN_COMPONENTS}"))?
    {
        return Err(unknown(&conn, component_id));
    }
    Ok(format!(
        "removed {component_id}; {}",
        when(home, &row.manager_affinity)?
    ))
}

/// The managers a row may name: those in config.json, then the standard three.
pub fn known_managers(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config.managers.iter().map(|m| m.binary.clone()).collect();
    for name in MANAGERS {
        if !names.iter().any(|m| m == name) {
            names.push((*name).to_owned());
        }
    }
    names
}

/// Why a row can never run, if it cannot: an id no manager accepts, or a manager that does
/// not exist. Without this such rows look merely stopped.
pub fn cannot_run(component_id: &str, affinity: &str, managers: &[String]) -> Option<String> {
    if let Err(error) = n0m1_core::home::validate_supervised_id(component_id) {
        return Some(error.to_string());
    }
    let manager = components::manager_name(affinity);
    if !managers.iter().any(|m| m == manager) {
        return Some(format!(
            "no manager is called '{}' (manager_affinity); known managers: {}",
            printable(affinity),
            managers.join(", ")
        ));
    }
    None
}
