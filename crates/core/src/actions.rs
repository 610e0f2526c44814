//! The one owner of `action_proposals` and `action_policy`: what a `CMD:` line asks for
//! (`Action`, parsed from untrusted text), what the policy says of it (`decide`, pure), and
//! the proposals' rows and their moves from one state to the next.
//!
//! Nothing here changes a component: n0m1-ctl's `proposals` runs an action through the same
//! functions as the operator's verbs, and records how it went.

use std::fmt;

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::home::{BOOT_PID_STEM, LOGD_STEM, validate_component_id};
use crate::limits::{MIN_MEMORY, format_size, parse_size};
use crate::schema::{ACTION_POLICY, ACTION_PROPOSALS, MANAGERS};

/// Only a line's first characters are read: a model may ramble after its command.
pub const MAX_COMMAND_CHARS: usize = 256;
/// The prefix of a command row, as the original's protocol spells it.
pub const COMMAND_PREFIX: &str = "CMD:";
/// How long a proposal waits for an operator unless `actions.proposal_ttl` says otherwise.
pub const DEFAULT_PROPOSAL_TTL_SECS: f64 = 15.0 * 60.0;
/// n0m1's own components a command may never touch, whatever the policy says: they are how
/// the system is watched, alerted on and governed (the command daemon included).
pub const BUNDLED_SUPERVISORS: &[&str] = &["n0m1_alerts", "n0m1_web", "llm_command_daemon"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    Start,
    Stop,
    Restart,
    /// A new `memory_max`.
    Limit,
}

impl ActionKind {
    pub const ALL: [ActionKind; 4] = [
        ActionKind::Start,
        ActionKind::Stop,
        ActionKind::Restart,
        ActionKind::Limit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Start => "START",
            ActionKind::Stop => "STOP",
            ActionKind::Restart => "RESTART",
            ActionKind::Limit => "LIMIT",
        }
    }

    fn parse(word: &str) -> Option<ActionKind> {
        ActionKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == word)
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub kind: ActionKind,
    pub component_id: String,
    /// `LIMIT`: the new memory_max, in bytes.
    pub memory_max: Option<u64>,
}

impl Action {
    /// The command as it would be written (`LIMIT x memory=64.0 MiB`).
    pub fn describe(&self) -> String {
        match self.memory_max {
            Some(bytes) => format!(
                "{} {} memory={}",
                self.kind,
                self.component_id,
                format_size(bytes)
            ),
            None => format!("{} {}", self.kind, self.component_id),
        }
    }
}

/// A command line that was refused before any policy was asked: the verb it named (escaped,
/// or empty) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCommand {
    pub verb: String,
    pub reason: String,
}

impl fmt::Display for BadCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Reads one `llm_outputs` row. `None` when it is not a command (it does not start with
/// `CMD:`); `Some(Err)` when it is one that is refused, with the reason. One command per row:
/// a row with a second `CMD:` line is refused whole, so text can never smuggle a command in
/// behind another one.
pub fn parse_command(content: &str) -> Option<Result<Action, BadCommand>> {
    let rest = content
        .trim_start_matches([' ', '\t', '\r', '\n'])
        .strip_prefix(COMMAND_PREFIX)?;
    let bad = |verb: &str, reason: String| {
        Some(Err(BadCommand {
            verb: crate::text::printable(&verb.chars().take(16).collect::<String>()).into_owned(),
            reason,
        }))
    };
    let mut lines = rest.split('\n');
    let first = lines.next().unwrap_or("").trim_end_matches('\r');
    if lines.any(|line| line.trim_start().starts_with(COMMAND_PREFIX)) {
        return bad(
            "",
            "more than one `CMD:` line in one row; write one command per row".to_owned(),
        );
    }
    if first.chars().count() > MAX_COMMAND_CHARS {
        return bad(
            "",
            format!("the command line is longer than {MAX_COMMAND_CHARS} characters"),
        );
    }
    if first.chars().any(|c| c.is_control() && c != '\t') {
        return bad("", "the command line holds a control character".to_owned());
    }
    let mut words = first.split_whitespace();
    let Some(verb) = words.next() else {
        return bad(
            "",
            "no verb after `CMD:`; expected START, STOP, RESTART or LIMIT and a component id"
                .to_owned(),
        );
    };
    // ASCII only: a look-alike letter (Cyrillic `Ѕ`) is not a verb.
    let Some(kind) = ActionKind::parse(&verb.to_ascii_uppercase()) else {
        return bad(
            verb,
            format!(
                "unknown verb {:?}: only START, STOP, RESTART and LIMIT",
                crate::text::printable(verb)
            ),
        );
    };
    let Some(id) = words.next() else {
        return bad(verb, format!("{kind} names no component id"));
    };
    if let Err(error) = validate_component_id(id) {
        return bad(verb, error.to_string());
    }
    let argument = words.next();
    if let Some(extra) = words.next() {
        return bad(
            verb,
            format!(
                "unexpected {:?} after the command; expected `CMD:{kind} <id>{}`",
                crate::text::printable(extra),
                if kind == ActionKind::Limit {
                    " memory=SIZE"
                } else {
                    ""
                }
            ),
        );
    }
    let memory_max = match (kind, argument) {
        (ActionKind::Limit, None) => {
            return bad(
                verb,
                format!("LIMIT {id} needs memory=SIZE (for example memory=512M)"),
            );
        }
        (ActionKind::Limit, Some(argument)) => {
            let Some(size) = argument.strip_prefix("memory=") else {
                return bad(
                    verb,
                    format!(
                        "LIMIT takes memory=SIZE, not {:?}",
                        crate::text::printable(argument)
                    ),
                );
            };
            match parse_size(size) {
                Ok(bytes) if bytes >= MIN_MEMORY => Some(bytes),
                Ok(bytes) => {
                    return bad(
                        verb,
                        format!(
                            "memory={} is below the least limit, {}",
                            format_size(bytes),
                            format_size(MIN_MEMORY)
                        ),
                    );
                }
                Err(error) => return bad(verb, format!("memory: {error}")),
            }
        }
        (_, Some(extra)) => {
            return bad(
                verb,
                format!(
                    "unexpected {:?} after the command; expected `CMD:{kind} <id>`",
                    crate::text::printable(extra)
                ),
            );
        }
        (_, None) => None,
    };
    Some(Ok(Action {
        kind,
        component_id: id.to_owned(),
        memory_max,
    }))
}

/// Why `id` may never be commanded, whatever the policy says; `script` is its row's
/// `base_script_name` (a bundled supervisor renamed is still one).
pub fn reserved(id: &str, script: Option<&str>) -> Option<String> {
    let script = script.map(|s| s.trim_end_matches(".py"));
    if id == BOOT_PID_STEM || id.starts_with("boot") {
        return Some(format!("{id} is boot: it is never commanded"));
    }
    if id == LOGD_STEM {
        return Some(format!("{id} is the log writer: it is never commanded"));
    }
    if MANAGERS.contains(&id) || script.is_some_and(|s| MANAGERS.contains(&s)) {
        return Some(format!("{id} is a manager: managers are never commanded"));
    }
    if let Some(name) = BUNDLED_SUPERVISORS
        .iter()
        .find(|name| **name == id || script == Some(**name))
    {
        return Some(format!(
            "{id} is n0m1's own {name}: the bundled supervisors are never commanded (no policy can allow it)"
        ));
    }
    None
}

/// What a policy row says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Auto,
    Approve,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Auto => "auto",
            Decision::Approve => "approve",
            Decision::Deny => "deny",
        }
    }
}

/// One valid row of `action_policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub id: i64,
    /// `None`: every action (`*`).
    pub action: Option<ActionKind>,
    pub component_glob: String,
    pub decision: Decision,
    pub max_per_hour: Option<u32>,
}

impl PolicyRule {
    fn matches(&self, action: &Action) -> bool {
        self.action.is_none_or(|kind| kind == action.kind)
            && glob_matches(&self.component_glob, &action.component_id)
    }

    /// Higher is more specific: a named action, then more literal characters in the glob.
    fn specificity(&self) -> (bool, usize) {
        (
            self.action.is_some(),
            self.component_glob
                .chars()
                .filter(|c| !matches!(c, '*' | '?'))
                .count(),
        )
    }

    pub fn describe(&self) -> String {
        format!(
            "{} row {} ({} {})",
            ACTION_POLICY,
            self.id,
            self.action.map_or("*", ActionKind::as_str),
            self.component_glob
        )
    }
}

/// `*` matches any run of characters, `?` any one, `[..]` a class (shell patterns); an
/// invalid pattern matches nothing (`policy` reports it).
pub fn glob_matches(glob: &str, text: &str) -> bool {
    glob::Pattern::new(glob).is_ok_and(|pattern| pattern.matches(text))
}

/// What happens to a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Runs at once, under this rule.
    Auto(String),
    /// Waits for an operator.
    Approve(String),
    Deny(String),
}

/// The policy's answer for `action` on a component whose row runs `script` (None: no such
/// row), given how many proposals the component had in the last hour. The reserved
/// components are denied before any row is read; no matching row means approval.
pub fn decide(
    action: &Action,
    script: Option<&str>,
    rules: &[PolicyRule],
    in_last_hour: u32,
) -> Verdict {
    if let Some(reason) = reserved(&action.component_id, script) {
        return Verdict::Deny(reason);
    }
    let rule = rules
        .iter()
        .filter(|rule| rule.matches(action))
        // The most specific; among equals, the oldest row.
        .max_by(|a, b| a.specificity().cmp(&b.specificity()).then(b.id.cmp(&a.id)));
    let Some(rule) = rule else {
        return Verdict::Approve(format!(
            "no {ACTION_POLICY} row matches; asking an operator"
        ));
    };
    if let Some(limit) = rule.max_per_hour
        && in_last_hour >= limit
    {
        return Verdict::Deny(format!(
            "rate limit: {} allows {limit} per component per hour and {} had {in_last_hour}",
            rule.describe(),
            action.component_id
        ));
    }
    match rule.decision {
        Decision::Auto => Verdict::Auto(rule.describe()),
        Decision::Approve => Verdict::Approve(rule.describe()),
        Decision::Deny => Verdict::Deny(format!("denied by {}", rule.describe())),
    }
}

/// A row of `action_policy` that cannot be used, named with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ACTION_POLICY} row {id}: {field}: {reason}; the row is ignored until fixed")]
pub struct PolicyError {
    pub id: i64,
    pub field: &'static str,
    pub reason: String,
}

/// Every row of `action_policy`, the usable ones and the errors of the rest.
pub fn policy(conn: &Connection) -> rusqlite::Result<(Vec<PolicyRule>, Vec<PolicyError>)> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT id, action, component_glob, decision, max_per_hour FROM {ACTION_POLICY} ORDER BY id"
    ))?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Option<String>>(1)?,
            row.get::<_, Option<String>>(2)?,
            row.get::<_, Option<String>>(3)?,
            row.get::<_, Option<i64>>(4)?,
        ))
    })?;
    let (mut rules, mut errors) = (Vec::new(), Vec::new());
    for row in rows {
        let (id, action, glob, decision, max) = row?;
        let error = |field, reason: String| PolicyError { id, field, reason };
        let action = match action.as_deref().map(str::trim) {
            None | Some("*") => None,
            Some(word) => match ActionKind::parse(&word.to_ascii_uppercase()) {
                Some(kind) => Some(kind),
                None => {
                    errors.push(error(
                        "action",
                        format!(
                            "{:?} is not START, STOP, RESTART, LIMIT or *",
                            crate::text::printable(word)
                        ),
                    ));
                    continue;
                }
            },
        };
        let glob = glob.unwrap_or_else(|| "*".to_owned());
        if glob.is_empty() || glob.chars().any(char::is_control) {
            errors.push(error(
                "component_glob",
                "empty or holding a control character; write an id or a glob like nano_*"
                    .to_owned(),
            ));
            continue;
        }
        if let Err(bad) = glob::Pattern::new(&glob) {
            errors.push(error(
                "component_glob",
                format!(
                    "{:?} is not a pattern ({bad}); write an id or a glob like nano_*",
                    crate::text::printable(&glob)
                ),
            ));
            continue;
        }
        let decision = match decision.as_deref() {
            Some("auto") => Decision::Auto,
            Some("approve") => Decision::Approve,
            Some("deny") => Decision::Deny,
            other => {
                errors.push(error(
                    "decision",
                    format!("{other:?} is not auto, approve or deny"),
                ));
                continue;
            }
        };
        let max_per_hour = match max {
            None => None,
            Some(n) if n >= 0 && n <= i64::from(u32::MAX) => Some(n as u32),
            Some(n) => {
                errors.push(error(
                    "max_per_hour",
                    format!("{n} is not a count (0 or more)"),
                ));
                continue;
            }
        };
        rules.push(PolicyRule {
            id,
            action,
            component_glob: glob,
            decision,
            max_per_hour,
        });
    }
    Ok((rules, errors))
}

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProposalState {
    /// Waiting for an operator.
    Proposed,
    /// An operator or the policy said yes; running now.
    Approved,
    /// An operator said no.
    Rejected,
    /// The policy (or the parser) said no.
    Denied,
    Executed,
    /// It ran, and its effect did not follow.
    Failed,
    /// Nobody decided in time.
    Expired,
}

impl ProposalState {
    pub const ALL: [ProposalState; 7] = [
        ProposalState::Proposed,
        ProposalState::Approved,
        ProposalState::Rejected,
        ProposalState::Denied,
        ProposalState::Executed,
        ProposalState::Failed,
        ProposalState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProposalState::Proposed => "proposed",
            ProposalState::Approved => "approved",
            ProposalState::Rejected => "rejected",
            ProposalState::Denied => "denied",
            ProposalState::Executed => "executed",
            ProposalState::Failed => "failed",
            ProposalState::Expired => "expired",
        }
    }

    fn parse(text: &str) -> ProposalState {
        ProposalState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .unwrap_or(ProposalState::Failed)
    }
}

impl fmt::Display for ProposalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `action_proposals`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Proposal {
    pub id: i64,
    pub created_at: f64,
    pub source: String,
    pub action: String,
    pub component_id: Option<String>,
    pub argument: Option<String>,
    pub reason: Option<String>,
    pub state: ProposalState,
    pub decided_by: Option<String>,
    pub decided_at: Option<f64>,
    pub result: Option<String>,
    pub state_before: Option<String>,
    pub state_after: Option<String>,
}

impl Proposal {
    /// The action it asks for; `None` for a refused line.
    pub fn parsed(&self) -> Option<Action> {
        let kind = ActionKind::parse(&self.action)?;
        Some(Action {
            kind,
            component_id: self.component_id.clone()?,
            memory_max: self.argument.as_deref().and_then(|a| a.parse().ok()),
        })
    }

    /// What it asks for, as a person reads it.
    pub fn describe(&self) -> String {
        match self.parsed() {
            Some(action) => action.describe(),
            None => format!(
                "{} {}",
                self.action,
                self.component_id.as_deref().unwrap_or("")
            )
            .trim()
            .to_owned(),
        }
    }
}

const COLUMNS: &str = "id, created_at, source, action, component_id, argument, reason, state, \
                       decided_by, decided_at, result, state_before, state_after";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Proposal> {
    Ok(Proposal {
        id: row.get(0)?,
        created_at: row.get(1)?,
        source: row.get(2)?,
        action: row.get(3)?,
        component_id: row.get(4)?,
        argument: row.get(5)?,
        reason: row.get(6)?,
        state: ProposalState::parse(&row.get::<_, String>(7)?),
        decided_by: row.get(8)?,
        decided_at: row.get(9)?,
        result: row.get(10)?,
        state_before: row.get(11)?,
        state_after: row.get(12)?,
    })
}

/// A proposal about to be recorded.
#[derive(Debug, Clone)]
pub struct NewProposal<'a> {
    pub created_at: f64,
    pub source: &'a str,
    pub action: &'a str,
    pub component_id: Option<&'a str>,
    pub argument: Option<String>,
    pub reason: &'a str,
    pub state: ProposalState,
    /// Who decided, when the policy already did (`policy: action_policy row 1`).
    pub decided_by: Option<&'a str>,
}

/// Records a proposal; its id.
pub fn insert(conn: &Connection, new: &NewProposal<'_>) -> rusqlite::Result<i64> {
    let decided_at = new.decided_by.map(|_| new.created_at);
    conn.execute(
        &format!(
            "INSERT INTO {ACTION_PROPOSALS} (created_at, source, action, component_id, argument, reason, state, decided_by, decided_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ),
        params![
            new.created_at,
            new.source,
            new.action,
            new.component_id,
            new.argument,
            new.reason,
            new.state.as_str(),
            new.decided_by,
            decided_at
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

pub fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<Proposal>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM {ACTION_PROPOSALS} WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()
}

/// The newest `limit` proposals, or only those waiting for an operator.
pub fn list(conn: &Connection, waiting_only: bool, limit: u32) -> rusqlite::Result<Vec<Proposal>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {ACTION_PROPOSALS}
         WHERE ?1 = 0 OR state = 'proposed' ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = statement.query_map(params![waiting_only, limit], from_row)?;
    rows.collect()
}

/// A proposal waiting for the same action on the same component, if there is one.
pub fn waiting_like(conn: &Connection, action: &Action) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        &format!(
            "SELECT id FROM {ACTION_PROPOSALS}
             WHERE state = 'proposed' AND action = ?1 AND component_id = ?2 LIMIT 1"
        ),
        params![action.kind.as_str(), action.component_id],
        |r| r.get(0),
    )
    .optional()
}

/// Proposals for `component_id` since `since` that count against a rate limit (every one the
/// policy did not deny and nobody rejected).
pub fn count_since(conn: &Connection, component_id: &str, since: f64) -> rusqlite::Result<u32> {
    conn.query_row(
        &format!(
            "SELECT count(*) FROM {ACTION_PROPOSALS}
             WHERE component_id = ?1 AND created_at >= ?2
               AND state IN ('proposed', 'approved', 'executed', 'failed')"
        ),
        params![component_id, since],
        |r| r.get(0),
    )
}

/// Moves a proposal from `from` to `to` if it is still in `from` (so two operators approving
/// at once run it once); true when it moved.
pub fn decide_row(
    conn: &Connection,
    id: i64,
    from: ProposalState,
    to: ProposalState,
    by: &str,
    at: f64,
    result: Option<&str>,
) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        &format!(
            "UPDATE {ACTION_PROPOSALS} SET state = ?3, decided_by = ?4, decided_at = ?5,
                 result = coalesce(?6, result)
             WHERE id = ?1 AND state = ?2"
        ),
        params![id, from.as_str(), to.as_str(), by, at, result],
    )?;
    Ok(changed == 1)
}

/// Records how an approved proposal went.
pub fn finish(
    conn: &Connection,
    id: i64,
    outcome: ProposalState,
    result: &str,
    state_before: &str,
    state_after: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "UPDATE {ACTION_PROPOSALS} SET state = ?2, result = ?3, state_before = ?4, state_after = ?5
             WHERE id = ?1"
        ),
        params![id, outcome.as_str(), result, state_before, state_after],
    )?;
    Ok(())
}

/// Marks every proposal that waited longer than `ttl_secs` expired; how many.
pub fn expire(conn: &Connection, now: f64, ttl_secs: f64) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "UPDATE {ACTION_PROPOSALS}
             SET state = 'expired', decided_by = 'expiry', decided_at = ?1,
                 result = 'nobody decided within ' || ?3 || ' s'
             WHERE state = 'proposed' AND created_at < ?2"
        ),
        params![now, now - ttl_secs, format!("{ttl_secs:.0}")],
    )
}

/// What became of one command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub proposal_id: i64,
    pub state: ProposalState,
    /// The sentence recorded with it: why it was denied, what it waits for, or the rule
    /// that let it run.
    pub message: String,
}

/// Records what `content` (a row of `source`, for example `llm_outputs row 42`) asks for
/// and what the policy says: `Denied` (a refused line, a reserved or unknown component, a
/// rule, a rate limit, the same request already waiting), `Proposed` (waits for an operator;
/// an `ACTION_PROPOSED` event says so) or `Approved` (an `auto` rule: the caller runs it now).
/// A denial is also a `COMMAND_REJECTED` event under `recorder`'s id. `None`: not a command.
/// Call it inside the transaction that moves the reader's cursor, so each row is planned once.
pub fn plan(
    conn: &Connection,
    recorder: &str,
    source: &str,
    content: &str,
    now: f64,
) -> rusqlite::Result<Option<Planned>> {
    use crate::lifecycle::{LifecycleEvent, LifecycleRecord};
    let Some(parsed) = parse_command(content) else {
        return Ok(None);
    };
    let line: String = content
        .trim_start()
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(MAX_COMMAND_CHARS)
        .collect();
    let line = crate::text::printable(&line).into_owned();
    let (action, verdict) = match parsed {
        Err(bad) => (Err(bad.verb), Verdict::Deny(bad.reason)),
        Ok(action) => {
            let row = crate::components::find(conn, &action.component_id)?;
            let script = row.as_ref().map(|r| r.base_script_name.as_str());
            let creatable = action.kind == ActionKind::Start
                && action.component_id.len() > "nano_".len()
                && action.component_id.starts_with("nano_");
            let verdict = if let Some(reason) = reserved(&action.component_id, script) {
                Verdict::Deny(reason)
            } else if row.is_none() && !creatable {
                Verdict::Deny(format!(
                    "unknown component {}: only nano instances (nano_<name>) can be created by a command",
                    action.component_id
                ))
            } else if let Some(id) = waiting_like(conn, &action)? {
                Verdict::Deny(format!(
                    "the same action is already proposal {id}, waiting for an operator"
                ))
            } else {
                let recent = count_since(conn, &action.component_id, now - 3600.0)?;
                decide(&action, script, &policy(conn)?.0, recent)
            };
            (Ok(action), verdict)
        }
    };
    let (verb, id, argument) = match &action {
        Ok(action) => (
            action.kind.as_str().to_owned(),
            Some(action.component_id.as_str()),
            action.memory_max.map(|b| b.to_string()),
        ),
        Err(verb) => (verb.clone(), None, None),
    };
    let (state, decided_by, message) = match &verdict {
        Verdict::Deny(reason) => (ProposalState::Denied, Some("policy"), reason.clone()),
        Verdict::Approve(rule) => (
            ProposalState::Proposed,
            None,
            format!("waits for an operator ({rule}): `n0m1ctl proposals approve ID`"),
        ),
        Verdict::Auto(rule) => (
            ProposalState::Approved,
            Some("policy"),
            format!("runs at once ({rule})"),
        ),
    };
    let reason = match state {
        ProposalState::Denied => format!("{line} — denied: {message}"),
        _ => line.clone(),
    };
    let proposal_id = insert(
        conn,
        &NewProposal {
            created_at: now,
            source,
            action: &verb,
            component_id: id,
            argument,
            reason: &reason,
            state,
            decided_by,
        },
    )?;
    let subject = id.unwrap_or(recorder);
    match state {
        ProposalState::Denied => {
            LifecycleRecord::new(recorder, LifecycleEvent::CommandRejected)
                .message(format!(
                    "{source}: proposal {proposal_id} denied: {message}"
                ))
                .write(conn)?;
        }
        ProposalState::Proposed => {
            LifecycleRecord::new(subject, LifecycleEvent::ActionProposed)
                .message(format!(
                    "proposal {proposal_id}: {line} from {source} {message}"
                ))
                .write(conn)?;
        }
        _ => {}
    }
    Ok(Some(Planned {
        proposal_id,
        state,
        message,
    }))
}

#[cfg(test)]
mod tests;
