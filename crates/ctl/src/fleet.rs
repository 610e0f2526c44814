//! `n0m1ctl --fleet FILE …`: many hosts' `n0m1_web` from one place. The fleet file (TOML)
//! lists the hosts (`[[hosts]]`: `name`, `url`, `token_file`, and `ca_file` or `fingerprint`);
//! a command goes to every host at once, one thread each with its own deadline, so a host that
//! is down, slow or refuses is reported by name with the reason and never delays the others.
//! The exit code is 0 only if every host answered.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use n0m1_core::lifecycle::LoggedEvent;
use n0m1_core::text::printable;
use serde::{Deserialize, Serialize};

use crate::remote::Remote;
use crate::tls::Trust;

/// Hosts in one fleet file at most: far beyond a rack, small enough to bound the threads.
pub const MAX_HOSTS: usize = 1000;
/// A host's answer is waited for this long unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// The fleet file in a home, used by a bare `--fleet`.
pub const FLEET_FILE: &str = "fleet.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    #[serde(default)]
    hosts: Vec<HostEntry>,
}

/// One `[[hosts]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub name: String,
    pub url: String,
    /// The host's `web.token` (a copy, 0600); relative paths from the fleet file's folder.
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub fingerprint: Option<String>,
}

pub struct Host {
    pub name: String,
    pub url: String,
    /// The client, or why it cannot be made (an unreadable token, a bad fingerprint): said
    /// as this host's answer, the others go on.
    remote: Result<Remote, String>,
}

pub struct Fleet {
    pub hosts: Vec<Host>,
}

/// A host's answer: what it said, or why it did not.
pub type Answer<T> = Result<T, String>;

fn error_text(error: &anyhow::Error) -> String {
    printable(&format!("{error:#}")).into_owned()
}

impl Fleet {
    /// Reads the fleet file; a host whose own settings are unusable answers with why.
    pub fn load(path: &Path, timeout: Duration) -> anyhow::Result<Fleet> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the fleet file {} (one [[hosts]] table per host: name, url, token_file, ca_file or fingerprint)",
                path.display()
            )
        })?;
        let file: FleetFile = toml::from_str(&text)
            .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
        if file.hosts.is_empty() {
            bail!("{} lists no [[hosts]]", path.display());
        }
        if file.hosts.len() > MAX_HOSTS {
            bail!(
                "{} lists {} hosts; at most {MAX_HOSTS}",
                path.display(),
                file.hosts.len()
            );
        }
        let folder = path.parent().unwrap_or(Path::new("."));
        let mut hosts: Vec<Host> = Vec::new();
        for entry in file.hosts {
            let name_ok = !entry.name.is_empty()
                && entry.name.len() <= 64
                && entry
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !name_ok {
                bail!(
                    "{}: host name {:?}: letters, digits, '-', '_' and '.', at most 64",
                    path.display(),
                    printable(&entry.name)
                );
            }
            if hosts.iter().any(|h| h.name == entry.name) {
                bail!("{}: host {} appears twice", path.display(), entry.name);
            }
            let remote = client(&entry, folder, timeout).map_err(|e| error_text(&e));
            hosts.push(Host {
                name: entry.name,
                url: entry.url,
                remote,
            });
        }
        Ok(Fleet { hosts })
    }

    /// Runs `op` against every host at once; answers in the file's order.
    pub fn each<T: Send>(
        &self,
        op: impl Fn(&Remote) -> anyhow::Result<T> + Sync,
    ) -> Vec<Answer<T>> {
        std::thread::scope(|scope| {
            let running: Vec<_> = self
                .hosts
                .iter()
                .map(|host| {
                    let op = &op;
                    scope.spawn(move || match &host.remote {
                        Ok(remote) => op(remote).map_err(|e| error_text(&e)),
                        Err(why) => Err(why.clone()),
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|thread| {
                    thread
                        .join()
                        .unwrap_or_else(|_| Err("the request's thread failed".to_owned()))
                })
                .collect()
        })
    }

    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts.iter().find(|h| h.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            anyhow::anyhow!(
                "no host {:?} in the fleet; its hosts are {}",
                printable(name),
                names.join(", ")
            )
        })
    }
}

fn client(entry: &HostEntry, folder: &Path, timeout: Duration) -> anyhow::Result<Remote> {
    let trust = match (&entry.fingerprint, &entry.ca_file) {
        (Some(_), Some(_)) => bail!("give fingerprint or ca_file, not both"),
        (Some(pin), None) => Some(Trust::Pinned(crate::tls::parse_fingerprint(pin)?)),
        (None, Some(file)) => Some(Trust::CaFile(folder.join(file))),
        (None, None) => None,
    };
    let token = entry.token_file.as_ref().map(|file| folder.join(file));
    Remote::new(&entry.url, token.as_deref(), None, timeout, trust)
}

/// Prints why each host that did not answer did not (unreachable, slow, refused); true if
/// every one answered.
fn report_failures<T>(fleet: &Fleet, answers: &[Answer<T>]) -> bool {
    let mut all = true;
    for (host, answer) in fleet.hosts.iter().zip(answers) {
        if let Err(why) = answer {
            all = false;
            eprintln!("{} ({}): {why}", host.name, printable(&host.url));
        }
    }
    all
}

fn exit(all_answered: bool) -> ExitCode {
    if all_answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[derive(Serialize)]
struct HostJson<'a, T: Serialize> {
    host: &'a str,
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<&'a T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn print_json<T: Serialize>(fleet: &Fleet, answers: &[Answer<T>]) -> anyhow::Result<()> {
    let hosts: Vec<HostJson<'_, T>> = fleet
        .hosts
        .iter()
        .zip(answers)
        .map(|(host, answer)| HostJson {
            host: &host.name,
            url: &host.url,
            answer: answer.as_ref().ok(),
            error: answer.as_ref().err().map(String::as_str),
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "hosts": hosts }))?
    );
    Ok(())
}

/// `--fleet status`: one table of every host's processes and one of their components, with a
/// HOST column.
pub fn status(fleet: &Fleet, json: bool) -> anyhow::Result<ExitCode> {
    let answers = fleet.each(Remote::view);
    if json {
        print_json(fleet, &answers)?;
        return Ok(exit(answers.iter().all(Result::is_ok)));
    }
    let width = fleet
        .hosts
        .iter()
        .map(|h| h.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$} {:<20} {:<9} {:>8} {:>9}",
        "HOST", "PROCESS", "STATE", "PID", "UPTIME"
    );
    for (host, view) in fleet.hosts.iter().zip(&answers) {
        let Ok(view) = view else { continue };
        for p in std::iter::once(&view.boot).chain(&view.managers) {
            println!(
                "{:<width$} {:<20} {:<9} {:>8} {:>9}",
                host.name,
                printable(&p.name),
                printable(&p.state),
                p.pid.map_or("-".to_owned(), |p| p.to_string()),
                crate::status::duration(p.uptime_secs)
            );
        }
    }
    println!("\n{:<width$} {}", "HOST", crate::status::COMPONENT_HEADER);
    for (host, view) in fleet.hosts.iter().zip(&answers) {
        let Ok(view) = view else { continue };
        for warning in &view.warnings {
            println!("{:<width$} WARNING: {}", host.name, printable(warning));
        }
        for component in &view.components {
            println!(
                "{:<width$} {}",
                host.name,
                crate::status::component_line(component)
            );
        }
    }
    Ok(exit(report_failures(fleet, &answers)))
}

/// `ID@HOST`, or `ID` with `--host NAME`.
pub fn target<'a>(
    fleet: &'a Fleet,
    id: &'a str,
    host: Option<&'a str>,
) -> anyhow::Result<(&'a Host, &'a str)> {
    match (id.rsplit_once('@'), host) {
        (Some((id, name)), None) => Ok((fleet.host(name)?, id)),
        (None, Some(name)) => Ok((fleet.host(name)?, id)),
        (Some(_), Some(_)) => bail!("name the host once: ID@HOST or --host NAME"),
        (None, None) => bail!(
            "with --fleet, say which host: {}@HOST or --host NAME",
            printable(id)
        ),
    }
}

/// `enable|disable|restart ID@HOST`: that host only.
pub fn act(fleet: &Fleet, id: &str, host: Option<&str>, verb: &str) -> anyhow::Result<String> {
    let (host, id) = target(fleet, id, host)?;
    let remote = host
        .remote
        .as_ref()
        .map_err(|why| anyhow::anyhow!("{} ({}): {why}", host.name, printable(&host.url)))?;
    let said = remote
        .act(id, verb)
        .with_context(|| format!("{} ({})", host.name, printable(&host.url)))?;
    Ok(format!("{}: {said}", host.name))
}

/// `--fleet events [-n N] [-f] [--component ID]`: every host's newest events, oldest first,
/// each line led by its host; with -f, then every host's new events as they come.
pub fn events(fleet: &Fleet, args: &crate::events::EventsArgs) -> anyhow::Result<ExitCode> {
    let component = args.component.as_deref();
    let answers = fleet.each(|remote| remote.recent_events(args.lines, component));
    let mut lines: Vec<(&str, &LoggedEvent)> = fleet
        .hosts
        .iter()
        .zip(&answers)
        .filter_map(|(host, answer)| Some((host, answer.as_ref().ok()?)))
        .flat_map(|(host, events)| events.iter().map(move |e| (host.name.as_str(), e)))
        .collect();
    lines.sort_by(|a, b| (&a.1.timestamp, a.0, a.1.id).cmp(&(&b.1.timestamp, b.0, b.1.id)));
    for (host, event) in &lines {
        if !crate::events::print_line(&format!("{host} {}", crate::events::line(event))) {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let all = report_failures(fleet, &answers);
    if args.follow {
        std::thread::scope(|scope| {
            for (host, answer) in fleet.hosts.iter().zip(&answers) {
                let (Ok(remote), Ok(seen)) = (&host.remote, answer) else {
                    continue;
                };
                let after = seen.last().map_or(-1, |e| e.id);
                scope.spawn(move || {
                    let result = remote.follow_events(after, component, |event| {
                        crate::events::print_line(&format!(
                            "{} {}",
                            host.name,
                            crate::events::line(&event)
                        ));
                    });
                    if let Err(error) = result {
                        eprintln!(
                            "{}: the event stream ended: {}",
                            host.name,
                            error_text(&error)
                        );
                    }
                });
            }
        });
    }
    Ok(exit(all))
}

/// `--fleet metrics`: each host's metric summaries, under its name.
pub fn metrics(fleet: &Fleet, limit: u64, json: bool) -> anyhow::Result<ExitCode> {
    let answers = fleet.each(|remote| remote.metrics(limit));
    if json {
        print_json(fleet, &answers)?;
        return Ok(exit(answers.iter().all(Result::is_ok)));
    }
    println!("Last {limit} samples:");
    for (host, answer) in fleet.hosts.iter().zip(&answers) {
        if let Ok(summaries) = answer {
            println!("{}:", host.name);
            crate::metrics::print(summaries);
        }
    }
    Ok(exit(report_failures(fleet, &answers)))
}

/// `--fleet plan|apply FILE [--prune]`: the same file on every host at once; each host's
/// lines led by its name. An apply that one host refuses changes nothing there; the others
/// apply it (each host's transaction is its own).
pub fn stack(fleet: &Fleet, file: &str, prune: bool, commit: bool) -> anyhow::Result<ExitCode> {
    let answers = fleet.each(|remote| remote.stack(file, prune, commit));
    for (host, answer) in fleet.hosts.iter().zip(&answers) {
        if let Ok(outcome) = answer {
            for line in outcome.text.lines() {
                println!("{} {line}", host.name);
            }
        }
    }
    Ok(exit(report_failures(fleet, &answers)))
}

/// One Prometheus file_sd target group per host: its address, `host` and `url` labels.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `--fleet prometheus-targets`: the hosts as Prometheus file_sd JSON (scheme and TLS are
/// the scrape job's: see deploy/prometheus.yml).
pub fn prometheus_targets(fleet: &Fleet) -> anyhow::Result<String> {
    let mut groups = Vec::new();
    for host in &fleet.hosts {
        let authority = host
            .url
            .split_once("://")
            .map_or(host.url.as_str(), |(_, rest)| rest)
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!(
                "host {}: url {:?} is not scheme://host:port",
                host.name,
                printable(&host.url)
            );
        }
        let scheme = host.url.split_once("://").map_or("http", |(s, _)| s);
        groups.push(TargetGroup {
            targets: vec![authority.to_owned()],
            labels: [
                ("host".to_owned(), host.name.clone()),
                ("__scheme__".to_owned(), scheme.to_owned()),
            ]
            .into_iter()
            .collect(),
        });
    }
    Ok(serde_json::to_string_pretty(&groups)? + "\n")
}

/// The fleet file `--fleet` names, or the home's `fleet.toml` for a bare `--fleet`.
pub fn file_path(given: &Path, home: Option<&n0m1_core::Home>) -> anyhow::Result<PathBuf> {
    if !given.as_os_str().is_empty() {
        return Ok(given.to_path_buf());
    }
    match home {
        Some(home) => Ok(home.root().join(FLEET_FILE)),
        None => {
            bail!("--fleet without a file needs a home (--home or N0M1_HOME) holding {FLEET_FILE}")
        }
    }
}
