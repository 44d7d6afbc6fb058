//! Continuous batching: requests join and leave the running batch between forward steps.
//!
//! Each [`Scheduler::step`] admits waiting requests while the key/value store can reserve
//! room for them (prompt plus `max_new_tokens`, so an admitted sequence never runs out of
//! blocks and never has to be preempted), attaching the longest cached prefix of each
//! prompt. It then runs one forward step holding one new token of every decoding sequence
//! and prompt chunks of the prefilling ones up to a token budget, samples every sequence
//! that produced logits (in parallel), and retires finished sequences, whose blocks return
//! to the pool with their full blocks still indexed for reuse.
//!
//! A request may carry a cancel flag and a text sink ([`Pending::with_cancel`],
//! [`Pending::with_text_sink`]): a cancelled request leaves at the next step with its
//! blocks freed, and a sink receives the generated text as it settles, never any text at
//! or past a stop string (see [`streamable_len`]), so that a server can stream it.
//!
//! A request whose prompt continues into blocks that another running sequence is about to
//! compute waits one step instead of computing them twice, so requests of one batch that
//! share a system prompt compute it once.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::engine::generate::{Completion, FinishReason, GenerationRequest, Timings, Usage};
use crate::engine::kv::{prefix_hashes, KvStore, PrefixHash, SeqKv};
use crate::engine::model::{LogitsWanted, Model, SeqStep};
use crate::engine::sampling::{Sampler, StopMatcher};
use crate::engine::tokenizer::Tokenizer;
use crate::error::{Error, Result};

/// Prompt tokens processed per forward step, summed over prefilling sequences.
pub const PREFILL_CHUNK_TOKENS: usize = 512;

/// Most sequences in the running batch at once, unless [`Scheduler::with_max_batch`] says
/// fewer.
pub const MAX_RUNNING: usize = 256;

/// Where a finished request's result goes: the submitter's channel and its index there.
pub type Reply = (Sender<(usize, Result<Completion>)>, usize);

/// Receives a sequence's generated text piece by piece, in order; the pieces joined are
/// the completion's text. Returning `false` (the reader has gone) cancels the sequence.
/// Called from the thread running the step, so it must not block.
pub type TextSink = Box<dyn FnMut(&str) -> bool + Send>;

/// The answer of a request that was cancelled before it finished.
pub const CANCELLED: &str = "the request was cancelled";

/// A tokenized request waiting for admission.
pub struct Pending {
    pub reply: Reply,
    pub prompt: Vec<u32>,
    pub request: GenerationRequest,
    pub submitted: Instant,
    /// Chained hashes of the prompt's reusable blocks (all full blocks but the last token's).
    hashes: Vec<PrefixHash>,
    cancel: Option<Arc<AtomicBool>>,
    sink: Option<TextSink>,
}

impl Pending {
    pub fn new(
        reply: Reply,
        prompt: Vec<u32>,
        request: GenerationRequest,
        block_size: usize,
    ) -> Self {
        let reusable = prompt.len().saturating_sub(1) / block_size * block_size;
        let hashes = prefix_hashes(&prompt[..reusable], block_size);
        Self {
            reply,
            prompt,
            request,
            submitted: Instant::now(),
            hashes,
            cancel: None,
            sink: None,
        }
    }

    /// Cancels the request once `flag` is set: it leaves the queue or the running batch at
    /// the next step, its blocks return to the pool, and its reply is an error
    /// ([`CANCELLED`]).
    pub fn with_cancel(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// Streams the generated text into `sink` as it settles.
    pub fn with_text_sink(mut self, sink: TextSink) -> Self {
        self.sink = Some(sink);
        self
    }

    fn cancelled(&self) -> bool {
        is_set(self.cancel.as_ref())
    }
}

fn is_set(flag: Option<&Arc<AtomicBool>>) -> bool {
    flag.is_some_and(|f| f.load(Ordering::Relaxed))
}

/// How many leading bytes of `text`, all the text generated so far, can be streamed
/// without ever taking back a byte: not a trailing replacement character (a UTF-8 sequence
/// the next token may complete), and then not a trailing part that could still grow into
/// a stop string. Always a `char` boundary.
pub fn streamable_len(text: &str, stop: Option<&StopMatcher>) -> usize {
    let settled = text.trim_end_matches(char::REPLACEMENT_CHARACTER);
    settled.len() - stop.map_or(0, |s| s.holdback(settled))
}

/// A request in the running batch.
struct Running {
    reply: Reply,
    prompt: Vec<u32>,
    hashes: Vec<PrefixHash>,
    kv: SeqKv,
    /// Blocks the sequence may still need (prompt plus `max_new_tokens`, within context).
    total_blocks: usize,
    cached_tokens: usize,
    sampler: Sampler,
    stop: Option<StopMatcher>,
    max_new_tokens: usize,
    ignore_eos: bool,
    generated: Vec<u32>,
    stop_text: Option<String>,
    finish: Option<FinishReason>,
    submitted: Instant,
    started: bool,
    /// Already answered with an error.
    failed: bool,
    /// To be answered with [`CANCELLED`].
    cancelled: bool,
    cancel: Option<Arc<AtomicBool>>,
    sink: Option<TextSink>,
    /// Bytes of text given to `sink` so far.
    streamed: usize,
    timings: Timings,
}

impl Running {
    fn prefilling(&self) -> bool {
        self.kv.len() < self.prompt.len()
    }

    /// Blocks reserved but not yet taken.
    fn reserved(&self) -> usize {
        self.total_blocks.saturating_sub(self.kv.blocks().len())
    }

    /// Samples the next token from `logits` and updates the finish state.
    fn accept(&mut self, logits: &[f32], tokenizer: &Tokenizer, context: usize) {
        let token = self.sampler.sample(logits);
        if !self.ignore_eos && tokenizer.stop_ids().contains(&token) {
            self.finish = Some(FinishReason::Eos);
            return;
        }
        self.generated.push(token);
        let text = if self.stop.is_some() || self.sink.is_some() {
            tokenizer.decode(&self.generated).ok()
        } else {
            None
        };
        if let (Some(stop), Some(text)) = (&self.stop, &text) {
            if let Some(at) = stop.find(text) {
                self.stop_text = Some(text[..at].to_string());
                self.finish = Some(FinishReason::StopString);
                return;
            }
        }
        if self.generated.len() >= self.max_new_tokens {
            self.finish = Some(FinishReason::Length);
        } else if self.prompt.len() + self.generated.len() >= context {
            self.finish = Some(FinishReason::ContextFull);
        }
        // A finished sequence streams the rest with its completion.
        if let (None, Some(text)) = (self.finish, &text) {
            self.stream(text, streamable_len(text, self.stop.as_ref()));
        }
    }

    /// Gives `text[streamed..upto]` to the sink, if any; a sink whose reader has gone
    /// cancels the sequence.
    fn stream(&mut self, text: &str, upto: usize) {
        let Some(sink) = &mut self.sink else { return };
        // `text` always extends what was streamed (decoding is stable under appending
        // tokens once trailing replacement characters are held back).
        let Some(piece) = text.get(self.streamed..upto).filter(|p| !p.is_empty()) else {
            return;
        };
        self.streamed = upto;
        if !sink(piece) {
            self.cancelled = true;
            self.finish = Some(FinishReason::Length);
        }
    }

    fn completion(&mut self, tokenizer: &Tokenizer) -> Completion {
        let text = match self.stop_text.take() {
            Some(text) => text,
            None => tokenizer.decode(&self.generated).unwrap_or_default(),
        };
        self.stream(&text, text.len());
        Completion {
            text,
            usage: Usage {
                prompt_tokens: self.prompt.len(),
                cached_prompt_tokens: self.cached_tokens,
                completion_tokens: self.generated.len(),
            },
            token_ids: std::mem::take(&mut self.generated),
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            timings: self.timings,
        }
    }
}

/// The waiting queue, the running batch and the key/value store they share.
pub struct Scheduler {
    pub store: KvStore,
    waiting: VecDeque<Pending>,
    running: Vec<Running>,
    /// The most sequences in the running batch.
    max_batch: usize,
    stats: StepStats,
}

/// What the forward steps of a scheduler did, summed since it was made: how full the
/// engine was kept. The mean decode batch (`decode_rows / decode_steps`) is what batching
/// can gain at most on decode; `busy_s` against a run's wall time is how much of it the
/// engine spent computing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Forward steps.
    pub steps: u64,
    /// Steps in which at least one sequence decoded a token.
    pub decode_steps: u64,
    /// Sequences that decoded a token, summed over steps.
    pub decode_rows: u64,
    /// Prompt tokens computed (those answered from the prefix cache are not).
    pub prefill_tokens: u64,
    /// Seconds inside forward steps.
    pub busy_s: f64,
}

impl StepStats {
    /// What happened between `earlier` and `self` (a later snapshot of the same engine).
    pub fn since(&self, earlier: &StepStats) -> StepStats {
        StepStats {
            steps: self.steps.saturating_sub(earlier.steps),
            decode_steps: self.decode_steps.saturating_sub(earlier.decode_steps),
            decode_rows: self.decode_rows.saturating_sub(earlier.decode_rows),
            prefill_tokens: self.prefill_tokens.saturating_sub(earlier.prefill_tokens),
            busy_s: (self.busy_s - earlier.busy_s).max(0.0),
        }
    }

    /// Sequences decoding per decode step, on average (0 without any).
    pub fn mean_decode_batch(&self) -> f64 {
        if self.decode_steps == 0 {
            0.0
        } else {
            self.decode_rows as f64 / self.decode_steps as f64
        }
    }
}

impl Scheduler {
    pub fn new(store: KvStore) -> Self {
        Self {
            store,
            waiting: VecDeque::new(),
            running: Vec::new(),
            max_batch: MAX_RUNNING,
            stats: StepStats::default(),
        }
    }

    /// Limits the running batch to `max_batch` sequences (at least one); `1` runs one
    /// sequence per forward step.
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// The most sequences in the running batch.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// What the forward steps did so far.
    pub fn stats(&self) -> StepStats {
        self.stats
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Blocks a request needs in the worst case.
    fn blocks_needed(&self, prompt: usize, max_new: usize, context: usize) -> usize {
        self.store
            .blocks_for(prompt.saturating_add(max_new).min(context))
    }

    /// Queues a request, or answers at once with an error if it could never fit the store.
    pub fn submit(&mut self, pending: Pending, context: usize) {
        let needed = self.blocks_needed(
            pending.prompt.len(),
            pending.request.params.max_new_tokens,
            context,
        );
        let capacity = self.store.pool().n_blocks();
        if needed > capacity {
            let bs = self.store.block_size();
            let (tx, index) = &pending.reply;
            let _ = tx.send((
                *index,
                Err(Error::Request(format!(
                    "the request needs up to {} positions ({} prompt + {} new) but the whole \
                     key/value cache holds {} (raise --kv-budget or lower max_new_tokens)",
                    needed * bs,
                    pending.prompt.len(),
                    pending.request.params.max_new_tokens,
                    capacity * bs
                ))),
            ));
            return;
        }
        self.waiting.push_back(pending);
    }

    /// Numbers of waiting and running sequences.
    pub fn load(&self) -> (usize, usize) {
        (self.waiting.len(), self.running.len())
    }

    /// Answers every cancelled request, waiting or running, and frees its blocks.
    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].cancelled() {
                if let Some(w) = self.waiting.remove(i) {
                    let _ = w
                        .reply
                        .0
                        .send((w.reply.1, Err(Error::Request(CANCELLED.into()))));
                }
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            if is_set(self.running[i].cancel.as_ref()) {
                let mut r = self.running.remove(i);
                self.store.release(&mut r.kv);
                let _ = r
                    .reply
                    .0
                    .send((r.reply.1, Err(Error::Request(CANCELLED.into()))));
            } else {
                i += 1;
            }
        }
    }

    /// Moves waiting requests into the running batch while room can be reserved for them.
    fn admit(&mut self, context: usize) {
        let bs = self.store.block_size();
        // Prompt blocks that running sequences have not computed yet.
        let mut in_flight: HashSet<PrefixHash> = self
            .running
            .iter()
            .filter(|r| r.prefilling())
            .flat_map(|r| r.hashes.iter().skip(r.kv.len() / bs).copied())
            .collect();
        let mut i = 0;
        while i < self.waiting.len() && self.running.len() < self.max_batch {
            let w = &self.waiting[i];
            let cached = self.store.cached_prefix_blocks(&w.hashes);
            if self.store.prefix_reuse()
                && w.hashes.get(cached).is_some_and(|h| in_flight.contains(h))
            {
                // Its next block is being computed: take it from the cache next step.
                i += 1;
                continue;
            }
            let total_blocks =
                self.blocks_needed(w.prompt.len(), w.request.params.max_new_tokens, context);
            let mut kv = SeqKv::new();
            let reused = self.store.attach_prefix(&mut kv, &w.prompt);
            let reserved: usize = self.running.iter().map(Running::reserved).sum();
            let free = self.store.pool().available().saturating_sub(reserved);
            if free < total_blocks - kv.blocks().len() {
                // Wait for running sequences to finish; keep arrival order.
                self.store.release(&mut kv);
                break;
            }
            let Some(w) = self.waiting.remove(i) else {
                break;
            };
            // Requests admitted after this one wait for the blocks it will compute.
            in_flight.extend(w.hashes.iter().skip(reused / bs).copied());
            let params = &w.request.params;
            self.running.push(Running {
                reply: w.reply,
                hashes: w.hashes,
                kv,
                total_blocks,
                cached_tokens: reused,
                sampler: Sampler::new(params),
                stop: (!params.stop.is_empty()).then(|| StopMatcher::new(&params.stop)),
                max_new_tokens: params.max_new_tokens,
                ignore_eos: params.ignore_eos,
                generated: Vec::new(),
                stop_text: None,
                finish: None,
                submitted: w.submitted,
                started: false,
                failed: false,
                cancelled: false,
                cancel: w.cancel,
                sink: w.sink,
                streamed: 0,
                timings: Timings::default(),
                prompt: w.prompt,
            });
        }
    }

    /// Runs one scheduling round: admit, one forward step, sample, retire. Errors of the
    /// step fail the sequences it held, not the scheduler.
    pub fn step(&mut self, model: &Model, tokenizer: &Tokenizer) {
        let context = model.config().context_length;
        self.drop_cancelled();
        self.admit(context);
        if self.running.is_empty() {
            return;
        }
        // Which sequences take part, with how many tokens.
        let mut budget = PREFILL_CHUNK_TOKENS;
        let mut plan: Vec<(usize, usize)> = Vec::new();
        for (i, r) in self.running.iter().enumerate() {
            if r.prefilling() {
                if budget > 0 {
                    let take = (r.prompt.len() - r.kv.len()).min(budget);
                    budget -= take;
                    plan.push((i, take));
                }
            } else {
                plan.push((i, 1));
            }
        }
        // Counted before the step moves the sequences on.
        let (mut decoding, mut prefilled) = (0u64, 0usize);
        for &(i, take) in &plan {
            if self.running[i].prefilling() {
                prefilled += take;
            } else {
                decoding += 1;
            }
        }
        let started = Instant::now();
        let outcome = {
            let mut steps = Vec::with_capacity(plan.len());
            let mut wanted = plan.iter().peekable();
            for (i, r) in self.running.iter_mut().enumerate() {
                let Some(&&(_, take)) = wanted.peek().filter(|(p, _)| *p == i) else {
                    continue;
                };
                wanted.next();
                if !r.started {
                    r.started = true;
                    r.timings.queue_s = r.submitted.elapsed().as_secs_f64();
                }
                let done = r.kv.len();
                let tokens: &[u32] = if done < r.prompt.len() {
                    &r.prompt[done..done + take]
                } else {
                    std::slice::from_ref(r.generated.last().unwrap_or(&0))
                };
                let last = done + take >= r.prompt.len();
                steps.push(SeqStep {
                    tokens,
                    seq: &mut r.kv,
                    logits: if last {
                        LogitsWanted::Last
                    } else {
                        LogitsWanted::None
                    },
                });
            }
            model.forward(&mut self.store, &mut steps)
        };
        let elapsed = started.elapsed().as_secs_f64();
        self.stats.steps += 1;
        self.stats.decode_steps += u64::from(decoding > 0);
        self.stats.decode_rows += decoding;
        self.stats.prefill_tokens += prefilled as u64;
        self.stats.busy_s += elapsed;
        match outcome.and_then(|logits| {
            logits
                .iter()
                .map(|l| {
                    Ok(match l.dim(0)? {
                        0 => None,
                        _ => Some(l.squeeze(0)?.to_vec1::<f32>()?),
                    })
                })
                .collect::<Result<Vec<_>>>()
        }) {
            Ok(rows) => {
                let mut sampled: Vec<(&mut Running, Vec<f32>)> = Vec::new();
                let mut rows = rows.into_iter();
                let mut wanted = plan.iter().peekable();
                for (i, r) in self.running.iter_mut().enumerate() {
                    if wanted.peek().is_none_or(|(p, _)| *p != i) {
                        continue;
                    }
                    wanted.next();
                    let decoding = !r.generated.is_empty();
                    if decoding {
                        r.timings.decode_s += elapsed;
                    } else {
                        r.timings.prefill_s += elapsed;
                    }
                    if let Some(Some(row)) = rows.next() {
                        sampled.push((r, row));
                    }
                }
                sampled.par_iter_mut().for_each(|(r, row)| {
                    r.accept(row, tokenizer, context);
                });
            }
            Err(e) => {
                let reason = e.to_string();
                for &(i, _) in &plan {
                    let r = &mut self.running[i];
                    let _ = r
                        .reply
                        .0
                        .send((r.reply.1, Err(Error::Request(reason.clone()))));
                    r.finish = Some(FinishReason::Length);
                    r.failed = true;
                }
            }
        }
        self.retire(tokenizer);
    }

    /// Answers and removes every finished sequence, returning its blocks.
    fn retire(&mut self, tokenizer: &Tokenizer) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].finish.is_none() {
                i += 1;
                continue;
            }
            let mut r = self.running.remove(i);
            self.store.release(&mut r.kv);
            if r.failed {
                // Answered when it failed.
            } else if r.cancelled {
                let _ = r
                    .reply
                    .0
                    .send((r.reply.1, Err(Error::Request(CANCELLED.into()))));
            } else {
                let completion = r.completion(tokenizer);
                let _ = r.reply.0.send((r.reply.1, Ok(completion)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::engine::generate::Prompt;
    use crate::engine::kv::{KvDtype, KvLayout};
    use crate::engine::sampling::SamplingParams;

    const CONTEXT: usize = 1024;

    fn store(n_blocks: usize) -> KvStore {
        let layout = KvLayout {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: 4,
            block_size: 16,
            dtype: KvDtype::default(),
        };
        KvStore::with_blocks(layout, n_blocks)
    }

    fn pending(tx: &Sender<(usize, Result<Completion>)>, index: usize) -> Pending {
        // Distinct first tokens: nothing is shared between the requests.
        let prompt: Vec<u32> = (0..20).map(|t| t + 100 * index as u32).collect();
        let request = GenerationRequest {
            prompt: Prompt::Tokens {
                ids: prompt.clone(),
            },
            params: SamplingParams {
                max_new_tokens: 8,
                ..SamplingParams::default()
            },
        };
        Pending::new((tx.clone(), index), prompt, request, 16)
    }

    #[test]
    fn step_counters_subtract_and_average() {
        let later = StepStats {
            steps: 10,
            decode_steps: 8,
            decode_rows: 30,
            prefill_tokens: 500,
            busy_s: 2.5,
        };
        let earlier = StepStats {
            steps: 4,
            decode_steps: 2,
            decode_rows: 6,
            prefill_tokens: 100,
            busy_s: 0.5,
        };
        let d = later.since(&earlier);
        assert_eq!((d.steps, d.decode_steps, d.decode_rows), (6, 6, 24));
        assert_eq!((d.prefill_tokens, d.busy_s), (400, 2.0));
        assert_eq!(d.mean_decode_batch(), 4.0);
        assert_eq!(StepStats::default().mean_decode_batch(), 0.0);
    }

    #[test]
    fn max_batch_limits_the_running_batch() {
        let (tx, _rx) = mpsc::channel();
        for (max_batch, want) in [(1, 1), (2, 2), (MAX_RUNNING, 4)] {
            let mut scheduler = Scheduler::new(store(64)).with_max_batch(max_batch);
            for i in 0..4 {
                scheduler.submit(pending(&tx, i), CONTEXT);
            }
            scheduler.admit(CONTEXT);
            assert_eq!(scheduler.running.len(), want, "max_batch {max_batch}");
            assert_eq!(scheduler.waiting.len(), 4 - want);
        }
        assert_eq!(Scheduler::new(store(4)).with_max_batch(0).max_batch(), 1);
        assert_eq!(Scheduler::new(store(4)).max_batch(), MAX_RUNNING);
    }

    #[test]
    fn a_cancelled_request_leaves_and_frees_its_blocks() {
        let (tx, rx) = mpsc::channel();
        let mut scheduler = Scheduler::new(store(64)).with_max_batch(2);
        let flags: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::default()).collect();
        for (i, flag) in flags.iter().enumerate() {
            scheduler.submit(pending(&tx, i).with_cancel(flag.clone()), CONTEXT);
        }
        scheduler.admit(CONTEXT);
        assert_eq!(scheduler.load(), (1, 2));
        // The running ones hold blocks, as after a forward step.
        for r in &mut scheduler.running {
            scheduler
                .store
                .ensure_capacity(&mut r.kv, 20)
                .expect("room");
        }
        assert_eq!(scheduler.store.stats().used_blocks, 4);
        // Nothing is cancelled yet: nothing leaves.
        scheduler.drop_cancelled();
        assert_eq!(scheduler.load(), (1, 2));
        assert!(rx.try_recv().is_err());
        // One running and the waiting one are cancelled.
        flags[0].store(true, Ordering::Relaxed);
        flags[2].store(true, Ordering::Relaxed);
        scheduler.drop_cancelled();
        assert_eq!(scheduler.load(), (0, 1));
        assert_eq!(scheduler.store.stats().used_blocks, 2);
        let mut answered: Vec<(usize, String)> = rx
            .try_iter()
            .map(|(i, r)| (i, r.expect_err("cancelled").to_string()))
            .collect();
        answered.sort();
        assert_eq!(answered.len(), 2);
        assert_eq!(answered[0].0, 0);
        assert_eq!(answered[1].0, 2);
        assert!(answered.iter().all(|(_, e)| e.contains(CANCELLED)));
        // The other one is still running and answers nothing yet.
        assert_eq!(scheduler.running[0].reply.1, 1);
        flags[1].store(true, Ordering::Relaxed);
        scheduler.drop_cancelled();
        assert_eq!(scheduler.load(), (0, 0));
        assert_eq!(scheduler.store.stats().used_blocks, 0);
        assert_eq!(rx.try_iter().count(), 1);
        assert!(!scheduler.has_work());
    }

    #[test]
    fn streaming_holds_back_what_a_stop_string_may_still_take() {
        let stop = StopMatcher::new(&["</s>".to_string(), "\n\nQ:".to_string()]);
        let stop = Some(&stop);
        assert_eq!(streamable_len("hello", stop), 5);
        assert_eq!(streamable_len("hello <", stop), 6);
        assert_eq!(streamable_len("hello </", stop), 6);
        assert_eq!(streamable_len("a\n\n", stop), 1);
        assert_eq!(streamable_len("a\n\nQ", stop), 1);
        assert_eq!(streamable_len("a\n\nQuite", stop), "a\n\nQuite".len());
        assert_eq!(streamable_len("anything", None), 8);
        // A trailing incomplete UTF-8 sequence waits for its next bytes, and what it
        // hides cannot be streamed ahead of a stop string either.
        let partial = format!("ok <{}", char::REPLACEMENT_CHARACTER);
        assert_eq!(streamable_len(&partial, None), 4);
        assert_eq!(streamable_len(&partial, stop), 3);
    }

    /// Simulates streaming a text token by token through the hold-back rule: the pieces
    /// joined are a prefix of the final text, never include a stop string, and the
    /// final flush completes them exactly.
    #[test]
    fn streamed_pieces_never_pass_a_stop_string() {
        let stops = ["END".to_string(), "ab".to_string()];
        let matcher = StopMatcher::new(&stops);
        for text in [
            "xxEN Dyy ENDzz",
            "a a b aab",
            "no stop here",
            "EEEND",
            "aaab",
        ] {
            let mut streamed = 0;
            let mut out = String::new();
            let mut final_text = text.to_string();
            for end in (1..=text.len()).filter(|&e| text.is_char_boundary(e)) {
                let so_far = &text[..end];
                if let Some(at) = matcher.find(so_far) {
                    final_text = so_far[..at].to_string();
                    break;
                }
                let upto = streamable_len(so_far, Some(&matcher));
                if upto > streamed {
                    out.push_str(&so_far[streamed..upto]);
                    streamed = upto;
                }
            }
            assert!(final_text.starts_with(&out), "{text:?}: {out:?}");
            out.push_str(&final_text[streamed..]);
            assert_eq!(out, final_text, "{text:?}");
            assert!(!out.contains("END") && !out.contains("ab"), "{text:?}");
        }
    }
}
