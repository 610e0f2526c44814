//! Facts about this home's `n0m1_web` that the commands need: where it listens.

/// Where this home's n0m1_web listens: its row's `--listen`, else the default.
pub fn served_address(home: &n0m1_core::Home) -> Option<String> {
    let conn = n0m1_core::db::open(&home.db_path()).ok()?;
    let row = n0m1_core::components::all(&conn)
        .ok()?
        .into_iter()
        .find(|row| row.base_script_name == n0m1_core::defaults::WEB_SCRIPT)?;
    let listen = row
        .launch_args_json
        .as_deref()
        .and_then(|args| serde_json::from_str::<serde_json::Value>(args).ok())
        .and_then(|args| args.get("--listen")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| n0m1_core::defaults::WEB_LISTEN.to_owned());
    Some(listen)
}
