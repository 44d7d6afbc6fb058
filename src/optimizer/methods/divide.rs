//! Dividing the training trajectories into subsets (always a partition, seeded).
//!
//! - `random`: a seeded shuffle dealt into `k` near-equal subsets.
//! - `stratified`: failures and successes shuffled separately and dealt round-robin, so
//!   every subset gets its share of both.
//! - `clustered`: failures ordered by a failure signature (engine error, empty answer, answer
//!   too high / too low / otherwise wrong, reply cut off) and cut into `k` runs, so similar
//!   failures land together; successes are dealt round-robin.

use crate::optimizer::data::metric::last_number;
use crate::optimizer::data::rng::Rng;
use crate::optimizer::data::task::DivideStrategy;
use crate::optimizer::exec::agent::Outcome;

/// How many subsets `n` examples make.
pub fn subset_count(n: usize, subset_size: Option<usize>, subset_count: Option<usize>) -> usize {
    let k = match (subset_size, subset_count) {
        (Some(s), _) => n.div_ceil(s.max(1)),
        (None, Some(c)) => c,
        (None, None) => 4,
    };
    k.clamp(1, n.max(1))
}

/// The fewest subsets whose trajectories fit `budget` tokens each (`tokens[i]` is the size
/// of trajectory `i` as shown), for the division `strategy` and `seed` would make; one
/// subset per example when even that does not fit.
pub fn sized_count(
    outcomes: &[Outcome],
    tokens: &[usize],
    budget: usize,
    strategy: DivideStrategy,
    seed: u64,
) -> usize {
    let n = outcomes.len();
    let total: usize = tokens.iter().sum();
    let first = total.div_ceil(budget.max(1)).clamp(1, n.max(1));
    (first..=n.max(1))
        .find(|&k| {
            divide(outcomes, k, strategy, seed).iter().all(|part| {
                part.iter()
                    .map(|&i| tokens.get(i).copied().unwrap_or(0))
                    .sum::<usize>()
                    <= budget
            })
        })
        .unwrap_or(n.max(1))
}

/// Divides the indices `0..outcomes.len()` into `k` non-empty subsets (each sorted).
pub fn divide(
    outcomes: &[Outcome],
    k: usize,
    strategy: DivideStrategy,
    seed: u64,
) -> Vec<Vec<usize>> {
    let n = outcomes.len();
    let k = k.clamp(1, n.max(1));
    let mut rng = Rng::derived(seed, "divide");
    let mut subsets: Vec<Vec<usize>> = vec![Vec::new(); k];
    match strategy {
        DivideStrategy::Random => {
            let mut idx: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut idx);
            for (i, chunk) in chunks(&idx, k).into_iter().enumerate() {
                subsets[i] = chunk;
            }
        }
        DivideStrategy::Stratified => {
            let (mut fail, mut ok): (Vec<usize>, Vec<usize>) =
                (0..n).partition(|&i| !outcomes[i].solved());
            rng.shuffle(&mut fail);
            rng.shuffle(&mut ok);
            for (j, i) in fail.into_iter().chain(ok).enumerate() {
                subsets[j % k].push(i);
            }
        }
        DivideStrategy::Clustered => {
            let (mut fail, mut ok): (Vec<usize>, Vec<usize>) =
                (0..n).partition(|&i| !outcomes[i].solved());
            rng.shuffle(&mut fail);
            rng.shuffle(&mut ok);
            // Stable sort keeps the shuffled order within a signature.
            fail.sort_by_key(|&i| signature(&outcomes[i]));
            for (i, chunk) in chunks(&fail, k).into_iter().enumerate() {
                subsets[i] = chunk;
            }
            // Successes go to the smallest subsets first so sizes stay balanced.
            for i in ok {
                let target = (0..k).min_by_key(|&s| (subsets[s].len(), s)).unwrap_or(0);
                subsets[target].push(i);
            }
        }
    }
    for s in &mut subsets {
        s.sort_unstable();
    }
    subsets.retain(|s| !s.is_empty());
    subsets
}

/// Cuts `items` into `k` contiguous runs whose sizes differ by at most one.
fn chunks(items: &[usize], k: usize) -> Vec<Vec<usize>> {
    let n = items.len();
    (0..k)
        .map(|i| items[i * n / k..(i + 1) * n / k].to_vec())
        .collect()
}

/// A coarse kind of failure.
fn signature(o: &Outcome) -> u8 {
    if o.error.is_some() {
        return 0;
    }
    if o.answer.trim().is_empty() {
        return 1;
    }
    match (last_number(&o.answer), last_number(&o.expected)) {
        (Some(a), Some(e)) if a > e => 2,
        (Some(a), Some(e)) if a < e => 3,
        _ if o.trajectory.len() > 4 * o.expected.len().max(50) => 4,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn outcomes(scores: &[f64]) -> Vec<Outcome> {
        scores
            .iter()
            .enumerate()
            .map(|(i, s)| Outcome {
                id: format!("e{i}"),
                score: *s,
                answer: format!("{}", i % 7),
                expected: "3".into(),
                input: String::new(),
                trajectory: String::new(),
                error: None,
                feedback: None,
                cut_off: false,
            })
            .collect()
    }

    proptest! {
        #[test]
        fn division_is_a_partition(scores in proptest::collection::vec(0u8..2, 1..60), k in 1usize..10, seed in 0u64..1000, strat in 0usize..3) {
            let scores: Vec<f64> = scores.into_iter().map(f64::from).collect();
            let strategy = [DivideStrategy::Random, DivideStrategy::Stratified, DivideStrategy::Clustered][strat];
            let subsets = divide(&outcomes(&scores), k, strategy, seed);
            let mut all: Vec<usize> = subsets.iter().flatten().copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..scores.len()).collect::<Vec<_>>());
            prop_assert!(subsets.iter().all(|s| !s.is_empty()));
            prop_assert_eq!(subsets.len(), k.min(scores.len()));
            prop_assert_eq!(&subsets, &divide(&outcomes(&scores), k, strategy, seed));
        }
    }

    #[test]
    fn stratified_spreads_failures() {
        let scores: Vec<f64> = (0..12).map(|i| if i < 6 { 0.0 } else { 1.0 }).collect();
        let o = outcomes(&scores);
        for s in divide(&o, 3, DivideStrategy::Stratified, 1) {
            assert_eq!(s.iter().filter(|&&i| !o[i].solved()).count(), 2);
        }
        assert_eq!(subset_count(10, Some(3), None), 4);
        assert_eq!(subset_count(2, None, Some(5)), 2);
    }

    #[test]
    fn division_is_sized_to_the_prompt_budget() {
        let o = outcomes(&[0.0; 12]);
        let tokens = vec![100; 12];
        // Everything fits one prompt: one subset (FGO is then all-at-once).
        assert_eq!(sized_count(&o, &tokens, 1200, DivideStrategy::Random, 0), 1);
        assert_eq!(sized_count(&o, &tokens, 5000, DivideStrategy::Random, 0), 1);
        // 1200 tokens in prompts of 500: three subsets of four.
        assert_eq!(sized_count(&o, &tokens, 500, DivideStrategy::Random, 0), 3);
        // Uneven sizes: the division must really fit, not just on average.
        let mut uneven = vec![10; 12];
        uneven[0] = 400;
        let k = sized_count(&o, &uneven, 420, DivideStrategy::Random, 3);
        for part in divide(&o, k, DivideStrategy::Random, 3) {
            assert!(part.iter().map(|&i| uneven[i]).sum::<usize>() <= 420);
        }
        // Nothing fits: one example per subset.
        assert_eq!(sized_count(&o, &tokens, 50, DivideStrategy::Random, 0), 12);
    }
}
