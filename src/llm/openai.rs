//! An [`Llm`] on OpenAI-compatible servers (vLLM, SGLang, llama.cpp's server): each chat
//! request is a `POST {base}/v1/chat/completions`.
//!
//! Requests of a batch run concurrently on threads, at most `max_in_flight` per endpoint,
//! each sent to the endpoint with the fewest requests in flight (replicas that just failed
//! come last). A connection error, a timeout, a 429 or a 5xx is retried with backoff
//! ([`RetryPolicy`]), on another replica where there is one; a refused API key (401, 403)
//! is one error and never retried; any other 4xx fails that request alone with the
//! server's message. Construction probes every endpoint's `GET /v1/models` with short
//! timeouts, so a server that is down is an error within seconds, not at the first call.
//!
//! Everything a server sends is untrusted: bodies are read up to [`BODY_LIMIT`] and parsed
//! leniently ([`super::wire`]). The API key is read from the environment variable the
//! options name and is removed from every message that could show it.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::engine::generate::{Completion, Timings};
use crate::engine::gguf::GgufFile;
use crate::engine::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::llm::retry::RetryPolicy;
use crate::llm::spec::{RemoteSpec, ServerOptions};
use crate::llm::{notes, wire, ChatRequest, Llm};

/// The most bytes of one response body read.
pub const BODY_LIMIT: u64 = 16 << 20;

/// The most bytes of an error response read (only its message is kept).
const ERROR_BODY_LIMIT: u64 = 64 << 10;

/// The longest connection and response waits of the probe at construction, in seconds.
const PROBE_CONNECT_S: f64 = 3.0;
const PROBE_READ_S: f64 = 10.0;

/// How long a replica that failed is tried only when no other has room.
const COOLDOWN: Duration = Duration::from_secs(5);

/// The context length assumed when neither the server nor the options give one.
pub const ASSUMED_CONTEXT: usize = 4096;

/// How `count_tokens` counts.
enum Counter {
    /// llama.cpp's `POST /tokenize` with `{"content": text}`.
    LlamaCpp,
    /// vLLM's `POST /tokenize` with `{"model", "prompt", "add_special_tokens": false}`.
    Vllm,
    /// A local tokenizer the options name.
    Local(Box<Tokenizer>),
    /// Characters / 4, rounded up.
    Estimate,
}

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    /// Worth another attempt (connection, timeout, 429, 5xx); `hint_s` is `Retry-After`.
    Retry {
        message: String,
        hint_s: Option<f64>,
    },
    /// The server refused the API key (401, 403).
    Auth { message: String },
    /// This request is at fault (another 4xx, an unusable body).
    Fatal { message: String },
}

/// One endpoint's load.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    in_flight: usize,
    /// Until when this endpoint comes after the healthy ones.
    failed_until: Option<Instant>,
}

/// Spreads requests over endpoints: fewest in flight first, at most `cap` each.
struct Dispatcher {
    slots: Mutex<Vec<Slot>>,
    freed: Condvar,
    cap: usize,
}

impl Dispatcher {
    fn new(endpoints: usize, cap: usize) -> Self {
        Self {
            slots: Mutex::new(vec![Slot::default(); endpoints]),
            freed: Condvar::new(),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for an endpoint with room and takes a place on it; returns its index.
    fn acquire(&self) -> usize {
        let mut slots = self.lock();
        loop {
            let now = Instant::now();
            let best = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.in_flight < self.cap)
                .min_by_key(|(i, s)| {
                    let failing = s.failed_until.is_some_and(|t| t > now);
                    (failing, s.in_flight, *i)
                })
                .map(|(i, _)| i);
            if let Some(i) = best {
                slots[i].in_flight += 1;
                return i;
            }
            slots = self.freed.wait(slots).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Puts endpoint `index` behind the others for a while, as after a failed request.
    fn mark_failed(&self, index: usize) {
        if let Some(slot) = self.lock().get_mut(index) {
            slot.failed_until = Some(Instant::now() + COOLDOWN);
        }
    }

    /// Gives the place back; `failed` puts the endpoint behind the others for a while.
    fn release(&self, index: usize, failed: bool) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(index) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
            slot.failed_until = failed.then(|| Instant::now() + COOLDOWN);
        }
        drop(slots);
        self.freed.notify_one();
    }
}

/// A model served by one or more OpenAI-compatible endpoints.
pub struct OpenAiLlm {
    spec: RemoteSpec,
    name: String,
    identity: String,
    agent: ureq::Agent,
    /// `Bearer KEY`, if a key is configured; never printed.
    authorization: Option<String>,
    /// The key, to remove it from any message.
    key: Option<String>,
    policy: RetryPolicy,
    dispatcher: Dispatcher,
    context_length: usize,
    counter: Counter,
}

impl std::fmt::Debug for OpenAiLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiLlm")
            .field("spec", &self.name)
            .finish_non_exhaustive()
    }
}

fn agent(connect_s: f64, read_s: f64, idle_per_host: usize) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs_f64(connect_s))
        .timeout_read(Duration::from_secs_f64(read_s))
        .timeout_write(Duration::from_secs_f64(read_s))
        .max_idle_connections_per_host(idle_per_host)
        .max_idle_connections(idle_per_host.saturating_mul(4).max(8))
        .build()
}

impl OpenAiLlm {
    /// Connects to `spec`'s endpoints: checks the options, reads the API key, probes every
    /// endpoint, checks that the model is served, and finds how to count tokens and the
    /// context length. Every failure is one line naming the model and the URL at fault.
    pub fn connect(spec: &RemoteSpec, options: &ServerOptions) -> Result<Self> {
        let name = spec.display();
        options
            .validate()
            .map_err(|(field, reason)| Error::InvalidArgument {
                name: format!("server.{field}"),
                reason,
            })?;
        let key = options.api_key()?;
        let mut llm = Self {
            name: name.clone(),
            identity: spec.identity(),
            agent: agent(
                options.connect_timeout_s,
                options.read_timeout_s,
                options.max_in_flight,
            ),
            authorization: key.as_ref().map(|k| format!("Bearer {k}")),
            key,
            policy: RetryPolicy {
                retries: options.retries,
                retry_time_s: options.retry_time_s,
            },
            dispatcher: Dispatcher::new(spec.endpoints.len(), options.max_in_flight),
            context_length: ASSUMED_CONTEXT,
            counter: Counter::Estimate,
            spec: spec.clone(),
        };
        let fail = |reason: String| Error::ModelSource {
            source_spec: name.clone(),
            reason,
        };
        let probe = agent(
            options.connect_timeout_s.min(PROBE_CONNECT_S),
            options.read_timeout_s.min(PROBE_READ_S),
            1,
        );
        // A replica that is down at start is tried last (as after any failure) while the
        // others answer; a refused key or a wrong reply from any endpoint is an error, and
        // so is no endpoint answering.
        let mut served = Vec::new();
        let mut first_up = None;
        let mut down = Vec::new();
        let mut first_down = None;
        for (i, endpoint) in spec.endpoints.iter().enumerate() {
            match llm.exchange(&probe, endpoint, "/v1/models", None) {
                Ok(body) => {
                    first_up.get_or_insert(i);
                    if served.is_empty() {
                        served = wire::parse_models(&body);
                    }
                }
                Err(f @ Failure::Retry { .. }) => {
                    first_down.get_or_insert_with(|| llm.probe_reason(f));
                    down.push(i);
                }
                Err(f) => return Err(fail(llm.probe_reason(f))),
            }
        }
        let Some(first_up) = first_up else {
            let reason = first_down.unwrap_or_default();
            return Err(fail(if spec.endpoints.len() > 1 {
                format!("no endpoint reachable; the first: {reason}")
            } else {
                reason
            }));
        };
        if !down.is_empty() {
            let urls: Vec<String> = down.iter().map(|&i| spec.endpoints[i].clone()).collect();
            tracing::warn!(model = %name, "endpoints down at start, tried last: {}", urls.join(", "));
            notes::set_down_at_start(&name, &urls);
            for &i in &down {
                llm.dispatcher.mark_failed(i);
            }
        }
        let llama_cpp = !served.is_empty() && served.iter().all(|m| m.owned_by == "llamacpp");
        let entry = served.iter().find(|m| m.id == spec.served_name);
        if entry.is_none() && !served.is_empty() && !llama_cpp {
            let ids: Vec<&str> = served.iter().take(8).map(|m| m.id.as_str()).collect();
            return Err(fail(format!(
                "{} does not serve `{}` (it serves: {})",
                spec.endpoints[first_up],
                spec.served_name,
                crate::error::printable(&ids.join(", "))
            )));
        }
        let first = &spec.endpoints[first_up];
        let (context, context_note) = if let Some(n) = options.context_length {
            (
                n,
                format!("context length {n} tokens: from the `context_length` option"),
            )
        } else if let Some(n) = llama_cpp
            .then(|| llm.exchange(&probe, first, "/props", None).ok())
            .flatten()
            .and_then(|props| wire::parse_props_context(&props))
        {
            (
                n,
                format!("context length {n} tokens: from the server's /props (n_ctx)"),
            )
        } else if let Some(n) = entry.and_then(|m| m.max_model_len) {
            (
                n,
                format!("context length {n} tokens: from the server's /v1/models (max_model_len)"),
            )
        } else if let Some(n) = entry
            .or(served.first().filter(|_| llama_cpp))
            .and_then(|m| m.n_ctx_train)
        {
            (n, format!("context length {n} tokens: the model's training context from /v1/models (meta.n_ctx_train); the server may allow less"))
        } else {
            (
                ASSUMED_CONTEXT,
                format!("context length {ASSUMED_CONTEXT} tokens: assumed (the server does not say; set `context_length`)"),
            )
        };
        llm.context_length = context.max(1);
        let (counter, counting_note) = llm.choose_counter(&probe, first_up, llama_cpp, options)?;
        llm.counter = counter;
        tracing::info!(model = %name, "{counting_note}; {context_note}");
        notes::set_sources(&name, &counting_note, &context_note);
        Ok(llm)
    }

    /// The server's `/tokenize` when it answers, else the options' tokenizer, else an
    /// estimate; with the sentence that says which.
    fn choose_counter(
        &self,
        probe: &ureq::Agent,
        endpoint: usize,
        llama_cpp: bool,
        options: &ServerOptions,
    ) -> Result<(Counter, String)> {
        let server = if llama_cpp {
            Counter::LlamaCpp
        } else {
            Counter::Vllm
        };
        let body = self.tokenize_body(&server, "fgo probe");
        let answered = self
            .exchange(
                probe,
                &self.spec.endpoints[endpoint],
                "/tokenize",
                body.as_ref(),
            )
            .ok()
            .and_then(|v| wire::parse_token_count(&v))
            .is_some();
        if answered {
            return Ok((server, "token counts: from the server's /tokenize".into()));
        }
        if let Some(path) = &options.tokenizer {
            let tokenizer = load_tokenizer(path).map_err(|e| Error::InvalidArgument {
                name: "server.tokenizer".into(),
                reason: e.to_string(),
            })?;
            return Ok((
                Counter::Local(Box::new(tokenizer)),
                format!("token counts: from the local tokenizer {}", path.display()),
            ));
        }
        Ok((
            Counter::Estimate,
            "token counts: estimates (characters / 4, rounded up): the server has no /tokenize \
             and no `tokenizer` was given"
                .into(),
        ))
    }

    fn tokenize_body(&self, counter: &Counter, text: &str) -> Option<Value> {
        match counter {
            Counter::LlamaCpp => Some(json!({ "content": text })),
            Counter::Vllm => Some(json!({
                "model": self.spec.served_name,
                "prompt": text,
                "add_special_tokens": false,
            })),
            _ => None,
        }
    }

    /// The endpoints, in the order given (normalized, without `/v1`).
    pub fn endpoints(&self) -> &[String] {
        &self.spec.endpoints
    }

    /// `text` with the API key replaced, for anything that may be shown.
    fn redact(&self, text: String) -> String {
        match &self.key {
            Some(key) if !key.is_empty() && text.contains(key.as_str()) => {
                text.replace(key.as_str(), "[redacted]")
            }
            _ => text,
        }
    }

    fn probe_reason(&self, failure: Failure) -> String {
        match failure {
            Failure::Retry { message, .. } => format!("server not reachable: {message}"),
            Failure::Auth { message } | Failure::Fatal { message } => message,
        }
    }

    /// One HTTP exchange with one endpoint: `POST` with `body`, else `GET`.
    fn exchange(
        &self,
        agent: &ureq::Agent,
        endpoint: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::result::Result<Value, Failure> {
        let url = format!("{endpoint}{path}");
        let mut request = match body {
            Some(_) => agent.post(&url),
            None => agent.get(&url),
        };
        request = request.set("Accept", "application/json");
        if let Some(auth) = &self.authorization {
            request = request.set("Authorization", auth);
        }
        let result = match body {
            Some(b) => request
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => request.call(),
        };
        let failure = match result {
            Ok(response) => {
                let bytes = read_capped(response, BODY_LIMIT).map_err(|e| match e {
                    Capped::TooLarge => Failure::Fatal {
                        message: format!(
                            "{url}: the response is larger than {} MiB",
                            BODY_LIMIT >> 20
                        ),
                    },
                    Capped::Io(e) => Failure::Retry {
                        message: self.redact(format!("{url}: reading the response: {e}")),
                        hint_s: None,
                    },
                })?;
                return serde_json::from_slice(&bytes).map_err(|e| Failure::Fatal {
                    message: format!("{url}: the response is not JSON ({e})"),
                });
            }
            Err(ureq::Error::Status(code, response)) => {
                let hint_s = response
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<f64>().ok());
                let text = read_capped(response, ERROR_BODY_LIMIT)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let message = format!("{url}: HTTP {code}: {}", wire::error_message(&text));
                match code {
                    401 | 403 => Failure::Auth {
                        message: format!(
                            "{message} (the server refused the API key{}; it is not retried)",
                            match &self.authorization {
                                Some(_) => " from the `api_key_env` variable",
                                None => ": none was sent, set `api_key_env`",
                            }
                        ),
                    },
                    408 | 429 | 500..=599 => Failure::Retry { message, hint_s },
                    _ => Failure::Fatal { message },
                }
            }
            Err(ureq::Error::Transport(t)) => {
                let message = crate::error::printable(&t.to_string());
                match t.kind() {
                    ureq::ErrorKind::InvalidUrl
                    | ureq::ErrorKind::UnknownScheme
                    | ureq::ErrorKind::InvalidProxyUrl => Failure::Fatal { message },
                    _ => Failure::Retry {
                        message,
                        hint_s: None,
                    },
                }
            }
        };
        Err(match failure {
            Failure::Retry { message, hint_s } => Failure::Retry {
                message: self.redact(message),
                hint_s,
            },
            Failure::Auth { message } => Failure::Auth {
                message: self.redact(message),
            },
            Failure::Fatal { message } => Failure::Fatal {
                message: self.redact(message),
            },
        })
    }

    /// Sends one request to the endpoints, retrying within the policy. Returns the body,
    /// the seconds before the successful attempt and the seconds it took.
    fn send(&self, path: &str, body: &Value) -> Result<(Value, f64, f64)> {
        let started = Instant::now();
        let mut waited_s = 0.0;
        let mut retry = 0;
        loop {
            let index = self.dispatcher.acquire();
            let attempt = Instant::now();
            let result = self.exchange(&self.agent, &self.spec.endpoints[index], path, Some(body));
            let failed = matches!(result, Err(Failure::Retry { .. }));
            self.dispatcher.release(index, failed);
            match result {
                Ok(value) => {
                    let before = attempt.duration_since(started).as_secs_f64();
                    return Ok((value, before, attempt.elapsed().as_secs_f64()));
                }
                Err(Failure::Auth { message }) | Err(Failure::Fatal { message }) => {
                    return Err(Error::Request(format!("{}: {message}", self.name)))
                }
                Err(Failure::Retry { message, hint_s }) => {
                    match self.policy.delay(retry, waited_s, hint_s) {
                        Some(wait) => {
                            tracing::debug!(model = %self.name, "retrying after: {message}");
                            std::thread::sleep(wait);
                            waited_s += wait.as_secs_f64();
                            retry += 1;
                        }
                        None => {
                            return Err(Error::Request(format!(
                                "{}: {message} (gave up after {} attempts in {:.1}s)",
                                self.name,
                                retry + 1,
                                started.elapsed().as_secs_f64()
                            )))
                        }
                    }
                }
            }
        }
    }

    /// Completes one request.
    fn complete_one(&self, request: &ChatRequest) -> Result<Completion> {
        request.params.validate()?;
        let body = wire::chat_body(&self.spec.served_name, request);
        let (value, before_s, exchange_s) = self.send("/v1/chat/completions", &body)?;
        let reply =
            wire::parse_chat(&value).map_err(|e| Error::Request(format!("{}: {e}", self.name)))?;
        notes::saw_reply(&self.name, reply.cached_reported, reply.usage_reported);
        let timings = match reply.server_times {
            Some((prefill_s, decode_s)) => Timings {
                queue_s: before_s + (exchange_s - prefill_s - decode_s).max(0.0),
                prefill_s,
                decode_s,
            },
            None => Timings {
                queue_s: before_s,
                prefill_s: 0.0,
                decode_s: exchange_s,
            },
        };
        Ok(Completion {
            text: reply.text,
            token_ids: Vec::new(),
            finish_reason: reply.finish_reason,
            usage: reply.usage,
            timings,
        })
    }
}

/// Loads a tokenizer for local counting from a `tokenizer.json` or a GGUF file's metadata.
fn load_tokenizer(path: &std::path::Path) -> Result<Tokenizer> {
    if path.extension().is_some_and(|e| e == "json") {
        Tokenizer::from_json_file(path, None)
    } else {
        let file = GgufFile::open(path)?;
        Tokenizer::from_gguf(file.metadata())
    }
}

enum Capped {
    TooLarge,
    Io(std::io::Error),
}

/// A response body, at most `limit` bytes.
fn read_capped(response: ureq::Response, limit: u64) -> std::result::Result<Vec<u8>, Capped> {
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(Capped::Io)?;
    if bytes.len() as u64 > limit {
        return Err(Capped::TooLarge);
    }
    Ok(bytes)
}

/// The character estimate of a token count: characters / 4, rounded up.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

impl Llm for OpenAiLlm {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        match &self.counter {
            Counter::Local(tokenizer) => Ok(tokenizer.encode(text)?.len()),
            Counter::Estimate => Ok(estimate_tokens(text)),
            server => {
                let body = self.tokenize_body(server, text).unwrap_or_default();
                let (value, _, _) = self.send("/tokenize", &body)?;
                wire::parse_token_count(&value).ok_or_else(|| {
                    Error::Request(format!(
                        "{}: the /tokenize response has no `tokens` or `count`",
                        self.name
                    ))
                })
            }
        }
    }

    fn complete(&self, requests: &[ChatRequest]) -> Vec<Result<Completion>> {
        let mut results: Vec<Option<Result<Completion>>> = Vec::new();
        results.resize_with(requests.len(), || None);
        self.complete_each(requests, &mut |i, r| {
            if let Some(slot) = results.get_mut(i) {
                *slot = Some(r);
            }
        });
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Request("request was not run".into()))))
            .collect()
    }

    fn complete_each(
        &self,
        requests: &[ChatRequest],
        on_done: &mut dyn FnMut(usize, Result<Completion>),
    ) {
        let capacity = self
            .spec
            .endpoints
            .len()
            .saturating_mul(self.dispatcher.cap)
            .max(1);
        let workers = requests.len().min(capacity);
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel();
            for _ in 0..workers {
                let tx = tx.clone();
                let next = &next;
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(request) = requests.get(i) else {
                        break;
                    };
                    if tx.send((i, self.complete_one(request))).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            for (i, result) in rx {
                on_done(i, result);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_rounds_up_by_characters() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("ééééé"), 2, "characters, not bytes");
    }

    #[test]
    fn the_dispatcher_prefers_the_least_loaded_and_healthy_endpoint() {
        let d = Dispatcher::new(2, 2);
        assert_eq!(d.acquire(), 0);
        assert_eq!(d.acquire(), 1);
        assert_eq!(d.acquire(), 0);
        // Endpoint 1 fails: it comes last while another has room.
        d.release(1, true);
        assert_eq!(
            d.acquire(),
            1,
            "endpoint 0 is full, so the failed one is used"
        );
        d.release(0, false);
        d.release(1, true);
        assert_eq!(d.acquire(), 0, "the healthy endpoint first");
        let slots = d.lock().clone();
        assert_eq!(slots[0].in_flight, 2);
        assert_eq!(slots[1].in_flight, 0);
    }
}
