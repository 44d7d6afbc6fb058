//! The engine facade: a loaded model with its tokenizer and chat template, turning
//! requests into completions.
//!
//! [`Engine::generate_batch`] runs many requests together: their prompts are prefilled in
//! token-budgeted chunks and every unfinished sequence decodes one token per forward step,
//! so the weights are read once per step for all of them. Each request keeps its own
//! sampling parameters, stop conditions and usage; one bad request fails alone.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::Device;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::chat::{ChatMessage, ChatTemplate};
use crate::engine::gguf::GgufFile;
use crate::engine::kv::{KvDtype, KvStats};
use crate::engine::model::{Model, ModelConfig};
use crate::engine::sampling::SamplingParams;
use crate::engine::scheduler::{Pending, Scheduler, StepStats, MAX_RUNNING};
use crate::engine::tokenizer::Tokenizer;
use crate::error::{Error, Result};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// A `tokenizer.json` to use instead of the GGUF's own vocabulary.
    pub tokenizer_json: Option<PathBuf>,
    /// Bytes for the key/value cache of all sequences; `None`: [`default_kv_budget`].
    pub kv_budget_bytes: Option<usize>,
    /// Reuse cached prompt prefixes across requests.
    pub prefix_reuse: bool,
    /// The most sequences in the running batch; `None`: [`MAX_RUNNING`]. `Some(1)` runs
    /// one sequence per forward step (no batching, for ablations).
    pub max_batch: Option<usize>,
    /// The element type of cached keys and values.
    pub kv_dtype: KvDtype,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            tokenizer_json: None,
            kv_budget_bytes: None,
            prefix_reuse: true,
            max_batch: None,
            kv_dtype: KvDtype::default(),
        }
    }
}

/// The key/value budget when none is given: a quarter of the memory available now, at
/// least 256 MiB and at most 8 GiB (2 GiB where available memory cannot be read).
pub fn default_kv_budget() -> usize {
    const MIB: usize = 1 << 20;
    match available_memory() {
        Some(bytes) => (bytes / 4).clamp(256 * MIB, 8192 * MIB),
        None => 2048 * MIB,
    }
}

/// The memory available now (`MemAvailable`), where the system says.
pub fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib = line.split_whitespace().nth(1)?.parse::<usize>().ok()?;
    kib.checked_mul(1024)
}

/// Refuses a key/value budget larger than the memory available (`None`: unknown, any
/// budget goes), which would abort the process when the cache fills instead of failing.
pub fn check_kv_budget(budget_bytes: usize, available: Option<usize>) -> Result<()> {
    match available {
        Some(available) if budget_bytes > available => Err(Error::InvalidArgument {
            name: "kv-budget".into(),
            reason: format!(
                "{budget_bytes} bytes is more than the {available} bytes of memory available"
            ),
        }),
        _ => Ok(()),
    }
}

/// Refuses a vocabulary that does not match the embedding: a GGUF vocabulary must have
/// one token per embedding row; a `tokenizer.json` may have fewer (padded embeddings) but
/// never more.
fn check_vocabulary(config: &ModelConfig, tokenizer: &Tokenizer, from_json: bool) -> Result<()> {
    let (tokens, rows) = (tokenizer.vocab_size(), config.vocab_size);
    if tokens == rows || (from_json && tokens < rows) {
        return Ok(());
    }
    let what = if from_json {
        "the tokenizer file"
    } else {
        "`tokenizer.ggml.tokens`"
    };
    Err(Error::Tokenizer(format!(
        "{what} has {tokens} tokens but the embedding `token_embd.weight` has {rows} rows"
    )))
}

/// What to complete: a conversation rendered with the model's chat template, or raw text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Prompt {
    Chat {
        messages: Vec<ChatMessage>,
    },
    Text {
        text: String,
    },
    /// Token ids, run as given (no BOS added).
    Tokens {
        ids: Vec<u32>,
    },
}

/// One generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an end-of-sequence or end-of-turn token.
    Eos,
    /// A stop string appeared; it is cut from the text.
    StopString,
    /// `max_new_tokens` was reached.
    Length,
    /// The context window is full.
    ContextFull,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from a cache instead of being computed.
    pub cached_prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Where one request's time went, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Waiting before the first forward step that included this request.
    pub queue_s: f64,
    /// Forward steps that processed this request's prompt.
    pub prefill_s: f64,
    /// Forward steps that generated this request's tokens.
    pub decode_s: f64,
}

/// The result of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

/// What an engine holds at one moment: sequences and key/value blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLoad {
    /// Requests waiting for admission.
    pub waiting: usize,
    /// Sequences in the running batch.
    pub running: usize,
    pub kv: KvStats,
    /// The most sequences in the running batch.
    pub max_batch: usize,
}

/// A model ready to generate.
pub struct Engine {
    model: Model,
    scheduler: Mutex<Scheduler>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// The most bytes of text one token can stand for (its spelling is never shorter), so
    /// that a prompt of more than `context * max_token_bytes` bytes is refused untokenized.
    max_token_bytes: usize,
    path: PathBuf,
    load_time: Duration,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("path", &self.path).finish()
    }
}

impl Engine {
    /// Loads a GGUF model: weights, tokenizer and chat template.
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let started = Instant::now();
        let path = path.as_ref().to_path_buf();
        let mut file = GgufFile::open(&path)?;
        // Check the architecture before the tokenizer so that an unsupported model says so.
        let config = ModelConfig::from_gguf(&file)?;
        let tokenizer = match &options.tokenizer_json {
            Some(json) => Tokenizer::from_json_file(json, Some(file.metadata()))?,
            None => Tokenizer::from_gguf(file.metadata())?,
        };
        check_vocabulary(&config, &tokenizer, options.tokenizer_json.is_some())?;
        if let Some(budget) = options.kv_budget_bytes {
            check_kv_budget(budget, available_memory())?;
        }
        let max_batch = options.max_batch.unwrap_or(MAX_RUNNING);
        if max_batch == 0 {
            return Err(Error::InvalidArgument {
                name: "max-batch".into(),
                reason: "must be at least 1".into(),
            });
        }
        let token_text = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_text(i))
                .unwrap_or_default()
                .to_string()
        };
        let template = ChatTemplate::from_gguf(
            file.metadata(),
            &token_text(tokenizer.bos_id()),
            &token_text(tokenizer.eos_id()),
        )?;
        file.release_metadata();
        let mut model = Model::load_with(&mut file, config, &options.device)?;
        model.set_kv_dtype(options.kv_dtype);
        let budget = options.kv_budget_bytes.unwrap_or_else(default_kv_budget);
        let mut store = model.new_kv_store(budget)?;
        store.set_prefix_reuse(options.prefix_reuse);
        let max_token_bytes = (0..tokenizer.vocab_size() as u32)
            .filter_map(|id| tokenizer.token_text(id).map(str::len))
            .max()
            .unwrap_or(0)
            .max(1);
        Ok(Self {
            scheduler: Mutex::new(Scheduler::new(store).with_max_batch(max_batch)),
            model,
            max_token_bytes,
            tokenizer,
            template,
            path,
            load_time: started.elapsed(),
        })
    }

    /// The model file this engine was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Time spent in [`Engine::load`].
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// The underlying model (for scoring and tests).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The token ids a prompt is run as, BOS included where the model wants one.
    ///
    /// A text too long for the context window, whatever its tokens, is refused before it is
    /// rendered or tokenized.
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let context = self.config().context_length;
        let fits = |bytes: usize| {
            // A SentencePiece space prefix and the BOS may add a token's worth.
            if bytes
                > context
                    .saturating_add(1)
                    .saturating_mul(self.max_token_bytes)
            {
                return Err(Error::Request(format!(
                    "prompt of {bytes} bytes does not fit the context window of {context} \
                     tokens (no token is longer than {} bytes)",
                    self.max_token_bytes
                )));
            }
            Ok(())
        };
        let text = match prompt {
            Prompt::Chat { messages } => {
                fits(messages.iter().map(|m| m.content.len()).sum())?;
                let text = self.template.render(messages, true)?;
                fits(text.len())?;
                text
            }
            Prompt::Text { text } => {
                fits(text.len())?;
                text.clone()
            }
            Prompt::Tokens { ids } => {
                let vocab = self.config().vocab_size;
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(Error::Request(format!(
                        "token id {bad} is outside the vocabulary of {vocab} tokens"
                    )));
                }
                return Ok(ids.clone());
            }
        };
        let mut ids = self.tokenizer.encode(&text)?;
        if let Some(bos) = self.tokenizer.bos_id().filter(|_| self.tokenizer.add_bos()) {
            // Templates often write the BOS themselves; never double it.
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Runs one request.
    pub fn generate(&self, request: &GenerationRequest) -> Result<Completion> {
        self.generate_batch(std::slice::from_ref(request))
            .pop()
            .unwrap_or_else(|| Err(Error::Request("no completion produced".into())))
    }

    /// Runs many requests together; results come back in request order.
    pub fn generate_batch(&self, requests: &[GenerationRequest]) -> Vec<Result<Completion>> {
        let mut results: Vec<Option<Result<Completion>>> = Vec::new();
        results.resize_with(requests.len(), || None);
        self.generate_each(requests, &mut |i, r| results[i] = Some(r));
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Request("request was not run".into()))))
            .collect()
    }

    /// Runs many requests together and hands each result to `on_done` with its index as
    /// soon as that request finishes. Requests submitted concurrently from other threads
    /// join the same running batch.
    pub fn generate_each(
        &self,
        requests: &[GenerationRequest],
        on_done: &mut dyn FnMut(usize, Result<Completion>),
    ) {
        let context = self.config().context_length;
        let prepared: Vec<Result<Vec<u32>>> =
            requests.par_iter().map(|r| self.prepare(r)).collect();
        let (tx, rx) = mpsc::channel();
        let mut remaining = 0;
        {
            let mut scheduler = self.scheduler();
            let block_size = scheduler.store.block_size();
            for (index, (request, prompt)) in requests.iter().zip(prepared).enumerate() {
                match prompt {
                    Ok(prompt) => {
                        remaining += 1;
                        let pending =
                            Pending::new((tx.clone(), index), prompt, request.clone(), block_size);
                        scheduler.submit(pending, context);
                    }
                    Err(e) => on_done(index, Err(e)),
                }
            }
        }
        while remaining > 0 {
            while let Ok((index, result)) = rx.try_recv() {
                remaining -= 1;
                on_done(index, result);
            }
            if remaining == 0 {
                break;
            }
            // Whoever holds the scheduler runs the next step for every submitter.
            let mut scheduler = self.scheduler();
            if scheduler.has_work() {
                scheduler.step(&self.model, &self.tokenizer);
            } else {
                drop(scheduler);
                if let Ok((index, result)) = rx.recv() {
                    remaining -= 1;
                    on_done(index, result);
                }
            }
        }
    }

    /// Checks a request's parameters and returns the prompt tokens it runs with, refusing
    /// an empty prompt and one that leaves no room in the context window.
    pub fn prepare(&self, request: &GenerationRequest) -> Result<Vec<u32>> {
        let context = self.config().context_length;
        request.params.validate()?;
        let ids = self.prompt_tokens(&request.prompt)?;
        if ids.is_empty() {
            return Err(Error::Request("the prompt is empty".into()));
        }
        if ids.len() >= context {
            return Err(Error::Request(format!(
                "prompt of {} tokens does not fit the context window of {context} tokens",
                ids.len()
            )));
        }
        Ok(ids)
    }

    /// Queues a request whose prompt came from [`Engine::prepare`], for a caller that
    /// drives the scheduler itself with [`Engine::step`] (a server): the result goes to
    /// the request's reply channel.
    pub fn submit(&self, pending: Pending) {
        let context = self.config().context_length;
        self.scheduler().submit(pending, context);
    }

    /// Positions per key/value block (for [`Pending::new`]).
    pub fn block_size(&self) -> usize {
        self.scheduler().store.block_size()
    }

    /// Runs one scheduling round if any request is waiting or running; returns whether
    /// there was one. Requests of [`Engine::generate_each`] callers share it.
    pub fn step(&self) -> bool {
        let mut scheduler = self.scheduler();
        if !scheduler.has_work() {
            return false;
        }
        scheduler.step(&self.model, &self.tokenizer);
        true
    }

    /// What the engine holds now.
    pub fn current_load(&self) -> EngineLoad {
        let scheduler = self.scheduler();
        let (waiting, running) = scheduler.load();
        EngineLoad {
            waiting,
            running,
            kv: scheduler.store.stats(),
            max_batch: scheduler.max_batch(),
        }
    }

    /// The scheduler, even if a thread panicked while holding it (its state stays valid
    /// between steps).
    fn scheduler(&self) -> MutexGuard<'_, Scheduler> {
        self.scheduler
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the engine's forward steps did since it was loaded (how full its batches were).
    pub fn step_stats(&self) -> StepStats {
        self.scheduler().stats()
    }

    /// Counters of the key/value store.
    pub fn kv_stats(&self) -> KvStats {
        self.scheduler().store.stats()
    }

    /// Turns prefix reuse on or off (off also drops every cached prefix).
    pub fn set_prefix_reuse(&self, on: bool) {
        self.scheduler().store.set_prefix_reuse(on);
    }
}
