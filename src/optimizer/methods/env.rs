//! What every stage of a run shares: the agent, the optimizer model, the call layer, the
//! training set, the guard, counters of small-model events, and the step log for charts.
//!
//! [`Env::evaluate`] runs many (components, examples) jobs as one agent batch;
//! [`Env::ask_components`] sends many optimizer conversations as one batch and re-asks the
//! unparsable ones (all together) a bounded number of times with the reason.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use crate::engine::chat::ChatMessage;
use crate::engine::sampling::SamplingParams;
use crate::llm::FinishReason;
use crate::llm::{ChatRequest, Llm};
use crate::optimizer::data::dataset::Example;
use crate::optimizer::data::task::OptimizerSpec;
use crate::optimizer::exec::agent::{joined_text, Agent, Components, Outcome};
use crate::optimizer::exec::calls::{Calls, Ctx, Role};
use crate::optimizer::methods::guard::{Guard, Rejection};
use crate::optimizer::methods::operators;
use crate::optimizer::methods::parse::parse_components;
use crate::optimizer::methods::prompts;

/// Counts of the events small optimizers cause.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Re-asks sent after an unparsable reply.
    pub reasks: usize,
    /// Replies still unparsable after every re-ask (the current component was kept).
    pub parse_failures: usize,
    /// Optimizer calls that returned an engine error.
    pub call_errors: usize,
    /// Candidates rejected for containing a training answer.
    pub leak_rejections: usize,
    /// Candidates rejected for copying a training example.
    pub copy_rejections: usize,
    /// Candidates identical to the current component (or to another candidate).
    pub unchanged_candidates: usize,
    /// Candidates evaluated.
    pub candidates_evaluated: usize,
    /// Candidates accepted.
    pub accepted: usize,
    /// Iterations in which no candidate was accepted (the current component was kept).
    pub rolled_back: usize,
    /// Agent executions that failed (recorded as failures).
    pub agent_failures: usize,
    /// Optimizer replies cut off at the token limit after every re-ask.
    #[serde(default)]
    pub cut_off: usize,
    /// Agent replies stopped at the agent's token limit, over every evaluation of the
    /// method (a reply cut off before its answer scores nothing).
    #[serde(default)]
    pub agent_cut_off: usize,
    /// Candidates rejected for naming content of the training inputs.
    #[serde(default)]
    pub content_rejections: usize,
    /// Candidates rejected as degenerate (repetition loops, far too long).
    #[serde(default)]
    pub degenerate_rejections: usize,
    /// Agent evaluations successive halving saved (candidates stopped before all their
    /// examples).
    #[serde(default)]
    pub halving_saved: usize,
    /// Candidates proposed, evaluated and accepted, by the operator that made them.
    #[serde(default)]
    pub by_operator: std::collections::BTreeMap<String, OperatorCount>,
}

impl Counters {
    /// The counts of operator `op`'s candidates.
    pub fn operator(&mut self, op: &str) -> &mut OperatorCount {
        self.by_operator.entry(op.to_string()).or_default()
    }
}

/// What one operator's candidates became.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OperatorCount {
    pub proposed: usize,
    pub evaluated: usize,
    pub accepted: usize,
}

/// One point of the score-per-step chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepPoint {
    pub method: String,
    pub stage: String,
    /// What was scored (e.g. `subset 2 iteration 1`).
    pub label: String,
    /// Examples scored.
    pub n: usize,
    /// Mean score.
    pub score: f64,
    /// Optimizer + agent tokens spent so far in the run.
    pub tokens: usize,
}

/// Progress reported to the caller (the library never prints).
pub trait Progress: Sync {
    /// A stage began or advanced: `done` of `total` units.
    fn update(&self, stage: &str, done: usize, total: usize, message: &str);

    /// A method has a new best component (`note` says where it came from).
    fn best(&self, _method: &str, _components: &Components, _note: &str) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _: &str, _: usize, _: usize, _: &str) {}
}

/// The shared context of one method's run.
pub struct Env<'a> {
    pub agent: &'a Agent,
    pub optimizer: &'a dyn Llm,
    pub calls: &'a Calls,
    pub train: &'a [Example],
    pub guard: &'a Guard,
    pub spec: &'a OptimizerSpec,
    /// The components the optimizer may change.
    pub names: Vec<String>,
    pub seed: u64,
    pub method: String,
    pub progress: &'a dyn Progress,
    pub counters: RefCell<Counters>,
    pub steps: RefCell<Vec<StepPoint>>,
    /// Worked-example blocks and answer-format sections this method put into components
    /// (exempt from the guard).
    pub exempt: RefCell<Vec<String>>,
    /// Every component this method accepted or merged, for the final selection.
    pub pool: RefCell<Vec<crate::optimizer::methods::select::PoolEntry>>,
}

impl Env<'_> {
    /// A call context for `stage` of this method.
    pub fn ctx(&self, stage: &str) -> Ctx {
        Ctx::new(&self.method, stage)
    }

    /// Evaluates each (components, example indices into `examples`) job; one agent batch.
    pub fn evaluate(
        &self,
        stage: &str,
        examples: &[Example],
        jobs: &[(&Components, &[usize])],
    ) -> Vec<Vec<Outcome>> {
        let flat: Vec<(&Components, &Example)> = jobs
            .iter()
            .flat_map(|(c, idx)| {
                idx.iter()
                    .filter_map(move |&i| examples.get(i).map(|e| (*c, e)))
            })
            .collect();
        let outcomes = self.agent.evaluate(self.calls, &self.ctx(stage), &flat);
        let mut counters = self.counters.borrow_mut();
        counters.agent_failures += outcomes.iter().filter(|o| o.error.is_some()).count();
        counters.agent_cut_off += outcomes.iter().filter(|o| o.cut_off).count();
        drop(counters);
        let mut it = outcomes.into_iter();
        jobs.iter()
            .map(|(_, idx)| it.by_ref().take(idx.len()).collect())
            .collect()
    }

    /// The guard's verdict on a candidate (the run's own worked examples exempt), counted.
    pub fn screen(&self, c: &Components) -> Option<Rejection> {
        let text = joined_text(c, &self.names);
        let r = self.guard.check_with_exempt(&text, &self.exempt.borrow())?;
        let mut counters = self.counters.borrow_mut();
        match r.status() {
            "leak" => counters.leak_rejections += 1,
            "copy" => counters.copy_rejections += 1,
            "content" => counters.content_rejections += 1,
            _ => counters.degenerate_rejections += 1,
        }
        Some(r)
    }

    /// Records a scored step.
    pub fn step(&self, stage: &str, label: &str, outcomes: &[Outcome]) {
        self.point(stage, label, outcomes.len(), mean_score(outcomes));
    }

    /// Records a score of `n` examples.
    pub fn point(&self, stage: &str, label: &str, n: usize, score: f64) {
        // This method's tokens as if it ran alone, so that its chart does not depend on a
        // method running beside it.
        let tokens = self.calls.method_tokens(Role::Agent, &self.method)
            + self.calls.method_tokens(Role::Optimizer, &self.method);
        self.steps.borrow_mut().push(StepPoint {
            method: self.method.clone(),
            stage: stage.into(),
            label: label.into(),
            n,
            score,
            tokens,
        });
    }

    /// Sends every proposal's conversation (one batch) and parses what each expects out of
    /// its reply, re-asking unusable ones (all together) up to `max_reasks` times with the
    /// reason. A reply cut off at the token limit before its closing tag is unusable and not
    /// asked again.
    /// `None` where nothing usable came back.
    pub fn ask(&self, stage: &str, proposals: Vec<Ask<'_>>) -> Vec<Option<Components>> {
        let ctx = self.ctx(stage);
        let mut results: Vec<Option<Components>> = vec![None; proposals.len()];
        let mut pending: Vec<(usize, Vec<ChatMessage>)> = proposals
            .iter()
            .enumerate()
            .map(|(i, p)| (i, p.messages.clone()))
            .collect();
        for round in 0..=self.spec.max_reasks {
            if pending.is_empty() {
                break;
            }
            let requests: Vec<ChatRequest> = pending
                .iter()
                .map(|(i, m)| {
                    let mut params = proposals[*i].params.clone();
                    params.stop.extend(proposals[*i].expect.stop(&self.names));
                    ChatRequest {
                        messages: m.clone(),
                        params,
                    }
                })
                .collect();
            let replies = self
                .calls
                .complete(self.optimizer, &ctx, Role::Optimizer, &requests);
            let mut next = Vec::new();
            for ((i, messages), reply) in pending.into_iter().zip(replies) {
                let completion = match reply {
                    Ok(c) => c,
                    Err(_) => {
                        self.counters.borrow_mut().call_errors += 1;
                        continue;
                    }
                };
                let p = &proposals[i];
                let mut text = completion.text;
                if let Some(tag) = p.expect.stop(&self.names).first() {
                    restore_closing_tag(&mut text, completion.finish_reason, tag);
                }
                match p.expect.parse(&text, completion.finish_reason, &self.names) {
                    Ok(parsed) => results[i] = Some(parsed),
                    // A reply that ran to the token limit mostly loops; asking again with it
                    // in the conversation costs a long prompt and loops again.
                    Err(reason) if reason == CUT_OFF => self.counters.borrow_mut().cut_off += 1,
                    Err(reason) if round < self.spec.max_reasks => {
                        self.counters.borrow_mut().reasks += 1;
                        next.push((
                            i,
                            prompts::reask(
                                &messages,
                                &text,
                                &reason,
                                &p.expect.format(&self.names),
                            ),
                        ));
                    }
                    Err(_) => self.counters.borrow_mut().parse_failures += 1,
                }
            }
            pending = next;
        }
        results
    }

    /// Sampling parameters for call `label`, with a seed derived from the run seed.
    pub fn params(&self, base: &SamplingParams, label: &str) -> SamplingParams {
        let mut p = base.clone();
        p.seed = crate::optimizer::data::rng::Rng::derived(self.seed, label).next_u64() >> 11;
        p
    }
}

/// Puts back the closing `tag` that ended a reply as a stop string (cut from the text). A
/// server that does not say which stop string ended a reply reports a plain end, so a reply
/// that ended before the token limit inside an opened block (the opening tag, never the
/// closing one) gets it: the parser reads an unclosed last block to the end anyway. A reply
/// without the opening tag is left as it is, for the parser's other readings.
fn restore_closing_tag(text: &mut String, finish: FinishReason, tag: &str) {
    let limit = matches!(finish, FinishReason::Length | FinishReason::ContextFull);
    let lower = text.to_lowercase();
    let open = tag.to_lowercase().replacen("</", "<", 1);
    if !limit && lower.contains(&open) && !lower.contains(&tag.to_lowercase()) {
        text.push_str(tag);
    }
}

/// Why a reply cut off before its closing tag is unusable.
const CUT_OFF: &str = "the reply was cut off at the length limit before the closing tag";

/// What an optimizer conversation is expected to return.
pub enum Expect<'a> {
    /// New component texts in tags; names not returned keep their text in the base.
    Components(&'a Components),
    /// A numbered procedure, appended as a section to component `name` of the base.
    Procedure(&'a Components, String),
}

impl Expect<'_> {
    /// The output format sent again in a re-ask.
    fn format(&self, names: &[String]) -> String {
        match self {
            Expect::Components(_) => prompts::output_format(names),
            Expect::Procedure(..) => prompts::procedure_format(),
        }
    }

    /// The stop string that ends the reply at the closing tag of what it returns: text a
    /// small model writes after its answer (an echo of the prompt, a second version) costs
    /// time on the run's critical path and is never used. Several components have no single
    /// last tag, so their replies run to the end.
    fn stop(&self, names: &[String]) -> Vec<String> {
        match self {
            Expect::Components(_) if names.len() == 1 => vec![format!("</{}>", names[0])],
            Expect::Components(_) => Vec::new(),
            Expect::Procedure(..) => vec!["</procedure>".into()],
        }
    }

    /// Parses `reply`; `Err` carries the reason sent back in a re-ask.
    fn parse(
        &self,
        reply: &str,
        finish: FinishReason,
        names: &[String],
    ) -> Result<Components, String> {
        let cut = matches!(finish, FinishReason::Length | FinishReason::ContextFull);
        let closed = |tag: &str| {
            reply
                .to_lowercase()
                .contains(&format!("</{}>", tag.to_lowercase()))
        };
        match self {
            Expect::Components(base) => {
                if cut && !names.iter().all(|n| closed(n)) {
                    return Err(CUT_OFF.into());
                }
                let parsed = parse_components(reply, names)?;
                let mut full = (*base).clone();
                full.extend(parsed);
                Ok(full)
            }
            Expect::Procedure(base, name) => {
                if cut && !closed("procedure") {
                    return Err(CUT_OFF.into());
                }
                operators::parse_procedure(reply)
                    .map(|p| operators::append_section(base, name, &p))
                    .ok_or_else(|| "I found no numbered procedure of at least two steps".into())
            }
        }
    }
}

/// One optimizer conversation to send, with its sampling parameters and what it returns.
pub struct Ask<'a> {
    pub messages: Vec<ChatMessage>,
    pub params: SamplingParams,
    pub expect: Expect<'a>,
}

/// Mean score (0 for no outcomes).
pub fn mean_score(outcomes: &[Outcome]) -> f64 {
    if outcomes.is_empty() {
        0.0
    } else {
        outcomes.iter().map(|o| o.score).sum::<f64>() / outcomes.len() as f64
    }
}

/// Number of solved outcomes.
pub fn solved(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|o| o.solved()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closing_tag_a_stop_string_cut_is_put_back() {
        let tag = "</p>";
        let restored = |text: &str, finish| {
            let mut t = text.to_string();
            restore_closing_tag(&mut t, finish, tag);
            t
        };
        // Cut by the engine's stop string, or by a server that reports a plain end.
        assert_eq!(
            restored("<p>Do it.", FinishReason::StopString),
            "<p>Do it.</p>"
        );
        assert_eq!(restored("<p>Do it.", FinishReason::Eos), "<p>Do it.</p>");
        // A reply cut at the token limit stays cut; one that has the tag is left alone.
        assert_eq!(restored("<p>Do it", FinishReason::Length), "<p>Do it");
        let whole = "<p>Do it.</P> and more <p>Other";
        assert_eq!(restored(whole, FinishReason::Eos), whole);
        // A reply with no block is left for the parser's other readings.
        assert_eq!(
            restored("New prompt: do it.", FinishReason::Eos),
            "New prompt: do it."
        );
    }
}
