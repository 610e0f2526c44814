//! `n0m1ctl incidents`: the problems the alerter's rules found, with their diagnosis and
//! suggested action; one incident in full (its evidence) by id.

use anyhow::Context;
use n0m1_core::Home;
use n0m1_core::incidents::{self, Incident};
use n0m1_core::schema::INCIDENTS;
use n0m1_core::text::printable;

pub fn list(home: &Home, all: bool) -> anyhow::Result<Vec<Incident>> {
    let conn = crate::open_database(home)?;
    incidents::list(&conn, !all, 200).with_context(|| format!("reading {INCIDENTS}"))
}

pub fn get(home: &Home, id: i64) -> anyhow::Result<Incident> {
    let conn = crate::open_database(home)?;
    incidents::get(&conn, id)
        .with_context(|| format!("reading {INCIDENTS}"))?
        .ok_or_else(|| anyhow::anyhow!("no incident {id}: `n0m1ctl incidents --all` lists them"))
}

/// The table `n0m1ctl incidents` prints.
pub fn render(list: &[Incident], all: bool) -> String {
    if list.is_empty() {
        return if all {
            "no incidents yet\n".to_owned()
        } else {
            "no open incident (`n0m1ctl incidents --all` shows closed ones)\n".to_owned()
        };
    }
    let mut out = format!(
        "{:>5}  {:<6}  {:<18}  {:<20}  {:<16}  {}\n",
        "ID", "STATE", "KIND", "COMPONENT", "SUGGESTED", "DIAGNOSIS"
    );
    for i in list {
        out.push_str(&format!(
            "{:>5}  {:<6}  {:<18}  {:<20}  {:<16}  {}\n",
            i.id,
            printable(&i.state),
            printable(&i.kind),
            printable(&i.component_id),
            printable(i.suggested_action.as_deref().unwrap_or("none")),
            printable(i.diagnosis.as_deref().unwrap_or(&i.summary))
        ));
    }
    out
}

/// One incident in full.
pub fn render_one(i: &Incident) -> String {
    let evidence: serde_json::Value =
        serde_json::from_str(&i.evidence).unwrap_or(serde_json::Value::Null);
    let mut out = format!(
        "incident {} ({}, {})\ncomponent: {}\nsummary: {}\ndiagnosis ({}): {}\nsuggested: {}\n",
        i.id,
        printable(&i.kind),
        printable(&i.state),
        printable(&i.component_id),
        printable(&i.summary),
        printable(i.diagnosis_source.as_deref().unwrap_or("rules")),
        printable(i.diagnosis.as_deref().unwrap_or("")),
        printable(i.suggested_action.as_deref().unwrap_or("none")),
    );
    if let Some(rejected) = &i.diagnosis_rejected {
        out.push_str(&format!(
            "model's diagnosis refused: {}\n",
            printable(rejected)
        ));
    }
    out.push_str("evidence:\n");
    out.push_str(&serde_json::to_string_pretty(&evidence).unwrap_or_default());
    out.push('\n');
    out
}
