//! `fgo serve`: the embedded engine behind an OpenAI-compatible HTTP server.
//!
//! Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (whole or streamed
//! as server-sent events), `GET /v1/models`, `POST /tokenize` and `GET /health`.
//!
//! Threads: the HTTP side is axum on a small multi-threaded tokio runtime that only parses,
//! routes and writes. Tokenization runs on tokio's bounded blocking pool. The forward
//! passes never run on tokio threads: one dedicated engine thread ([`driver`]) steps the
//! scheduler and fans each step out over the engine's own thread team, so every client's
//! sequences join one running batch and share cached prefixes, and a long step never
//! stalls a connection.
//!
//! Limits, since everything from a client is untrusted: bodies over
//! [`ServeOptions::body_limit`] are a 413, at most [`BODY_PERMITS`] bodies are read and
//! parsed at once, and at most [`ServeOptions::max_queue`] sequences are in flight (more is
//! a 429). SIGTERM or Ctrl-C stops accepting connections, lets the requests in flight
//! finish for up to [`ServeOptions::shutdown_grace`], and returns.

mod auth;
mod driver;
pub mod error;
mod handlers;
pub mod openai;
mod respond;
mod stream;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

use crate::engine::Engine;
use crate::serve::driver::{Counters, Job};
use crate::serve::error::ApiError;

/// The default limit on a request body.
pub const BODY_LIMIT: usize = 8 << 20;

/// Bodies read and parsed at once (so that at most this many bodies are in memory).
pub const BODY_PERMITS: usize = 32;

/// Threads of the blocking pool that renders templates and tokenizes prompts.
const BLOCKING_THREADS: usize = 4;

/// How the server runs.
#[derive(Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// The model's name in responses and `/v1/models`.
    pub model_name: String,
    /// Every request must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Most sequences queued or running at once; a request that would pass it is a 429.
    pub max_queue: usize,
    /// Tokens generated when a request gives no `max_tokens` (within the context).
    pub default_max_tokens: usize,
    /// How long requests in flight may run on after a stop signal.
    pub shutdown_grace: Duration,
    /// The most bytes of one request body.
    pub body_limit: usize,
    /// Async worker threads (parsing and writing only).
    pub http_threads: usize,
}

impl std::fmt::Debug for ServeOptions {
    // By hand, so that the key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("addr", &self.addr)
            .field("model_name", &self.model_name)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("max_queue", &self.max_queue)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("body_limit", &self.body_limit)
            .finish()
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    engine: Arc<Engine>,
    jobs: std::sync::mpsc::Sender<Job>,
    counters: Arc<Counters>,
    options: ServeOptions,
    body_permits: Arc<Semaphore>,
    context: usize,
    max_batch: usize,
    /// Unix time the server started.
    started: u64,
}

/// Serves `engine` until a stop signal; `listening` is told the bound address (the port
/// may have been 0) before the first request is accepted.
pub fn run(
    engine: Engine,
    options: ServeOptions,
    listening: impl FnOnce(SocketAddr) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.http_threads.max(1))
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("fgo-http")
        .enable_all()
        .build()?;
    let engine = Arc::new(engine);
    let counters = Arc::new(Counters::default());
    let (jobs, _engine_thread) = driver::spawn(engine.clone(), counters.clone())?;
    let state = Arc::new(AppState {
        context: engine.config().context_length,
        max_batch: engine.current_load().max_batch,
        engine,
        jobs,
        counters,
        body_permits: Arc::new(Semaphore::new(BODY_PERMITS)),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        options,
    });
    let result = runtime.block_on(serve(state, listening));
    // Whatever is still running past the grace period is abandoned with the process.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The routes, behind the key check.
fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::models))
        .route("/tokenize", post(handlers::tokenize))
        .route("/health", get(handlers::health))
        .fallback(handlers::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Checks the API key (when one is set) and logs each request: method, path, status;
/// never a header.
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = crate::error::printable(request.uri().path());
    if let Some(key) = &state.options.api_key {
        if !auth::authorized(request.headers(), key) {
            tracing::info!(%method, %path, status = 401, "refused");
            return ApiError::unauthorized().into_response();
        }
    }
    let response = next.run(request).await;
    tracing::info!(%method, %path, status = response.status().as_u16(), "answered");
    response
}

async fn serve(
    state: Arc<AppState>,
    listening: impl FnOnce(SocketAddr) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let grace = state.options.shutdown_grace;
    let listener = tokio::net::TcpListener::bind(state.options.addr).await?;
    // Listen for the signals before anyone can know the address.
    let stop = stop_signal()?;
    listening(listener.local_addr()?)?;
    let (begin_shutdown, shutdown_begun) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        let _ = shutdown_begun.await;
    });
    let mut server = tokio::spawn(server.into_future());
    tokio::select! {
        finished = &mut server => {
            return finished.map_err(std::io::Error::other)?;
        }
        () = stop => {}
    }
    tracing::warn!("stopping: no new connections; finishing the requests in flight");
    let _ = begin_shutdown.send(());
    match tokio::time::timeout(grace, server).await {
        Ok(finished) => finished.map_err(std::io::Error::other)?,
        Err(_) => {
            tracing::warn!(
                "requests still in flight after {} s; stopping anyway",
                grace.as_secs()
            );
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C); the handlers are installed when this returns.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
