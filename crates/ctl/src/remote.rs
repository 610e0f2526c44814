//! `n0m1ctl --remote URL`: the same commands through `n0m1_web`'s JSON API, printed by the
//! same code as the local ones.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::logs::LogFileTail;
use crate::status::{ComponentDetail, SystemView};
use crate::tls::Trust;
use n0m1_core::lifecycle::LoggedEvent;

/// What the API answers to a mutation.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub message: String,
}

pub struct Remote {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// For streams, which last as long as they are followed: the same TLS, no deadline.
    stream_agent: ureq::Agent,
}

/// Path segments are percent-encoded, so an id can never become another path.
pub fn segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Whether a URL's authority (`localhost:8686/…`) names the listening address `served`
/// (`127.0.0.1:8686`): the same port, and the same host, where any loopback name stands for
/// a loopback address.
fn same_address(authority: &str, served: &str) -> bool {
    let authority = authority
        .split('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let split = |text: &str| -> Option<(String, u16)> {
        let (host, port) = text.rsplit_once(':')?;
        Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
    };
    let (host, port) = match split(&authority) {
        Some(found) => found,
        None => (authority.clone(), 80),
    };
    let Some((served_host, served_port)) = split(served) else {
        return false;
    };
    let loopback = |h: &str| matches!(h, "localhost" | "127.0.0.1" | "::1");
    port == served_port && (host == served_host || (loopback(&host) && loopback(&served_host)))
}

impl Remote {
    /// `url` is n0m1_web's base address (`http://127.0.0.1:8686`); the token is read from
    /// `token_file`, else from the home's `web.token` when there is one.
    /// The home's own token is sent only to the address the home's n0m1_web listens on;
    /// anywhere else it takes `--token-file`. Every request ends within `deadline`, however
    /// slowly a server answers.
    pub fn new(
        url: &str,
        token_file: Option<&Path>,
        home: Option<&n0m1_core::Home>,
        deadline: Duration,
        trust: Option<Trust>,
    ) -> anyhow::Result<Remote> {
        let base = url.trim_end_matches('/').to_owned();
        let (authority, tls) = if let Some(rest) = base.strip_prefix("https://") {
            (rest, Some(trust.unwrap_or(Trust::System)))
        } else if let Some(rest) = base.strip_prefix("http://") {
            if trust.is_some() {
                bail!(
                    "--remote {url}: --fingerprint and --ca-file are for https:// addresses (web.tls on the server)"
                );
            }
            (rest, None)
        } else {
            bail!(
                "--remote {url}: expected an http:// or https:// address such as https://127.0.0.2:8686"
            );
        };
        let token = match (token_file, home) {
            (Some(path), _) => Some(crate::token::read(path)?),
            (None, Some(home))
                if std::fs::symlink_metadata(home.web_token()).is_ok()
                    && crate::web::served_address(home)
                        .is_some_and(|served| same_address(authority, &served)) =>
            {
                Some(crate::token::read(&home.web_token())?)
            }
            _ => None,
        };
        let connect = Duration::from_secs(5).min(deadline);
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(connect)
            .timeout(deadline);
        let mut streams = ureq::AgentBuilder::new().timeout_connect(connect);
        if let Some(trust) = &tls {
            let config = crate::tls::client_config(trust)?;
            builder = builder.tls_config(config.clone());
            streams = streams.tls_config(config);
        }
        Ok(Remote {
            base,
            token,
            agent: builder.build(),
            stream_agent: streams.build(),
        })
    }

    /// The address, for messages (`https://127.0.0.2:8686`).
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    fn answer(
        &self,
        path: &str,
        result: Result<ureq::Response, ureq::Error>,
    ) -> anyhow::Result<ureq::Response> {
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(code, response)) => {
                let text = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                    .unwrap_or(text);
                let hint = if code == 401 {
                    " (pass the home's web.token with --token-file)"
                } else {
                    ""
                };
                bail!("{} answered {code}: {message}{hint}", self.base)
            }
            Err(error) => Err(anyhow::anyhow!(error))
                .with_context(|| format!("cannot reach n0m1_web at {}{path}", self.base)),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self.answer(path, self.request("GET", path).call())?;
        response
            .into_json()
            .with_context(|| format!("reading the answer of {}{path}", self.base))
    }

    pub fn post(&self, path: &str) -> anyhow::Result<String> {
        let response = self.answer(path, self.request("POST", path).send_string(""))?;
        let message: Message = response
            .into_json()
            .with_context(|| format!("reading the answer of {}{path}", self.base))?;
        Ok(message.message)
    }

    pub fn status(&self, detailed: bool, json: bool) -> anyhow::Result<ExitCode> {
        crate::status::print(&self.view()?, detailed, json)
    }

    /// The system as `status` shows it.
    pub fn view(&self) -> anyhow::Result<SystemView> {
        self.get("/api/v1/status")
    }

    /// The newest `lines` events (of one component).
    pub fn recent_events(
        &self,
        lines: usize,
        component: Option<&str>,
    ) -> anyhow::Result<Vec<LoggedEvent>> {
        let component = component
            .map(|c| format!("&component={}", segment(c)))
            .unwrap_or_default();
        self.get(&format!("/api/v1/events?tail={lines}{component}"))
    }

    /// Calls `each` with every event after `after` as it comes, until the stream ends.
    pub fn follow_events(
        &self,
        after: i64,
        component: Option<&str>,
        mut each: impl FnMut(LoggedEvent),
    ) -> anyhow::Result<()> {
        let component = component
            .map(|c| format!("&component={}", segment(c)))
            .unwrap_or_default();
        let path = format!("/api/v1/events/stream?after={after}{component}");
        self.stream(&path, |data| {
            if let Ok(event) = serde_json::from_str::<LoggedEvent>(data) {
                each(event);
            }
        })
    }

    /// The host's stack, as `export` writes it.
    pub fn export(&self) -> anyhow::Result<String> {
        let path = "/api/v1/stack";
        let response = self.answer(path, self.request("GET", path).call())?;
        response
            .into_string()
            .with_context(|| format!("reading the answer of {}{path}", self.base))
    }

    /// `plan` (or `apply`, when `commit`) of a stack file's text on the host.
    pub fn stack(
        &self,
        file: &str,
        prune: bool,
        commit: bool,
    ) -> anyhow::Result<crate::stack::Outcome> {
        let path = format!(
            "/api/v1/stack/{}?prune={prune}",
            if commit { "apply" } else { "plan" }
        );
        let request = self
            .request("POST", &path)
            .set("Content-Type", "application/toml");
        let response = self.answer(&path, request.send_string(file))?;
        response
            .into_json()
            .with_context(|| format!("reading the answer of {}{path}", self.base))
    }

    /// What `metrics` prints, over the last `limit` samples.
    pub fn metrics(&self, limit: u64) -> anyhow::Result<Vec<crate::metrics::MetricSummary>> {
        self.get(&format!("/api/v1/metrics?limit={limit}"))
    }

    pub fn status_of(&self, id: &str, json: bool) -> anyhow::Result<ExitCode> {
        let detail: ComponentDetail = self.get(&format!("/api/v1/components/{}", segment(id)))?;
        crate::status::print_detail(&detail, json)
    }

    pub fn act(&self, id: &str, verb: &str) -> anyhow::Result<String> {
        self.post(&format!("/api/v1/components/{}/{verb}", segment(id)))
    }

    pub fn logs(&self, id: &str, lines: usize, follow: bool) -> anyhow::Result<()> {
        let tails: Vec<LogFileTail> =
            self.get(&format!("/api/v1/logs/{}?lines={lines}", segment(id)))?;
        crate::logs::print_tails(&tails);
        if follow {
            let path = format!("/api/v1/logs/{}/stream", segment(id));
            self.stream(&path, |data| {
                let line: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
                println!(
                    "{}",
                    line.get("line").and_then(|l| l.as_str()).unwrap_or(data)
                );
            })?;
        }
        Ok(())
    }

    pub fn events(&self, args: &crate::events::EventsArgs) -> anyhow::Result<()> {
        let component = args
            .component
            .as_deref()
            .map(|c| format!("&component={}", segment(c)))
            .unwrap_or_default();
        let events: Vec<LoggedEvent> =
            self.get(&format!("/api/v1/events?tail={}{component}", args.lines))?;
        for event in &events {
            if !crate::events::print(event) {
                return Ok(());
            }
        }
        if args.follow {
            let after = events.last().map_or(-1, |e| e.id);
            let path = format!("/api/v1/events/stream?after={after}{component}");
            self.stream(&path, |data| {
                if let Ok(event) = serde_json::from_str::<LoggedEvent>(data) {
                    crate::events::print(&event);
                }
            })?;
        }
        Ok(())
    }

    /// Reads a server-sent event stream, calling `each` with every event's data.
    fn stream(&self, path: &str, mut each: impl FnMut(&str)) -> anyhow::Result<()> {
        let mut request = self.stream_agent.get(&format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = self.answer(path, request.call())?;
        let reader = BufReader::new(response.into_reader());
        let mut data = String::new();
        for line in reader.lines() {
            let line = line.with_context(|| format!("reading {}{path}", self.base))?;
            if let Some(rest) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            } else if line.is_empty() && !data.is_empty() {
                each(&data);
                data.clear();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod address_tests {
    use super::same_address;

    #[test]
    fn the_home_token_goes_only_where_the_home_listens() {
        for (authority, served, same) in [
            ("127.0.0.1:8686", "127.0.0.1:8686", true),
            ("localhost:8686/api", "127.0.0.1:8686", true),
            ("[::1]:8686", "127.0.0.1:8686", true),
            ("127.0.0.1:8687", "127.0.0.1:8686", false),
            ("evil.example:8686", "127.0.0.1:8686", false),
            ("evil.example", "127.0.0.1:80", false),
            ("10.0.0.5:8686", "10.0.0.5:8686", true),
            ("10.0.0.6:8686", "10.0.0.5:8686", false),
            ("localhost", "127.0.0.1:80", true),
        ] {
            assert_eq!(
                same_address(authority, served),
                same,
                "{authority} vs {served}"
            );
        }
    }
}
