//! The engine facade: a loaded model with its tokenizer and chat template, turning
//! requests into completions.
//!
//! [`Engine::generate_batch`] runs many requests together: their prompts are prefilled in
//! token-budgeted chunks and every unfinished sequence decodes one token per forward step,
//! so the weights are read once per step for all of them. Each request keeps its own
//! sampling parameters, stop conditions and usage; one bad request fails alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::chat::{ChatMessage, ChatTemplate};
use crate::engine::gguf::GgufFile;
use crate::engine::kv::KvCache;
use crate::engine::model::{LogitsWanted, Model, ModelConfig, SeqStep};
use crate::engine::sampling::{Sampler, SamplingParams, StopMatcher};
use crate::engine::tokenizer::Tokenizer;
use crate::error::{Error, Result};

/// Prompt tokens processed per forward step during prefill, summed over sequences.
const PREFILL_CHUNK_TOKENS: usize = 512;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// A `tokenizer.json` to use instead of the GGUF's own vocabulary.
    pub tokenizer_json: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            tokenizer_json: None,
        }
    }
}

/// What to complete: a conversation rendered with the model's chat template, or raw text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Prompt {
    Chat { messages: Vec<ChatMessage> },
    Text { text: String },
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

/// A model ready to generate.
pub struct Engine {
    model: Model,
    tokenizer: Tokenizer,
    template: ChatTemplate,
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
        ModelConfig::from_gguf(&file)?;
        let tokenizer = match &options.tokenizer_json {
            Some(json) => Tokenizer::from_json_file(json, Some(file.metadata()))?,
            None => Tokenizer::from_gguf(file.metadata())?,
        };
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
        let model = Model::load(&mut file, &options.device)?;
        Ok(Self {
            model,
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
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let text = match prompt {
            Prompt::Chat { messages } => self.template.render(messages, true)?,
            Prompt::Text { text } => text.clone(),
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
        let submitted = Instant::now();
        let context = self.config().context_length;
        let prepared: Vec<Result<Vec<u32>>> = requests
            .par_iter()
            .map(|r| {
                r.params.validate()?;
                let ids = self.prompt_tokens(&r.prompt)?;
                if ids.len() >= context {
                    return Err(Error::Request(format!(
                        "prompt of {} tokens does not fit the context window of {context} tokens",
                        ids.len()
                    )));
                }
                Ok(ids)
            })
            .collect();
        let mut results: Vec<Option<Result<Completion>>> = Vec::with_capacity(requests.len());
        let mut active = Vec::new();
        for (index, (request, prompt)) in requests.iter().zip(prepared).enumerate() {
            match prompt {
                Ok(prompt) => {
                    results.push(None);
                    active.push(Sequence::new(index, request, prompt, &self.model));
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if let Err(e) = self.run(&mut active, submitted) {
            for seq in &active {
                results[seq.index] = Some(Err(Error::Request(e.to_string())));
            }
            active.clear();
        }
        for seq in active {
            let index = seq.index;
            results[index] = Some(Ok(seq.finish(&self.tokenizer)));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Request("request was not run".into()))))
            .collect()
    }

    /// Prefills then decodes every sequence until all are finished.
    fn run(&self, seqs: &mut [Sequence], submitted: Instant) -> Result<()> {
        // Prefill, chunked so that one step never holds more than the token budget.
        loop {
            let mut budget = PREFILL_CHUNK_TOKENS;
            let mut picked = Vec::new();
            for (i, seq) in seqs.iter().enumerate() {
                let remaining = seq.prompt.len() - seq.cache.len();
                if remaining == 0 || budget == 0 {
                    continue;
                }
                let take = remaining.min(budget);
                budget -= take;
                picked.push((i, take));
            }
            if picked.is_empty() {
                break;
            }
            let started = Instant::now();
            let logits = {
                let mut steps = Vec::with_capacity(picked.len());
                let mut picked_iter = picked.iter().peekable();
                for (i, seq) in seqs.iter_mut().enumerate() {
                    let Some(&&(_, take)) = picked_iter.peek().filter(|(p, _)| *p == i) else {
                        continue;
                    };
                    picked_iter.next();
                    let done = seq.cache.len();
                    if done == 0 {
                        seq.timings.queue_s = submitted.elapsed().as_secs_f64();
                    }
                    let last = done + take == seq.prompt.len();
                    steps.push(SeqStep {
                        tokens: &seq.prompt[done..done + take],
                        cache: &mut seq.cache,
                        logits: if last {
                            LogitsWanted::Last
                        } else {
                            LogitsWanted::None
                        },
                    });
                }
                self.model.forward(&mut steps)?
            };
            let elapsed = started.elapsed().as_secs_f64();
            for (&(i, _), logits) in picked.iter().zip(logits) {
                let seq = &mut seqs[i];
                seq.timings.prefill_s += elapsed;
                if seq.cache.len() == seq.prompt.len() {
                    let row = logits.squeeze(0)?.to_vec1::<f32>()?;
                    seq.accept(&row, &self.tokenizer, self.config().context_length);
                }
            }
        }
        // Decode: one token for every unfinished sequence per step.
        loop {
            let started = Instant::now();
            let live: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].finish.is_none()).collect();
            if live.is_empty() {
                return Ok(());
            }
            let logits = {
                let mut steps: Vec<SeqStep> = seqs
                    .iter_mut()
                    .filter(|s| s.finish.is_none())
                    .map(|s| SeqStep {
                        tokens: std::slice::from_ref(s.generated.last().unwrap_or(&0)),
                        cache: &mut s.cache,
                        logits: LogitsWanted::Last,
                    })
                    .collect();
                self.model.forward(&mut steps)?
            };
            let rows: Vec<Vec<f32>> = logits
                .iter()
                .map(|l| Ok(l.squeeze(0)?.to_vec1::<f32>()?))
                .collect::<Result<_>>()?;
            let elapsed = started.elapsed().as_secs_f64();
            let context = self.config().context_length;
            let tokenizer = &self.tokenizer;
            let mut live_seqs: Vec<&mut Sequence> = seqs.iter_mut().filter(|s| s.finish.is_none()).collect();
            live_seqs
                .par_iter_mut()
                .zip(rows.par_iter())
                .for_each(|(seq, row)| {
                    seq.timings.decode_s += elapsed;
                    seq.accept(row, tokenizer, context);
                });
        }
    }
}

/// One request in flight.
struct Sequence {
    index: usize,
    prompt: Vec<u32>,
    cache: KvCache,
    sampler: Sampler,
    /// Stop strings; `None` when the request has none (no text is decoded per step).
    stop: Option<StopMatcher>,
    max_new_tokens: usize,
    generated: Vec<u32>,
    /// Text of `generated` cut at a stop string, once found.
    stop_text: Option<String>,
    finish: Option<FinishReason>,
    timings: Timings,
}

impl Sequence {
    fn new(index: usize, request: &GenerationRequest, prompt: Vec<u32>, model: &Model) -> Self {
        Self {
            index,
            prompt,
            cache: model.new_cache(),
            sampler: Sampler::new(&request.params),
            stop: (!request.params.stop.is_empty()).then(|| StopMatcher::new(&request.params.stop)),
            max_new_tokens: request.params.max_new_tokens,
            generated: Vec::new(),
            stop_text: None,
            finish: None,
            timings: Timings::default(),
        }
    }

    /// Samples the next token from `logits` and updates the stop state.
    fn accept(&mut self, logits: &[f32], tokenizer: &Tokenizer, context: usize) {
        let token = self.sampler.sample(logits);
        if tokenizer.stop_ids().contains(&token) {
            self.finish = Some(FinishReason::Eos);
            return;
        }
        self.generated.push(token);
        if let Some(stop) = &self.stop {
            if let Ok(text) = tokenizer.decode(&self.generated) {
                if let Some(at) = stop.find(&text) {
                    self.stop_text = Some(text[..at].to_string());
                    self.finish = Some(FinishReason::StopString);
                    return;
                }
            }
        }
        if self.generated.len() >= self.max_new_tokens {
            self.finish = Some(FinishReason::Length);
        } else if self.prompt.len() + self.generated.len() >= context {
            self.finish = Some(FinishReason::ContextFull);
        }
    }

    fn finish(self, tokenizer: &Tokenizer) -> Completion {
        let text = match self.stop_text {
            Some(text) => text,
            None => tokenizer.decode(&self.generated).unwrap_or_default(),
        };
        Completion {
            text,
            usage: Usage {
                prompt_tokens: self.prompt.len(),
                cached_prompt_tokens: 0,
                completion_tokens: self.generated.len(),
            },
            token_ids: self.generated,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            timings: self.timings,
        }
    }
}
