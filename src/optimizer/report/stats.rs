//! Small-sample statistics for comparing methods over seeds and examples.
//!
//! Pure functions, no allocation beyond their results: the mean of a few values with a 95%
//! Student-t interval (scores over seeds), the Wilson 95% interval of a proportion, and a
//! paired comparison of two per-example score vectors (wins, losses, ties, the exact
//! two-sided McNemar p-value, and a seeded bootstrap interval of the mean difference).
//!
//! Every interval is two-sided at 95%. A score at or above `1 - 1e-9` counts as solved
//! ([`SOLVED`]). The bootstrap draws from [`Rng`], so the same seed and inputs give the same
//! interval on every machine.

use serde::{Deserialize, Serialize};

use crate::optimizer::data::rng::Rng;

/// A score at or above this solves its example.
pub const SOLVED: f64 = 1.0 - 1e-9;

/// The normal quantile of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// Two-sided 95% quantiles of Student's t for 1..=30 degrees of freedom.
const T95: [f64; 30] = [
    12.706_204_736,
    4.302_652_730,
    3.182_446_305,
    2.776_445_105,
    2.570_581_836,
    2.446_911_851,
    2.364_624_252,
    2.306_004_135,
    2.262_157_163,
    2.228_138_852,
    2.200_985_160,
    2.178_812_830,
    2.160_368_656,
    2.144_786_688,
    2.131_449_546,
    2.119_905_299,
    2.109_815_578,
    2.100_922_040,
    2.093_024_054,
    2.085_963_447,
    2.079_613_845,
    2.073_873_068,
    2.068_657_610,
    2.063_898_562,
    2.059_538_553,
    2.055_529_439,
    2.051_830_516,
    2.048_407_142,
    2.045_229_642,
    2.042_272_456,
];

/// The two-sided 95% quantile of Student's t with `df` degrees of freedom (`df >= 1`).
///
/// Exact to nine digits up to 30 degrees of freedom; above, the normal quantile plus the
/// first two terms of the Cornish-Fisher expansion (error below 1e-4).
pub fn t_quantile_95(df: usize) -> f64 {
    match df {
        0 => f64::INFINITY,
        1..=30 => T95[df - 1],
        _ => {
            let (z, n) = (Z95, df as f64);
            z + (z.powi(3) + z) / (4.0 * n)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n)
        }
    }
}

/// A mean and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The point estimate.
    pub mean: f64,
    /// Lower end of the 95% interval.
    pub low: f64,
    /// Upper end of the 95% interval.
    pub high: f64,
}

/// The mean of `values` with its 95% Student-t interval; `None` when `values` is empty.
///
/// One value gives a zero-width interval at the value (no spread can be estimated from it).
pub fn mean_t95(values: &[f64]) -> Option<Interval> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Some(Interval {
            mean,
            low: mean,
            high: mean,
        });
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t_quantile_95(n - 1) * (var / n as f64).sqrt();
    Some(Interval {
        mean,
        low: mean - half,
        high: mean + half,
    })
}

/// The Wilson 95% interval of `successes` out of `n`; `None` when `n` is zero.
pub fn wilson95(successes: usize, n: usize) -> Option<Interval> {
    if n == 0 {
        return None;
    }
    let (k, n) = (successes.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let center = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(Interval {
        mean: p,
        low: (center - half).max(0.0),
        high: (center + half).min(1.0),
    })
}

/// The exact two-sided McNemar p-value: a binomial test of `wins` against `losses` (the
/// discordant pairs) with probability one half, doubled and capped at 1.
///
/// No discordant pairs gives 1.
pub fn mcnemar_exact(wins: usize, losses: usize) -> f64 {
    let n = wins + losses;
    let k = wins.min(losses);
    // P(X <= k) for X ~ Binomial(n, 1/2), summed in log space so large n does not overflow.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// Two per-example score vectors compared pair by pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    /// Pairs compared.
    pub n: usize,
    /// Examples the first vector solves and the second does not.
    pub wins: usize,
    /// Examples the second vector solves and the first does not.
    pub losses: usize,
    /// Examples both solve or both fail.
    pub ties: usize,
    /// Mean of `a - b` over the pairs.
    pub mean_diff: f64,
    /// Exact two-sided McNemar p-value of `wins` against `losses`.
    pub mcnemar_p: f64,
    /// 95% percentile-bootstrap interval of the mean difference.
    pub diff_low: f64,
    /// Upper end of that interval.
    pub diff_high: f64,
}

/// Resamples drawn by [`paired`].
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// Compares `a` with `b` (scores in `[0, 1]`, the same examples in the same order);
/// `None` when the lengths differ or the vectors are empty.
///
/// The bootstrap draws [`BOOTSTRAP_RESAMPLES`] resamples of the pairs with replacement from
/// a generator seeded with `seed` and takes the 2.5th and 97.5th percentiles of their mean
/// differences.
pub fn paired(a: &[f64], b: &[f64], seed: u64) -> Option<Paired> {
    let n = a.len();
    if n == 0 || b.len() != n {
        return None;
    }
    let (mut wins, mut losses) = (0, 0);
    for (x, y) in a.iter().zip(b) {
        match (*x >= SOLVED, *y >= SOLVED) {
            (true, false) => wins += 1,
            (false, true) => losses += 1,
            _ => {}
        }
    }
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mean_diff = diffs.iter().sum::<f64>() / n as f64;
    let mut rng = Rng::derived(seed, "paired-bootstrap");
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| (0..n).map(|_| diffs[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    Some(Paired {
        n,
        wins,
        losses,
        ties: n - wins - losses,
        mean_diff,
        mcnemar_p: mcnemar_exact(wins, losses),
        diff_low: percentile(&means, 0.025),
        diff_high: percentile(&means, 0.975),
    })
}

/// The `q` quantile of sorted `values` by linear interpolation between order statistics.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn t_interval_matches_a_hand_computed_one() {
        // 0.5, 0.6, 0.7: mean 0.6, s = 0.1, half width t(2) * 0.1 / sqrt(3).
        let i = mean_t95(&[0.5, 0.6, 0.7]).expect("values");
        let half = 4.302_652_73 * 0.1 / 3f64.sqrt();
        assert!(close(i.mean, 0.6, 1e-12));
        assert!(close(i.high - i.mean, half, 1e-9), "{i:?}");
        assert!(close(i.mean - i.low, 0.248_413_8, 1e-6), "{i:?}");
        let one = mean_t95(&[0.25]).expect("one value");
        assert_eq!((one.low, one.mean, one.high), (0.25, 0.25, 0.25));
        assert!(mean_t95(&[]).is_none());
    }

    #[test]
    fn t_quantiles_table_and_beyond() {
        assert!(close(t_quantile_95(1), 12.706_204_736, 1e-9));
        assert!(close(t_quantile_95(9), 2.262_157_163, 1e-9));
        // Beyond the table: t(40) = 2.021075, t(120) = 1.979930.
        assert!(close(t_quantile_95(40), 2.021_075, 2e-4));
        assert!(close(t_quantile_95(120), 1.979_930, 1e-4));
        assert!(t_quantile_95(31) < t_quantile_95(30));
    }

    #[test]
    fn wilson_interval_known_values() {
        // 5 of 10: 0.5 +- 0.2634 around 0.5 (0.2366, 0.7634).
        let i = wilson95(5, 10).expect("n > 0");
        assert!(
            close(i.low, 0.236_593, 1e-5) && close(i.high, 0.763_407, 1e-5),
            "{i:?}"
        );
        // 0 of 10: (0, 0.2775).
        let i = wilson95(0, 10).expect("n > 0");
        assert_eq!(i.low, 0.0);
        assert!(close(i.high, 0.277_53, 1e-4), "{i:?}");
        assert!(wilson95(0, 0).is_none());
    }

    #[test]
    fn mcnemar_exact_values() {
        assert!(close(mcnemar_exact(10, 0), 2.0 / 1024.0, 1e-15));
        assert!(close(mcnemar_exact(0, 10), 2.0 / 1024.0, 1e-15));
        assert_eq!(mcnemar_exact(4, 4), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // 8 vs 2: 2 * (1 + 10 + 45) / 1024.
        assert!(close(mcnemar_exact(8, 2), 112.0 / 1024.0, 1e-15));
        // Large counts stay finite and small.
        let p = mcnemar_exact(700, 300);
        assert!(p > 0.0 && p < 1e-30, "{p}");
    }

    #[test]
    fn paired_counts_and_bootstrap() {
        let a = [1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 1.0, 0.0];
        let b = [0.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.0, 1.0];
        let p = paired(&a, &b, 3).expect("equal lengths");
        assert_eq!((p.n, p.wins, p.losses, p.ties), (8, 4, 1, 3));
        assert!(close(p.mean_diff, 3.0 / 8.0, 1e-12));
        assert!(close(p.mcnemar_p, 2.0 * 6.0 / 32.0, 1e-12));
        assert!(
            p.diff_low <= p.mean_diff && p.mean_diff <= p.diff_high,
            "{p:?}"
        );
        assert!(p.diff_low < p.diff_high);
        assert!(p.diff_low >= -1.0 && p.diff_high <= 1.0);
        assert_eq!(paired(&a, &b, 3), Some(p.clone()), "reproducible by seed");
        // Another seed draws other resamples (visible on continuous differences).
        let c = [0.13, 0.71, 0.29, 0.97, 0.55, 0.02, 0.83, 0.41];
        let zero = [0.0; 8];
        let (s1, s2) = (paired(&c, &zero, 1), paired(&c, &zero, 2));
        assert_ne!(
            s1.map(|p| (p.diff_low, p.diff_high)),
            s2.map(|p| (p.diff_low, p.diff_high))
        );
        // Scores just under 1 count as solved.
        let q = paired(&[1.0 - 1e-12], &[0.0], 0).expect("one pair");
        assert_eq!((q.wins, q.losses), (1, 0));
        assert!(paired(&a, &b[..3], 0).is_none());
        assert!(paired(&[], &[], 0).is_none());
    }

    #[test]
    fn identical_vectors_have_a_zero_interval() {
        let a = [0.0, 1.0, 1.0];
        let p = paired(&a, &a, 9).expect("pairs");
        assert_eq!((p.wins, p.losses, p.ties, p.mcnemar_p), (0, 0, 3, 1.0));
        assert_eq!((p.diff_low, p.mean_diff, p.diff_high), (0.0, 0.0, 0.0));
    }
}
