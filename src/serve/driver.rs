//! The engine thread: one dedicated std thread that owns the stepping of the scheduler.
//!
//! Why a thread of its own and not tokio: a forward step is tens to hundreds of
//! milliseconds of CPU work fanned out over the engine's own thread team; on a tokio
//! worker it would stall every other connection that worker serves, and `spawn_blocking`
//! per request would park one pool thread per request on the scheduler lock. So HTTP
//! handlers only send [`Job`]s over a channel and await their sequence's events; this
//! thread submits the jobs to the engine, runs [`Engine::step`] while any sequence is
//! waiting or running (so every client's sequences batch together and share cached
//! prefixes), and routes each finished sequence's result back. It sleeps on the channel
//! when there is nothing to do.
//!
//! A client that goes away drops its event receiver; before each step the thread sets the
//! cancel flag of every sequence whose receiver is gone, so the scheduler frees its blocks.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::generate::{Completion, Engine, GenerationRequest};
use crate::engine::scheduler::{Pending, CANCELLED};
use crate::error::{Error, Result};

/// What a handler hears about one of its sequences.
#[derive(Debug)]
pub enum SeqEvent {
    /// More text of choice `choice` (only for streamed jobs).
    Text { choice: usize, text: String },
    /// Choice `choice` finished, or failed.
    Done {
        choice: usize,
        result: Result<Completion>,
    },
}

/// One sequence to generate.
pub struct Job {
    pub prompt: Vec<u32>,
    pub request: GenerationRequest,
    pub choice: usize,
    /// Send text as it is generated.
    pub stream: bool,
    pub events: UnboundedSender<SeqEvent>,
}

/// Counters the handlers read without touching the engine's lock.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sequences accepted and not yet answered (the queue bound applies to these).
    pub in_flight: AtomicUsize,
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_used_blocks: AtomicUsize,
    pub kv_cached_blocks: AtomicUsize,
    pub kv_total_blocks: AtomicUsize,
    /// Sequences answered since the start, and those cancelled.
    pub finished: AtomicUsize,
    pub cancelled: AtomicUsize,
}

impl Counters {
    /// Takes room for `n` sequences if at most `limit` would then be in flight.
    pub fn reserve(&self, n: usize, limit: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                now.checked_add(n).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    /// Gives back room for `n` sequences.
    pub fn release(&self, n: usize) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_sub(n))
            });
    }
}

/// Where a submitted sequence's result goes.
struct Route {
    events: UnboundedSender<SeqEvent>,
    choice: usize,
    cancel: Arc<AtomicBool>,
}

/// Starts the engine thread; it ends once `jobs` is closed and every sequence is answered.
pub fn spawn(
    engine: Arc<Engine>,
    counters: Arc<Counters>,
) -> std::io::Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("fgo-engine".into())
        .spawn(move || Driver::new(engine, counters).run(rx))?;
    Ok((tx, handle))
}

struct Driver {
    engine: Arc<Engine>,
    counters: Arc<Counters>,
    routes: HashMap<usize, Route>,
    next_id: usize,
    replies: mpsc::Sender<(usize, Result<Completion>)>,
    answers: Receiver<(usize, Result<Completion>)>,
    block_size: usize,
}

impl Driver {
    fn new(engine: Arc<Engine>, counters: Arc<Counters>) -> Self {
        let (replies, answers) = mpsc::channel();
        let block_size = engine.block_size();
        Self {
            engine,
            counters,
            routes: HashMap::new(),
            next_id: 0,
            replies,
            answers,
            block_size,
        }
    }

    fn run(mut self, jobs: Receiver<Job>) {
        let mut open = true;
        loop {
            if self.routes.is_empty() {
                self.publish();
                if !open {
                    return;
                }
                // Idle: sleep until a job comes.
                match jobs.recv() {
                    Ok(job) => self.submit(job),
                    Err(_) => return,
                }
            }
            while open {
                match jobs.try_recv() {
                    Ok(job) => self.submit(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            for route in self.routes.values() {
                if route.events.is_closed() {
                    route.cancel.store(true, Ordering::Relaxed);
                }
            }
            let stepped = catch_unwind(AssertUnwindSafe(|| self.engine.step()));
            let worked = match stepped {
                Ok(worked) => worked,
                Err(_) => {
                    tracing::error!("a forward step panicked; failing its sequences");
                    self.fail_all("the engine failed while generating");
                    true
                }
            };
            self.route_answers();
            self.publish();
            if !worked && !self.routes.is_empty() {
                // No work but answers owed: they are on their way; wait for one.
                if let Ok((id, result)) = self.answers.recv_timeout(Duration::from_millis(20)) {
                    self.route(id, result);
                }
            }
        }
    }

    fn submit(&mut self, job: Job) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let cancel = Arc::new(AtomicBool::new(false));
        // The index in the reply channel is the route's id.
        let mut pending = Pending::new(
            (self.replies.clone(), id),
            job.prompt,
            job.request,
            self.block_size,
        )
        .with_cancel(cancel.clone());
        if job.stream {
            let events = job.events.clone();
            let choice = job.choice;
            pending = pending.with_text_sink(Box::new(move |text| {
                events
                    .send(SeqEvent::Text {
                        choice,
                        text: text.to_string(),
                    })
                    .is_ok()
            }));
        }
        self.routes.insert(
            id,
            Route {
                events: job.events,
                choice: job.choice,
                cancel,
            },
        );
        self.engine.submit(pending);
    }

    fn route_answers(&mut self) {
        while let Ok((id, result)) = self.answers.try_recv() {
            self.route(id, result);
        }
    }

    fn route(&mut self, id: usize, result: Result<Completion>) {
        let Some(route) = self.routes.remove(&id) else {
            return;
        };
        self.counters.release(1);
        self.counters.finished.fetch_add(1, Ordering::Relaxed);
        let cancelled = matches!(&result, Err(Error::Request(m)) if m == CANCELLED);
        if cancelled || route.cancel.load(Ordering::Relaxed) {
            self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        let _ = route.events.send(SeqEvent::Done {
            choice: route.choice,
            result,
        });
    }

    /// Answers every sequence with an error and cancels it in the scheduler.
    fn fail_all(&mut self, message: &str) {
        for (_, route) in self.routes.drain() {
            route.cancel.store(true, Ordering::Relaxed);
            self.counters.release(1);
            let _ = route.events.send(SeqEvent::Done {
                choice: route.choice,
                result: Err(Error::Request(message.to_string())),
            });
        }
    }

    fn publish(&self) {
        let load = self.engine.current_load();
        let c = &self.counters;
        c.waiting.store(load.waiting, Ordering::Relaxed);
        c.running.store(load.running, Ordering::Relaxed);
        c.kv_used_blocks
            .store(load.kv.used_blocks, Ordering::Relaxed);
        c.kv_cached_blocks
            .store(load.kv.cached_blocks, Ordering::Relaxed);
        c.kv_total_blocks.store(load.kv.n_blocks, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_bound_is_never_passed() {
        let c = Counters::default();
        assert!(c.reserve(2, 3));
        assert!(!c.reserve(2, 3));
        assert!(c.reserve(1, 3));
        assert!(!c.reserve(1, 3));
        assert!(!c.reserve(usize::MAX, usize::MAX));
        c.release(2);
        assert!(c.reserve(2, 3));
        c.release(10);
        assert_eq!(c.in_flight.load(Ordering::Relaxed), 0);
    }
}
