//! `n0m1_model_service`: one loaded copy of each model, shared by every model component.
//!
//! Threads: the main thread runs the component runtime (signals, lifecycle events, READY=1
//! once the socket is bound); an acceptor takes connections on `run/model.sock`; one thread
//! per connection reads its requests into the fair queue and writes the replies; one worker
//! owns every loaded model and handles the queue, one job at a time, round-robin across
//! connections. Models load on their first `open` and are freed when their last connection
//! closes, so an idle service holds no weights.

use std::collections::HashMap;
use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use clap::Parser;
use n0m1_core::lifecycle::LifecycleEvent;
use n0m1_core::{Config, Home, exit_code};
use n0m1_llm::LlmError;
use n0m1_llm::generate::GenerationOptions;
use n0m1_llm::model::{LoadOptions, LoadedModel};
use n0m1_protocol::cli::CommonArgs;
use n0m1_protocol::model_service::{
    ErrorKind, FairQueue, Line, LoadedModelInfo, MAX_LINE_BYTES, MAX_NEW_TOKENS, ModelSpec, Reply,
    Request, parse_request, write_line,
};
use n0m1_protocol::runtime::{Runtime, Wake, component_id_or};

/// Connections beyond this many are told so and closed (each costs a thread).
pub const MAX_CONNECTIONS: usize = 64;
/// A request begun and not finished (no end of line) within this time closes its
/// connection: half a request must not hold one of the `MAX_CONNECTIONS` slots for good.
/// A connection idle between requests waits as long as it likes.
pub const UNFINISHED_REQUEST: Duration = Duration::from_secs(5);
/// How often a connection waiting for its answer looks whether its client is still there.
const HANGUP_CHECK: Duration = Duration::from_millis(100);

#[derive(Debug, Parser)]
#[command(
    name = "n0m1_model_service",
    version,
    about = "One loaded copy of each model, serving the model components over run/model.sock"
)]
struct ServiceArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// CPU threads for the models (default: all cores on one or two, else all but one).
    #[arg(long)]
    threads: Option<usize>,
}

/// What the worker is asked: a request of a connection (with where its reply goes), or that
/// the connection closed.
enum Job {
    /// A request, where its reply goes, and the flag that says its client has gone.
    Request(Request, mpsc::Sender<Reply>, Arc<AtomicBool>),
    Closed,
}

#[derive(Default)]
struct Queue {
    jobs: Mutex<FairQueue<u64, Job>>,
    ready: Condvar,
}

impl Queue {
    fn push(&self, client: u64, job: Job) {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(client, job);
        self.ready.notify_one();
    }

    fn pop(&self) -> (u64, Job) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(next) = jobs.pop() {
                return next;
            }
            jobs = self.ready.wait(jobs).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A model in memory and who uses it.
struct Slot {
    model: LoadedModel,
    clients: usize,
    completions: u64,
}

/// The worker's state: every loaded model by key, and which model each connection opened.
struct Models {
    home: Home,
    loaded: HashMap<String, Slot>,
    opened: HashMap<u64, String>,
    events: mpsc::Sender<(LifecycleEvent, String)>,
    /// Completions stopped, or never started, because their asker had gone.
    cancelled: u64,
}

/// The file (or folder) a spec names, resolved as the component itself would resolve it.
pub fn locate(spec: &str, default_id: &str, home: &Home) -> Result<PathBuf, LlmError> {
    let places = n0m1_llm::resolve::ModelPlaces::from_env(Some(home.models_dir()));
    let config = Config::load(&home.config_path()).unwrap_or_default();
    // `config.json` `models.default` is what `--model default` means when it is set.
    let spec = match (spec, &config.models.default) {
        ("default", Some(configured)) => configured.as_str(),
        (spec, _) => spec,
    };
    Ok(n0m1_llm::resolve::resolve(spec, default_id, &places)?
        .path()
        .to_owned())
}

impl Models {
    fn event(&self, event: LifecycleEvent, message: String) {
        tracing::info!("{message}");
        let _ = self.events.send((event, message));
    }

    fn handle(&mut self, client: u64, request: Request, gone: &Arc<AtomicBool>) -> Reply {
        match request {
            Request::Open(spec) => self.open(client, spec),
            Request::Complete {
                system,
                prompt,
                max_new_tokens,
            } => self.complete(client, system.as_deref(), &prompt, max_new_tokens, gone),
            Request::Status => Reply::Status {
                models: self
                    .loaded
                    .iter()
                    .map(|(key, slot)| LoadedModelInfo {
                        key: key.clone(),
                        description: slot.model.description.clone(),
                        clients: slot.clients,
                        completions: slot.completions,
                    })
                    .collect(),
                connections: self.opened.len(),
                cancelled: self.cancelled,
            },
        }
    }

    fn open(&mut self, client: u64, spec: ModelSpec) -> Reply {
        let path = match locate(&spec.model, &spec.default_model, &self.home) {
            Ok(path) => path,
            Err(error) => return Reply::error(ErrorKind::Load, error.to_string()),
        };
        let path = path.canonicalize().unwrap_or(path);
        let key = format!(
            "{}{}{}",
            path.display(),
            spec.lora
                .as_ref()
                .map_or(String::new(), |l| format!(" + LoRA {}", l.display())),
            if spec.quantize { " (q8_0)" } else { "" }
        );
        self.close(client);
        if !self.loaded.contains_key(&key) {
            let started = Instant::now();
            let options = LoadOptions {
                quantize: spec.quantize,
                lora: spec.lora.clone(),
            };
            match LoadedModel::load(&path, &options) {
                Ok(model) => {
                    self.event(
                        LifecycleEvent::ModelLoaded,
                        format!(
                            "loaded {key} ({}) in {:.2} s",
                            model.description,
                            started.elapsed().as_secs_f64()
                        ),
                    );
                    self.loaded.insert(
                        key.clone(),
                        Slot {
                            model,
                            clients: 0,
                            completions: 0,
                        },
                    );
                }
                Err(error) => return Reply::error(ErrorKind::Load, error.to_string()),
            }
        }
        let slot = self.loaded.get_mut(&key).expect("loaded above");
        slot.clients += 1;
        let description = slot.model.description.clone();
        self.opened.insert(client, key);
        Reply::Opened { description }
    }

    fn complete(
        &mut self,
        client: u64,
        system: Option<&str>,
        prompt: &str,
        max_new_tokens: usize,
        gone: &Arc<AtomicBool>,
    ) -> Reply {
        let Some(slot) = self
            .opened
            .get(&client)
            .and_then(|key| self.loaded.get_mut(key))
        else {
            return Reply::error(
                ErrorKind::NotOpen,
                "no model is open on this connection: send {\"op\":\"open\",...} first",
            );
        };
        let text = slot.model.format_prompt(system, prompt);
        let options = GenerationOptions {
            max_new_tokens: max_new_tokens.clamp(1, MAX_NEW_TOKENS),
            cancel: Some(gone.clone()),
            ..Default::default()
        };
        match slot.model.generate(&text, &options) {
            Ok(completion) if completion.stop == n0m1_llm::generate::StopReason::Cancelled => {
                self.cancelled += 1;
                Reply::error(ErrorKind::Engine, "cancelled: the client has gone")
            }
            Ok(completion) => {
                slot.completions += 1;
                Reply::Completed {
                    text: completion.text,
                    tokens: completion.token_ids.len(),
                }
            }
            Err(LlmError::ContextFull { limit, .. }) => Reply::Error {
                kind: ErrorKind::ContextFull,
                message: format!("the prompt does not fit the model's context of {limit} tokens"),
                limit: Some(limit),
            },
            Err(error) => Reply::error(ErrorKind::Engine, error.to_string()),
        }
    }

    /// The connection no longer uses its model; the last user's leaving frees it.
    fn close(&mut self, client: u64) {
        let Some(key) = self.opened.remove(&client) else {
            return;
        };
        let Some(slot) = self.loaded.get_mut(&key) else {
            return;
        };
        slot.clients = slot.clients.saturating_sub(1);
        if slot.clients == 0 {
            let slot = self.loaded.remove(&key).expect("present above");
            self.event(
                LifecycleEvent::ModelReleased,
                format!(
                    "freed {key} after {} completions: no component uses it",
                    slot.completions
                ),
            );
        }
    }
}

/// Binds the socket (0600). A socket file left by a dead service is replaced; one that a
/// live service answers on is refused.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another model service answers at {}: stop it first (n0m1ctl disable model_service)",
                path.display()
            );
        }
        std::fs::remove_file(path).map_err(|e| {
            anyhow::anyhow!("cannot replace the stale socket {}: {e}", path.display())
        })?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| anyhow::anyhow!("cannot make {} private: {e}", path.display()))?;
    Ok(listener)
}

/// A request line that cannot be served: the reply, and whether the connection ends.
struct Refusal {
    reply: Reply,
    closing: bool,
}

/// Reads one request; `None` at the end of the stream, or when a request was begun and not
/// finished within `UNFINISHED_REQUEST` (the connection then closes).
fn read_request(reader: &mut BufReader<UnixStream>) -> Option<Result<Request, Refusal>> {
    let closing = |message: String| Refusal {
        reply: Reply::error(ErrorKind::BadRequest, message),
        closing: true,
    };
    match read_line_patiently(reader) {
        Line::End => None,
        Line::NotText => Some(Err(closing(
            "a request that is not UTF-8 text; closing the connection".into(),
        ))),
        Line::TooLong => Some(Err(closing(format!(
            "a request longer than {MAX_LINE_BYTES} bytes; closing the connection"
        )))),
        Line::Text(line) => Some(parse_request(&line).map_err(|reply| Refusal {
            reply,
            closing: false,
        })),
    }
}

/// One line, waiting as long as the connection is idle, but at most `UNFINISHED_REQUEST`
/// once a line has begun (the socket's read timeout is that long).
fn read_line_patiently(reader: &mut BufReader<UnixStream>) -> Line {
    use std::io::BufRead;
    let mut bytes: Vec<u8> = Vec::new();
    let mut begun: Option<Instant> = None;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if begun.is_some_and(|at| at.elapsed() >= UNFINISHED_REQUEST) {
                    tracing::info!(
                        "a request begun and not finished within {} s; closing its connection",
                        UNFINISHED_REQUEST.as_secs()
                    );
                    return Line::End;
                }
                continue;
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Line::End,
        };
        if available.is_empty() {
            return Line::End;
        }
        begun.get_or_insert_with(Instant::now);
        let (used, done) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        bytes.extend_from_slice(&available[..used]);
        reader.consume(used);
        if bytes.len() > MAX_LINE_BYTES + 1 || (!done && bytes.len() > MAX_LINE_BYTES) {
            return Line::TooLong;
        }
        if done {
            return match String::from_utf8(bytes) {
                Ok(text) => Line::Text(text),
                Err(_) => Line::NotText,
            };
        }
    }
}

/// Whether the client has closed its socket, without reading: a Unix stream socket whose
/// peer is closed polls `POLLHUP`.
fn client_gone(stream: &UnixStream) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
}

fn serve_connection(stream: UnixStream, client: u64, queue: Arc<Queue>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let _ = stream.set_read_timeout(Some(UNFINISHED_REQUEST));
    let Ok(watched) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader) {
        let reply = match request {
            Ok(request) => {
                let (send, receive) = mpsc::channel();
                let gone = Arc::new(AtomicBool::new(false));
                queue.push(client, Job::Request(request, send, gone.clone()));
                // While it waits (queued or generating), look whether the client is still
                // there: a closed client stops its generation at the next token.
                let answer = loop {
                    match receive.recv_timeout(HANGUP_CHECK) {
                        Ok(reply) => break Some(reply),
                        Err(mpsc::RecvTimeoutError::Disconnected) => break None,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if !gone.load(Ordering::Relaxed) && client_gone(&watched) {
                                gone.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                };
                match answer {
                    Some(reply) if !gone.load(Ordering::Relaxed) => reply,
                    _ => break,
                }
            }
            Err(refusal) => {
                if write_line(&mut writer, &refusal.reply).is_err() || refusal.closing {
                    break;
                }
                continue;
            }
        };
        if write_line(&mut writer, &reply).is_err() {
            break;
        }
    }
    queue.push(client, Job::Closed);
}

pub fn service_main() -> ExitCode {
    let args = ServiceArgs::parse();
    n0m1_core::logging::init("n0m1_model_service", "info");
    exit_code::<anyhow::Error>((|| {
        let home = args.common.home()?;
        let config = Config::load(&home.config_path()).unwrap_or_default();
        // Before any thread exists, so every thread (the model's pool included) inherits it.
        if let Err(error) = n0m1_core::process::lower_priority(config.models.nice) {
            tracing::warn!(
                "cannot lower the model service's priority to nice {}: {error}",
                config.models.nice
            );
        }
        crate::set_threads(args.threads);
        let mut runtime = Runtime::start(
            &home.db_path(),
            &component_id_or(n0m1_core::schema::MODEL_SERVICE_ID),
            &args.common.run_type,
        )?;
        let socket = home.model_socket();
        let listener = bind(&socket)?;
        let queue = Arc::new(Queue::default());
        let (events, reported) = mpsc::channel();
        let mut models = Models {
            home: home.clone(),
            loaded: HashMap::new(),
            opened: HashMap::new(),
            events,
            cancelled: 0,
        };
        let worker_queue = queue.clone();
        std::thread::Builder::new()
            .name("model-worker".into())
            .spawn(move || {
                loop {
                    match worker_queue.pop() {
                        (client, Job::Request(request, reply, gone)) => {
                            // Nobody waits for it: not even started.
                            if gone.load(Ordering::Relaxed) {
                                models.cancelled += 1;
                                continue;
                            }
                            let _ = reply.send(models.handle(client, request, &gone));
                        }
                        (client, Job::Closed) => models.close(client),
                    }
                }
            })?;
        let connections = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("model-accept".into())
            .spawn(move || {
                let mut next_client = 0u64;
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    if connections.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                        let _ = write_line(
                            &mut stream,
                            &Reply::error(
                                ErrorKind::BadRequest,
                                format!("the model service has {MAX_CONNECTIONS} connections already; try again later"),
                            ),
                        );
                        continue;
                    }
                    next_client += 1;
                    let (client, queue, connections) =
                        (next_client, queue.clone(), connections.clone());
                    connections.fetch_add(1, Ordering::SeqCst);
                    let spawned = std::thread::Builder::new()
                        .name("model-conn".into())
                        .spawn(move || {
                            serve_connection(stream, client, queue);
                            connections.fetch_sub(1, Ordering::SeqCst);
                        });
                    if let Err(error) = spawned {
                        tracing::warn!("cannot serve a connection: {error}");
                    }
                }
            })?;
        runtime.event(
            LifecycleEvent::StartedSuccessfully,
            &format!("serving models at {}", socket.display()),
        );
        while runtime.wait(Duration::from_millis(500)) != Wake::Shutdown {
            for (event, message) in reported.try_iter() {
                runtime.event(event, &message);
            }
        }
        let _ = std::fs::remove_file(&socket);
        runtime.event(LifecycleEvent::Stopped, "stopped on signal");
        Ok(())
    })())
}
