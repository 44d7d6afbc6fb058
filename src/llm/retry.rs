//! When to retry a failed HTTP request, and how long to wait first.
//!
//! Retries are bounded twice: by count and by the total time one request may spend
//! waiting on them. Each wait doubles from [`BASE_DELAY_S`] up to [`MAX_DELAY_S`] and is
//! drawn uniformly from its upper half (jitter), so that many requests failing together do
//! not all come back at the same moment.

use std::time::Duration;

use rand::Rng as _;

/// The first wait, in seconds.
pub const BASE_DELAY_S: f64 = 0.25;

/// The longest single wait, in seconds.
pub const MAX_DELAY_S: f64 = 8.0;

/// The bounds on retrying one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Seconds all waits of one request may add up to.
    pub retry_time_s: f64,
}

impl RetryPolicy {
    /// The upper bound of the wait before retry number `retry` (from 0).
    pub fn ceiling(retry: u32) -> f64 {
        (BASE_DELAY_S * 2f64.powi(retry.min(30) as i32)).min(MAX_DELAY_S)
    }

    /// The wait before retry number `retry` (from 0), given the seconds already waited, or
    /// `None` when the request must give up. `hint_s` is a server's `Retry-After`, used
    /// when it is longer than the drawn wait (but never beyond [`MAX_DELAY_S`]).
    pub fn delay(&self, retry: u32, waited_s: f64, hint_s: Option<f64>) -> Option<Duration> {
        if retry >= self.retries {
            return None;
        }
        let ceiling = Self::ceiling(retry);
        let mut wait = rand::rng().random_range(ceiling / 2.0..=ceiling);
        if let Some(hint) = hint_s.filter(|h| h.is_finite() && *h > 0.0) {
            wait = wait.max(hint.min(MAX_DELAY_S));
        }
        let left = self.retry_time_s - waited_s;
        if left <= 0.0 {
            return None;
        }
        Some(Duration::from_secs_f64(wait.min(left)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_within_their_bounds_with_jitter() {
        let policy = RetryPolicy {
            retries: 20,
            retry_time_s: 1e6,
        };
        for retry in 0..20 {
            let ceiling = RetryPolicy::ceiling(retry);
            assert!(ceiling <= MAX_DELAY_S);
            for _ in 0..50 {
                let d = policy
                    .delay(retry, 0.0, None)
                    .expect("allowed")
                    .as_secs_f64();
                assert!(
                    d >= ceiling / 2.0 - 1e-9 && d <= ceiling + 1e-9,
                    "{retry}: {d}"
                );
            }
        }
        assert_eq!(RetryPolicy::ceiling(0), BASE_DELAY_S);
        assert_eq!(RetryPolicy::ceiling(1), 2.0 * BASE_DELAY_S);
        assert_eq!(RetryPolicy::ceiling(100), MAX_DELAY_S);
    }

    #[test]
    fn retries_stop_at_the_count_and_the_time_budget() {
        let policy = RetryPolicy {
            retries: 3,
            retry_time_s: 1.0,
        };
        assert!(policy.delay(2, 0.0, None).is_some());
        assert!(policy.delay(3, 0.0, None).is_none(), "count");
        assert!(policy.delay(0, 1.0, None).is_none(), "time");
        let last = policy.delay(2, 0.9, None).expect("some time left");
        assert!(last.as_secs_f64() <= 0.1 + 1e-9, "{last:?}");
        let none = RetryPolicy {
            retries: 0,
            retry_time_s: 100.0,
        };
        assert!(none.delay(0, 0.0, None).is_none());
    }

    #[test]
    fn a_retry_after_hint_lengthens_the_wait_up_to_the_cap() {
        let policy = RetryPolicy {
            retries: 5,
            retry_time_s: 100.0,
        };
        let d = policy.delay(0, 0.0, Some(3.0)).unwrap().as_secs_f64();
        assert!((3.0..=3.0 + 1e-9).contains(&d), "{d}");
        let d = policy.delay(0, 0.0, Some(3600.0)).unwrap().as_secs_f64();
        assert!(d <= MAX_DELAY_S + 1e-9, "{d}");
        let d = policy.delay(0, 0.0, Some(f64::NAN)).unwrap().as_secs_f64();
        assert!(d <= BASE_DELAY_S + 1e-9, "{d}");
    }
}
