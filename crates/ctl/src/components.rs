//! `enable` and `disable`: edit `autorun_components`; running managers notice within a second.

use anyhow::{Context, bail};
use n0m1_core::schema::AUTORUN_COMPONENTS;
use n0m1_core::{Home, PidFile, db, state};

pub fn set_desired(home: &Home, component_id: &str, active: bool) -> anyhow::Result<()> {
    let conn = db::open(&home.db_path())?;
    let desired = if active { "active" } else { "inactive" };
    let changed = conn
        .execute(
            &format!("UPDATE {AUTORUN_COMPONENTS} SET desired_state = ?1 WHERE component_id = ?2"),
            [desired, component_id],
        )
        .with_context(|| format!("updating {component_id} in {AUTORUN_COMPONENTS}"))?;
    if changed == 0 {
        let known: Vec<String> = conn
            .prepare(&format!(
                "SELECT component_id FROM {AUTORUN_COMPONENTS} ORDER BY component_id"
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
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
