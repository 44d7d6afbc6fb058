//! Optimizing components on subsets: reflect, propose, evaluate, keep or roll back.
//!
//! All subsets advance in lockstep so that each step is one batch for the engine: every
//! subset's diagnosis in one call, every candidate rewrite (and re-ask) in one call, every
//! candidate evaluation in one agent batch. Per subset and iteration: the optimizer sees the
//! current component with a seeded sample of the subset's failures and successes and its
//! remembered failed attempts, writes a diagnosis, then `candidates` rewrites (each with a
//! different edit hint and seed). Candidates that leak or copy training data or change
//! nothing are rejected; the best of the rest is kept if the accept rule says so, the others
//! are remembered as failed attempts. A subset stops when solved or after `iterations`.
//!
//! The all-at-once baseline is the same loop on one subset holding all of train, with every
//! trajectory in the prompt, truncated to the optimizer's context window.

use serde::{Deserialize, Serialize};

use crate::optimizer::agent::{Components, Outcome};
use crate::optimizer::calls::BudgetHit;
use crate::optimizer::env::{mean_score, solved, Env};
use crate::optimizer::prompts::{self, FailedAttempt};
use crate::optimizer::rng::Rng;
use crate::optimizer::task::{AcceptRule, BudgetSpec};

/// How trajectories are chosen for the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Showing {
    /// A seeded sample of `show_failures` failures and `show_successes` successes.
    Sample,
    /// Every trajectory, cut to fit the optimizer's context window.
    All,
}

/// What the all-at-once prompt had to leave out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truncation {
    pub iteration: usize,
    /// Trajectories shown.
    pub shown: usize,
    /// Trajectories available.
    pub total: usize,
    /// Tokens available for trajectories.
    pub token_budget: usize,
}

/// One candidate of one iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    /// `accepted`, `rolled_back`, `leak`, `copy`, `unchanged`, `unparsed`.
    pub status: String,
    pub score: Option<f64>,
    pub detail: String,
}

/// One iteration of one subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationRecord {
    pub iteration: usize,
    pub score_before: f64,
    pub score_after: f64,
    pub diagnosis: String,
    pub candidates: Vec<CandidateRecord>,
}

/// A subset being optimized.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slot {
    pub id: usize,
    /// Indices into the training set.
    pub examples: Vec<usize>,
    pub current: Components,
    #[serde(skip)]
    pub outcomes: Vec<Outcome>,
    pub initial_score: f64,
    pub score: f64,
    /// Diagnoses that led to accepted candidates.
    pub lessons: Vec<String>,
    pub failed: Vec<FailedAttempt>,
    pub iterations: Vec<IterationRecord>,
    /// Why it stopped: `solved`, `iterations`, `budget`.
    pub stopped: String,
    pub truncations: Vec<Truncation>,
}

impl Slot {
    /// A subset starting from `initial` with its initial outcomes.
    pub fn new(
        id: usize,
        examples: Vec<usize>,
        initial: Components,
        outcomes: Vec<Outcome>,
    ) -> Self {
        let score = mean_score(&outcomes);
        Self {
            id,
            examples,
            current: initial,
            outcomes,
            initial_score: score,
            score,
            lessons: Vec::new(),
            failed: Vec::new(),
            iterations: Vec::new(),
            stopped: String::new(),
            truncations: Vec::new(),
        }
    }

    fn solved(&self) -> bool {
        solved(&self.outcomes) == self.outcomes.len()
    }
}

/// Optimizes every slot; returns the budget that stopped it, if one did.
pub fn optimize(
    env: &Env,
    slots: &mut [Slot],
    showing: Showing,
    stage: &str,
    budget: &BudgetSpec,
) -> Option<BudgetHit> {
    let spec = env.spec;
    for iteration in 0..spec.iterations {
        let active: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].stopped.is_empty())
            .collect();
        for &i in &active {
            if slots[i].solved() {
                slots[i].stopped = "solved".into();
            }
        }
        let active: Vec<usize> = active
            .into_iter()
            .filter(|&i| slots[i].stopped.is_empty())
            .collect();
        if active.is_empty() {
            break;
        }
        if let Some(hit) = env.calls.budget_hit(budget) {
            for s in slots.iter_mut().filter(|s| s.stopped.is_empty()) {
                s.stopped = "budget".into();
            }
            return Some(hit);
        }
        env.progress.update(
            stage,
            iteration,
            spec.iterations,
            &format!("iteration {} on {} subsets", iteration + 1, active.len()),
        );

        // 1. Diagnoses, one batch.
        let mut diag_requests = Vec::new();
        for &i in &active {
            let s = &slots[i];
            let trajectories = match showing {
                Showing::Sample => sample_trajectories(env, s, iteration),
                Showing::All => {
                    let (text, t) = all_trajectories(env, s, iteration);
                    slots[i].truncations.push(t);
                    text
                }
            };
            let s = &slots[i];
            let failed = prompts::show_failed(&s.failed, &env.names, spec.show_failed_attempts);
            diag_requests.push(crate::llm::ChatRequest {
                messages: prompts::diagnose(&s.current, &env.names, &trajectories, &failed),
                params: env.params(
                    &spec.diagnosis_params,
                    &format!("{stage}/diag/{}/{iteration}", s.id),
                ),
            });
        }
        let ctx = env.ctx(stage);
        let diagnoses: Vec<String> = env
            .calls
            .complete(
                env.optimizer,
                &ctx,
                crate::optimizer::calls::Role::Optimizer,
                &diag_requests,
            )
            .into_iter()
            .map(|r| match r {
                Ok(c) => c.text,
                Err(_) => {
                    env.counters.borrow_mut().call_errors += 1;
                    String::new()
                }
            })
            .collect();

        // 2. Rewrites, one batch (re-asks batched too).
        let mut conversations = Vec::new();
        let mut params = Vec::new();
        let mut bases = Vec::new();
        for (a, &i) in active.iter().enumerate() {
            let s = &slots[i];
            let failed = prompts::show_failed(&s.failed, &env.names, spec.show_failed_attempts);
            for j in 0..spec.candidates {
                conversations.push(prompts::rewrite(
                    &s.current,
                    &env.names,
                    &diagnoses[a],
                    &failed,
                    j,
                ));
                params.push(env.params(
                    &spec.params,
                    &format!("{stage}/rewrite/{}/{iteration}/{j}", s.id),
                ));
                bases.push(&s.current);
            }
        }
        let parsed = env.ask_components(stage, conversations, params, &bases);

        // 3. Screen candidates, then evaluate the survivors, one batch.
        let mut records: Vec<Vec<CandidateRecord>> = vec![Vec::new(); active.len()];
        let mut survivors: Vec<(usize, Components)> = Vec::new();
        for (a, &i) in active.iter().enumerate() {
            for j in 0..spec.candidates {
                let rec = |status: &str, detail: String| CandidateRecord {
                    status: status.into(),
                    score: None,
                    detail,
                };
                let Some(c) = &parsed[a * spec.candidates + j] else {
                    records[a].push(rec("unparsed", String::new()));
                    continue;
                };
                let text: String = env
                    .names
                    .iter()
                    .filter_map(|n| c.get(n))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n");
                if *c == slots[i].current || survivors.iter().any(|(b, d)| *b == a && d == c) {
                    env.counters.borrow_mut().unchanged_candidates += 1;
                    records[a].push(rec("unchanged", String::new()));
                } else if let Some(r) = env.guard.check(&text) {
                    let status = match r {
                        crate::optimizer::guard::Rejection::Leak { .. } => {
                            env.counters.borrow_mut().leak_rejections += 1;
                            "leak"
                        }
                        crate::optimizer::guard::Rejection::Copy { .. } => {
                            env.counters.borrow_mut().copy_rejections += 1;
                            "copy"
                        }
                    };
                    slots[i].failed.push(FailedAttempt {
                        components: c.clone(),
                        reason: format!("rejected: {}", r.describe()),
                    });
                    records[a].push(rec(status, r.describe()));
                } else {
                    records[a].push(rec("pending", String::new()));
                    survivors.push((a, c.clone()));
                }
            }
        }
        let jobs: Vec<(&Components, &[usize])> = survivors
            .iter()
            .map(|(a, c)| (c, slots[active[*a]].examples.as_slice()))
            .collect();
        let outcomes = env.evaluate(stage, env.train, &jobs);
        env.counters.borrow_mut().candidates_evaluated += survivors.len();

        // 4. Keep or roll back, per subset.
        for (a, &i) in active.iter().enumerate() {
            let mut best: Option<(f64, usize)> = None;
            for (k, (sa, _)) in survivors.iter().enumerate() {
                if *sa != a {
                    continue;
                }
                let score = mean_score(&outcomes[k]);
                if best.is_none_or(|(b, _)| score > b + 1e-12) {
                    best = Some((score, k));
                }
            }
            let before = slots[i].score;
            let mut pending_iter = records[a].iter_mut().filter(|r| r.status == "pending");
            for (k, (sa, c)) in survivors.iter().enumerate() {
                if *sa != a {
                    continue;
                }
                let score = mean_score(&outcomes[k]);
                let accept = best.is_some_and(|(_, b)| b == k)
                    && match spec.accept {
                        AcceptRule::Better => score > before + 1e-12,
                        AcceptRule::NotWorse => score >= before - 1e-12,
                    };
                if let Some(r) = pending_iter.next() {
                    r.score = Some(score);
                    r.status = if accept { "accepted" } else { "rolled_back" }.into();
                }
                if !accept {
                    slots[i].failed.push(FailedAttempt {
                        components: c.clone(),
                        reason: format!(
                            "scored {:.0}% vs {:.0}% for the current version",
                            100.0 * score,
                            100.0 * before
                        ),
                    });
                }
            }
            let accepted = best.filter(|&(score, _)| match spec.accept {
                AcceptRule::Better => score > before + 1e-12,
                AcceptRule::NotWorse => score >= before - 1e-12,
            });
            let s = &mut slots[i];
            if let Some((score, k)) = accepted {
                s.current = survivors[k].1.clone();
                s.outcomes = outcomes[k].clone();
                s.score = score;
                if !diagnoses[a].trim().is_empty() {
                    s.lessons.push(diagnoses[a].trim().to_string());
                }
                env.counters.borrow_mut().accepted += 1;
            } else {
                env.counters.borrow_mut().rolled_back += 1;
            }
            s.iterations.push(IterationRecord {
                iteration,
                score_before: before,
                score_after: s.score,
                diagnosis: diagnoses[a].clone(),
                candidates: records[a].clone(),
            });
            let label = format!("subset {} iteration {}", s.id, iteration + 1);
            let shown = s.outcomes.clone();
            env.step(stage, &label, &shown);
        }
    }
    for s in slots.iter_mut().filter(|s| s.stopped.is_empty()) {
        s.stopped = if s.solved() { "solved" } else { "iterations" }.into();
    }
    None
}

/// A seeded sample of the slot's failures and successes, formatted.
fn sample_trajectories(env: &Env, s: &Slot, iteration: usize) -> String {
    let mut rng = Rng::derived(env.seed, &format!("sample/{}/{iteration}", s.id));
    let (mut fail, mut ok): (Vec<&Outcome>, Vec<&Outcome>) =
        s.outcomes.iter().partition(|o| !o.solved());
    rng.shuffle(&mut fail);
    rng.shuffle(&mut ok);
    fail.truncate(env.spec.show_failures);
    ok.truncate(env.spec.show_successes);
    fail.iter()
        .chain(ok.iter())
        .enumerate()
        .map(|(n, o)| prompts::show_outcome(n + 1, o, env.spec.trajectory_chars))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every trajectory (failures first), as many as fit the optimizer's context window.
fn all_trajectories(env: &Env, s: &Slot, iteration: usize) -> (String, Truncation) {
    let frame = prompts::diagnose(
        &s.current,
        &env.names,
        "",
        &prompts::show_failed(&s.failed, &env.names, env.spec.show_failed_attempts),
    );
    let frame_text: String = frame
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let frame_tokens = env
        .optimizer
        .count_tokens(&frame_text)
        .unwrap_or(frame_text.len() / 3);
    // Room for the chat template's own tokens as well.
    let token_budget = env
        .optimizer
        .context_length()
        .saturating_sub(frame_tokens + env.spec.diagnosis_params.max_new_tokens + 64);
    let mut order: Vec<&Outcome> = s.outcomes.iter().filter(|o| !o.solved()).collect();
    order.extend(s.outcomes.iter().filter(|o| o.solved()));
    let mut used = 0;
    let mut parts = Vec::new();
    for (n, o) in order.iter().enumerate() {
        let text = prompts::show_outcome(n + 1, o, env.spec.trajectory_chars);
        let t = env.optimizer.count_tokens(&text).unwrap_or(text.len() / 3) + 1;
        if used + t > token_budget {
            break;
        }
        used += t;
        parts.push(text);
    }
    let t = Truncation {
        iteration,
        shown: parts.len(),
        total: order.len(),
        token_budget,
    };
    (parts.join("\n"), t)
}
