//! A team of threads for the forward pass's parallel regions, kept awake by spinning.
//!
//! Why not rayon here: one decoded token of a small model is a few hundred short parallel
//! regions (one per matrix product, one per attention call), each tens of microseconds
//! long. Rayon parks idle workers on a futex, and a call from outside its pool blocks the
//! caller until a worker wakes: measured here, a one-thread `install` around a 1536 x 576
//! Q4_1 product took 196 µs against 107 µs for the product alone. The team's helpers
//! instead spin on a shared word for a while after each region, so the next region starts
//! at once; past 50 µs they yield their core to any other runnable thread between checks
//! (candle's and rayon's pools still run some operations between regions), and after 2 ms
//! they park and cost nothing.
//!
//! The calling thread always works too and never waits for a parked helper to wake: it
//! claims tasks itself, so a late helper only finds less to do. A team of N threads has
//! N - 1 helpers. While one caller runs a region, another caller (a concurrent forward
//! pass, or a task of the region itself) runs its region inline on its own thread.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// How long an idle helper spins without yielding its core to other threads.
const SPIN_ALONE: Duration = Duration::from_micros(50);

/// The most tasks one region may have (the task index and count share one atomic word).
pub const MAX_TASKS: usize = u16::MAX as usize;

/// The region being run: its task function.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
}

/// One atomic word: generation (32 bits), task count (16), next unclaimed task (16). A
/// helper's compare-and-swap on it claims a task only within the generation it read, so a
/// slow helper can never run a task of a finished region.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Claim(u64);

impl Claim {
    fn new(generation: u32, tasks: usize) -> Self {
        Claim((u64::from(generation) << 32) | ((tasks as u64) << 16))
    }
    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    fn tasks(self) -> usize {
        ((self.0 >> 16) & 0xFFFF) as usize
    }
    fn next(self) -> usize {
        (self.0 & 0xFFFF) as usize
    }
}

struct Shared {
    claim: AtomicU64,
    /// Tasks of the current generation finished.
    done: AtomicUsize,
    /// The current generation's [`Job`], valid while any of its tasks is unfinished.
    job: AtomicPtr<()>,
    /// Helpers parked (or about to park) on `wake`.
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
}

impl Shared {
    /// Claims and runs tasks of `generation` until none is left; returns how many it ran.
    fn work(&self, generation: u32) -> usize {
        let mut ran = 0;
        let mut current = Claim(self.claim.load(Ordering::Acquire));
        while current.generation() == generation && current.next() < current.tasks() {
            let claimed = Claim(current.0 + 1);
            match self.claim.compare_exchange_weak(
                current.0,
                claimed.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // SAFETY: task `current.next()` of this generation is claimed and not
                    // finished, so the caller is still inside `run`, waiting for it, and
                    // the job it published before this generation began is alive.
                    let job = unsafe { &*(self.job.load(Ordering::Acquire) as *const Job<'_>) };
                    (job.f)(current.next());
                    self.done.fetch_add(1, Ordering::Release);
                    ran += 1;
                    current = Claim(self.claim.load(Ordering::Acquire));
                }
                Err(actual) => current = Claim(actual),
            }
        }
        ran
    }

    fn helper_loop(&self) {
        let mut seen = Claim(self.claim.load(Ordering::Acquire)).generation();
        loop {
            let started = Instant::now();
            let mut spins = 0u32;
            let generation = loop {
                let generation = Claim(self.claim.load(Ordering::Acquire)).generation();
                if generation != seen {
                    break generation;
                }
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(256) {
                    let idle = started.elapsed();
                    if idle > SPIN {
                        self.park_until_changed(seen);
                    } else if idle > SPIN_ALONE {
                        // Other threads may want this core (candle's and rayon's pools run
                        // between regions): keep watching, but let them run first.
                        std::thread::yield_now();
                    }
                }
            };
            seen = generation;
            self.work(generation);
        }
    }

    fn park_until_changed(&self, seen: u32) {
        let mut guard = self.park.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        while Claim(self.claim.load(Ordering::SeqCst)).generation() == seen {
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A fixed set of threads that run parallel regions: `run(tasks, f)` calls `f(0..tasks)`,
/// each index once, spread over the calling thread and the helpers.
pub struct Team {
    shared: Arc<Shared>,
    /// Held by the caller whose region is running; others run theirs inline.
    running: Mutex<u32>,
    threads: usize,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Team {
    /// A team of `threads` threads in all (the caller and `threads - 1` helpers).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(Claim::new(0, 0).0),
            done: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
        });
        for i in 1..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fgo-team-{i}"))
                .spawn(move || shared.helper_loop())
                .expect("spawning a team thread");
        }
        Self {
            shared,
            running: Mutex::new(0),
            threads,
        }
    }

    /// Threads that share a region, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(i)` for every `i` in `0..tasks`, in parallel, and returns when all are done.
    /// Tasks should be a few times more than [`threads`](Self::threads) so that uneven
    /// progress evens out. A panic in a task aborts the process (a helper cannot unwind into
    /// the caller), so tasks must not panic.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks <= 1 || self.threads == 1 || tasks > MAX_TASKS {
            (0..tasks).for_each(f);
            return;
        }
        let Ok(mut generation) = self.running.try_lock() else {
            (0..tasks).for_each(f);
            return;
        };
        *generation = generation.wrapping_add(1);
        let shared = &*self.shared;
        let job = Job { f };
        shared.done.store(0, Ordering::Relaxed);
        shared
            .job
            .store(&job as *const Job<'_> as *mut (), Ordering::Release);
        shared
            .claim
            .store(Claim::new(*generation, tasks).0, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = shared.park.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        shared.work(*generation);
        let mut spins = 0u32;
        while shared.done.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) {
                // A helper holding a task may have lost its core to another process.
                std::thread::yield_now();
            }
        }
    }
}

/// An array that the tasks of one region share, each writing only its own elements.
pub struct Disjoint<T>(*mut T);

impl<T> Clone for Disjoint<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Disjoint<T> {}
// SAFETY: tasks write disjoint elements (the contract of `slice` and `write`).
unsafe impl<T: Send> Send for Disjoint<T> {}
unsafe impl<T: Send> Sync for Disjoint<T> {}

impl<T> Disjoint<T> {
    /// Shares `data` for the duration of a region (the borrow must outlive the region).
    pub fn new(data: &mut [T]) -> Self {
        Self(data.as_mut_ptr())
    }

    /// Elements `start..start + len`.
    ///
    /// # Safety
    /// In bounds of the array, and touched by no other task during the region.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }

    /// Writes element `index`.
    ///
    /// # Safety
    /// As [`slice`](Self::slice).
    pub unsafe fn write(&self, index: usize, value: T) {
        self.0.add(index).write(value);
    }
}

/// The process-wide team, sized like rayon's global pool (`--threads`) at first use.
pub fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| Team::new(rayon::current_num_threads()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Every index runs exactly once per region, over many back-to-back regions of varied
    /// sizes, including while helpers park between bursts.
    #[test]
    fn every_task_runs_once() {
        let team = Team::new(3);
        for round in 0..2000usize {
            let tasks = 1 + round % 37;
            let hits: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
            team.run(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "round {round}"
            );
            if round % 500 == 499 {
                std::thread::sleep(SPIN * 2);
            }
        }
    }

    /// Regions started from several threads at once and from inside a task all complete,
    /// each task once (the busy team runs the extra regions inline).
    #[test]
    fn concurrent_and_nested_regions_complete() {
        let team = Arc::new(Team::new(2));
        let total = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let (team, total) = (team.clone(), total.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        team.run(8, &|_| {
                            team.run(3, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().expect("caller thread");
        }
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 8 * 3);
    }
}
