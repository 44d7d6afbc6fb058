//! The endpoints: read and check the request, hand its sequences to the engine thread,
//! and answer with the whole response or a stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::sync::mpsc::unbounded_channel;
use tokio::sync::OwnedSemaphorePermit;

use crate::engine::generate::{Completion, GenerationRequest, Prompt};
use crate::error::Result;
use crate::serve::driver::{Counters, Job, SeqEvent};
use crate::serve::error::ApiError;
use crate::serve::openai::{self, Common};
use crate::serve::respond::{choice_text, Kind, Meta, UsageSum};
use crate::serve::stream::{sse, StreamPlan};
use crate::serve::AppState;

type Shared = State<Arc<AppState>>;

/// Reads the whole body, refusing one over the limit with a 413 (before reading it when
/// its declared length already says so).
async fn read_body(state: &AppState, request: Request) -> Result<Bytes, ApiError> {
    let limit = state.options.body_limit;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|e| {
            if e.to_string().contains("length limit") {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })
}

/// Room for sequences in flight, given back on drop unless handed to the engine thread
/// (which gives it back as each sequence is answered).
struct Reservation<'a> {
    counters: &'a Counters,
    left: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.counters.release(self.left);
    }
}

/// One prompt to run `n` times: the request and, when echoing, the prompt's text.
struct Prepared {
    ids: Vec<u32>,
    request: GenerationRequest,
    echo: Option<String>,
}

/// Runs `prompts` with `common`'s parameters, `n` choices each, and answers.
async fn generate(
    state: Arc<AppState>,
    kind: Kind,
    prompts: Vec<Prompt>,
    echo: bool,
    common: Common,
    permit: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let n = common.n;
    let total = prompts.len() * n;
    let max_queue = state.options.max_queue;
    if !state.counters.reserve(total, max_queue) {
        return Err(ApiError::queue_full(max_queue));
    }
    let mut reservation = Reservation {
        counters: &state.counters,
        left: total,
    };
    // Templates and tokenization are CPU work: off the async workers, on the bounded
    // blocking pool.
    let engine = state.engine.clone();
    let params = common.params.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        prompts
            .into_iter()
            .map(|prompt| {
                let echo = match (&prompt, echo) {
                    (_, false) => None,
                    (Prompt::Text { text }, true) => Some(text.clone()),
                    (Prompt::Tokens { ids }, true) => Some(engine.tokenizer().decode(ids)?),
                    (Prompt::Chat { .. }, true) => None,
                };
                let request = GenerationRequest {
                    prompt,
                    params: params.clone(),
                };
                let ids = engine.prepare(&request)?;
                Ok(Prepared { ids, request, echo })
            })
            .collect::<Result<Vec<_>>>()
    })
    .await
    .map_err(|_| ApiError::internal("tokenizing the prompt failed"))?
    .map_err(|e| ApiError::from_engine(&e))?;
    drop(permit);

    let context = state.context;
    let base_seed = common.seed.unwrap_or_else(rand::random);
    let (events, mut answers) = unbounded_channel();
    let mut prefixes = Vec::with_capacity(total);
    for (p, prepared) in prepared.iter().enumerate() {
        let room = context.saturating_sub(prepared.ids.len()).max(1);
        let max_new = common
            .max_tokens
            .unwrap_or_else(|| state.options.default_max_tokens.min(room));
        for j in 0..n {
            let choice = p * n + j;
            let mut request = prepared.request.clone();
            request.params.max_new_tokens = max_new;
            request.params.seed = base_seed.wrapping_add(choice as u64);
            let job = Job {
                prompt: prepared.ids.clone(),
                request,
                choice,
                stream: common.stream,
                events: events.clone(),
            };
            state
                .jobs
                .send(job)
                .map_err(|_| ApiError::unavailable("the server is stopping"))?;
            reservation.left -= 1;
            prefixes.push(prepared.echo.clone());
        }
    }
    drop(events);
    let meta = Meta::new(kind, &state.options.model_name);
    if common.stream {
        let plan = StreamPlan {
            meta,
            events: answers,
            prefixes,
            n,
            include_usage: common.include_usage,
        };
        return Ok(sse(plan).into_response());
    }
    let mut results: Vec<Option<Result<Completion>>> = (0..total).map(|_| None).collect();
    let mut left = total;
    while left > 0 {
        match answers.recv().await {
            Some(SeqEvent::Done { choice, result }) => {
                if let Some(slot) = results.get_mut(choice).filter(|s| s.is_none()) {
                    *slot = Some(result);
                    left -= 1;
                }
            }
            Some(SeqEvent::Text { .. }) => {}
            None => return Err(ApiError::internal("the engine stopped")),
        }
    }
    let mut usage = UsageSum::default();
    let mut choices = Vec::with_capacity(total);
    for (choice, result) in results.into_iter().enumerate() {
        let completion = match result {
            Some(Ok(completion)) => completion,
            Some(Err(e)) => return Err(ApiError::from_engine(&e)),
            None => return Err(ApiError::internal("a choice was not answered")),
        };
        usage.add(&completion.usage, choice % n == 0);
        let text = choice_text(&completion, prefixes[choice].as_deref());
        choices.push(meta.choice(choice, &text, completion.finish_reason));
    }
    Ok(Json(meta.response(choices, &usage)).into_response())
}

/// The permit to read and parse one body (bounds the memory of bodies held at once).
async fn body_permit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state
        .body_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::unavailable("the server is stopping"))
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(state): Shared, request: Request) -> Response {
    let run = async {
        let permit = body_permit(&state).await?;
        let body = read_body(&state, request).await?;
        let parsed = openai::chat(&body)?;
        drop(body);
        let prompt = Prompt::Chat {
            messages: parsed.messages,
        };
        generate(
            state.clone(),
            Kind::Chat,
            vec![prompt],
            false,
            parsed.common,
            permit,
        )
        .await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/completions`.
pub async fn completions(State(state): Shared, request: Request) -> Response {
    let run = async {
        let permit = body_permit(&state).await?;
        let body = read_body(&state, request).await?;
        let parsed = openai::completion(&body)?;
        drop(body);
        generate(
            state.clone(),
            Kind::Completion,
            parsed.prompts,
            parsed.echo,
            parsed.common,
            permit,
        )
        .await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /tokenize`: `{"tokens": [...], "count": n, "max_model_len": context}`.
pub async fn tokenize(State(state): Shared, request: Request) -> Response {
    let run = async {
        let _permit = body_permit(&state).await?;
        let body = read_body(&state, request).await?;
        let parsed = openai::tokenize(&body)?;
        drop(body);
        let engine = state.engine.clone();
        let tokens = tokio::task::spawn_blocking(move || {
            if parsed.add_special {
                return engine.prompt_tokens(&parsed.prompt);
            }
            let text = match &parsed.prompt {
                Prompt::Chat { messages } => engine.chat_template().render(messages, true)?,
                Prompt::Text { text } => text.clone(),
                Prompt::Tokens { ids } => return Ok(ids.clone()),
            };
            engine.tokenizer().encode(&text)
        })
        .await
        .map_err(|_| ApiError::internal("tokenizing failed"))?
        .map_err(|e| ApiError::from_engine(&e))?;
        Ok::<_, ApiError>(Json(json!({
            "count": tokens.len(),
            "tokens": tokens,
            "max_model_len": state.context,
        })))
    };
    match run.await {
        Ok(answer) => answer.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/models`: the one model served, with its context length.
pub async fn models(State(state): Shared) -> Response {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.options.model_name,
            "object": "model",
            "created": state.started,
            "owned_by": "fgo",
            "max_model_len": state.context,
            "context_length": state.context,
        }],
    }))
    .into_response()
}

/// `GET /health`: status and load counters (sequences and key/value blocks).
pub async fn health(State(state): Shared) -> Response {
    let c = &state.counters;
    let get = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
    Json(json!({
        "status": "ok",
        "model": state.options.model_name,
        "in_flight": get(&c.in_flight),
        "waiting": get(&c.waiting),
        "running": get(&c.running),
        "finished": get(&c.finished),
        "cancelled": get(&c.cancelled),
        "kv_blocks_used": get(&c.kv_used_blocks),
        "kv_blocks_cached": get(&c.kv_cached_blocks),
        "kv_blocks_total": get(&c.kv_total_blocks),
        "max_queue": state.options.max_queue,
        "max_batch": state.max_batch,
    }))
    .into_response()
}

/// Any other path.
pub async fn not_found(request: Request) -> Response {
    ApiError::not_found(request.uri().path()).into_response()
}
