//! `enable` and `disable`: edit `autorun_components`; running managers notice within a second.

use anyhow::{Context, bail};
use n0m1_core::schema::AUTORUN_COMPONENTS;
use n0m1_core::{Home, PidFile, components, state};

pub fn set_desired(home: &Home, component_id: &str, active: bool) -> anyhow::Result<()> {
    let conn = crate::open_database(home)?;
    let changed = components::set_desired(&conn, component_id, active)
        .with_context(|| format!("updating {component_id} in {AUTORUN_COMPONENTS}"))?;
    if !changed {
        let mut known: Vec<String> = components::all(&conn)
            .with_context(|| format!("reading {AUTORUN_COMPONENTS}"))?
            .into_iter()
            .map(|row| row.component_id)
            .collect();
        known.sort();
        bail!(
            "unknown component {component_id:?}; known components: {}",
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
