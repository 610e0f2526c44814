//! The model service's wire format, its fair queue and its client.
//!
//! `n0m1_model_service` (in n0m1-models, which links the engine) loads each model once and
//! serves completions over `run/model.sock` (mode 0600). Model components that run with
//! `models.shared` (the default) hold a `ServiceGenerator` instead of a loaded model: a
//! `Generator` that opens its model in the service and asks it for completions, so the
//! components naming the same model (and LoRA adapter, and quantization) share one copy.
//!
//! One request per line, one reply per line, both JSON. A connection first opens a model,
//! then completes prompts with it; the service closes the model when its last connection
//! closes. When the service is unreachable the client says so (`GenerateError::ServiceDown`)
//! and connects again on the next completion: a nano instance writes its statistics alone
//! meanwhile, the processor leaves its notification unprocessed.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::generator::{GenerateError, Generator, Unavailable};

/// The longest request or reply line; a longer one is refused and its connection closed.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// The most tokens one completion may ask for.
pub const MAX_NEW_TOKENS: usize = 4096;
/// How long a client waits for a reply before it takes the service for hung: a model that
/// loads for the first time and a queue of other clients' completions come first.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Use this model on this connection (loaded now unless another connection has it).
    Open(ModelSpec),
    /// Complete a prompt with the connection's model.
    Complete {
        system: Option<String>,
        prompt: String,
        max_new_tokens: usize,
    },
    /// What is loaded, for whom, and how much is queued.
    Status,
}

/// A model as a component names it: `--model` (and the component's built-in default for
/// `--model default`), `--lora`, `--quantize`. The service resolves it as the component
/// would; equal resolved files, adapters and quantizations share one loaded copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub model: String,
    pub default_model: String,
    pub lora: Option<PathBuf>,
    pub quantize: bool,
}

/// What the service answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Opened {
        description: String,
    },
    Completed {
        text: String,
        tokens: usize,
    },
    Status {
        models: Vec<LoadedModelInfo>,
        connections: usize,
        /// Completions stopped, or never started, because their asker had gone.
        #[serde(default)]
        cancelled: u64,
    },
    Error {
        kind: ErrorKind,
        message: String,
        /// The context size, for `ContextFull`.
        #[serde(default)]
        limit: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not a request this service understands; the message says what was wrong.
    BadRequest,
    /// `complete` before `open`.
    NotOpen,
    /// The model cannot be found or loaded; the message names it and the places tried.
    Load,
    /// The prompt does not fit the model's context.
    ContextFull,
    /// The engine failed.
    Engine,
}

/// One loaded model in a `Status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadedModelInfo {
    /// The resolved file or folder (and adapter, and quantization).
    pub key: String,
    pub description: String,
    /// Connections using it.
    pub clients: usize,
    pub completions: u64,
}

impl Reply {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply::Error {
            kind,
            message: message.into(),
            limit: None,
        }
    }
}

/// Round-robin across clients: each client's jobs keep their order, and a client with many
/// jobs waiting gets one turn per round like everyone else.
#[derive(Debug)]
pub struct FairQueue<C, J> {
    turns: VecDeque<C>,
    jobs: HashMap<C, VecDeque<J>>,
}

impl<C: Copy + Eq + std::hash::Hash, J> Default for FairQueue<C, J> {
    fn default() -> Self {
        FairQueue {
            turns: VecDeque::new(),
            jobs: HashMap::new(),
        }
    }
}

impl<C: Copy + Eq + std::hash::Hash, J> FairQueue<C, J> {
    pub fn push(&mut self, client: C, job: J) {
        let queue = self.jobs.entry(client).or_default();
        if queue.is_empty() {
            self.turns.push_back(client);
        }
        queue.push_back(job);
    }

    /// The next job: the first of the client whose turn it is; that client goes to the
    /// back of the round if it has more.
    pub fn pop(&mut self) -> Option<(C, J)> {
        let client = self.turns.pop_front()?;
        let queue = self.jobs.get_mut(&client)?;
        let job = queue.pop_front()?;
        if queue.is_empty() {
            self.jobs.remove(&client);
        } else {
            self.turns.push_back(client);
        }
        Some((client, job))
    }

    pub fn len(&self) -> usize {
        self.jobs.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }
}

/// One line off the wire, at most `MAX_LINE_BYTES` (with its newline).
pub enum Line {
    /// The peer closed the connection (or it broke).
    End,
    TooLong,
    NotText,
    Text(String),
}

/// Reads one line of at most `MAX_LINE_BYTES`: a peer cannot make the other side buffer more.
pub fn read_line(reader: &mut impl BufRead) -> Line {
    let mut line = String::new();
    match reader.take(MAX_LINE_BYTES as u64 + 1).read_line(&mut line) {
        Ok(0) => Line::End,
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => Line::NotText,
        Err(_) => Line::End,
        Ok(_) if !line.ends_with('\n') && line.len() > MAX_LINE_BYTES => Line::TooLong,
        Ok(_) => Line::Text(line),
    }
}

/// Writes `message` as one JSON line.
pub fn write_line(writer: &mut impl Write, message: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_string(message).map_err(std::io::Error::other)?;
    line.push('\n');
    writer.write_all(line.as_bytes())
}

/// Why talking to the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "the model service at {path} is unreachable ({source}): is the model_service component active?"
    )]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the model service at {path} broke the connection ({reason})")]
    Broken { path: PathBuf, reason: String },
    #[error("the model service refused: {message}")]
    Refused { kind: ErrorKind, message: String },
}

/// One connection to the service, with its model open.
struct ServiceConnection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ServiceConnection {
    fn open(path: &Path, spec: &ModelSpec) -> Result<(ServiceConnection, String), ServiceError> {
        let unreachable = |source| ServiceError::Unreachable {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(unreachable)?;
        let writer = stream.try_clone().map_err(unreachable)?;
        let mut connection = ServiceConnection {
            reader: BufReader::new(stream),
            writer,
        };
        match connection.ask(path, &Request::Open(spec.clone()))? {
            Reply::Opened { description } => Ok((connection, description)),
            other => Err(unexpected(path, other)),
        }
    }

    fn ask(&mut self, path: &Path, request: &Request) -> Result<Reply, ServiceError> {
        let broken = |reason: String| ServiceError::Broken {
            path: path.to_owned(),
            reason,
        };
        write_line(&mut self.writer, request).map_err(|e| broken(format!("sending: {e}")))?;
        let reply = match read_line(&mut self.reader) {
            Line::Text(reply) => reply,
            Line::End => return Err(broken("it closed the connection".into())),
            Line::TooLong => {
                return Err(broken(format!(
                    "a reply longer than {MAX_LINE_BYTES} bytes"
                )));
            }
            Line::NotText => return Err(broken("a reply that is not UTF-8 text".into())),
        };
        let reply: Reply = serde_json::from_str(&reply)
            .map_err(|e| broken(format!("a reply that is not the service's JSON: {e}")))?;
        match reply {
            Reply::Error { kind, message, .. } if kind != ErrorKind::ContextFull => {
                Err(ServiceError::Refused { kind, message })
            }
            reply => Ok(reply),
        }
    }
}

fn unexpected(path: &Path, reply: Reply) -> ServiceError {
    ServiceError::Broken {
        path: path.to_owned(),
        reason: format!(
            "an unexpected reply {}",
            serde_json::to_string(&reply).unwrap_or_default()
        ),
    }
}

/// Asks the service what it has loaded (for `n0m1ctl`, tests and benchmarks).
pub fn status(path: &Path) -> Result<Reply, ServiceError> {
    let stream = UnixStream::connect(path).map_err(|source| ServiceError::Unreachable {
        path: path.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|source| ServiceError::Unreachable {
            path: path.to_owned(),
            source,
        })?;
    let writer = stream
        .try_clone()
        .map_err(|source| ServiceError::Unreachable {
            path: path.to_owned(),
            source,
        })?;
    ServiceConnection {
        reader: BufReader::new(stream),
        writer,
    }
    .ask(path, &Request::Status)
}

/// A `Generator` whose model lives in the model service.
pub struct ServiceGenerator {
    socket: PathBuf,
    spec: ModelSpec,
    max_new_tokens: usize,
    connection: Option<ServiceConnection>,
    description: String,
    unreachable: Option<String>,
}

impl ServiceGenerator {
    /// Opens the model in the service. A service that is down is not an error here (the
    /// generator connects again on each completion); a model the service cannot load is
    /// (`Unavailable::Load`, with the service's message naming the model and the fix).
    pub fn connect(
        socket: &Path,
        spec: ModelSpec,
        max_new_tokens: usize,
    ) -> Result<ServiceGenerator, Unavailable> {
        let mut generator = ServiceGenerator {
            socket: socket.to_owned(),
            description: format!("{} (in the model service)", spec.model),
            spec,
            max_new_tokens: max_new_tokens.min(MAX_NEW_TOKENS),
            connection: None,
            unreachable: None,
        };
        match generator.reconnect() {
            Ok(()) => Ok(generator),
            Err(error @ ServiceError::Refused { .. }) => Err(Unavailable::Load(Box::new(error))),
            Err(error) => {
                generator.unreachable = Some(error.to_string());
                Ok(generator)
            }
        }
    }

    /// Why the first connection failed (the service was down), if it did: the caller says
    /// so once it has decided to wait for the service.
    pub fn unreachable(&self) -> Option<&str> {
        self.unreachable.as_deref()
    }

    /// Whether the model is open in a running service right now.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    fn reconnect(&mut self) -> Result<(), ServiceError> {
        let (connection, description) = ServiceConnection::open(&self.socket, &self.spec)?;
        self.description = format!("{description} (shared, in the model service)");
        self.connection = Some(connection);
        Ok(())
    }
}

impl Generator for ServiceGenerator {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn keep_ready(&mut self) {
        if self.connection.is_none()
            && let Err(error) = self.reconnect()
        {
            tracing::debug!("{error}; connecting again later");
        }
    }

    fn complete(&mut self, system: Option<&str>, prompt: &str) -> Result<String, GenerateError> {
        let down = |error: ServiceError| match error {
            ServiceError::Refused { .. } => GenerateError::Engine(Box::new(error)),
            other => GenerateError::ServiceDown(other.to_string()),
        };
        if self.connection.is_none() {
            self.reconnect().map_err(down)?;
        }
        let request = Request::Complete {
            system: system.map(str::to_owned),
            prompt: prompt.to_owned(),
            max_new_tokens: self.max_new_tokens,
        };
        let connection = self.connection.as_mut().expect("connected above");
        match connection.ask(&self.socket, &request) {
            Ok(Reply::Completed { text, .. }) => Ok(text),
            Ok(Reply::Error {
                limit: Some(limit), ..
            }) => Err(GenerateError::ContextFull { limit }),
            Ok(other) => {
                self.connection = None;
                Err(down(unexpected(&self.socket, other)))
            }
            Err(error) => {
                // Broken or refused: start from a fresh connection next time.
                self.connection = None;
                Err(down(error))
            }
        }
    }
}

/// Parses a request line; the error is the reply that says what was wrong.
pub fn parse_request(line: &str) -> Result<Request, Reply> {
    serde_json::from_str(line).map_err(|error| {
        Reply::error(
            ErrorKind::BadRequest,
            format!(
                "not a model service request ({error}): send one JSON object per line, \
                 {{\"op\": \"open\" | \"complete\" | \"status\", ...}}"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_gives_each_client_one_turn_per_round_and_keeps_each_clients_order() {
        let mut queue = FairQueue::default();
        for job in 1..=4 {
            queue.push('a', job);
        }
        queue.push('b', 10);
        queue.push('c', 20);
        queue.push('b', 11);
        assert_eq!(queue.len(), 7);
        let order: Vec<(char, i32)> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(
            order,
            [
                ('a', 1),
                ('b', 10),
                ('c', 20),
                ('a', 2),
                ('b', 11),
                ('a', 3),
                ('a', 4)
            ]
        );
        assert!(queue.is_empty());
        // A client that comes back after its queue emptied waits behind those already in.
        queue.push('a', 5);
        queue.push('b', 12);
        queue.push('a', 6);
        assert_eq!(queue.pop(), Some(('a', 5)));
        queue.push('c', 21);
        assert_eq!(queue.pop(), Some(('b', 12)));
        assert_eq!(queue.pop(), Some(('a', 6)));
        assert_eq!(queue.pop(), Some(('c', 21)));
        assert_eq!(queue.pop(), None);
    }

    #[test]
    fn requests_and_replies_keep_their_wire_spelling() {
        let open = Request::Open(ModelSpec {
            model: "default".into(),
            default_model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            lora: None,
            quantize: false,
        });
        assert_eq!(
            serde_json::to_string(&open).unwrap(),
            r#"{"op":"open","model":"default","default_model":"HuggingFaceTB/SmolLM2-135M-Instruct","lora":null,"quantize":false}"#
        );
        let parsed: Request = serde_json::from_str(
            r#"{"op":"complete","system":null,"prompt":"hi","max_new_tokens":3}"#,
        )
        .unwrap();
        assert_eq!(
            parsed,
            Request::Complete {
                system: None,
                prompt: "hi".into(),
                max_new_tokens: 3
            }
        );
        assert!(
            serde_json::from_str::<Request>(
                r#"{"op":"complete","prompt":"x","max_new_tokens":1,"extra":1}"#
            )
            .is_err()
        );
        let reply = Reply::error(ErrorKind::NotOpen, "open a model first");
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"reply":"error","kind":"not_open","message":"open a model first","limit":null}"#
        );
    }

    #[test]
    fn a_missing_service_is_down_not_a_load_error_and_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("model.sock");
        let spec = ModelSpec {
            model: "default".into(),
            default_model: "x".into(),
            lora: None,
            quantize: false,
        };
        let mut generator = ServiceGenerator::connect(&socket, spec, 8).unwrap();
        assert!(!generator.is_connected());
        let error = generator.complete(None, "hello").unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, GenerateError::ServiceDown(_)), "{text}");
        assert!(
            text.contains("model.sock") && text.contains("model_service"),
            "{text}"
        );
    }
}
