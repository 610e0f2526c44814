//! The accept loop: every connection served by hyper with a header-read timeout, at most
//! `MAX_CONNECTIONS` at once, and at most `MAX_WAITING` that have not sent a whole request
//! yet. A new connection beyond either cap closes the oldest of those waiting ones, so
//! clients that stop half-way through a request (or never start one) cannot hold the server
//! and a new browser is still served; memory stays bounded by the caps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};

/// A client must send a request's headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Open connections at most (SSE streams included).
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections that have not yet sent a whole request, at most.
pub const MAX_WAITING: usize = 128;

/// Connections that have not sent a whole request yet, oldest first, each with the way to
/// close it.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    by_age: BTreeMap<u64, oneshot::Sender<()>>,
}

impl Waiting {
    fn add(&mut self) -> (u64, oneshot::Receiver<()>) {
        let (close, closed) = oneshot::channel();
        let id = self.next_id;
        self.next_id += 1;
        self.by_age.insert(id, close);
        (id, closed)
    }
    /// Closes the oldest; false when none waits.
    fn close_oldest(&mut self) -> bool {
        match self.by_age.pop_first() {
            Some((_, close)) => {
                let _ = close.send(());
                true
            }
            None => false,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` turns true; then stops accepting, lets
/// connections finish for up to two seconds and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        while tasks.try_join_next().is_some() {}
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, most likely: wait a little instead of spinning.
                tracing::warn!("cannot accept a connection: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        {
            let mut waiting = waiting.lock().unwrap_or_else(|e| e.into_inner());
            if waiting.by_age.len() >= MAX_WAITING {
                waiting.close_oldest();
            }
        }
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let closed = waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .close_oldest();
                if !closed {
                    tracing::warn!(
                        "{MAX_CONNECTIONS} connections are open and each has sent a request; the new one waits for a free slot"
                    );
                }
                match permits.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => break,
                }
            }
        };
        let (id, closed) = waiting.lock().unwrap_or_else(|e| e.into_inner()).add();
        let seen = waiting.clone();
        let router = router.clone();
        let stop = shutdown.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let _permit = permit;
            // The first request's headers are in: it no longer counts as waiting.
            let service = MarkFirstRequest {
                router,
                waiting: seen.clone(),
                id,
            };
            match tls {
                None => drive(stream, service, closed, stop).await,
                // The handshake is bounded like the headers: a client that stops in the
                // middle of it holds nothing for longer.
                Some(acceptor) => {
                    let mut closed = closed;
                    tokio::select! {
                        handshake = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)) => {
                            if let Ok(Ok(stream)) = handshake {
                                drive(stream, service, closed, stop).await;
                            }
                        }
                        Ok(()) = &mut closed => {}
                    }
                }
            }
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .by_age
                .remove(&id);
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

/// Serves one connection until it ends, is closed for a newer one, or the server stops.
async fn drive<S>(
    stream: S,
    service: MarkFirstRequest,
    mut closed: oneshot::Receiver<()>,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = &mut connection => {}
        // A sender dropped (the first request came) is no close: only a sent one is.
        Ok(()) = &mut closed => {}
        _ = async { drop(stop.wait_for(|stopping| *stopping).await) } => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
        }
    }
}

/// `router`, taking its connection off the waiting list at the first request.
#[derive(Clone)]
struct MarkFirstRequest {
    router: Router,
    waiting: Arc<Mutex<Waiting>>,
    id: u64,
}

impl tower_service::Service<axum::http::Request<hyper::body::Incoming>> for MarkFirstRequest {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future =
        <Router as tower_service::Service<axum::http::Request<hyper::body::Incoming>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::<axum::http::Request<hyper::body::Incoming>>::poll_ready(
            &mut self.router,
            cx,
        )
    }

    fn call(&mut self, request: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_age
            .remove(&self.id);
        self.router.call(request)
    }
}
