//! Progressive merging of optimized components, `fan_in` at a time, until one remains.
//!
//! At each level the frontier is cut into groups of `fan_in` (a last group of one goes up
//! unchanged). For every group, each step one batch over all groups: the children are
//! evaluated on the union of their subsets; the optimizer writes `candidates` merged
//! versions (rotated merge hints) from each child's change to the initial component, its
//! score on its own and on the other children's examples and the examples only it solves;
//! a section crossover (the best child's text plus the sections the others added) is made
//! without a model call, and so are retrials (the best child plus the sections of a near
//! miss of a child's subset: a candidate that gained there too little to be accepted on
//! that subset's evidence alone, given a second trial on twice the examples); the
//! screened candidates are evaluated on the union, with successive halving stopping those
//! that can no longer beat the best child. The best on the union goes up, children
//! included, ties to the shorter text. Every subset is consumed exactly once; the root
//! covers all of train. Children and winning merges enter the pool of the final selection.

use serde::{Deserialize, Serialize};

use crate::optimizer::data::task::Operator;
use crate::optimizer::data::task::{AcceptRule, BudgetSpec};
use crate::optimizer::exec::agent::{joined_text, Components, Outcome};
use crate::optimizer::exec::calls::BudgetHit;
use crate::optimizer::methods::diff::line_diff;
use crate::optimizer::methods::env::{mean_score, Ask, Env, Expect};
use crate::optimizer::methods::halving;
use crate::optimizer::methods::operators;
use crate::optimizer::methods::prompts;
use crate::optimizer::methods::select::{self, PoolEntry};
use crate::optimizer::methods::slot::NearMiss;

/// A component on the merge frontier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// `s3` for subset 3, `m1.0` for the first merge of level 1.
    pub id: String,
    pub components: Components,
    /// Subset ids this node covers.
    pub subsets: Vec<usize>,
    /// Training indices this node covers.
    pub examples: Vec<usize>,
    /// Mean score on `examples`.
    pub score: f64,
    /// Lessons carried up (diagnoses of accepted steps).
    pub lessons: Vec<String>,
    /// Near misses of its subset, tried again at its first merge (a merge's own node has
    /// none: they were tried on its union).
    #[serde(skip)]
    pub near_misses: Vec<NearMiss>,
}

/// What one merge did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeRecord {
    pub level: usize,
    pub id: String,
    pub children: Vec<String>,
    /// Examples in the union.
    pub n: usize,
    pub child_scores: Vec<f64>,
    pub candidate_scores: Vec<f64>,
    /// The move that made each candidate (`merge`, `crossover`), beside its score.
    #[serde(default)]
    pub candidate_operators: Vec<String>,
    /// Whether successive halving stopped each candidate early (its score is then the mean
    /// over the examples it was scored on).
    #[serde(default)]
    pub candidate_dropped: Vec<bool>,
    /// The id that went up: this merge's id, or the winning child's.
    pub chosen: String,
    pub score: f64,
}

/// Lessons kept per node, most recent last.
const MAX_LESSONS: usize = 6;

/// The index of the entry that goes up among `(score, text length)` entries: the highest
/// score, ties to the shorter text, then to the earlier entry (0 when there are none).
fn best_entry(entries: impl Iterator<Item = (f64, usize)>) -> usize {
    let mut best: Option<(usize, f64, usize)> = None;
    for (k, (score, len)) in entries.enumerate() {
        let beats = match best {
            None => true,
            Some((_, s, l)) => score > s + 1e-12 || ((score - s).abs() <= 1e-12 && len < l),
        };
        if beats {
            best = Some((k, score, len));
        }
    }
    best.map_or(0, |(k, _, _)| k)
}

/// Scores the merge candidates `jobs` (`job_of`: each one's group) on their unions, with
/// successive halving when it is on: a candidate stops once it cannot beat the group's best
/// child or is certain to lose to another candidate, which cannot change which entry goes
/// up. Returns each job's `(score, dropped)`: the mean over all of its union, or over the
/// examples scored before it was dropped.
fn evaluate_candidates(
    env: &Env,
    stage: &str,
    jobs: &[(&Components, &[usize])],
    job_of: &[(usize, Operator)],
    groups: &[Vec<Node>],
    child_scores: &[Vec<f64>],
    child_example_scores: &[Vec<Vec<f64>>],
) -> Vec<(f64, bool)> {
    // One halving group per merge group with candidates; the best child (ties to the
    // shorter text, then the earlier, as the final choice orders them) is what a candidate
    // must reach.
    let mut race: Vec<(usize, halving::Group)> = Vec::new();
    for (k, &(g, _)) in job_of.iter().enumerate() {
        let len = select::text_len(jobs[k].0);
        if let Some((_, group)) = race.iter_mut().find(|(h, _)| *h == g) {
            group.candidates.push((k, len));
            continue;
        }
        let best = best_entry(
            groups[g]
                .iter()
                .enumerate()
                .map(|(c, node)| (child_scores[g][c], select::text_len(&node.components))),
        );
        let current = child_example_scores[g][best].clone();
        race.push((
            g,
            halving::Group {
                n_sub: current.len(),
                current,
                candidates: vec![(k, len)],
            },
        ));
    }
    let halving_groups: Vec<halving::Group> = race.iter().map(|(_, h)| h.clone()).collect();
    let scored = halving::evaluate(
        AcceptRule::NotWorse,
        0.0,
        &halving_groups,
        env.spec.halving,
        |batch| {
            let positions: Vec<Vec<usize>> = batch
                .iter()
                .map(|(h, c, ps)| {
                    let union = jobs[halving_groups[*h].candidates[*c].0].1;
                    ps.iter().map(|&p| union[p]).collect()
                })
                .collect();
            let run: Vec<(&Components, &[usize])> = batch
                .iter()
                .zip(&positions)
                .map(|((h, c, _), idx)| {
                    (jobs[halving_groups[*h].candidates[*c].0].0, idx.as_slice())
                })
                .collect();
            env.evaluate(stage, env.train, &run)
        },
        |o: &Outcome| o.score,
    );
    let mut out = vec![(0.0, false); jobs.len()];
    for (h, group) in halving_groups.iter().enumerate() {
        for (c, &(k, _)) in group.candidates.iter().enumerate() {
            let s = &scored[h][c];
            let known: Vec<f64> = s.outcomes.iter().flatten().map(|o| o.score).collect();
            env.counters.borrow_mut().halving_saved += s.outcomes.len() - known.len();
            let mean = if known.is_empty() {
                0.0
            } else {
                known.iter().sum::<f64>() / known.len() as f64
            };
            out[k] = (mean, s.dropped_after.is_some());
        }
    }
    out
}

/// Merges until one node remains (or a budget stops it); returns the final frontier, the
/// records, and the budget hit if any. `initial_scores` are the initial component's scores
/// on every training example (for the pool's gains).
pub fn merge_all(
    env: &Env,
    mut frontier: Vec<Node>,
    initial: &Components,
    initial_scores: &[f64],
    stage: &str,
    budget: &BudgetSpec,
) -> (Vec<Node>, Vec<MergeRecord>, Option<BudgetHit>) {
    let fan_in = env.spec.merge_fan_in.max(2);
    let mut records = Vec::new();
    let levels = merge_levels(frontier.len(), fan_in);
    let mut level = 0;
    let initial_text = joined_text(initial, &env.names);
    while frontier.len() > 1 {
        level += 1;
        if let Some(hit) = env.calls.budget_hit(budget, &env.method) {
            return (frontier, records, Some(hit));
        }
        let groups: Vec<Vec<Node>> = frontier.chunks(fan_in).map(<[Node]>::to_vec).collect();
        env.progress.update(
            stage,
            level - 1,
            levels,
            &format!("level {level} of {levels}: {} groups", groups.len()),
        );
        let unions: Vec<Vec<usize>> = groups
            .iter()
            .map(|grp| {
                let mut u: Vec<usize> = grp
                    .iter()
                    .flat_map(|n| n.examples.iter().copied())
                    .collect();
                u.sort_unstable();
                u
            })
            .collect();
        let mergeable: Vec<usize> = (0..groups.len()).filter(|&g| groups[g].len() > 1).collect();

        // 1. Every child on its union, one batch (its own examples are memo hits).
        let child_jobs: Vec<(&Components, &[usize])> = mergeable
            .iter()
            .flat_map(|&g| groups[g].iter().map(move |c| (&c.components, g)))
            .map(|(c, g)| (c, unions[g].as_slice()))
            .collect();
        let child_out = env.evaluate(stage, env.train, &child_jobs);
        let mut child_solved: Vec<Vec<Vec<bool>>> = vec![Vec::new(); groups.len()];
        let mut child_scores: Vec<Vec<f64>> = vec![Vec::new(); groups.len()];
        let mut child_example_scores: Vec<Vec<Vec<f64>>> = vec![Vec::new(); groups.len()];
        let mut it = child_out.iter();
        for &g in &mergeable {
            for _ in &groups[g] {
                let out = it.next().map(Vec::as_slice).unwrap_or(&[]);
                child_solved[g].push(out.iter().map(|o| o.solved()).collect());
                child_scores[g].push(mean_score(out));
                child_example_scores[g].push(out.iter().map(|o| o.score).collect());
            }
        }

        // 2. Merge candidates: the optimizer's (one batch, rotated hints) and crossover.
        let mut asks = Vec::new();
        let mut cand_of: Vec<(usize, Operator)> = Vec::new();
        for &g in &mergeable {
            let children: Vec<prompts::MergeChild> = groups[g]
                .iter()
                .enumerate()
                .map(|(c, node)| {
                    let own: Vec<usize> = (0..unions[g].len())
                        .filter(|&k| node.examples.binary_search(&unions[g][k]).is_ok())
                        .collect();
                    let solved = &child_solved[g][c];
                    let rate = |idx: &mut dyn Iterator<Item = usize>| {
                        let v: Vec<bool> = idx.filter_map(|k| solved.get(k).copied()).collect();
                        if v.is_empty() {
                            0.0
                        } else {
                            v.iter().filter(|&&b| b).count() as f64 / v.len() as f64
                        }
                    };
                    let own_score = rate(&mut own.iter().copied());
                    let other_score = rate(&mut (0..unions[g].len()).filter(|k| !own.contains(k)));
                    let wins = (0..unions[g].len())
                        .filter(|&k| {
                            solved.get(k).copied().unwrap_or(false)
                                && (0..groups[g].len()).all(|o| {
                                    o == c || !child_solved[g][o].get(k).copied().unwrap_or(false)
                                })
                        })
                        .count();
                    prompts::MergeChild {
                        components: node.components.clone(),
                        change: line_diff(
                            &initial_text,
                            &joined_text(&node.components, &env.names),
                        ),
                        own_score,
                        other_score,
                        wins,
                    }
                })
                .collect();
            for j in 0..env.spec.candidates {
                asks.push(Ask {
                    messages: prompts::merge(&children, &env.names, j),
                    params: env.params(&env.spec.params, &format!("{stage}/merge/{level}/{g}/{j}")),
                    expect: Expect::Components(&groups[g][0].components),
                });
                cand_of.push((g, Operator::Merge));
            }
        }
        let mut candidates: Vec<Option<Components>> = env.ask(stage, asks);
        for &g in &mergeable {
            // The best-scoring child first, so its text leads.
            let mut order: Vec<usize> = (0..groups[g].len()).collect();
            order.sort_by(|&a, &b| {
                child_scores[g][b]
                    .total_cmp(&child_scores[g][a])
                    .then(a.cmp(&b))
            });
            let kids: Vec<&Components> = order.iter().map(|&c| &groups[g][c].components).collect();
            candidates.push(Some(operators::crossover(&kids, initial, &env.names)));
            cand_of.push((g, Operator::Crossover));
            for retrial in retrials(&groups[g], kids[0], env.spec.merge_retrials, &env.names) {
                candidates.push(Some(retrial));
                cand_of.push((g, Operator::Retrial));
            }
        }

        // 3. Screen and evaluate the candidates on their union, one batch.
        let mut jobs: Vec<(&Components, &[usize])> = Vec::new();
        let mut job_of: Vec<(usize, Operator)> = Vec::new();
        for (k, c) in candidates.iter().enumerate() {
            let (g, op) = cand_of[k];
            env.counters.borrow_mut().operator(op.name()).proposed += 1;
            let Some(c) = c else { continue };
            if groups[g].iter().any(|n| n.components == *c)
                || jobs
                    .iter()
                    .zip(&job_of)
                    .any(|((d, _), (h, _))| *h == g && *d == c)
            {
                env.counters.borrow_mut().unchanged_candidates += 1;
                continue;
            }
            if env.screen(c).is_some() {
                continue;
            }
            jobs.push((c, &unions[g]));
            job_of.push((g, op));
        }
        let evaluated = evaluate_candidates(
            env,
            stage,
            &jobs,
            &job_of,
            &groups,
            &child_scores,
            &child_example_scores,
        );
        env.counters.borrow_mut().candidates_evaluated += jobs.len();

        // 4. The best on the union goes up (children included), ties to the shorter.
        let mut next = Vec::new();
        for (g, grp) in groups.iter().enumerate() {
            if grp.len() == 1 {
                next.push(grp[0].clone());
                continue;
            }
            let id = format!("m{level}.{g}");
            let n = unions[g].len();
            let base: f64 = unions[g]
                .iter()
                .filter_map(|&i| initial_scores.get(i))
                .sum();
            // (score, text length, components, source id, operator)
            let mut entries: Vec<(f64, &Components, String, &str)> = grp
                .iter()
                .enumerate()
                .map(|(c, node)| {
                    (
                        child_scores[g][c],
                        &node.components,
                        node.id.clone(),
                        "child",
                    )
                })
                .collect();
            let mut cand_ops = Vec::new();
            let mut cand_scores = Vec::new();
            let mut cand_dropped = Vec::new();
            for (k, (h, op)) in job_of.iter().enumerate() {
                if *h != g {
                    continue;
                }
                let (s, dropped) = evaluated[k];
                env.counters.borrow_mut().operator(op.name()).evaluated += 1;
                cand_ops.push(op.name().to_string());
                cand_scores.push(s);
                cand_dropped.push(dropped);
                // A candidate stopped early cannot be the best (the drop rule is exact).
                if !dropped {
                    entries.push((s, jobs[k].0, id.clone(), op.name()));
                }
            }
            for (c, node) in grp.iter().enumerate() {
                env.pool.borrow_mut().push(PoolEntry {
                    source: format!("merge input {} on the union of {id}", node.id),
                    components: node.components.clone(),
                    train_n: n,
                    train_score: child_scores[g][c],
                    train_gain: child_scores[g][c] * n as f64 - base,
                    val_score: None,
                });
            }
            let best = best_entry(entries.iter().map(|e| (e.0, select::text_len(e.1))));
            let (score, components, chosen, op) = entries[best].clone();
            let components = components.clone();
            if op != "child" {
                env.counters.borrow_mut().operator(op).accepted += 1;
                env.pool.borrow_mut().push(PoolEntry {
                    source: format!("merge {id} ({op})"),
                    components: components.clone(),
                    train_n: n,
                    train_score: score,
                    train_gain: score * n as f64 - base,
                    val_score: None,
                });
            }
            let mut lessons: Vec<String> = grp
                .iter()
                .flat_map(|node| node.lessons.iter().cloned())
                .collect();
            lessons.drain(..lessons.len().saturating_sub(MAX_LESSONS));
            let subsets: Vec<usize> = grp
                .iter()
                .flat_map(|node| node.subsets.iter().copied())
                .collect();
            env.point(stage, &format!("merge {id}"), n, score);
            records.push(MergeRecord {
                level,
                id: id.clone(),
                children: grp.iter().map(|node| node.id.clone()).collect(),
                n,
                child_scores: child_scores[g].clone(),
                candidate_scores: cand_scores,
                candidate_operators: cand_ops,
                candidate_dropped: cand_dropped,
                chosen,
                score,
            });
            next.push(Node {
                id,
                components,
                subsets,
                examples: unions[g].clone(),
                score,
                lessons,
                near_misses: Vec::new(),
            });
        }
        frontier = next;
    }
    (frontier, records, None)
}

/// Up to `max` retrial candidates of a merge group: `best` (the best child) plus the
/// sections of one near miss of the children's subsets, the largest gains first (ties to
/// the earlier child and candidate); a near miss whose sections `best` already holds, or
/// that makes the same text as an earlier one, gives none.
fn retrials(children: &[Node], best: &Components, max: usize, names: &[String]) -> Vec<Components> {
    let mut misses: Vec<&NearMiss> = children.iter().flat_map(|c| &c.near_misses).collect();
    misses.sort_by(|a, b| b.gain.total_cmp(&a.gain));
    let mut out: Vec<Components> = Vec::new();
    for miss in misses {
        if out.len() >= max {
            break;
        }
        // Over the near miss's parent: only the sections it added go onto `best`.
        let c = operators::crossover(&[best, &miss.candidate], &miss.parent, names);
        if c != *best && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// How many merge levels take `nodes` nodes down to one, `fan_in` at a time.
pub fn merge_levels(nodes: usize, fan_in: usize) -> usize {
    let fan_in = fan_in.max(2);
    let mut n = nodes;
    let mut levels = 0;
    while n > 1 {
        n = n.div_ceil(fan_in);
        levels += 1;
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::{merge_levels, retrials, Node};
    use crate::optimizer::exec::agent::Components;
    use crate::optimizer::methods::slot::NearMiss;

    fn one(text: &str) -> Components {
        Components::from([("p".to_string(), text.to_string())])
    }

    fn node(id: &str, text: &str, misses: Vec<(&str, f64)>) -> Node {
        Node {
            id: id.into(),
            components: one(text),
            subsets: Vec::new(),
            examples: Vec::new(),
            score: 0.0,
            lessons: Vec::new(),
            near_misses: misses
                .into_iter()
                .map(|(added, gain)| NearMiss {
                    parent: one(text),
                    candidate: one(&format!("{text}\n\n{added}")),
                    gain,
                })
                .collect(),
        }
    }

    #[test]
    fn retrials_take_the_largest_gains_once_each_up_to_the_cap() {
        let names = vec!["p".to_string()];
        let children = [
            node("s0", "Answer.\n\nRule A.", vec![("S1.", 1.0), ("S2.", 3.0)]),
            // S1 again (a second copy) and a section the best child already holds.
            node(
                "s1",
                "Answer.",
                vec![("S1.", 2.0), ("Rule A.", 4.0), ("S3.", 0.5)],
            ),
        ];
        let best = &children[0].components;
        let got = retrials(&children, best, 2, &names);
        let texts: Vec<&str> = got.iter().map(|c| c["p"].as_str()).collect();
        assert_eq!(
            texts,
            ["Answer.\n\nRule A.\n\nS2.", "Answer.\n\nRule A.\n\nS1."]
        );
        assert_eq!(retrials(&children, best, 5, &names).len(), 3);
        assert!(retrials(&children, best, 0, &names).is_empty());
    }

    #[test]
    fn merge_levels_counts_rounds_of_fan_in() {
        let cases = [
            (1, 2, 0),
            (2, 2, 1),
            (3, 2, 2),
            (4, 2, 2),
            (5, 2, 3),
            (9, 3, 2),
            (10, 3, 3),
            (4, 0, 2),
        ];
        for (nodes, fan_in, levels) in cases {
            assert_eq!(
                merge_levels(nodes, fan_in),
                levels,
                "{nodes} nodes, fan-in {fan_in}"
            );
        }
    }
}
