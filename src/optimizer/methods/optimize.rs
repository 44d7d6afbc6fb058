//! Optimizing components on subsets: reflect, propose, evaluate, keep or roll back.
//!
//! All subsets advance in lockstep so that each step is one batch for the engine: every
//! subset's diagnosis in one call, every optimizer-written candidate (and re-ask) in one
//! call, every candidate evaluation in one agent batch. Per subset and iteration, the
//! `candidates` moves come from the operator rotation ([`operators::schedule`]): some ask
//! the optimizer (a rewrite from a diagnosis of the whole subset, a procedure induced from
//! right and wrong attempts, a strategy applied to the component), some need no model call
//! (a strategy appended verbatim, worked examples from the agent's own solved
//! trajectories). Candidates that change nothing, leak or copy training data, name its
//! content or are degenerate are rejected by the guard. The rest are evaluated on the
//! subset and on a fixed set of check examples from outside it (a candidate under which
//! the agent's replies were often cut off at its token limit is evaluated again beside
//! itself with the reply budget stated); the one with the largest
//! gain is kept when it solves at least `min_gain` more examples of the subset and is not
//! worse on the check examples; the others are remembered as failed attempts (the text of
//! leaking ones never shown again). A candidate that added sections and gained without
//! being accepted is kept as a near miss, for the merges to try again on more examples. A
//! subset stops when solved or after `iterations`.
//!
//! The all-at-once baseline is the same loop on one subset holding all of train, with every
//! trajectory in the prompt, truncated to the optimizer's context window.

use crate::optimizer::data::dataset::Example;
use crate::optimizer::data::task::BudgetSpec;
use crate::optimizer::data::task::Operator;
use crate::optimizer::exec::agent::{Components, Outcome};
use crate::optimizer::exec::calls::BudgetHit;
use crate::optimizer::methods::env::{mean_score, Env};
use crate::optimizer::methods::halving;
use crate::optimizer::methods::operators;
use crate::optimizer::methods::prompts::{self, FailedAttempt};
use crate::optimizer::methods::propose::{mechanical, propose};
use crate::optimizer::methods::select::{self, PoolEntry};
use crate::optimizer::methods::slot::{
    CandidateRecord, IterationRecord, NearMiss, Slot, Truncation,
};

/// Optimizes every slot; returns the budget that stopped it, if one did. The trajectories
/// of one optimizer prompt are capped at `trajectory_tokens` (and the context window).
pub fn optimize(
    env: &Env,
    slots: &mut [Slot],
    trajectory_tokens: usize,
    stage: &str,
    budget: &BudgetSpec,
) -> Option<BudgetHit> {
    let spec = env.spec;
    for iteration in 0..spec.iterations {
        for s in slots.iter_mut().filter(|s| s.stopped.is_empty()) {
            if s.solved() {
                s.stopped = "solved".into();
            }
        }
        let active: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].stopped.is_empty())
            .collect();
        if active.is_empty() {
            break;
        }
        if let Some(hit) = env.calls.budget_hit(budget, &env.method) {
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
        let plans: Vec<Vec<(Operator, usize)>> = active
            .iter()
            .map(|&i| {
                (0..spec.candidates)
                    .map(|j| {
                        operators::schedule(
                            &spec.operators,
                            iteration * spec.candidates + j,
                            slots[i].id,
                        )
                    })
                    .collect()
            })
            .collect();

        // The first halving slice of the mechanical candidates is scored while the
        // optimizer writes (steps 1 and 2), so that its long replies share the engine's
        // batches with agent sequences; step 3 then finds those replies in the run's memo.
        let prefetch = prefetch_jobs(env, slots, &active, &plans);
        let (agent, calls, ctx, env_train) = (env.agent, env.calls, env.ctx(stage), env.train);
        let (diagnoses, proposals) = std::thread::scope(|scope| {
            if !prefetch.is_empty() {
                let (prefetch, ctx) = (&prefetch, &ctx);
                scope.spawn(move || {
                    let flat: Vec<(&Components, &Example)> = prefetch
                        .iter()
                        .flat_map(|(c, idx)| idx.iter().map(move |&i| (c, &env_train[i])))
                        .collect();
                    agent.evaluate(calls, ctx, &flat);
                });
            }
            // 1. Diagnoses (for the slots that rewrite), one batch.
            let diagnoses = diagnose(
                env,
                slots,
                &active,
                &plans,
                trajectory_tokens,
                stage,
                iteration,
            );
            // 2. Proposals: the optimizer's moves in one batch, the mechanical ones directly.
            let proposals = propose(env, slots, &active, &plans, &diagnoses, stage, iteration);
            (diagnoses, proposals)
        });

        // 3. Screen candidates, then evaluate the survivors on the subset and the check
        // examples, one batch.
        let mut records: Vec<Vec<CandidateRecord>> = vec![Vec::new(); active.len()];
        let mut survivors: Vec<(usize, usize, Components)> = Vec::new();
        for (a, &i) in active.iter().enumerate() {
            for p in &proposals[a] {
                let op = p.operator.name();
                env.counters.borrow_mut().operator(op).proposed += 1;
                let rec = |status: &str, detail: String| CandidateRecord {
                    operator: op.to_string(),
                    status: status.into(),
                    score: None,
                    check_score: None,
                    detail,
                    cut_off: None,
                    scored: None,
                    reply_budget: false,
                };
                let Some(c) = &p.components else {
                    let detail = p.missing.clone().unwrap_or_default();
                    records[a].push(rec("unparsed", detail));
                    continue;
                };
                if *c == slots[i].current || survivors.iter().any(|(b, _, d)| *b == a && d == c) {
                    env.counters.borrow_mut().unchanged_candidates += 1;
                    records[a].push(rec("unchanged", String::new()));
                    continue;
                }
                if let Some(r) = env.screen(c) {
                    slots[i].failed.push(FailedAttempt {
                        components: if r.withholds_text() {
                            Components::new()
                        } else {
                            c.clone()
                        },
                        reason: r.for_prompt(),
                        withheld: r.withholds_text(),
                    });
                    records[a].push(rec(r.status(), r.describe()));
                    continue;
                }
                records[a].push(rec("pending", String::new()));
                survivors.push((a, records[a].len() - 1, c.clone()));
            }
        }
        let eval_sets: Vec<Vec<usize>> = active.iter().map(|&i| slots[i].eval_set()).collect();
        let mut evaluated =
            evaluate_survivors(env, slots, &active, &survivors, 0, &eval_sets, stage);

        // 3b. Reply-budget repairs: a candidate under which the agent's replies were often
        // cut off at its token limit is tried again with the reply budget stated, as a
        // candidate of its own evaluated on the same examples, so that the note is added
        // only where the evidence calls for it and evaluation decides between the two.
        if let Some(tokens) = env.agent.reply_tokens() {
            let first = env.names.first().cloned().unwrap_or_default();
            let from = survivors.len();
            let mut repairs: Vec<(usize, Components, String)> = Vec::new();
            for (k, (a, r, c)) in survivors.iter().enumerate() {
                let e = &evaluated[k];
                if !operators::cut_off_often(e.cut_off, e.scored) {
                    continue;
                }
                let (fixed, note) = operators::with_reply_budget(c.clone(), &first, Some(tokens));
                let i = active[*a];
                let known = |d: &Components| {
                    *d == slots[i].current
                        || survivors.iter().any(|(b, _, x)| b == a && x == d)
                        || repairs.iter().any(|(b, x, _)| b == a && x == d)
                };
                if known(&fixed) {
                    continue;
                }
                if let Some(note) = note.filter(|n| !env.exempt.borrow().contains(n)) {
                    env.exempt.borrow_mut().push(note);
                }
                repairs.push((*a, fixed, records[*a][*r].operator.clone()));
            }
            for (a, c, operator) in repairs {
                let mut record = CandidateRecord {
                    operator,
                    status: "pending".into(),
                    score: None,
                    check_score: None,
                    detail: String::new(),
                    cut_off: None,
                    scored: None,
                    reply_budget: true,
                };
                env.counters
                    .borrow_mut()
                    .operator(&record.counter_key())
                    .proposed += 1;
                if let Some(r) = env.screen(&c) {
                    record.status = r.status().into();
                    record.detail = r.describe();
                    records[a].push(record);
                    continue;
                }
                records[a].push(record);
                survivors.push((a, records[a].len() - 1, c));
            }
            if survivors.len() > from {
                evaluated.extend(evaluate_survivors(
                    env, slots, &active, &survivors, from, &eval_sets, stage,
                ));
            }
        }

        // 4. Keep or roll back, per subset: the candidate with the largest gain on the
        // subset (ties to the shorter) is accepted when the gain is real and it is not
        // worse on the check examples.
        for (a, &i) in active.iter().enumerate() {
            let n = slots[i].examples.len();
            let current_sum: f64 = slots[i].outcomes.iter().map(|o| o.score).sum();
            let current_check: f64 = slots[i].check_outcomes.iter().map(|o| o.score).sum();
            let before = slots[i].score;
            let mut totals: Vec<Option<(f64, f64, usize)>> = vec![None; survivors.len()];
            for (k, (sa, r, c)) in survivors.iter().enumerate() {
                if *sa != a {
                    continue;
                }
                let record = &mut records[a][*r];
                env.counters
                    .borrow_mut()
                    .operator(&record.counter_key())
                    .evaluated += 1;
                let e = &evaluated[k];
                record.scored = Some(e.scored);
                if e.cut_off > 0 {
                    record.cut_off = Some(e.cut_off);
                }
                let Some(out) = &e.outcomes else {
                    let (m, sum) = (e.scored, e.sum);
                    record.score = (m > 0).then(|| sum / m as f64);
                    record.detail = format!(
                        "stopped after {m} of {} examples: it could no longer be accepted",
                        eval_sets[a].len()
                    );
                    continue;
                };
                let (sub, check) = out.split_at(n.min(out.len()));
                let sum: f64 = sub.iter().map(|o| o.score).sum();
                let check_sum: f64 = check.iter().map(|o| o.score).sum();
                let gain = sum - current_sum;
                record.score = Some(mean_score(sub));
                record.check_score = (!check.is_empty()).then(|| mean_score(check));
                record.detail = format!(
                    "gain {gain:+.0} on the subset{}",
                    if check.is_empty() {
                        String::new()
                    } else {
                        format!(", {:+.0} on the check examples", check_sum - current_check)
                    }
                );
                totals[k] = Some((gain, check_sum - current_check, select::text_len(c)));
            }
            let best = halving::pick(spec.accept, spec.min_gain, &totals);
            for (k, (sa, r, c)) in survivors.iter().enumerate() {
                if *sa != a {
                    continue;
                }
                let accept = best == Some(k);
                let dropped = evaluated[k].outcomes.is_none();
                // A gain too small to accept on this subset's evidence alone (or smaller
                // than the accepted one's), not bought with losses elsewhere: a merge tries
                // its added sections again on the union. Successive halving stops such a
                // candidate early, so the gain is the one known on the examples it was
                // scored on.
                let e = &evaluated[k];
                if !accept
                    && e.known_gain > 1e-9
                    && e.known_check >= -1e-9
                    && operators::adds_sections(&slots[i].current, c, &env.names)
                {
                    slots[i].near_misses.push(NearMiss {
                        parent: slots[i].current.clone(),
                        candidate: c.clone(),
                        gain: e.known_gain,
                    });
                }
                records[a][*r].status = match (accept, dropped) {
                    (true, _) => "accepted",
                    (false, true) => "dropped",
                    (false, false) => "rolled_back",
                }
                .into();
                if !accept {
                    // The same words whether or not the candidate was scored on all of its
                    // examples, so that successive halving does not change later prompts.
                    let reason = "did not beat the current version by enough on this \
                                  subset without losing elsewhere"
                        .to_string();
                    slots[i].failed.push(FailedAttempt {
                        components: c.clone(),
                        reason,
                        withheld: false,
                    });
                }
            }
            let s = &mut slots[i];
            if let Some(k) = best {
                let out = evaluated[k].outcomes.as_deref().unwrap_or_default();
                let (sub, check) = out.split_at(n.min(out.len()));
                s.current = survivors[k].2.clone();
                s.outcomes = sub.to_vec();
                s.check_outcomes = check.to_vec();
                s.score = mean_score(sub);
                let record = &records[a][survivors[k].1];
                let op = record.counter_key();
                if record.operator == Operator::Rewrite.name() && !diagnoses[a].trim().is_empty() {
                    s.lessons.push(diagnoses[a].trim().to_string());
                }
                let mut c = env.counters.borrow_mut();
                c.accepted += 1;
                c.operator(&op).accepted += 1;
                drop(c);
                let initial_sum = s.initial_score * n as f64;
                env.pool.borrow_mut().push(PoolEntry {
                    source: format!("subset {} iteration {} ({op})", s.id, iteration + 1),
                    components: s.current.clone(),
                    train_n: n,
                    train_score: s.score,
                    train_gain: s.score * n as f64 - initial_sum,
                    val_score: None,
                });
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

/// What evaluating one candidate established.
struct Evaluated {
    /// Its outcomes on the subset and check examples; `None` if successive halving
    /// stopped it early.
    outcomes: Option<Vec<Outcome>>,
    /// How many of its examples were scored, and the sum of their scores.
    scored: usize,
    sum: f64,
    /// Its scored replies cut off at the agent's token limit.
    cut_off: usize,
    /// Its gain over the current component on the subset examples it was scored on, and
    /// its difference on the check examples it was scored on (the whole gain and check
    /// delta when it was scored on all).
    known_gain: f64,
    known_check: f64,
}

/// Step 1 of an iteration: a diagnosis for each active slot whose plan has a move that
/// needs one (empty for the others), in one optimizer batch. The prompt shows the whole
/// subset, cut to the token budget; what was shown is recorded on the slot.
fn diagnose(
    env: &Env,
    slots: &mut [Slot],
    active: &[usize],
    plans: &[Vec<(Operator, usize)>],
    trajectory_tokens: usize,
    stage: &str,
    iteration: usize,
) -> Vec<String> {
    let spec = env.spec;
    let mut shown = Vec::new();
    for &i in active {
        let (text, t) = all_trajectories(env, &slots[i], iteration, trajectory_tokens);
        slots[i].truncations.push(t);
        shown.push(text);
    }
    let mut diag_requests = Vec::new();
    let mut diag_of = vec![None; active.len()];
    for (a, &i) in active.iter().enumerate() {
        if !plans[a].iter().any(|(op, _)| op.needs_diagnosis()) {
            continue;
        }
        let s = &slots[i];
        let failed = prompts::show_failed(&s.failed, &env.names, spec.show_failed_attempts);
        diag_of[a] = Some(diag_requests.len());
        diag_requests.push(crate::llm::ChatRequest {
            messages: prompts::diagnose(&s.current, &env.names, &shown[a], &failed),
            params: env.params(
                &spec.diagnosis_params,
                &format!("{stage}/diag/{}/{iteration}", s.id),
            ),
        });
    }
    let replies = env.calls.complete(
        env.optimizer,
        &env.ctx(stage),
        crate::optimizer::exec::calls::Role::Optimizer,
        &diag_requests,
    );
    let replies: Vec<String> = replies
        .into_iter()
        .map(|r| match r {
            Ok(c) => c.text,
            Err(_) => {
                env.counters.borrow_mut().call_errors += 1;
                String::new()
            }
        })
        .collect();
    diag_of
        .iter()
        .map(|d| d.and_then(|k| replies.get(k).cloned()).unwrap_or_default())
        .collect()
}

/// The mechanical candidates of this iteration's plans (see [`mechanical`]) with the
/// training examples of their first successive-halving slice (all of their examples
/// without halving): exactly the requests step 3 makes for them first, so that scoring
/// them early changes no result. A candidate equal to its slot's current component, or to
/// one listed before it, is left out, as step 3 leaves it out.
fn prefetch_jobs(
    env: &Env,
    slots: &[Slot],
    active: &[usize],
    plans: &[Vec<(Operator, usize)>],
) -> Vec<(Components, Vec<usize>)> {
    let mut out: Vec<(Components, Vec<usize>)> = Vec::new();
    for (a, &i) in active.iter().enumerate() {
        let s = &slots[i];
        let order = s.halving_group(Vec::new()).order();
        let fraction = if env.spec.halving {
            halving::ROUNDS[0]
        } else {
            1.0
        };
        let upto = halving::slice_end(order.len(), fraction);
        let eval_set = s.eval_set();
        let examples: Vec<usize> = order[..upto].iter().map(|&p| eval_set[p]).collect();
        let first = out.len();
        for &(op, variant) in &plans[a] {
            let Some(Ok((c, _))) = mechanical(env, s, op, variant) else {
                continue;
            };
            if c != s.current && !out[first..].iter().any(|(d, _)| *d == c) {
                out.push((c, examples.clone()));
            }
        }
    }
    out
}

/// Evaluates `survivors[from..]` (slot position, record, candidate) on their slots' subset
/// and check examples (`eval_sets`), with successive halving against each slot's current
/// component, in one agent batch per halving round.
fn evaluate_survivors(
    env: &Env,
    slots: &[Slot],
    active: &[usize],
    survivors: &[(usize, usize, Components)],
    from: usize,
    eval_sets: &[Vec<usize>],
    stage: &str,
) -> Vec<Evaluated> {
    let spec = env.spec;
    let groups: Vec<halving::Group> = active
        .iter()
        .enumerate()
        .map(|(a, &i)| {
            slots[i].halving_group(
                survivors
                    .iter()
                    .enumerate()
                    .skip(from)
                    .filter(|(_, (sa, _, _))| *sa == a)
                    .map(|(k, (_, _, c))| (k, select::text_len(c)))
                    .collect(),
            )
        })
        .collect();
    let scored = halving::evaluate(
        spec.accept,
        spec.min_gain,
        &groups,
        spec.halving,
        |jobs| {
            let positions: Vec<Vec<usize>> = jobs
                .iter()
                .map(|(g, _, ps)| ps.iter().map(|&p| eval_sets[*g][p]).collect())
                .collect();
            let batch: Vec<(&Components, &[usize])> = jobs
                .iter()
                .zip(&positions)
                .map(|((g, c, _), idx)| (&survivors[groups[*g].candidates[*c].0].2, idx.as_slice()))
                .collect();
            env.evaluate(stage, env.train, &batch)
        },
        |o: &Outcome| o.score,
    );
    let mut out: Vec<Option<Evaluated>> = (from..survivors.len()).map(|_| None).collect();
    for (g, group) in groups.iter().enumerate() {
        for (c, &(k, _)) in group.candidates.iter().enumerate() {
            let s = &scored[g][c];
            let known: Vec<&Outcome> = s.outcomes.iter().flatten().collect();
            env.counters.borrow_mut().halving_saved += s.outcomes.len() - known.len();
            // Its gain over the current component on the examples it was scored on, on the
            // subset and on the check examples.
            let (mut known_gain, mut known_check) = (0.0, 0.0);
            for (p, o) in s.outcomes.iter().enumerate() {
                if let Some(o) = o {
                    let delta = o.score - group.current[p];
                    if p < group.n_sub {
                        known_gain += delta;
                    } else {
                        known_check += delta;
                    }
                }
            }
            out[k - from] = Some(Evaluated {
                outcomes: s.complete(),
                scored: known.len(),
                sum: known.iter().map(|o| o.score).sum(),
                cut_off: known.iter().filter(|o| o.cut_off).count(),
                known_gain,
                known_check,
            });
        }
    }
    env.counters.borrow_mut().candidates_evaluated += out.len();
    out.into_iter()
        .map(|e| e.expect("every survivor belongs to an active slot"))
        .collect()
}

/// Every trajectory (failures first), as many as fit the optimizer's context window and
/// `max_tokens`.
fn all_trajectories(
    env: &Env,
    s: &Slot,
    iteration: usize,
    max_tokens: usize,
) -> (String, Truncation) {
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
        .saturating_sub(frame_tokens + env.spec.diagnosis_params.max_new_tokens + 64)
        .min(max_tokens);
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
