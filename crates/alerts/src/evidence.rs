//! What an incident keeps as evidence, gathered once when it opens: the component's last
//! lifecycle events, the last lines of its logs, its state (restarts, last exit), limits and
//! recent usage; every text escaped, the whole at most `MAX_EVIDENCE_BYTES` of JSON. And the
//! diagnosis the rules write from it, which stands whenever no model's is accepted.

use n0m1_core::Home;
use n0m1_core::incidents::{IncidentKind, MAX_EVIDENCE_BYTES, SuggestedAction};
use n0m1_core::lifecycle;
use n0m1_core::text::printable;
use rusqlite::Connection;
use serde_json::{Value, json};

use crate::incidents::Opening;

/// Events and log lines kept at most.
const EVENTS: usize = 12;
const LOG_LINES: usize = 20;

pub struct Evidence {
    pub json: String,
    pub diagnosis: String,
}

fn clean(text: &str) -> String {
    printable(text).into_owned()
}

/// Gathers what is known now; what cannot be read is said in the evidence, not fatal.
pub fn gather(conn: &Connection, home: &Home, opening: &Opening) -> Evidence {
    let id = opening.component.as_str();
    let events: Vec<Value> = lifecycle::page(conn, 0, Some(id), EVENTS, true)
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id,
                "time": e.timestamp,
                "event": clean(&e.event_type),
                "pid": e.pid,
                "message": clean(e.message.as_deref().unwrap_or("")),
            })
        })
        .collect();
    let (out_path, err_path) = home.component_logs(id);
    let tail = |path: &std::path::Path| -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(path) else {
            return Vec::new();
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        n0m1_core::logpipe::last_lines(&mut file, size, LOG_LINES)
            .map(|text| text.lines().map(clean).collect())
            .unwrap_or_default()
    };
    let (stdout, stderr) = (tail(&out_path), tail(&err_path));
    let saved = n0m1_core::state::load(conn, id).ok().flatten();
    let limits = n0m1_core::limits::of(conn, id).unwrap_or_default();
    let usage = n0m1_core::resources::since(conn, id, 0.0, 1)
        .ok()
        .and_then(|samples| samples.into_iter().last());
    let mut evidence = json!({
        "component": clean(id),
        "kind": opening.kind.as_str(),
        "trigger": { "event_id": opening.trigger_event, "summary": clean(&opening.summary) },
        "events": events,
        "stderr_tail": stderr,
        "stdout_tail": stdout,
        "state": saved.as_ref().map(|s| json!({
            "state": s.state.as_str(),
            "pid": s.pid,
            "restarts": s.restarts,
            "last_exit": s.last_exit.as_deref().map(clean),
            "ready": s.ready,
        })),
        "limits": limits.describe(),
        "memory_max_bytes": limits.memory_max,
        "usage": usage.map(|u| json!({
            "rss_bytes": u.rss_bytes,
            "cpu_seconds": u.cpu_seconds,
            "processes": u.processes,
        })),
    });
    // Bound the size: log lines go first (oldest first), then events.
    for key in ["stdout_tail", "stderr_tail", "events"] {
        while serde_json::to_string(&evidence).map_or(0, |s| s.len()) > MAX_EVIDENCE_BYTES {
            let Some(list) = evidence[key].as_array_mut().filter(|l| !l.is_empty()) else {
                break;
            };
            list.remove(0);
        }
    }
    let mut text = serde_json::to_string(&evidence).unwrap_or_else(|_| "{}".to_owned());
    if text.len() > MAX_EVIDENCE_BYTES {
        text = json!({ "component": clean(id), "kind": opening.kind.as_str(), "note": "evidence too large to keep" }).to_string();
    }
    let diagnosis = rule_diagnosis(opening, &stderr, saved.as_ref(), &limits);
    Evidence {
        json: text,
        diagnosis,
    }
}

/// A few plain sentences from the evidence alone: what happened, the last thing the
/// component said on stderr, its restarts and limit, and what to do.
pub fn rule_diagnosis(
    opening: &Opening,
    stderr: &[String],
    saved: Option<&n0m1_core::state::ComponentState>,
    limits: &n0m1_core::limits::Limits,
) -> String {
    let id = clean(&opening.component);
    let mut sentences = vec![format!(
        "{}.",
        clean(&opening.summary).trim_end_matches('.')
    )];
    if let Some(line) = stderr.iter().rev().find(|l| !l.trim().is_empty()) {
        sentences.push(format!("Its last error line was \"{}\".", line.trim()));
    }
    if let Some(saved) = saved
        && saved.restarts > 0
    {
        sentences.push(format!("It has been restarted {} times.", saved.restarts));
    }
    if opening.kind == IncidentKind::OomKilled
        && let Some(max) = limits.memory_max
    {
        sentences.push(format!(
            "Its memory limit is {}.",
            n0m1_core::limits::format_size(max)
        ));
    }
    sentences.push(match opening.suggested {
        SuggestedAction::Stop => format!(
            "Suggested: stop it (`n0m1ctl disable {id}`) until the cause in its log is fixed."
        ),
        SuggestedAction::Restart => format!("Suggested: restart it (`n0m1ctl restart {id}`)."),
        SuggestedAction::StartDependency => {
            "Suggested: start the dependency it waits for (`n0m1ctl enable` it).".to_owned()
        }
        SuggestedAction::RaiseLimit => format!(
            "Suggested: raise its memory limit (`n0m1ctl limit {id} --memory SIZE`) or find what grows."
        ),
        SuggestedAction::None if opening.kind == IncidentKind::MetricAlert => {
            "Suggested: nothing to the component; see what loads the machine (`n0m1ctl status --detailed`)."
                .to_owned()
        }
        SuggestedAction::None => format!(
            "Suggested: fix the cause shown in its log (`n0m1ctl logs {id}`), then `n0m1ctl enable {id}`."
        ),
    });
    sentences.join(" ")
}
