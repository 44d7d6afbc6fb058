//! One optimization run: evaluate the initial components, run the chosen method(s), then
//! evaluate the results on val and test.
//!
//! Control flow depends only on the task, the data, the seed and the call results, so a
//! resumed run (whose finished calls are answered from the event log) retraces the
//! interrupted one exactly and carries on from where it stopped.
//!
//! Budgets are checked between steps (before each optimization iteration and each merge
//! level). When one is reached the method stops and its best component so far is reported:
//! the component that solves the most training examples beyond what the initial component
//! solved on the same examples (the initial component itself when nothing beat it). A run
//! stopped by the agent-token or wall-time budget skips its final val/test evaluation. The
//! initial component's test evaluation runs beside the methods; each method evaluates its
//! final component as soon as it has chosen it.

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex};

use crate::engine::scheduler::StepStats;
use crate::error::{Error, Result};
use crate::llm::Llm;
use crate::optimizer::data::baseline::constant_baseline;
use crate::optimizer::data::dataset::{Dataset, Example};
use crate::optimizer::data::rng::Rng;
use crate::optimizer::data::task::Selection;
use crate::optimizer::data::task::Task;
use crate::optimizer::exec::agent::{joined_text, Agent, Components, Outcome};
use crate::optimizer::exec::calls::{BudgetHit, Calls, Ctx, SHARED_METHOD};
use crate::optimizer::methods::divide::{divide, sized_count, subset_count};
use crate::optimizer::methods::env::{mean_score, Counters, Env, Progress, StepPoint};
use crate::optimizer::methods::guard::{Guard, GuardConfig};
use crate::optimizer::methods::merge::{merge_all, MergeRecord, Node};
use crate::optimizer::methods::optimize::optimize;
use crate::optimizer::methods::prompts;
use crate::optimizer::methods::select::{self, PoolEntry};
use crate::optimizer::methods::slot::Slot;
use crate::optimizer::report::{
    Accounting, EngineUse, ExampleIds, ExampleScores, InitialScores, RunReport,
};

use crate::optimizer::report::{Method, MethodReport};

/// The models of a run.
#[derive(Clone)]
pub struct Models {
    /// The agent's model (`None` for a command agent).
    pub agent: Option<Arc<dyn Llm>>,
    /// The optimizer's model (`None` only for method `none`).
    pub optimizer: Option<Arc<dyn Llm>>,
}

impl Models {
    /// Each distinct in-process model with its roles, in the order agent, optimizer.
    fn distinct(&self) -> Vec<(&Arc<dyn Llm>, Vec<String>)> {
        let mut out: Vec<(&Arc<dyn Llm>, Vec<String>)> = Vec::new();
        for (role, model) in [("agent", &self.agent), ("optimizer", &self.optimizer)] {
            let Some(model) = model else { continue };
            if model.step_stats().is_none() {
                continue;
            }
            match out.iter_mut().find(|(m, _)| Arc::ptr_eq(m, model)) {
                Some((_, roles)) => roles.push(role.into()),
                None => out.push((model, vec![role.into()])),
            }
        }
        out
    }

    /// The step counters of every in-process model now.
    fn engine_snapshot(&self) -> Vec<StepStats> {
        self.distinct()
            .iter()
            .filter_map(|(m, _)| m.step_stats())
            .collect()
    }

    /// What every in-process model computed since `before` ([`Models::engine_snapshot`]).
    fn engine_use(&self, before: &[StepStats]) -> Vec<EngineUse> {
        self.distinct()
            .into_iter()
            .zip(before)
            .filter_map(|((m, roles), b)| {
                Some(EngineUse {
                    model: m.name(),
                    roles,
                    steps: m.step_stats()?.since(b),
                })
            })
            .collect()
    }
}

/// Runs `task` on `data` with `method`; every call goes through `calls`.
pub fn execute(
    task: &Task,
    data: &Dataset,
    models: &Models,
    method: Method,
    seed: u64,
    calls: &Calls,
    progress: &dyn Progress,
) -> Result<RunReport> {
    let agent = Agent::new(task, models.agent.clone())?;
    let engines_before = models.engine_snapshot();
    let names: Vec<String> = task
        .spec
        .components
        .iter()
        .filter(|(_, c)| c.optimize)
        .map(|(n, _)| n.clone())
        .collect();
    let initial = task.initial.clone();
    let all_train: Vec<usize> = (0..data.train.len()).collect();
    let all_val: Vec<usize> = (0..data.val.len()).collect();

    // 1. Initial components on train (trajectories) and val, one batch.
    progress.update(
        "initial",
        0,
        1,
        &format!(
            "evaluating on {} train + {} val examples",
            data.train.len(),
            data.val.len()
        ),
    );
    let shared_ctx = Ctx::new(SHARED_METHOD, "initial_eval");
    let mut both = jobs(&initial, &data.train, &all_train);
    both.extend(jobs(&initial, &data.val, &all_val));
    let mut initial_train = agent.evaluate(calls, &shared_ctx, &both);
    let initial_val = initial_train.split_off(data.train.len().min(initial_train.len()));
    let mut steps = vec![point(
        "shared",
        "initial_eval",
        "initial (train)",
        &initial_train,
        calls,
    )];
    progress.best(
        "initial",
        &initial,
        &format!("train {:.3}", mean_score(&initial_train)),
    );

    let initial_text = joined_text(&initial, &names);
    let spec = &task.spec.optimizer;
    let guard = Guard::new(
        &data.train,
        &task.spec.data.answer_field,
        &initial_text,
        &task_texts(task),
        &own_texts(),
        GuardConfig {
            leak_min_chars: spec.leak_min_chars,
            copy_ngram_words: spec.copy_ngram_words,
            max_content_words: spec.max_content_words,
            max_added_chars: spec.max_added_chars,
        },
    );
    // 2. The initial component on test, beside the methods: its calls fill the engine's
    // batch while the optimizer writes, and are the shared method's whatever a method's
    // final component is (a method's own test calls wait for them, see `Latch`).
    let all_test: Vec<usize> = (0..data.test.len()).collect();
    let initial_tested = Latch::default();
    let test_initial = || {
        let ctx = Ctx::new(SHARED_METHOD, "final_eval");
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            agent.evaluate(calls, &ctx, &jobs(&initial, &data.test, &all_test))
        }));
        initial_tested.open();
        out.unwrap_or_else(|p| std::panic::resume_unwind(p))
    };
    // 3. The methods side by side, each on its own thread: their calls reach the engine
    // together (one running batch, shared cached prefixes), while each method's control
    // flow, seeds and accounting stay what they would be alone (see `Calls`). Each method
    // evaluates its final component on val and test as soon as it has chosen it.
    let start = Start {
        components: &initial,
        train: &initial_train,
        val: &initial_val,
        val_examples: &data.val,
    };
    let run_methods = || -> Result<Vec<(MethodReport, Vec<StepPoint>)>> {
        if method.parts().is_empty() {
            return Ok(Vec::new());
        }
        let optimizer = models
            .optimizer
            .as_deref()
            .ok_or_else(|| task.err("optimizer.model", "no optimizer model was loaded"))?;
        let run_part = |part: &'static str| {
            let env = Env {
                agent: &agent,
                optimizer,
                calls,
                train: &data.train,
                guard: &guard,
                spec,
                names: names.clone(),
                seed,
                method: part.to_string(),
                progress,
                counters: RefCell::new(Counters::default()),
                steps: RefCell::new(Vec::new()),
                exempt: RefCell::new(Vec::new()),
                pool: RefCell::new(Vec::new()),
            };
            let mut report = match part {
                "fgo" => run_fgo(&env, task, &start),
                _ => run_all_at_once(&env, task, &start),
            };
            progress.best(part, &report.final_components, &report.final_source);
            if !stopped_hard(&report, calls, task) {
                progress.update(
                    "final",
                    0,
                    1,
                    &format!(
                        "{part}: evaluating on {} val + {} test examples",
                        data.val.len(),
                        data.test.len()
                    ),
                );
                initial_tested.wait();
                evaluate_final(&agent, calls, data, &mut report);
            }
            (report, env.steps.into_inner())
        };
        Ok(side_by_side(method.parts(), &run_part))
    };
    let (test_out, ran) = std::thread::scope(|scope| {
        let tester = scope.spawn(test_initial);
        let ran = run_methods();
        let test_out = tester
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (test_out, ran)
    });
    let mut methods = Vec::new();
    for (report, method_steps) in ran? {
        steps.extend(method_steps);
        methods.push(report);
    }
    let initial_per_example = ExampleScores {
        val: initial_val.iter().map(|o| o.score).collect(),
        test: test_out.iter().map(|o| o.score).collect(),
        test_cut_off: test_out.iter().filter(|o| o.cut_off).count(),
    };
    let initial_test = (!data.test.is_empty()).then(|| mean_score(&test_out));
    let budget_hit = methods.iter().find_map(|m| m.budget_hit.clone());
    let mut report = RunReport {
        schema_version: crate::optimizer::report::SCHEMA_VERSION,
        task: task.spec.name.clone(),
        method,
        seed,
        agent_model: models
            .agent
            .as_ref()
            .map(|m| m.name())
            .unwrap_or_else(|| "command".into()),
        optimizer_model: models.optimizer.as_ref().map(|m| m.name()),
        sizes: [data.train.len(), data.val.len(), data.test.len()],
        initial: InitialScores {
            components: initial.clone(),
            train: mean_score(&initial_train),
            val: (!data.val.is_empty()).then(|| mean_score(&initial_val)),
            test: initial_test,
            per_example: initial_per_example,
        },
        status: match &budget_hit {
            Some(h) => format!("stopped by budget {}", h.budget),
            None => "completed".into(),
        },
        methods,
        steps,
        accounting: Accounting::from_ledger(&calls.ledger()),
        elapsed_s: calls.elapsed_s(),
        example_ids: ExampleIds {
            val: data.val.iter().map(|e| e.id.clone()).collect(),
            test: data.test.iter().map(|e| e.id.clone()).collect(),
        },
        comparisons: Vec::new(),
        constant_baseline: constant_baseline(&task.spec.metric, &data.train, &data.val, &data.test),
        engine: models.engine_use(&engines_before),
        model_notes: Default::default(),
    };
    report.model_notes =
        RunReport::notes_now(&report.agent_model, report.optimizer_model.as_deref());
    report.comparisons = report.paired_on_test();
    Ok(report)
}

/// Whether a method was stopped by a budget that forbids further agent calls (agent tokens,
/// wall time, a failed event log): such a method skips its final evaluation.
fn stopped_hard(report: &MethodReport, calls: &Calls, task: &Task) -> bool {
    report
        .budget_hit
        .as_ref()
        .is_some_and(BudgetHit::forbids_agent_calls)
        || calls
            .budget_hit(&task.spec.budget, &report.method)
            .is_some_and(|h| h.forbids_agent_calls())
}

/// Evaluates a method's final component on val and test (one batch) into its report.
fn evaluate_final(agent: &Agent, calls: &Calls, data: &Dataset, report: &mut MethodReport) {
    let all_val: Vec<usize> = (0..data.val.len()).collect();
    let all_test: Vec<usize> = (0..data.test.len()).collect();
    let mut batch = jobs(&report.final_components, &data.val, &all_val);
    batch.extend(jobs(&report.final_components, &data.test, &all_test));
    let out = agent.evaluate(calls, &Ctx::new(&report.method, "final_eval"), &batch);
    let nv = data.val.len().min(out.len());
    report.val_score = (nv > 0).then(|| mean_score(&out[..nv]));
    report.test_score = (!data.test.is_empty()).then(|| mean_score(&out[nv..]));
    report.per_example = ExampleScores {
        val: out[..nv].iter().map(|o| o.score).collect(),
        test: out[nv..].iter().map(|o| o.score).collect(),
        test_cut_off: out[nv..].iter().filter(|o| o.cut_off).count(),
    };
}

/// A gate that threads wait on until it is opened once: a method's final test calls wait
/// for the initial component's, so that a call both make is always the shared method's
/// (free for every method) and the methods' accounting does not depend on timing.
#[derive(Default)]
struct Latch {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Latch {
    fn open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Runs `f` on every item, each on its own thread (the current one when there is one
/// item), and returns the results in item order. A panic on a thread is raised again here.
fn side_by_side<T: Send, R: Send>(items: Vec<T>, f: &(dyn Fn(T) -> R + Sync)) -> Vec<R> {
    if items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || f(item)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

fn jobs<'a>(
    c: &'a Components,
    examples: &'a [Example],
    idx: &[usize],
) -> Vec<(&'a Components, &'a Example)> {
    idx.iter()
        .filter_map(|&i| examples.get(i).map(|e| (c, e)))
        .collect()
}

fn point(method: &str, stage: &str, label: &str, outcomes: &[Outcome], calls: &Calls) -> StepPoint {
    StepPoint {
        method: method.into(),
        stage: stage.into(),
        label: label.into(),
        n: outcomes.len(),
        score: mean_score(outcomes),
        tokens: calls.tokens(crate::optimizer::exec::calls::Role::Agent)
            + calls.tokens(crate::optimizer::exec::calls::Role::Optimizer),
    }
}

/// What every method starts from: the initial components and their outcomes.
struct Start<'a> {
    components: &'a Components,
    train: &'a [Outcome],
    val: &'a [Outcome],
    val_examples: &'a [Example],
}

fn run_fgo(env: &Env, task: &Task, start: &Start) -> MethodReport {
    let spec = env.spec;
    let (initial, initial_train) = (start.components, start.train);
    let budget_tokens = subset_token_budget(env);
    let (k, sizing) = match (spec.subset_size, spec.subset_count) {
        (None, None) => {
            let tokens: Vec<usize> = initial_train
                .iter()
                .enumerate()
                .map(|(n, o)| {
                    let text = prompts::show_outcome(n + 1, o, spec.trajectory_chars);
                    env.optimizer.count_tokens(&text).unwrap_or(text.len() / 3) + 1
                })
                .collect();
            let fit = sized_count(initial_train, &tokens, budget_tokens, spec.divide, env.seed);
            let k = floored_count(fit, initial_train.len(), spec.min_subset_size);
            let total: usize = tokens.iter().sum();
            let note = if k == 1 && fit == 1 {
                format!("train's trajectories ({total} tokens) fit one prompt of {budget_tokens} tokens: one subset, so FGO ran as all-at-once")
            } else if k < fit {
                let ran_as = if k == 1 {
                    ", so FGO ran as all-at-once"
                } else {
                    ""
                };
                format!("{k} subsets of at least {} examples (min_subset_size) instead of the {fit} whose trajectories ({total} tokens in all) fit prompts of {budget_tokens} tokens: each prompt shows the trajectories that fit{ran_as}", spec.min_subset_size)
            } else {
                format!("{k} subsets: the fewest whose trajectories ({total} tokens in all) fit prompts of {budget_tokens} tokens")
            };
            (k, note)
        }
        (size, count) => {
            let k = subset_count(initial_train.len(), size, count);
            (k, format!("{k} subsets, as the task file sets"))
        }
    };
    let parts = divide(initial_train, k, spec.divide, env.seed);
    let mut slots: Vec<Slot> = parts
        .into_iter()
        .enumerate()
        .map(|(id, idx)| {
            let outcomes = idx.iter().map(|&i| initial_train[i].clone()).collect();
            let mut slot = Slot::new(id, idx, initial.clone(), outcomes);
            let mut outside: Vec<usize> = (0..initial_train.len())
                .filter(|i| slot.examples.binary_search(i).is_err())
                .collect();
            Rng::derived(env.seed, &format!("check/{id}")).shuffle(&mut outside);
            outside.truncate(spec.check_examples);
            outside.sort_unstable();
            slot.check_outcomes = outside.iter().map(|&i| initial_train[i].clone()).collect();
            slot.check = outside;
            slot
        })
        .collect();
    let mut hit = optimize(
        env,
        &mut slots,
        budget_tokens,
        "optimize",
        &task.spec.budget,
    );
    let mut merges = Vec::new();
    let frontier: Vec<Node> = slots
        .iter()
        .map(|s| Node {
            id: format!("s{}", s.id),
            components: s.current.clone(),
            subsets: vec![s.id],
            examples: s.examples.clone(),
            score: s.score,
            lessons: s.lessons.clone(),
            near_misses: s.near_misses.clone(),
        })
        .collect();
    let initial_scores: Vec<f64> = initial_train.iter().map(|o| o.score).collect();
    let frontier = if hit.is_none() {
        let (f, m, h) = merge_all(
            env,
            frontier,
            initial,
            &initial_scores,
            "merge",
            &task.spec.budget,
        );
        merges = m;
        hit = h;
        f
    } else {
        frontier
    };
    finish(env, start, &frontier, slots, merges, hit, sizing)
}

fn run_all_at_once(env: &Env, task: &Task, start: &Start) -> MethodReport {
    let mut slots = vec![Slot::new(
        0,
        (0..start.train.len()).collect(),
        start.components.clone(),
        start.train.to_vec(),
    )];
    let hit = optimize(env, &mut slots, usize::MAX, "optimize", &task.spec.budget);
    let s = &slots[0];
    let node = Node {
        id: "all".into(),
        components: s.current.clone(),
        subsets: vec![0],
        examples: s.examples.clone(),
        score: s.score,
        lessons: Vec::new(),
        near_misses: Vec::new(),
    };
    let sizing = "one subset holding all of train, every trajectory that fits the context".into();
    finish(env, start, &[node], slots, Vec::new(), hit, sizing)
}

/// Chooses the method's final component and assembles its report.
fn finish(
    env: &Env,
    start: &Start,
    frontier: &[Node],
    subsets: Vec<Slot>,
    merges: Vec<MergeRecord>,
    budget_hit: Option<BudgetHit>,
    subset_sizing: String,
) -> MethodReport {
    // A run stopped by the agent-token or wall-time budget makes no further agent calls.
    let stopped_hard = budget_hit
        .as_ref()
        .is_some_and(BudgetHit::forbids_agent_calls);
    let (source, components, train_score, train_n, selection) =
        if env.spec.selection == Selection::Val && !start.val.is_empty() && !stopped_hard {
            select_on_val(env, start, frontier)
        } else {
            let (source, components, score, n) = best_of(frontier, start.components, start.train);
            let why = if stopped_hard {
                "chosen on train: the budget stopped the run before the choice on val".to_string()
            } else if start.val.is_empty() {
                "chosen on train: there is no val split".to_string()
            } else {
                "chosen on train (selection = \"train\")".to_string()
            };
            (source, components, score, n, why)
        };
    MethodReport {
        method: env.method.clone(),
        final_components: components,
        final_source: source,
        train_score,
        train_n,
        val_score: None,
        test_score: None,
        subsets,
        merges,
        counters: env.counters.borrow().clone(),
        budget_hit,
        per_example: ExampleScores::default(),
        pool: env.pool.borrow().clone(),
        selection,
        subset_sizing,
    }
}

/// The final choice on val: the pool's shortlist re-scored on val (one batch) beside the
/// initial component; the winner never scores below the initial component on val.
fn select_on_val(
    env: &Env,
    start: &Start,
    frontier: &[Node],
) -> (String, Components, f64, usize, String) {
    // The frontier enters the pool too (a run stopped before merging has no merge outputs).
    let base: Vec<f64> = start.train.iter().map(|o| o.score).collect();
    for node in frontier {
        let n = node.examples.len();
        let b: f64 = node.examples.iter().filter_map(|&i| base.get(i)).sum();
        env.pool.borrow_mut().push(PoolEntry {
            source: format!("node {}", node.id),
            components: node.components.clone(),
            train_n: n,
            train_score: node.score,
            train_gain: node.score * n as f64 - b,
            val_score: None,
        });
    }
    let initial_val = mean_score(start.val);
    let short = select::shortlist(&env.pool.borrow(), start.components, env.spec.select_top);
    let all_val: Vec<usize> = (0..start.val_examples.len()).collect();
    let pool = env.pool.borrow().clone();
    let jobs: Vec<(&Components, &[usize])> = short
        .iter()
        .map(|&i| (&pool[i].components, all_val.as_slice()))
        .collect();
    let out = env.evaluate("select", start.val_examples, &jobs);
    let scored: Vec<(usize, f64)> = short
        .iter()
        .zip(&out)
        .map(|(&i, o)| (i, mean_score(o)))
        .collect();
    {
        let mut p = env.pool.borrow_mut();
        for &(i, v) in &scored {
            p[i].val_score = Some(v);
        }
    }
    for &(i, v) in &scored {
        env.point(
            "select",
            &format!("val: {}", pool[i].source),
            all_val.len(),
            v,
        );
    }
    let (won, why) = select::choose(
        &pool,
        &scored,
        start.components,
        initial_val,
        env.spec.min_gain,
    );
    match won {
        Some(i) => (
            pool[i].source.clone(),
            pool[i].components.clone(),
            pool[i].train_score,
            pool[i].train_n,
            why,
        ),
        None => (
            "initial".into(),
            start.components.clone(),
            mean_score(start.train),
            start.train.len(),
            why,
        ),
    }
}

/// Tokens of trajectories one subset's optimizer prompt may hold: `prompt_tokens`, within
/// the context window less room for the instructions and the reply.
/// The subsets sized to the prompt budget (`fit`), fewer when `fit` subsets of `n`
/// examples would hold fewer than `min_size` each: a gain of `min_gain` examples must stay a
/// plausible fraction of a subset, so decisions are not left to a handful of examples.
fn floored_count(fit: usize, n: usize, min_size: usize) -> usize {
    fit.min(n / min_size.max(1)).max(1)
}

fn subset_token_budget(env: &Env) -> usize {
    let reserve = 1024
        + env
            .spec
            .diagnosis_params
            .max_new_tokens
            .max(env.spec.params.max_new_tokens);
    env.spec
        .prompt_tokens
        .min(env.optimizer.context_length().saturating_sub(reserve))
        .max(1)
}

/// The task's own texts, which the guard never counts as content or leaks of the training
/// set: its name, description, components and templates, and the labels of a `choice`
/// metric.
fn task_texts(task: &Task) -> String {
    let mut parts = vec![task.spec.name.clone(), task.spec.description.clone()];
    parts.extend(task.initial.values().cloned());
    if let crate::optimizer::data::task::AgentSpec::Chat { system, user, .. } = &task.spec.agent {
        parts.extend(system.clone());
        parts.push(user.clone());
    }
    if let crate::optimizer::data::task::MetricSpec::Choice { labels } = &task.spec.metric {
        parts.extend(labels.iter().cloned());
    }
    parts.join("\n")
}

/// The optimizer's own texts, whose words the guard never counts as content of the
/// training set.
fn own_texts() -> String {
    [
        prompts::own_texts(),
        crate::optimizer::methods::operators::own_vocabulary(),
    ]
    .join("\n")
}

/// The node that solves the most examples beyond the initial component on the same
/// examples; the initial component when none gains.
fn best_of(
    frontier: &[Node],
    initial: &Components,
    initial_train: &[Outcome],
) -> (String, Components, f64, usize) {
    let mut best = (
        "initial".to_string(),
        initial.clone(),
        mean_score(initial_train),
        initial_train.len(),
    );
    let mut best_gain = 0.0;
    for node in frontier {
        let n = node.examples.len() as f64;
        let base: f64 = node
            .examples
            .iter()
            .filter_map(|&i| initial_train.get(i))
            .map(|o| o.score)
            .sum();
        let gain = node.score * n - base;
        let covers_all = node.examples.len() == initial_train.len();
        if gain > best_gain + 1e-9 || (covers_all && gain >= best_gain - 1e-9 && gain > 1e-9) {
            best_gain = gain;
            let source = if node.id.starts_with('m') || node.id == "all" || frontier.len() == 1 {
                format!("node {}", node.id)
            } else {
                format!("node {} (run stopped before merging)", node.id)
            };
            best = (
                source,
                node.components.clone(),
                node.score,
                node.examples.len(),
            );
        }
    }
    best
}

/// Checks a report's method against options (used by resume).
pub fn check_same(a: Method, b: Method, dir: &std::path::Path) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(Error::RunDir {
            dir: dir.to_path_buf(),
            reason: format!("run was made with method {a:?}, not {b:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::floored_count;

    #[test]
    fn the_floor_keeps_subsets_large_enough_to_decide() {
        // 32 examples whose trajectories need 6 prompts: 4 subsets of 8 instead.
        assert_eq!(floored_count(6, 32, 8), 4);
        // Already large enough: the division sized to the budget stands.
        assert_eq!(floored_count(3, 32, 8), 3);
        // Fewer examples than the floor: one subset, never zero.
        assert_eq!(floored_count(4, 5, 8), 1);
        assert_eq!(floored_count(2, 16, 1), 2);
    }
}
