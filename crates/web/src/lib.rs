//! n0m1-web: `n0m1_web`, a bundled component serving the dashboard (`/`), the JSON API
//! (`/api/v1/…`), server-sent event streams and Prometheus metrics (`/metrics`).
//!
//! It reads the database and files of the home and changes only what `n0m1ctl` changes (rows
//! and operator requests, through the same n0m1-ctl functions) and queues notifications for
//! the model components (through `n0m1_protocol::llm_tables`, their table's one owner), so
//! the managers never know it exists and no supervisor links an HTTP stack. One current-thread tokio runtime serves every
//! connection; SQLite work runs on the runtime's small blocking pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use n0m1_core::{Config, Home};

mod api;
mod assets;
mod connections;
mod error;
mod model_loop;
pub mod prometheus;
mod security;
mod streams;
mod tls;

pub use error::ApiError;

/// Where `n0m1_web` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = n0m1_core::defaults::WEB_LISTEN;
/// The largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The largest stack file `POST /api/v1/stack/plan|apply` takes (a thousand components
/// with their rows stay far below it).
pub const MAX_STACK_BYTES: usize = 1024 * 1024;

/// The body limit of a request to `path`.
pub fn body_limit(path: &str) -> usize {
    if path.starts_with("/api/v1/stack/") {
        MAX_STACK_BYTES
    } else {
        MAX_BODY_BYTES
    }
}
/// Threads for SQLite and /proc work: reads are short, and two keep one slow read from
/// holding up the rest without letting a flood of requests spawn threads.
const BLOCKING_THREADS: usize = 2;

#[derive(Debug, Clone)]
pub struct Options {
    pub home: Home,
    pub listen: SocketAddr,
}

/// What every handler shares.
pub struct App {
    pub home: Home,
    pub token: String,
    /// Reads need the token too.
    pub read_requires_token: bool,
    /// Bound to a loopback address: the Host header is checked (DNS rebinding).
    pub loopback: bool,
    /// The address it listens on: its host is accepted in the Host header besides
    /// localhost's names (127.0.0.2 when it listens there).
    pub listen: SocketAddr,
    /// The newest lifecycle row id, published by one poller for every event stream.
    pub last_event: tokio::sync::watch::Receiver<i64>,
    /// Flips to true at SIGTERM: streams end so the server can stop.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(options: Options) -> anyhow::Result<()> {
    let config = Config::load(&options.home.config_path())?;
    let loopback = options.listen.ip().is_loopback();
    if !loopback && config.web.tls.is_none() && !config.web.insecure_http {
        bail!(
            "--listen {} is not a loopback address, and plain HTTP would carry the token in clear: set \"web\": {{\"tls\": \"self-signed\"}} (or {{\"cert\": FILE, \"key\": FILE}}) in {}, or \"insecure_http\": true to accept that",
            options.listen,
            options.home.config_path().display()
        );
    }
    if !loopback && !config.web.read_requires_token {
        bail!(
            "--listen {} is not a loopback address, and reads would be open to anyone who can reach it: set \"web\": {{\"read_requires_token\": true}} in {} first",
            options.listen,
            options.home.config_path().display()
        );
    }
    let tls = match &config.web.tls {
        Some(setting) => {
            let (server, fingerprint) = tls::server_config(&options.home, setting, options.listen)?;
            tracing::info!("TLS certificate {fingerprint}");
            Some(tokio_rustls::TlsAcceptor::from(server))
        }
        None => None,
    };
    // Refuses a missing or outdated database before anything listens.
    drop(n0m1_core::db::open(&options.home.db_path())?);
    let token = n0m1_ctl::token::load_or_create(&options.home.web_token())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(Duration::from_secs(30))
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(serve(
        options,
        token,
        config.web.read_requires_token,
        loopback,
        tls,
    ))
}

async fn serve(
    options: Options,
    token: String,
    read_requires_token: bool,
    loopback: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let (events_tx, last_event) = tokio::sync::watch::channel(0);
    let app = Arc::new(App {
        home: options.home.clone(),
        token,
        read_requires_token,
        loopback,
        listen: options.listen,
        last_event,
        shutdown: shutdown.clone(),
    });
    tokio::spawn(streams::poll_lifecycle(
        options.home.clone(),
        events_tx,
        shutdown.clone(),
    ));
    tokio::spawn(watchdog(shutdown.clone()));
    let router = api::router(app);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        "serving {scheme}://{} (dashboard /, API /api/v1, metrics /metrics)",
        listener.local_addr().unwrap_or(options.listen)
    );
    if let Err(error) = n0m1_core::notify::notify(&format!(
        "READY=1\nSTATUS=listening on {scheme}://{}",
        options.listen
    )) {
        tracing::warn!("cannot tell the manager we are ready: {error}");
    }
    tokio::spawn(async move {
        stop_signal().await;
        tracing::info!("stopping: closing streams and connections");
        let _ = shutdown_tx.send(true);
    });
    connections::serve(listener, router, tls, shutdown).await;
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stopping only when killed");
            std::future::pending::<()>().await
        }
    }
}

/// Pings the manager's watchdog (when one is configured) from the runtime that serves
/// requests, so a wedged runtime stops the pings.
async fn watchdog(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut pinger = n0m1_core::notify::WatchdogPinger::from_env();
    while let Some(due) = pinger.due() {
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => pinger.ping_if_due(),
            _ = shutdown.changed() => return,
        }
    }
}

/// Runs SQLite or /proc work off the runtime's thread.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::internal(format!("a database task failed: {error}")))?
}
