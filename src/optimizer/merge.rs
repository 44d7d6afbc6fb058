//! Progressive merging of optimized components, `fan_in` at a time, until one remains.
//!
//! At each level the frontier is cut into groups of `fan_in` (a last group of one goes up
//! unchanged). For every group, all in one batch: the optimizer writes `candidates` merged
//! versions from the children's components and lessons; the candidates and the children are
//! evaluated on the union of the children's subsets; the best candidate goes up unless it
//! scores below the best child, in which case that child goes up. Every subset is consumed
//! exactly once; the root covers all of train.

use serde::{Deserialize, Serialize};

use crate::optimizer::agent::Components;
use crate::optimizer::calls::BudgetHit;
use crate::optimizer::env::{mean_score, Env};
use crate::optimizer::prompts;
use crate::optimizer::task::BudgetSpec;

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
    /// The id that went up: this merge's id, or the winning child's.
    pub chosen: String,
    pub score: f64,
}

/// Lessons kept per node, most recent last.
const MAX_LESSONS: usize = 6;

/// Merges until one node remains (or a budget stops it); returns the final frontier, the
/// records, and the budget hit if any.
pub fn merge_all(
    env: &Env,
    mut frontier: Vec<Node>,
    stage: &str,
    budget: &BudgetSpec,
) -> (Vec<Node>, Vec<MergeRecord>, Option<BudgetHit>) {
    let fan_in = env.spec.merge_fan_in.max(2);
    let mut records = Vec::new();
    let levels = merge_levels(frontier.len(), fan_in);
    let mut level = 0;
    while frontier.len() > 1 {
        level += 1;
        if let Some(hit) = env.calls.budget_hit(budget) {
            return (frontier, records, Some(hit));
        }
        let groups: Vec<Vec<Node>> = frontier.chunks(fan_in).map(<[Node]>::to_vec).collect();
        env.progress.update(
            stage,
            level - 1,
            levels,
            &format!("level {level} of {levels}: {} groups", groups.len()),
        );
        let mergeable: Vec<usize> = (0..groups.len()).filter(|&g| groups[g].len() > 1).collect();

        let mut conversations = Vec::new();
        let mut params = Vec::new();
        let mut bases = Vec::new();
        for &g in &mergeable {
            let versions: Vec<(Components, Vec<String>)> = groups[g]
                .iter()
                .map(|n| (n.components.clone(), n.lessons.clone()))
                .collect();
            for j in 0..env.spec.candidates {
                conversations.push(prompts::merge(&versions, &env.names));
                params
                    .push(env.params(&env.spec.params, &format!("{stage}/merge/{level}/{g}/{j}")));
                bases.push(&groups[g][0].components);
            }
        }
        let parsed = env.ask_components(stage, conversations, params, &bases);

        // Evaluate children and candidates on each union, one batch.
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
        let mut jobs: Vec<(&Components, &[usize])> = Vec::new();
        let mut owners: Vec<(usize, Option<usize>)> = Vec::new();
        for (m, &g) in mergeable.iter().enumerate() {
            for (c, child) in groups[g].iter().enumerate() {
                jobs.push((&child.components, &unions[g]));
                owners.push((g, Some(c)));
            }
            for j in 0..env.spec.candidates {
                if let Some(cand) = &parsed[m * env.spec.candidates + j] {
                    let text: String = env
                        .names
                        .iter()
                        .filter_map(|n| cand.get(n))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n");
                    if env.guard.check(&text).is_none() {
                        jobs.push((cand, &unions[g]));
                        owners.push((g, None));
                    }
                }
            }
        }
        let outcomes = env.evaluate(stage, env.train, &jobs);

        let mut next = Vec::new();
        for (g, grp) in groups.iter().enumerate() {
            if grp.len() == 1 {
                next.push(grp[0].clone());
                continue;
            }
            let id = format!("m{level}.{g}");
            let mut child_scores = vec![0.0; grp.len()];
            let mut cands: Vec<(f64, usize)> = Vec::new();
            for (k, (owner, child)) in owners.iter().enumerate() {
                if *owner != g {
                    continue;
                }
                let s = mean_score(&outcomes[k]);
                match child {
                    Some(c) => child_scores[*c] = s,
                    None => cands.push((s, k)),
                }
            }
            let (best_child, best_child_score) =
                child_scores
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f64::MIN),
                        |acc, (i, &s)| if s > acc.1 { (i, s) } else { acc },
                    );
            let best_cand =
                cands
                    .iter()
                    .fold(None, |acc: Option<(f64, usize)>, &(s, k)| match acc {
                        Some((b, _)) if b >= s => acc,
                        _ => Some((s, k)),
                    });
            let mut lessons: Vec<String> =
                grp.iter().flat_map(|n| n.lessons.iter().cloned()).collect();
            lessons.drain(..lessons.len().saturating_sub(MAX_LESSONS));
            let subsets: Vec<usize> = grp.iter().flat_map(|n| n.subsets.iter().copied()).collect();
            let (chosen, components, score) = match best_cand {
                Some((s, k)) if s >= best_child_score - 1e-12 => (id.clone(), jobs[k].0.clone(), s),
                _ => (
                    grp[best_child].id.clone(),
                    grp[best_child].components.clone(),
                    best_child_score,
                ),
            };
            env.point(stage, &format!("merge {id}"), unions[g].len(), score);
            records.push(MergeRecord {
                level,
                id: id.clone(),
                children: grp.iter().map(|n| n.id.clone()).collect(),
                n: unions[g].len(),
                child_scores,
                candidate_scores: cands.iter().map(|c| c.0).collect(),
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
            });
        }
        frontier = next;
    }
    (frontier, records, None)
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
    use super::merge_levels;

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
