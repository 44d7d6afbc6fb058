//! The recording call layer: every LLM call and agent command of a run goes through
//! [`Calls`].
//!
//! A call is keyed by a hash of (role, model identity, request): the identity
//! ([`Llm::identity`]) names the model by what it is (a file's hash, a served name and its
//! endpoints), not by what it is called. The layer answers, in order:
//! from the run-wide memo (the same input twice in a run is never computed twice), from the
//! records of an earlier session (a resumed run replays them and never repeats a finished
//! call), or live, submitting all remaining requests of a batch to the model in one
//! `complete` call and appending each result to the event log. Because the run's control flow
//! is a deterministic function of the seed and the call results, a resumed run reaches the
//! same state as an uninterrupted one.
//!
//! A failed append to the event log stops the run: no further model call or command is
//! made (their answers are the log's error), [`Calls::budget_hit`] reports the `event_log`
//! stop so that the optimization loops end at their next check, and
//! [`Calls::log_failure`] gives the error the run must end with.
//!
//! The ledger accounts every call: method, stage, role, tokens, time, and whether it was
//! live, replayed, a memo hit, or shared.
//!
//! Methods of one run may call concurrently (from their own threads): a request another
//! method already has in flight is waited for, not sent twice, and the engine batches the
//! methods' requests together. Accounting stays what each method would see alone: a memo
//! hit on a call the *same* method made before costs nothing, while a call first made by
//! another method (or by the shared initial evaluation) is `shared`: its tokens count for
//! the method (its budget, its cost table) as if it had made the call, but not again in the
//! run's total. So a method's tokens, budget stops and results do not depend on whether, or
//! how fast, the other method ran beside it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::llm::{ChatRequest, Completion, Llm, Usage};
use crate::optimizer::data::rng::stable_hash;
use crate::optimizer::data::task::BudgetSpec;
use crate::optimizer::exec::events::{CallRecord, CommandRecord, Event, EventLog};
use crate::optimizer::exec::pool::{CallPool, Claim};

/// Who makes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The agent being optimized.
    Agent,
    /// The optimizer (diagnosis, rewrite, merge).
    Optimizer,
}

impl Role {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Optimizer => "optimizer",
        }
    }
}

/// Where a call's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Live,
    Replayed,
    /// Answered by a call this method made before: free.
    Memo,
    /// Answered by a call another method made: counted for this method as if it had made
    /// it, not counted again in the run's total.
    Shared,
}

/// The method of calls made once for every method of a run (the initial evaluation).
pub const SHARED_METHOD: &str = "shared";

/// One accounted call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub method: String,
    pub stage: String,
    pub role: Role,
    pub source: Source,
    pub usage: Usage,
    pub time_s: f64,
}

/// The method and stage a call is made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    pub method: String,
    pub stage: String,
}

impl Ctx {
    /// A context.
    pub fn new(method: &str, stage: &str) -> Self {
        Self {
            method: method.into(),
            stage: stage.into(),
        }
    }
}

/// A budget that was reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetHit {
    /// `optimizer_tokens`, `agent_tokens` or `wall_time_s`; `event_log` when the event log
    /// could not be written (see [`Calls::log_failure`]).
    pub budget: String,
    pub limit: f64,
    pub used: f64,
}

impl BudgetHit {
    /// Whether the run may make no further agent calls: every budget but the optimizer's
    /// tokens (a method stopped by those still chooses on val and is scored).
    pub fn forbids_agent_calls(&self) -> bool {
        self.budget != "optimizer_tokens"
    }
}

struct State {
    memo: HashMap<String, Result<Completion, String>>,
    /// (method, key) pairs already accounted for that method.
    paid: HashSet<(String, String)>,
    /// Keys submitted live and not yet answered.
    in_flight: HashSet<String>,
    command_memo: HashMap<String, Result<Value, String>>,
    replay: HashMap<String, CallRecord>,
    /// Calls shared with other runs (see [`Calls::with_pool`]).
    pool: Option<Arc<CallPool>>,
    command_replay: HashMap<String, CommandRecord>,
    ledger: Vec<LedgerEntry>,
    log: EventLog,
}

/// Told `(finished, submitted)` for the live batch in flight: once when it is submitted
/// (with 0 finished) and again as each of its calls finishes.
pub type BatchObserver = Box<dyn Fn(usize, usize) + Send + Sync>;

/// The run-wide call layer.
pub struct Calls {
    state: Mutex<State>,
    /// Signalled whenever an in-flight call is answered.
    answered: Condvar,
    started: Instant,
    wall_offset_s: f64,
    observer: Option<BatchObserver>,
}

impl Calls {
    /// A layer over `log`, replaying the call and command records in `previous`.
    pub fn new(log: EventLog, previous: Vec<Event>) -> Self {
        let mut replay = HashMap::new();
        let mut command_replay = HashMap::new();
        let mut wall_offset_s: f64 = 0.0;
        for ev in previous {
            match ev {
                Event::Call(r) => {
                    wall_offset_s = wall_offset_s.max(r.run_elapsed_s);
                    replay.insert(r.key.clone(), *r);
                }
                Event::Command(r) => {
                    wall_offset_s = wall_offset_s.max(r.run_elapsed_s);
                    command_replay.insert(r.key.clone(), r);
                }
                _ => {}
            }
        }
        Self {
            state: Mutex::new(State {
                memo: HashMap::new(),
                paid: HashSet::new(),
                in_flight: HashSet::new(),
                command_memo: HashMap::new(),
                replay,
                pool: None,
                command_replay,
                ledger: Vec::new(),
                log,
            }),
            answered: Condvar::new(),
            started: Instant::now(),
            wall_offset_s,
            observer: None,
        }
    }

    /// Shares the calls of the shared method (the initial evaluation, which every run of a
    /// comparison or study with the same agent makes alike) with the other runs on `pool`:
    /// this run publishes the ones it makes, replays or borrows, answers a request another
    /// run has published from that run's record, and waits for one another run has in
    /// flight instead of computing it again. A borrowed answer is copied into this run's
    /// event log, so that a resume replays it from there, and is accounted as `shared` (its
    /// tokens count for the run's methods but not in its total). Records of other requests
    /// are never used.
    pub fn with_pool(self, pool: Arc<CallPool>) -> Self {
        self.lock().pool = Some(pool);
        self
    }

    /// Reports the progress of every live batch to `observer` (for progress bars).
    pub fn with_observer(mut self, observer: BatchObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// A layer that records nowhere and replays nothing.
    pub fn in_memory() -> Self {
        Self::new(EventLog::none(), Vec::new())
    }

    /// Wall seconds of the run so far, all sessions included.
    pub fn elapsed_s(&self) -> f64 {
        self.wall_offset_s + self.started.elapsed().as_secs_f64()
    }

    /// The key of an LLM call; `identity` is the model's [`Llm::identity`].
    pub fn key(role: Role, identity: &str, request: &ChatRequest) -> String {
        let body = serde_json::to_string(request).unwrap_or_default();
        stable_hash(format!("{}\n{}\n{}", role.name(), identity, body).as_bytes())
    }

    /// Completes `requests` on `llm`, answering from memo and replay where possible and
    /// submitting the rest in one batch. Results come back in request order.
    pub fn complete(
        &self,
        llm: &dyn Llm,
        ctx: &Ctx,
        role: Role,
        requests: &[ChatRequest],
    ) -> Vec<Result<Completion>> {
        let model = llm.name();
        let identity = llm.identity();
        let keys: Vec<String> = requests
            .iter()
            .map(|r| Self::key(role, &identity, r))
            .collect();
        // Run directories written before call keys named the model's identity keyed each
        // call by the model's name: their records are replayed under that key too, so that
        // resuming such a run never sends a call again.
        let legacy_key =
            |i: usize| (identity != model).then(|| Self::key(role, &model, &requests[i]));
        // Keys another thread has in flight: answered once that thread records them.
        let mut waiting: Vec<usize> = Vec::new();
        let mut live: Vec<usize> = Vec::new();
        // Keys another run has in flight: borrowed once that run publishes them.
        let mut pooled: Vec<usize> = Vec::new();
        {
            let mut st = self.lock();
            let mut queued = HashSet::new();
            for (i, key) in keys.iter().enumerate() {
                if st.memo.contains_key(key) {
                    st.account_known(ctx, role, key);
                } else if let Some(rec) = st
                    .replay
                    .remove(key)
                    .or_else(|| legacy_key(i).and_then(|k| st.replay.remove(&k)))
                {
                    st.keep_shared(ctx, &rec);
                    st.paid.insert((ctx.method.clone(), key.clone()));
                    st.ledger
                        .push(entry(ctx, role, Source::Replayed, rec.usage, rec.time_s));
                    st.memo.insert(key.clone(), rec.result);
                } else if queued.contains(key) {
                    // The same request twice in one batch is computed once.
                    st.ledger
                        .push(entry(ctx, role, Source::Memo, Usage::default(), 0.0));
                } else if st.in_flight.contains(key) {
                    waiting.push(i);
                } else {
                    let claim = match &st.pool {
                        Some(pool) if ctx.method == SHARED_METHOD => pool.claim(key),
                        Some(pool) => pool
                            .done(key)
                            .map_or(Claim::Mine, |r| Claim::Done(r.into())),
                        None => Claim::Mine,
                    };
                    match claim {
                        Claim::Done(rec) => self.borrow(&mut st, ctx, role, *rec),
                        Claim::Busy => pooled.push(i),
                        Claim::Mine => {
                            queued.insert(key.clone());
                            st.in_flight.insert(key.clone());
                            live.push(i);
                        }
                    }
                }
            }
        }
        let stopped = self.log_failure();
        if !live.is_empty() && stopped.is_none() {
            let batch: Vec<ChatRequest> = live.iter().map(|&i| requests[i].clone()).collect();
            let submitted = batch.len();
            let mut finished = 0;
            self.observe(finished, submitted);
            // Each call is logged and flushed as soon as it finishes, so a run killed mid
            // batch loses only the calls still in flight.
            llm.complete_each(&batch, &mut |n, result| {
                let Some(&i) = live.get(n) else {
                    return;
                };
                let result = result.map_err(|e| e.to_string());
                let (usage, time_s) = match &result {
                    Ok(c) => (
                        c.usage,
                        c.timings.queue_s + c.timings.prefill_s + c.timings.decode_s,
                    ),
                    Err(_) => (Usage::default(), 0.0),
                };
                let record = CallRecord {
                    key: keys[i].clone(),
                    method: ctx.method.clone(),
                    stage: ctx.stage.clone(),
                    role: role.name().into(),
                    model: model.clone(),
                    request: requests[i].clone(),
                    result: result.clone(),
                    usage,
                    time_s,
                    run_elapsed_s: self.elapsed_s(),
                };
                let mut st = self.lock();
                st.keep_shared(ctx, &record);
                // A failure is kept by the log and ends the run (see `log_failure`).
                let _ = st.log.append(&Event::Call(Box::new(record)));
                st.ledger
                    .push(entry(ctx, role, Source::Live, usage, time_s));
                st.paid.insert((ctx.method.clone(), keys[i].clone()));
                st.memo.insert(keys[i].clone(), result);
                st.in_flight.remove(&keys[i]);
                drop(st);
                self.answered.notify_all();
                finished += 1;
                self.observe(finished, submitted);
            });
        }
        if !live.is_empty() {
            // Calls the model never answered (or that were not made) are no longer in
            // flight: whoever waits for them gets "no result" instead of waiting forever,
            // and another run waiting for one computes it itself.
            let mut st = self.lock();
            for &i in &live {
                st.in_flight.remove(&keys[i]);
                // Only the shared method's calls were claimed on the pool.
                if let (Some(pool), true) = (&st.pool, ctx.method == SHARED_METHOD) {
                    pool.release(&keys[i]);
                }
            }
            drop(st);
            self.answered.notify_all();
        }
        if !pooled.is_empty() {
            self.complete_pooled(llm, ctx, role, requests, &keys, &pooled);
        }
        let mut st = self.lock();
        for &i in &waiting {
            while st.in_flight.contains(&keys[i]) {
                st = self.answered.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.memo.contains_key(&keys[i]) {
                st.account_known(ctx, role, &keys[i]);
            }
        }
        keys.iter()
            .map(|k| match st.memo.get(k) {
                Some(Ok(c)) => Ok(c.clone()),
                Some(Err(e)) => Err(Error::LlmCall {
                    role: role.name().into(),
                    reason: e.clone(),
                }),
                None => Err(Error::LlmCall {
                    role: role.name().into(),
                    reason: match &stopped {
                        Some(e) => format!("not made: {e}"),
                        None => "no result".into(),
                    },
                }),
            })
            .collect()
    }

    /// A command result known to this run (memo or an earlier session), if any; once the
    /// event log has failed, an error for every other command, so that none is run.
    pub fn known_command(&self, ctx: &Ctx, key: &str) -> Option<Result<Value, String>> {
        let mut st = self.lock();
        if let Some(r) = st.command_memo.get(key).cloned() {
            st.ledger
                .push(entry(ctx, Role::Agent, Source::Memo, Usage::default(), 0.0));
            return Some(r);
        }
        let Some(rec) = st.command_replay.remove(key) else {
            return st.log.failure().map(|e| Err(format!("not run: {e}")));
        };
        st.ledger.push(entry(
            ctx,
            Role::Agent,
            Source::Replayed,
            Usage::default(),
            rec.time_s,
        ));
        st.command_memo.insert(key.to_string(), rec.result.clone());
        Some(rec.result)
    }

    /// Records a command that just ran.
    pub fn record_command(&self, ctx: &Ctx, key: &str, result: Result<Value, String>, time_s: f64) {
        let record = CommandRecord {
            key: key.into(),
            method: ctx.method.clone(),
            stage: ctx.stage.clone(),
            result: result.clone(),
            time_s,
            run_elapsed_s: self.elapsed_s(),
        };
        let mut st = self.lock();
        // A failure is kept by the log and ends the run (see `log_failure`).
        let _ = st.log.append(&Event::Command(record));
        st.ledger.push(entry(
            ctx,
            Role::Agent,
            Source::Live,
            Usage::default(),
            time_s,
        ));
        st.command_memo.insert(key.into(), result);
    }

    /// Appends a non-replayed event (session start, step).
    pub fn note(&self, event: &Event) -> Result<()> {
        self.lock().log.append(event)
    }

    /// The error the run must stop with, once an append to the event log has failed.
    pub fn log_failure(&self) -> Option<Error> {
        self.lock().log.failure()
    }

    /// A copy of the ledger.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.lock().ledger.clone()
    }

    /// Prompt + completion tokens of `role` so far, all methods (each call counted once).
    pub fn tokens(&self, role: Role) -> usize {
        self.lock()
            .ledger
            .iter()
            .filter(|e| e.role == role && e.source != Source::Shared)
            .map(|e| e.usage.prompt_tokens + e.usage.completion_tokens)
            .sum()
    }

    /// Prompt + completion tokens of `role` that `method` has spent so far, the shared
    /// initial evaluation included: what the method would have spent running alone.
    pub fn method_tokens(&self, role: Role, method: &str) -> usize {
        self.lock()
            .ledger
            .iter()
            .filter(|e| e.role == role && (e.method == method || e.method == SHARED_METHOD))
            .map(|e| e.usage.prompt_tokens + e.usage.completion_tokens)
            .sum()
    }

    /// The first budget `method` has reached, if any (its own tokens, as if it ran alone,
    /// and the run's wall time); `event_log` first once the event log has failed.
    pub fn budget_hit(&self, budget: &BudgetSpec, method: &str) -> Option<BudgetHit> {
        if self.log_failure().is_some() {
            return Some(BudgetHit {
                budget: "event_log".into(),
                limit: 0.0,
                used: 0.0,
            });
        }
        let checks = [
            (
                "optimizer_tokens",
                budget.optimizer_tokens.map(|v| v as f64),
                self.method_tokens(Role::Optimizer, method) as f64,
            ),
            (
                "agent_tokens",
                budget.agent_tokens.map(|v| v as f64),
                self.method_tokens(Role::Agent, method) as f64,
            ),
            ("wall_time_s", budget.wall_time_s, self.elapsed_s()),
        ];
        checks.into_iter().find_map(|(name, limit, used)| {
            limit.filter(|l| used >= *l).map(|limit| BudgetHit {
                budget: name.into(),
                limit,
                used,
            })
        })
    }

    /// Answers a request from another run's record: copied into this run's log and
    /// accounted as `shared`.
    fn borrow(&self, st: &mut State, ctx: &Ctx, role: Role, rec: CallRecord) {
        let mut copy = rec.clone();
        copy.method = ctx.method.clone();
        copy.stage = ctx.stage.clone();
        copy.run_elapsed_s = self.elapsed_s();
        // A failure is kept by the log and ends the run (see `log_failure`).
        let _ = st.log.append(&Event::Call(Box::new(copy.clone())));
        st.keep_shared(ctx, &copy);
        st.paid.insert((ctx.method.clone(), rec.key.clone()));
        st.ledger
            .push(entry(ctx, role, Source::Shared, rec.usage, 0.0));
        st.memo.insert(rec.key, rec.result);
    }

    /// Waits for the requests `pooled` that other runs had in flight and borrows their
    /// answers; those released unanswered are completed here.
    fn complete_pooled(
        &self,
        llm: &dyn Llm,
        ctx: &Ctx,
        role: Role,
        requests: &[ChatRequest],
        keys: &[String],
        pooled: &[usize],
    ) {
        let Some(pool) = self.lock().pool.clone() else {
            return;
        };
        let mut again = Vec::new();
        for &i in pooled {
            let record = pool.wait(&keys[i]);
            let mut st = self.lock();
            if st.memo.contains_key(&keys[i]) {
                // The other method of this run borrowed it meanwhile.
                st.account_known(ctx, role, &keys[i]);
            } else if let Some(rec) = record {
                self.borrow(&mut st, ctx, role, rec);
            } else {
                again.push(requests[i].clone());
            }
        }
        if !again.is_empty() {
            self.complete(llm, ctx, role, &again);
        }
    }

    fn observe(&self, finished: usize, submitted: usize) {
        if let Some(observer) = &self.observer {
            observer(finished, submitted);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not hide the log: keep using the state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Publishes a successful call of the shared method to the runs on the pool.
    fn keep_shared(&mut self, ctx: &Ctx, record: &CallRecord) {
        if let Some(pool) = &self.pool {
            if ctx.method == SHARED_METHOD && record.result.is_ok() {
                pool.publish(record);
            }
        }
    }

    /// Accounts a call answered from the memo: free when this method (or the shared
    /// initial evaluation, which every method has) made it before, shared (its tokens
    /// counted for this method) when only another method made it.
    fn account_known(&mut self, ctx: &Ctx, role: Role, key: &str) {
        let by_all = self
            .paid
            .contains(&(SHARED_METHOD.to_string(), key.to_string()));
        let first = self.paid.insert((ctx.method.clone(), key.to_string())) && !by_all;
        let usage = match self.memo.get(key) {
            Some(Ok(c)) if first => c.usage,
            _ => Usage::default(),
        };
        let source = if first { Source::Shared } else { Source::Memo };
        self.ledger.push(entry(ctx, role, source, usage, 0.0));
    }
}

fn entry(ctx: &Ctx, role: Role, source: Source, usage: Usage, time_s: f64) -> LedgerEntry {
    LedgerEntry {
        method: ctx.method.clone(),
        stage: ctx.stage.clone(),
        role,
        source,
        usage,
        time_s,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::engine::chat::ChatMessage;
    use crate::optimizer::exec::testutil::ScriptedLlm;

    /// Takes nothing: every write fails as on a full disk.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn request(text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::user(text)],
            params: Default::default(),
        }
    }

    #[test]
    fn a_failed_log_append_stops_calls_commands_and_the_run() {
        let path = std::path::Path::new("run/events.jsonl");
        let calls = Calls::new(EventLog::to_writer(path, Box::new(Full)), Vec::new());
        let llm = ScriptedLlm::new(|_| "7".into());
        let ctx = Ctx::new("fgo", "train");
        let budget = BudgetSpec::default();
        assert!(calls.budget_hit(&budget, "fgo").is_none());

        // The batch in flight finishes (its answers are used), but its records are lost.
        let first = calls.complete(&llm, &ctx, Role::Agent, &[request("a"), request("b")]);
        assert!(first.iter().all(|r| r.is_ok()));
        assert_eq!(llm.requests(), 2);
        let failure = calls.log_failure().expect("the append failed");
        assert!(
            failure.to_string().contains("run/events.jsonl"),
            "{failure}"
        );

        // No further call reaches the model.
        let later = calls.complete(&llm, &ctx, Role::Agent, &[request("c")]);
        assert_eq!(llm.requests(), 2, "a call was made after the log failed");
        let err = later[0].as_ref().expect_err("not made");
        assert!(err.to_string().contains("cannot append"), "{err}");
        // An answer from before the failure is still known.
        assert!(calls.complete(&llm, &ctx, Role::Agent, &[request("a")])[0].is_ok());

        // No command is run, the loops see a stop, and notes fail.
        let known = calls.known_command(&ctx, "unknown").expect("refused");
        assert!(known.expect_err("not run").contains("cannot append"));
        let hit = calls.budget_hit(&budget, "fgo").expect("the run stops");
        assert_eq!(hit.budget, "event_log");
        assert!(calls
            .note(&Event::Step(serde_json::json!({"x": 1})))
            .is_err());
    }

    /// A scripted model known by another identity than its name (a local file's sha256).
    struct Renamed(ScriptedLlm);

    impl Llm for Renamed {
        fn name(&self) -> String {
            self.0.name()
        }
        fn identity(&self) -> String {
            "sha256:0123".into()
        }
        fn context_length(&self) -> usize {
            self.0.context_length()
        }
        fn count_tokens(&self, text: &str) -> Result<usize> {
            self.0.count_tokens(text)
        }
        fn complete(&self, requests: &[ChatRequest]) -> Vec<Result<Completion>> {
            self.0.complete(requests)
        }
    }

    #[test]
    fn a_run_keyed_by_model_name_replays_under_the_identity_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let ctx = Ctx::new("fgo", "train");
        // An older run: its model's identity was its name, as every call key then was.
        {
            let (log, previous) = EventLog::open(&path).unwrap();
            let calls = Calls::new(log, previous);
            let llm = ScriptedLlm::new(|r| format!("old {}", r.messages[0].content));
            let done = calls.complete(&llm, &ctx, Role::Agent, &[request("a"), request("b")]);
            assert!(done.iter().all(|r| r.is_ok()));
        }
        // Resumed by a model with an identity of its own: nothing is sent again.
        let (log, previous) = EventLog::open(&path).unwrap();
        let calls = Calls::new(log, previous);
        let llm = Renamed(ScriptedLlm::new(|_| "new".into()));
        let again = calls.complete(&llm, &ctx, Role::Agent, &[request("a"), request("b")]);
        assert_eq!(llm.0.requests(), 0, "a logged call was sent again");
        assert_eq!(again[1].as_ref().unwrap().text, "old b");
        // A request the old run did not make, or another role, is sent.
        let fresh = calls.complete(&llm, &ctx, Role::Optimizer, &[request("a")]);
        assert_eq!(llm.0.requests(), 1);
        assert_eq!(fresh[0].as_ref().unwrap().text, "new");
    }

    #[test]
    fn a_failed_command_record_stops_the_run() {
        let path = std::path::Path::new("run/events.jsonl");
        let calls = Calls::new(EventLog::to_writer(path, Box::new(Full)), Vec::new());
        let ctx = Ctx::new("fgo", "train");
        calls.record_command(&ctx, "k", Ok(serde_json::json!({"answer": "1"})), 0.1);
        assert!(calls.log_failure().is_some());
        assert_eq!(
            calls.known_command(&ctx, "k"),
            Some(Ok(serde_json::json!({"answer": "1"})))
        );
        assert!(calls
            .known_command(&ctx, "other")
            .is_some_and(|r| r.is_err()));
    }
}
