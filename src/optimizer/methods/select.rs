//! The candidate pool and the choice of a method's final component.
//!
//! Every component a method accepted on a subset, and every merge input and output, enters
//! the pool with its gain over the initial component on the training examples it was
//! scored on. The final choice is made on held-out data: the `top` entries by gain per
//! example are re-scored on val beside the initial component, and the best on val wins.
//! A small val set ties often; a tie goes to the larger gain per training example, then to
//! the shorter text. A component that entered the pool more than once is judged by its
//! widest evidence, the scores on the most training examples: a merge input is scored on
//! the whole union of its group, most of which it was not optimized on, while its own
//! subset's score is the one it was selected on. The initial component is always in the
//! running: a candidate tied with it on val wins only with a real training gain (at least
//! `min_gain` solved examples on its widest evidence) or a shorter text, so the choice
//! never scores below it on val.

use serde::{Deserialize, Serialize};

use crate::optimizer::exec::agent::Components;

/// One component of the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolEntry {
    /// Where it came from: `initial`, `subset 1 iteration 2 (seed)`, `merge m1.0`, ...
    pub source: String,
    pub components: Components,
    /// Training examples it was scored on, and its mean score there.
    pub train_n: usize,
    pub train_score: f64,
    /// Solved examples beyond the initial component on the same examples.
    pub train_gain: f64,
    /// Mean val score, when it was re-scored on val.
    pub val_score: Option<f64>,
}

impl PoolEntry {
    /// Gain per training example.
    pub fn gain_rate(&self) -> f64 {
        if self.train_n == 0 {
            0.0
        } else {
            self.train_gain / self.train_n as f64
        }
    }
}

/// Characters of all component texts (the tie-breaker: shorter wins).
pub fn text_len(c: &Components) -> usize {
    c.values().map(|v| v.chars().count()).sum()
}

/// Indices of the (at most `top`) distinct pool entries to re-score on val, best first.
/// Identical components count once, by the entry scored on the most training examples
/// (then the larger gain, then the earlier). These are ranked by gain per example, then by
/// examples covered, then shorter, then earlier; components identical to `initial` are
/// left out, as are those whose widest evidence shows no gain.
pub fn shortlist(pool: &[PoolEntry], initial: &Components, top: usize) -> Vec<usize> {
    let mut widest: Vec<usize> = Vec::new();
    for i in 0..pool.len() {
        match widest
            .iter_mut()
            .find(|j| pool[**j].components == pool[i].components)
        {
            Some(j) => {
                let (x, y) = (&pool[i], &pool[*j]);
                if x.train_n > y.train_n || (x.train_n == y.train_n && x.train_gain > y.train_gain)
                {
                    *j = i;
                }
            }
            None => widest.push(i),
        }
    }
    let mut order: Vec<usize> = widest
        .into_iter()
        .filter(|&i| pool[i].components != *initial && pool[i].train_gain > 1e-9)
        .collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&pool[a], &pool[b]);
        y.gain_rate()
            .total_cmp(&x.gain_rate())
            .then(y.train_n.cmp(&x.train_n))
            .then(text_len(&x.components).cmp(&text_len(&y.components)))
            .then(a.cmp(&b))
    });
    order.truncate(top);
    order
}

/// The winner among `scored` (pool index, val score) and the initial component's val
/// score: the highest val score; between candidates tied on val the larger gain per
/// training example, then the shorter text. Against the initial component a tie on val
/// goes to the candidate when its widest training evidence shows a real gain (at least
/// `min_gain` more solved examples, the acceptance rule's margin) or it is shorter, and to
/// the initial otherwise: a small val set ties often, and the training examples beyond the
/// subset a component was selected on are evidence too. Never a candidate below the
/// initial on val. Returns `None` when the initial component wins, with the reason either
/// way.
pub fn choose(
    pool: &[PoolEntry],
    scored: &[(usize, f64)],
    initial: &Components,
    initial_val: f64,
    min_gain: f64,
) -> (Option<usize>, String) {
    let mut best: Option<(usize, f64)> = None;
    for &(i, v) in scored {
        let better = match best {
            None => true,
            Some((b, bv)) => {
                let (x, y) = (&pool[i], &pool[b]);
                v > bv + 1e-12
                    || ((v - bv).abs() <= 1e-12
                        && (x.gain_rate() > y.gain_rate() + 1e-12
                            || ((x.gain_rate() - y.gain_rate()).abs() <= 1e-12
                                && text_len(&x.components) < text_len(&y.components))))
            }
        };
        if better {
            best = Some((i, v));
        }
    }
    let pct = |x: f64| 100.0 * x;
    match best {
        Some((i, v)) if v > initial_val + 1e-12 => (
            Some(i),
            format!(
                "best of {} shortlisted on val: {:.1}% vs {:.1}% for the initial component",
                scored.len(),
                pct(v),
                pct(initial_val)
            ),
        ),
        Some((i, v)) if (v - initial_val).abs() <= 1e-12 => {
            let e = &pool[i];
            if e.train_gain >= min_gain - 1e-9 {
                (
                    Some(i),
                    format!(
                        "tied with the initial component on val ({:.1}%) and solved {} more of {} training examples (at least min_gain = {})",
                        pct(v),
                        e.train_gain,
                        e.train_n,
                        min_gain
                    ),
                )
            } else if text_len(&e.components) < text_len(initial) {
                (
                    Some(i),
                    format!(
                        "tied with the initial component on val ({:.1}%) and shorter",
                        pct(v)
                    ),
                )
            } else {
                (
                    None,
                    format!(
                        "the best shortlisted component tied with the initial one on val ({:.1}%) and gained only {} of {} training examples",
                        pct(v),
                        e.train_gain,
                        e.train_n
                    ),
                )
            }
        }
        Some((_, v)) => (
            None,
            format!(
                "no shortlisted component beat the initial one on val (best {:.1}% vs {:.1}%)",
                pct(v),
                pct(initial_val)
            ),
        ),
        None => (
            None,
            "no component gained on train over the initial one".to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(source: &str, text: &str, n: usize, gain: f64) -> PoolEntry {
        PoolEntry {
            source: source.into(),
            components: Components::from([("p".to_string(), text.to_string())]),
            train_n: n,
            train_score: 0.5,
            train_gain: gain,
            val_score: None,
        }
    }

    #[test]
    fn shortlist_ranks_by_gain_rate_and_judges_duplicates_by_their_widest_evidence() {
        let initial = Components::from([("p".to_string(), "init".to_string())]);
        let pool = vec![
            entry("a", "aaa", 10, 2.0),
            entry("b", "bbb", 10, 5.0),
            entry("b on the union", "bbb", 20, 1.0),
            entry("init", "init", 10, 3.0),
            entry("none", "zzz", 10, 0.0),
            entry("c", "c", 40, 8.0),
            entry("d", "ddd", 10, 3.0),
            entry("d on the union", "ddd", 20, 0.0),
        ];
        // "b" counts by its 20 examples (0.05 per example), "d" by its 20 (no gain: out).
        assert_eq!(shortlist(&pool, &initial, 3), vec![5, 0, 2]);
        assert_eq!(shortlist(&pool, &initial, 1), vec![5]);
    }

    #[test]
    fn a_component_worse_than_the_initial_on_val_is_never_chosen() {
        let initial = Components::from([("p".to_string(), "init".to_string())]);
        let pool = vec![
            entry("a", "longer text", 10, 4.0),
            entry("b", "bb", 10, 3.0),
        ];
        // Both below the initial on val: the initial wins.
        let (won, why) = choose(&pool, &[(0, 0.4), (1, 0.45)], &initial, 0.5, 2.0);
        assert_eq!(won, None, "{why}");
        // A tie with the initial goes to a candidate with a real training gain (4 >= 2)...
        let (won, why) = choose(&pool, &[(0, 0.5)], &initial, 0.5, 2.0);
        assert_eq!(won, Some(0), "{why}");
        // ... and otherwise to the shorter text: here the initial.
        let (won, why) = choose(&pool, &[(0, 0.5)], &initial, 0.5, 5.0);
        assert_eq!(won, None, "{why}");
        let short = vec![entry("s", "x", 10, 1.0)];
        assert_eq!(choose(&short, &[(0, 0.5)], &initial, 0.5, 2.0).0, Some(0));
        // Better on val wins; between equal val scores the larger training gain wins, and
        // between equal gains the shorter text.
        let (won, _) = choose(&pool, &[(0, 0.6), (1, 0.6)], &initial, 0.5, 2.0);
        assert_eq!(won, Some(0));
        let (won, _) = choose(&pool, &[(1, 0.6), (0, 0.6)], &initial, 0.5, 2.0);
        assert_eq!(won, Some(0));
        let even = vec![
            entry("a", "longer text", 10, 3.0),
            entry("b", "bb", 10, 3.0),
        ];
        let (won, _) = choose(&even, &[(0, 0.6), (1, 0.6)], &initial, 0.5, 2.0);
        assert_eq!(won, Some(1));
        let (won, _) = choose(&pool, &[(0, 0.7), (1, 0.6)], &initial, 0.5, 2.0);
        assert_eq!(won, Some(0));
        assert_eq!(choose(&pool, &[], &initial, 0.5, 2.0).0, None);
    }
}
