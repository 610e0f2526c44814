//! `n0m1ctl proposals`: the actions commands asked for, and an operator's approval or
//! rejection. An approved action runs through the same functions as the operator's verbs
//! (`enable`, `disable`, `restart`, `limit`); its effect is then checked (a restart: a new
//! pid, running, and ready again if it was ready) and the result recorded with the state
//! before and after. The command daemon runs the policy's automatic ones the same way.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use n0m1_core::actions::{self, ActionKind, Proposal, ProposalState};
use n0m1_core::components::{self, NewComponent};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::process::{ProcStat, is_same_process};
use n0m1_core::schema::{ACTION_PROPOSALS, NANO_MANAGER};
use n0m1_core::state::{self, RunState};
use n0m1_core::text::printable;
use n0m1_core::{Config, Home};
use rusqlite::Connection;

/// How often a running action's effect is looked for.
const POLL: Duration = Duration::from_millis(100);
/// An approval that never recorded a result for this long was interrupted.
const INTERRUPTED_AFTER_SECS: f64 = 600.0;

/// Marks the proposals nobody decided in time expired, and approvals whose runner died
/// failed; returns the proposals, newest first (all, or only those waiting).
pub fn list(home: &Home, all: bool) -> anyhow::Result<Vec<Proposal>> {
    let conn = crate::open_database(home)?;
    tidy(home, &conn)?;
    actions::list(&conn, !all, 200).with_context(|| format!("reading {ACTION_PROPOSALS}"))
}

/// Expiry, and approvals left without a result by a runner that stopped.
pub fn tidy(home: &Home, conn: &Connection) -> anyhow::Result<()> {
    let config = Config::load(&home.config_path()).unwrap_or_default();
    let now = state::unix_now();
    actions::expire(conn, now, config.actions.proposal_ttl.0)
        .with_context(|| format!("expiring old proposals in {ACTION_PROPOSALS}"))?;
    conn.execute(
        &format!(
            "UPDATE {ACTION_PROPOSALS} SET state = 'failed',
                 result = 'interrupted: whoever ran it stopped before recording the result; check the component and propose again'
             WHERE state = 'approved' AND result IS NULL AND decided_at < ?1"
        ),
        [now - INTERRUPTED_AFTER_SECS],
    )
    .with_context(|| format!("closing interrupted approvals in {ACTION_PROPOSALS}"))?;
    Ok(())
}

/// The table `n0m1ctl proposals` prints.
pub fn render(proposals: &[Proposal], all: bool) -> String {
    if proposals.is_empty() {
        return if all {
            "no proposals yet\n".to_owned()
        } else {
            "no proposal waits for approval (`n0m1ctl proposals --all` shows every one)\n"
                .to_owned()
        };
    }
    let mut out = format!(
        "{:>5}  {:<9}  {:<36}  {:<22}  {}\n",
        "ID", "STATE", "ACTION", "SOURCE", "REASON / RESULT"
    );
    for p in proposals {
        let detail = p.result.as_deref().or(p.reason.as_deref()).unwrap_or("");
        out.push_str(&format!(
            "{:>5}  {:<9}  {:<36}  {:<22}  {}\n",
            p.id,
            p.state.as_str(),
            printable(&p.describe()),
            printable(&p.source),
            printable(detail)
        ));
    }
    out
}

fn find(conn: &Connection, id: i64) -> anyhow::Result<Proposal> {
    actions::get(conn, id)
        .with_context(|| format!("reading {ACTION_PROPOSALS}"))?
        .ok_or_else(|| anyhow::anyhow!("no proposal {id}: `n0m1ctl proposals --all` lists them"))
}

fn not_waiting(proposal: &Proposal) -> anyhow::Error {
    let why = match proposal.state {
        ProposalState::Expired => "it expired: nobody decided in time; nothing was done",
        ProposalState::Denied => "the policy denied it; nothing was done",
        ProposalState::Rejected => "it was rejected; nothing was done",
        ProposalState::Approved => "it is being run now",
        ProposalState::Executed | ProposalState::Failed => "it has already run",
        ProposalState::Proposed => "it waits",
    };
    anyhow::anyhow!(
        "proposal {} ({}) is {}: {why}",
        proposal.id,
        printable(&proposal.describe()),
        proposal.state
    )
}

/// An operator says yes: the action runs now and its effect is checked.
pub fn approve(home: &Home, id: i64, by: &str) -> anyhow::Result<String> {
    let conn = crate::open_database(home)?;
    tidy(home, &conn)?;
    let proposal = find(&conn, id)?;
    if proposal.state != ProposalState::Proposed {
        return Err(not_waiting(&proposal));
    }
    let moved = actions::decide_row(
        &conn,
        id,
        ProposalState::Proposed,
        ProposalState::Approved,
        by,
        state::unix_now(),
        None,
    )
    .with_context(|| format!("approving proposal {id} in {ACTION_PROPOSALS}"))?;
    if !moved {
        // Someone else decided between our read and our write.
        return Err(not_waiting(&find(&conn, id)?));
    }
    run_approved(home, &conn, &find(&conn, id)?, by)
}

/// An operator says no.
pub fn reject(home: &Home, id: i64, by: &str, reason: Option<&str>) -> anyhow::Result<String> {
    let conn = crate::open_database(home)?;
    tidy(home, &conn)?;
    let proposal = find(&conn, id)?;
    if proposal.state != ProposalState::Proposed {
        return Err(not_waiting(&proposal));
    }
    let result = format!(
        "rejected by {by}{}",
        reason
            .map(|r| format!(": {}", printable(r)))
            .unwrap_or_default()
    );
    if !actions::decide_row(
        &conn,
        id,
        ProposalState::Proposed,
        ProposalState::Rejected,
        by,
        state::unix_now(),
        Some(&result),
    )
    .with_context(|| format!("rejecting proposal {id} in {ACTION_PROPOSALS}"))?
    {
        return Err(not_waiting(&find(&conn, id)?));
    }
    Ok(format!(
        "proposal {id} ({}) rejected; nothing was done",
        printable(&proposal.describe())
    ))
}

/// What a component looked like, for the record.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct Snapshot {
    state: Option<String>,
    pid: Option<i32>,
    alive: bool,
    ready: bool,
    desired_active: Option<bool>,
    memory_max: Option<u64>,
}

fn snapshot(conn: &Connection, id: &str) -> anyhow::Result<Snapshot> {
    let saved = state::load(conn, id).with_context(|| format!("reading the state of {id}"))?;
    let row = components::find(conn, id).with_context(|| format!("reading the row of {id}"))?;
    let limits = n0m1_core::limits::of(conn, id).unwrap_or_default();
    let alive = saved
        .as_ref()
        .and_then(|s| Some((s.pid?, s.pid_start_ticks?)))
        .is_some_and(|(pid, ticks)| is_same_process(pid, ticks));
    Ok(Snapshot {
        state: saved.as_ref().map(|s| s.state.as_str().to_owned()),
        pid: saved.as_ref().and_then(|s| s.pid),
        alive,
        ready: saved.as_ref().is_some_and(|s| s.ready),
        desired_active: row.map(|r| r.desired_active),
        memory_max: limits.memory_max,
    })
}

/// Runs an approved proposal (state `approved`), checks its effect and records the outcome:
/// `executed` or `failed`, with the state before and after, and an `ACTION_EXECUTED` or
/// `ACTION_FAILED` event on the component. The sentence to print, or the failure.
pub fn run_approved(
    home: &Home,
    conn: &Connection,
    proposal: &Proposal,
    by: &str,
) -> anyhow::Result<String> {
    let Some(action) = proposal.parsed() else {
        bail!(
            "proposal {} holds no runnable action ({})",
            proposal.id,
            printable(&proposal.describe())
        );
    };
    let id = action.component_id.as_str();
    let before = snapshot(conn, id)?;
    let config = Config::load(&home.config_path()).unwrap_or_default();
    let patience = config.supervisor.start_timeout.duration()
        + config.supervisor.stop_timeout.duration()
        + Duration::from_secs(2);
    let performed = perform(home, conn, &action);
    let (outcome, result) = match performed {
        Err(error) => (
            ProposalState::Failed,
            n0m1_core::text::error_chain(error.as_ref()).to_string(),
        ),
        Ok(said) => match verify(conn, &action, &before, patience) {
            Ok(effect) => (ProposalState::Executed, format!("{said}; {effect}")),
            Err(missing) => (ProposalState::Failed, format!("{said}; but {missing}")),
        },
    };
    let after = snapshot(conn, id)?;
    let json = |s: &Snapshot| serde_json::to_string(s).unwrap_or_default();
    actions::finish(
        conn,
        proposal.id,
        outcome,
        &result,
        &json(&before),
        &json(&after),
    )
    .with_context(|| format!("recording the result of proposal {}", proposal.id))?;
    let event = if outcome == ProposalState::Executed {
        LifecycleEvent::ActionExecuted
    } else {
        LifecycleEvent::ActionFailed
    };
    let sentence = format!(
        "proposal {} ({}) approved by {by}: {result}",
        proposal.id,
        action.describe()
    );
    LifecycleRecord::new(id, event)
        .message(&sentence)
        .write(conn)
        .with_context(|| format!("recording {event} for {id}"))?;
    if outcome == ProposalState::Failed {
        bail!("{sentence}");
    }
    Ok(format!("{sentence} ({outcome})"))
}

/// The action itself, through the operator's verbs.
fn perform(home: &Home, conn: &Connection, action: &actions::Action) -> anyhow::Result<String> {
    let id = action.component_id.as_str();
    match action.kind {
        ActionKind::Start => {
            if components::find(conn, id)?.is_none() {
                // Only a nano instance can be created by a command (the policy's plan
                // refused the rest); as the original's command daemon did.
                let name = id.strip_prefix("nano_").unwrap_or(id);
                let args = serde_json::json!({ "--instance_id": name }).to_string();
                components::insert_if_missing(
                    conn,
                    NewComponent {
                        component_id: id,
                        base_script_name: "nano_instance",
                        manager_affinity: NANO_MANAGER,
                        active: true,
                        launch_args_json: &args,
                        run_type: components::RUN_TYPE_PRIMARY,
                        description: "created by CMD:START",
                    },
                )
                .with_context(|| format!("creating the nano instance {id}"))?;
                return Ok(format!("{id} created as a nano instance and set active"));
            }
            crate::components::set_desired(home, id, true)
        }
        ActionKind::Stop => crate::components::set_desired(home, id, false),
        ActionKind::Restart => crate::components::restart(home, id),
        ActionKind::Limit => crate::limits::run(
            home,
            &crate::limits::LimitArgs {
                component_id: id.to_owned(),
                memory: action.memory_max.map(|b| b.to_string()),
                memory_high: None,
                cpu: None,
                cpu_weight: None,
                pids: None,
                user: None,
                group: None,
                clear: false,
            },
        ),
    }
}

/// Waits for the action's effect; what was seen, or what never came.
fn verify(
    conn: &Connection,
    action: &actions::Action,
    before: &Snapshot,
    patience: Duration,
) -> Result<String, String> {
    let id = action.component_id.as_str();
    let deadline = Instant::now() + patience;
    let running = |s: &Snapshot| s.state.as_deref() == Some(RunState::Running.as_str()) && s.alive;
    loop {
        let now = snapshot(conn, id).map_err(|e| e.to_string())?;
        let seen = match action.kind {
            ActionKind::Start => {
                running(&now).then(|| format!("running as pid {}", now.pid.unwrap_or_default()))
            }
            ActionKind::Stop => (!now.alive
                && now.state.as_deref() != Some(RunState::Stopping.as_str()))
            .then(|| "stopped".to_owned()),
            ActionKind::Restart => (running(&now)
                && now.pid != before.pid
                && (now.ready || !before.ready))
                .then(|| {
                    format!(
                        "pid {} → {}, running{}",
                        before.pid.map_or("none".into(), |p| p.to_string()),
                        now.pid.unwrap_or_default(),
                        if now.ready { " and ready" } else { "" }
                    )
                }),
            ActionKind::Limit => (now.memory_max == action.memory_max).then(|| {
                format!(
                    "memory_max is {}",
                    n0m1_core::limits::format_size(now.memory_max.unwrap_or_default())
                )
            }),
        };
        if let Some(seen) = seen {
            return Ok(seen);
        }
        if Instant::now() >= deadline {
            let pid_alive = now.pid.and_then(ProcStat::read).is_some();
            return Err(format!(
                "after {:.0} s {id} is {} (pid {}, {})",
                patience.as_secs_f64(),
                now.state.as_deref().unwrap_or("unknown"),
                now.pid.map_or("none".into(), |p| p.to_string()),
                if pid_alive { "alive" } else { "not alive" }
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Who is deciding, as the record names them: the user running n0m1ctl.
pub fn operator() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
    format!("{} (n0m1ctl)", printable(&user))
}
