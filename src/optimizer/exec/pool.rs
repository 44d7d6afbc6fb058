//! Calls shared between the runs of a study or a comparison: the initial evaluation, which
//! every run with the same agent makes alike, is computed by whichever run asks first.
//!
//! Runs may go one after another (a later run borrows what the earlier ones recorded) or
//! side by side (a run that needs a call another run has in flight waits for its answer
//! instead of computing it again). Only successful calls of the shared method enter the
//! pool; a call whose run fails to answer it is released, and whoever waited for it
//! computes it itself.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::events::CallRecord;

/// What a run may do about a call (see [`CallPool::claim`]).
#[derive(Debug)]
pub enum Claim {
    /// Another run answered it: borrow the record.
    Done(Box<CallRecord>),
    /// Another run is computing it: [`CallPool::wait`] for it.
    Busy,
    /// Nobody has it: the asking run computes it, then publishes or releases it.
    Mine,
}

enum Entry {
    InFlight,
    Done(Box<CallRecord>),
}

/// The calls runs share, by key.
#[derive(Default)]
pub struct CallPool {
    entries: Mutex<HashMap<String, Entry>>,
    /// Signalled whenever a call in flight is published or released.
    changed: Condvar,
}

impl CallPool {
    /// The record of a finished call, if any run has published one.
    pub fn done(&self, key: &str) -> Option<CallRecord> {
        match self.lock().get(key) {
            Some(Entry::Done(record)) => Some((**record).clone()),
            _ => None,
        }
    }

    /// Takes `key` for the asking run unless another run has answered it or has it in
    /// flight. A run that gets [`Claim::Mine`] must [`publish`](Self::publish) or
    /// [`release`](Self::release) the key, or runs waiting for it wait forever.
    pub fn claim(&self, key: &str) -> Claim {
        let mut entries = self.lock();
        match entries.get(key) {
            Some(Entry::Done(record)) => Claim::Done(record.clone()),
            Some(Entry::InFlight) => Claim::Busy,
            None => {
                entries.insert(key.to_string(), Entry::InFlight);
                Claim::Mine
            }
        }
    }

    /// Records a successful call for every run; the first record of a key stays.
    pub fn publish(&self, record: &CallRecord) {
        let mut entries = self.lock();
        if !matches!(entries.get(&record.key), Some(Entry::Done(_))) {
            entries.insert(record.key.clone(), Entry::Done(Box::new(record.clone())));
            drop(entries);
            self.changed.notify_all();
        }
    }

    /// Gives up a claimed key that was not answered (an error, a stopped run), so that
    /// runs waiting for it compute it themselves. A published key is left as it is.
    pub fn release(&self, key: &str) {
        let mut entries = self.lock();
        if matches!(entries.get(key), Some(Entry::InFlight)) {
            entries.remove(key);
            drop(entries);
            self.changed.notify_all();
        }
    }

    /// Waits while another run has `key` in flight; returns its record, or `None` when
    /// that run released it unanswered.
    pub fn wait(&self, key: &str) -> Option<CallRecord> {
        let mut entries = self.lock();
        loop {
            match entries.get(key) {
                Some(Entry::InFlight) => {
                    entries = self
                        .changed
                        .wait(entries)
                        .unwrap_or_else(|p| p.into_inner())
                }
                Some(Entry::Done(record)) => return Some((**record).clone()),
                None => return None,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ChatRequest, Usage};
    use std::sync::Arc;

    fn record(key: &str) -> CallRecord {
        CallRecord {
            key: key.into(),
            method: "shared".into(),
            stage: "initial_eval".into(),
            role: "agent".into(),
            model: "m".into(),
            request: ChatRequest {
                messages: Vec::new(),
                params: Default::default(),
            },
            result: Err("x".into()),
            usage: Usage::default(),
            time_s: 0.0,
            run_elapsed_s: 0.0,
        }
    }

    #[test]
    fn a_claimed_key_is_busy_for_others_until_published_or_released() {
        let pool = Arc::new(CallPool::default());
        assert!(matches!(pool.claim("a"), Claim::Mine));
        assert!(matches!(pool.claim("a"), Claim::Busy));
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.wait("a"))
        };
        pool.publish(&record("a"));
        assert_eq!(waiter.join().unwrap().map(|r| r.key), Some("a".into()));
        assert!(matches!(pool.claim("a"), Claim::Done(_)));
        // A released key wakes its waiters empty-handed and can be claimed again.
        assert!(matches!(pool.claim("b"), Claim::Mine));
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.wait("b"))
        };
        pool.release("b");
        assert_eq!(waiter.join().unwrap(), None);
        assert!(matches!(pool.claim("b"), Claim::Mine));
        // Releasing a published key changes nothing.
        pool.release("a");
        assert!(pool.done("a").is_some());
    }
}
