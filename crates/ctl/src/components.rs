//! `enable` and `disable`: edit `autorun_components`; running managers notice within a second.

use anyhow::{Context, bail};
use n0m1_core::schema::AUTORUN_COMPONENTS;
use n0m1_core::text::printable;
use n0m1_core::{Home, PidFile, components, state};

pub fn set_desired(home: &Home, component_id: &str, active: bool) -> anyhow::Result<()> {
    let conn = crate::open_database(home)?;
    if active {
        // Enabling a row no manager will run would claim a success that never comes.
        let config = n0m1_core::Config::load(&home.config_path()).unwrap_or_default();
        let row = components::all(&conn)
            .with_context(|| format!("reading {AUTORUN_COMPONENTS}"))?
            .into_iter()
            .find(|row| row.component_id == component_id);
        if let Some(row) = row {
            let managers = crate::status::known_managers(&config);
            if let Some(problem) =
                crate::status::cannot_run(component_id, &row.manager_affinity, &managers)
            {
                bail!(
                    "cannot enable '{}': {problem}; fix the row in {AUTORUN_COMPONENTS} first",
                    printable(component_id)
                );
            }
        }
    }
    let changed = components::set_desired(&conn, component_id, active)
        .with_context(|| format!("updating {component_id} in {AUTORUN_COMPONENTS}"))?;
    if !changed {
        let mut known: Vec<String> = components::all(&conn)
            .with_context(|| format!("reading {AUTORUN_COMPONENTS}"))?
            .into_iter()
            .map(|row| printable(&row.component_id).into_owned())
            .collect();
        known.sort();
        bail!(
            "unknown component '{}'; known components: {}",
            printable(component_id),
            known.join(", ")
        );
    }
    if active {
        state::request_reset(&conn, component_id)
            .with_context(|| format!("asking the manager to reset {component_id}"))?;
    }
    let running = PidFile::inspect(&home.boot_pid_file())?
        .live_pid()
        .is_some();
    let verb = if active { "enabled" } else { "disabled" };
    if running {
        println!("{verb} {component_id}; its manager acts on it within a second");
    } else {
        println!(
            "{verb} {component_id}; n0m1 is not running, so it takes effect at the next start"
        );
    }
    Ok(())
}
