//! Successive halving of candidate evaluations: every candidate of an iteration is scored
//! on a first slice of its examples, those that can no longer be the one accepted are
//! dropped, and the rest go on to the next slice.
//!
//! The drop rule is exact, not statistical: scores lie in [0, 1], so after some examples a
//! candidate's final gain and check delta are bounded above (every remaining example
//! solved) and below (every one failed). A candidate is dropped only when even its upper
//! bounds fail the acceptance rule, or when another candidate is certain to be acceptable
//! (its lower bounds pass) and certain to beat it under [`pick`]'s order (more gain, ties
//! to the shorter text, then to the earlier candidate). So halving never changes which
//! candidate is accepted; it only saves the evaluations of hopeless ones.
//!
//! Examples are scored in an order that settles the bounds early: the subset examples the
//! current component fails first (where a gain can come from), then those it solves, then
//! the check examples it solves (where a loss would show), then the rest.

use crate::optimizer::data::task::AcceptRule;

/// Tolerance of score sums.
const EPS: f64 = 1e-9;

/// The fractions of a candidate's examples scored after each round.
pub const ROUNDS: [f64; 3] = [0.25, 0.5, 1.0];

/// How many of `n` ordered positions are scored once `fraction` of them is (rounded up).
pub fn slice_end(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).ceil() as usize).min(n)
}

/// One subset's candidates and what they are compared with.
#[derive(Debug, Clone)]
pub struct Group {
    /// Examples of the subset (positions `0..n_sub` of a candidate's examples); the check
    /// examples follow.
    pub n_sub: usize,
    /// The current component's score on each position (subset, then check examples).
    pub current: Vec<f64>,
    /// The candidates' indices (into the caller's list) and text lengths.
    pub candidates: Vec<(usize, usize)>,
}

impl Group {
    fn current_sums(&self) -> (f64, f64) {
        let (sub, check) = self.current.split_at(self.n_sub.min(self.current.len()));
        (sub.iter().sum(), check.iter().sum())
    }

    /// The order positions are scored in (see the module docs).
    pub fn order(&self) -> Vec<usize> {
        let n = self.current.len();
        let solved = |p: usize| self.current[p] >= 1.0 - EPS;
        let sub = 0..self.n_sub.min(n);
        let check = self.n_sub.min(n)..n;
        let mut order: Vec<usize> = sub.clone().filter(|&p| !solved(p)).collect();
        order.extend(sub.filter(|&p| solved(p)));
        order.extend(check.clone().filter(|&p| solved(p)));
        order.extend(check.filter(|&p| !solved(p)));
        order
    }
}

/// What is known of one candidate after some rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored<T> {
    /// The outcome at each position, `None` where it was not scored.
    pub outcomes: Vec<Option<T>>,
    /// Positions scored before the candidate was dropped; `None` when it was scored on all.
    pub dropped_after: Option<usize>,
}

impl<T: Clone> Scored<T> {
    /// Every outcome, when the candidate was scored on all of its examples.
    pub fn complete(&self) -> Option<Vec<T>> {
        self.outcomes.iter().cloned().collect()
    }
}

/// Bounds of one candidate's final gain and check delta.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    gain: (f64, f64),
    check: (f64, f64),
    len: usize,
}

/// The bounds from the scores known so far.
fn bounds(group: &Group, scores: &[Option<f64>], len: usize) -> Bounds {
    let (cur_sub, cur_check) = group.current_sums();
    let (mut sub, mut sub_left, mut check, mut check_left) = (0.0, 0.0, 0.0, 0.0);
    for (p, s) in scores.iter().enumerate() {
        let in_sub = p < group.n_sub;
        match (s, in_sub) {
            (Some(v), true) => sub += v,
            (None, true) => sub_left += 1.0,
            (Some(v), false) => check += v,
            (None, false) => check_left += 1.0,
        }
    }
    Bounds {
        gain: (sub - cur_sub, sub + sub_left - cur_sub),
        check: (check - cur_check, check + check_left - cur_check),
        len,
    }
}

/// Whether `b` (certainly acceptable) beats `c` however their remaining examples go.
fn dominates(b: &Bounds, bi: usize, c: &Bounds, ci: usize) -> bool {
    let (lo, hi) = (b.gain.0, c.gain.1);
    lo > hi + EPS || ((lo - hi).abs() <= EPS && (b.len, bi) < (c.len, ci))
}

/// Which of `alive` candidates (indices into `known`) may still be the one accepted.
fn keep(
    rule: AcceptRule,
    min_gain: f64,
    group: &Group,
    known: &[Vec<Option<f64>>],
    alive: &[usize],
) -> Vec<usize> {
    let b: Vec<Bounds> = alive
        .iter()
        .map(|&k| bounds(group, &known[k], group.candidates[k].1))
        .collect();
    let certain: Vec<bool> = b
        .iter()
        .map(|x| accepts(rule, min_gain, x.gain.0, x.check.0))
        .collect();
    (0..alive.len())
        .filter(|&c| {
            accepts(rule, min_gain, b[c].gain.1, b[c].check.1)
                && !(0..alive.len()).any(|o| o != c && certain[o] && dominates(&b[o], o, &b[c], c))
        })
        .map(|c| alive[c])
        .collect()
}

/// Scores every group's candidates in [`ROUNDS`], dropping those that cannot be accepted.
///
/// `run` gets one job per candidate still in the race, `(group, candidate within the
/// group, positions to score)`, and returns their outcomes in job order (one batch per
/// round); `score` reads an outcome's score. With `halving` off every candidate is scored
/// on every position in one round. Results are per group, per candidate.
pub fn evaluate<T: Clone>(
    rule: AcceptRule,
    min_gain: f64,
    groups: &[Group],
    halving: bool,
    mut run: impl FnMut(&[(usize, usize, Vec<usize>)]) -> Vec<Vec<T>>,
    score: impl Fn(&T) -> f64,
) -> Vec<Vec<Scored<T>>> {
    let mut out: Vec<Vec<Scored<T>>> = groups
        .iter()
        .map(|g| {
            vec![
                Scored {
                    outcomes: vec![None; g.current.len()],
                    dropped_after: None,
                };
                g.candidates.len()
            ]
        })
        .collect();
    let orders: Vec<Vec<usize>> = groups.iter().map(Group::order).collect();
    let mut alive: Vec<Vec<usize>> = groups
        .iter()
        .map(|g| (0..g.candidates.len()).collect())
        .collect();
    let rounds: &[f64] = if halving { &ROUNDS } else { &[1.0] };
    let mut done = vec![0usize; groups.len()];
    for &fraction in rounds {
        let mut jobs = Vec::new();
        let mut upto = vec![0usize; groups.len()];
        for (g, order) in orders.iter().enumerate() {
            upto[g] = slice_end(order.len(), fraction);
            if upto[g] <= done[g] {
                continue;
            }
            for &c in &alive[g] {
                jobs.push((g, c, order[done[g]..upto[g]].to_vec()));
            }
        }
        if jobs.is_empty() {
            continue;
        }
        let results = run(&jobs);
        for ((g, c, positions), outcomes) in jobs.iter().zip(results) {
            for (&p, o) in positions.iter().zip(outcomes) {
                out[*g][*c].outcomes[p] = Some(o);
            }
        }
        for (g, group) in groups.iter().enumerate() {
            done[g] = done[g].max(upto[g]);
            if done[g] >= orders[g].len() {
                continue;
            }
            let known: Vec<Vec<Option<f64>>> = out[g]
                .iter()
                .map(|s| s.outcomes.iter().map(|o| o.as_ref().map(&score)).collect())
                .collect();
            let kept = keep(rule, min_gain, group, &known, &alive[g]);
            for &c in &alive[g] {
                if !kept.contains(&c) {
                    out[g][c].dropped_after = Some(done[g]);
                }
            }
            alive[g] = kept;
        }
    }
    out
}

/// The candidate accepted among fully scored ones, `(gain, check delta, text length)`
/// each: the acceptable one with the largest gain, ties to the shorter text, then to the
/// earlier candidate; `None` when none is acceptable.
pub fn pick(
    rule: AcceptRule,
    min_gain: f64,
    candidates: &[Option<(f64, f64, usize)>],
) -> Option<usize> {
    let mut best: Option<(f64, usize, usize)> = None;
    for (k, c) in candidates.iter().enumerate() {
        let Some((gain, check, len)) = *c else {
            continue;
        };
        if !accepts(rule, min_gain, gain, check) {
            continue;
        }
        let better = match best {
            None => true,
            Some((g, l, _)) => gain > g + EPS || ((gain - g).abs() <= EPS && len < l),
        };
        if better {
            best = Some((gain, len, k));
        }
    }
    best.map(|(_, _, k)| k)
}

/// The acceptance rule: `gain` more solved examples on the subset (at least `min_gain`, and
/// more than none, under `Better`; none lost under `NotWorse`) and no fewer solved on the
/// check examples (`check_delta >= 0`).
pub fn accepts(rule: AcceptRule, min_gain: f64, gain: f64, check_delta: f64) -> bool {
    let real_gain = match rule {
        AcceptRule::Better => gain > 1e-9 && gain >= min_gain - 1e-9,
        AcceptRule::NotWorse => gain >= -1e-9,
    };
    real_gain && check_delta >= -1e-9
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// (gain, check delta, length) of a fully known candidate.
    fn totals(group: &Group, scores: &[f64], len: usize) -> (f64, f64, usize) {
        let known: Vec<Option<f64>> = scores.iter().copied().map(Some).collect();
        let b = bounds(group, &known, len);
        (b.gain.0, b.check.0, len)
    }

    /// Subset size, the current component's scores, each candidate's scores and text
    /// length, the margin, and whether the rule is `not_worse`.
    type Table = (usize, Vec<f64>, Vec<(Vec<f64>, usize)>, f64, bool);

    /// A random score table.
    fn table() -> impl Strategy<Value = Table> {
        let score = prop_oneof![Just(0.0), Just(1.0), Just(0.5)];
        (1usize..12, 0usize..6).prop_flat_map(move |(n_sub, n_check)| {
            let n = n_sub + n_check;
            (
                Just(n_sub),
                prop::collection::vec(score.clone(), n),
                prop::collection::vec((prop::collection::vec(score.clone(), n), 1usize..4), 1..6),
                prop_oneof![Just(0.0), Just(1.0), Just(2.0), Just(3.0)],
                any::<bool>(),
            )
        })
    }

    proptest! {
        #[test]
        fn halving_never_drops_the_candidate_the_full_evaluation_accepts(
            (n_sub, current, cands, min_gain, not_worse) in table()
        ) {
            let rule = if not_worse { AcceptRule::NotWorse } else { AcceptRule::Better };
            let group = Group {
                n_sub,
                current: current.clone(),
                candidates: cands.iter().enumerate().map(|(k, (_, len))| (k, *len)).collect(),
            };
            let full: Vec<Option<(f64, f64, usize)>> = cands
                .iter()
                .map(|(s, len)| Some(totals(&group, s, *len)))
                .collect();
            let want = pick(rule, min_gain, &full);

            let mut scored_positions = 0;
            let got = evaluate(
                rule,
                min_gain,
                std::slice::from_ref(&group),
                true,
                |jobs| {
                    jobs.iter()
                        .map(|(_, c, positions)| {
                            scored_positions += positions.len();
                            positions.iter().map(|&p| cands[*c].0[p]).collect()
                        })
                        .collect()
                },
                |s: &f64| *s,
            );
            let halved: Vec<Option<(f64, f64, usize)>> = got[0]
                .iter()
                .zip(&cands)
                .map(|(s, (_, len))| s.complete().map(|sc| totals(&group, &sc, *len)))
                .collect();
            prop_assert_eq!(pick(rule, min_gain, &halved), want);
            // Whatever was dropped was scored on fewer positions than all.
            for s in &got[0] {
                prop_assert_eq!(s.dropped_after.is_some(), s.complete().is_none());
            }
            prop_assert!(scored_positions <= cands.len() * current.len());
        }
    }

    #[test]
    fn hopeless_candidates_stop_early_and_a_sure_winner_stops_the_rest() {
        // Eight subset examples the current component fails; candidate 0 fails the first
        // quarter and can no longer gain 8 (min_gain 8); candidate 1 solves everything.
        let group = Group {
            n_sub: 8,
            current: vec![0.0; 8],
            candidates: vec![(0, 10), (1, 10)],
        };
        let table = [vec![0.0; 8], vec![1.0; 8]];
        let mut rounds = 0;
        let got = evaluate(
            AcceptRule::Better,
            8.0,
            std::slice::from_ref(&group),
            true,
            |jobs| {
                rounds += 1;
                jobs.iter()
                    .map(|(_, c, ps)| ps.iter().map(|&p| table[*c][p]).collect())
                    .collect()
            },
            |s: &f64| *s,
        );
        assert_eq!(got[0][0].dropped_after, Some(2));
        assert!(got[0][1].complete().is_some());
        assert_eq!(rounds, 3);

        // Without halving: one round, nothing dropped.
        let mut rounds = 0;
        let got = evaluate(
            AcceptRule::Better,
            8.0,
            std::slice::from_ref(&group),
            false,
            |jobs| {
                rounds += 1;
                jobs.iter()
                    .map(|(_, c, ps)| ps.iter().map(|&p| table[*c][p]).collect())
                    .collect()
            },
            |s: &f64| *s,
        );
        assert_eq!(rounds, 1);
        assert!(got[0].iter().all(|s| s.complete().is_some()));
    }

    #[test]
    fn the_order_scores_where_gains_and_losses_show_first() {
        let group = Group {
            n_sub: 4,
            current: vec![1.0, 0.0, 1.0, 0.5, 0.0, 1.0],
            candidates: vec![],
        };
        assert_eq!(group.order(), vec![1, 3, 0, 2, 5, 4]);
    }

    #[test]
    fn acceptance_needs_a_real_gain_and_no_loss_outside() {
        // A one-example gain is noise at min_gain = 2.
        assert!(!accepts(AcceptRule::Better, 2.0, 1.0, 0.0));
        assert!(accepts(AcceptRule::Better, 2.0, 2.0, 0.0));
        assert!(accepts(AcceptRule::Better, 2.0, 5.0, 1.0));
        // Worse on the check examples outside the subset: rejected whatever the gain.
        assert!(!accepts(AcceptRule::Better, 2.0, 5.0, -1.0));
        // Better always needs some gain, even with min_gain = 0.
        assert!(!accepts(AcceptRule::Better, 0.0, 0.0, 0.0));
        assert!(accepts(AcceptRule::Better, 0.0, 0.5, 0.0));
        assert!(accepts(AcceptRule::NotWorse, 2.0, 0.0, 0.0));
        assert!(!accepts(AcceptRule::NotWorse, 2.0, -1.0, 0.0));
    }
}
