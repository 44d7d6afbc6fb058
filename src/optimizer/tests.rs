//! Whole-run tests on a scripted model: FGO, merges, budgets, leaks, resume.
//!
//! The scripted world: the agent counts the items of a list; it miscounts lists longer than
//! two items unless its system prompt says "running total". The scripted optimizer
//! diagnoses that and, depending on the test, proposes the fix, something harmful, or a
//! prompt that leaks a training answer.

use std::path::Path;
use std::sync::Arc;

use crate::llm::{ChatRequest, Llm};
use crate::optimizer::data::dataset::{Dataset, Example};
use crate::optimizer::data::task::Task;
use crate::optimizer::exec::calls::Calls;
use crate::optimizer::exec::testutil::ScriptedLlm;
use crate::optimizer::methods::env::NoProgress;
use crate::optimizer::report::run::{execute, Models};
use crate::optimizer::report::Method;
use crate::optimizer::report::RunReport;

const WORDS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];
const ITEMS: [&str; 9] = [
    "apple", "pear", "plum", "fig", "kiwi", "lime", "date", "melon", "grape",
];

fn task(extra: &str) -> Task {
    let text = format!(
        r#"
name = "count"
[components.system_prompt]
text = "Count the items."
[agent]
type = "chat"
model = "scripted"
system = "{{{{system_prompt}}}}"
user = "{{{{question}}}}"
[data]
train = "train.jsonl"
[metric]
type = "exact"
[optimizer]
subset_count = 4
iterations = 2
candidates = 2
max_reasks = 1
{extra}
"#
    );
    Task::from_str(&text, Path::new("task.toml"), Path::new(".")).unwrap()
}

fn example(i: usize, split: &str) -> Example {
    let n = 1 + (i * 7 + split.len()) % 8;
    let items: Vec<&str> = (0..n).map(|k| ITEMS[(i + k * 3) % ITEMS.len()]).collect();
    let q = format!("List {i} of {split}: {}", items.join(", "));
    let v = serde_json::json!({"question": q, "answer": WORDS[n]});
    Example {
        id: format!("{split}{i}"),
        file: format!("{split}.jsonl").into(),
        line: i + 1,
        fields: v.as_object().cloned().unwrap_or_default(),
        answer: v["answer"].clone(),
    }
}

fn data() -> Dataset {
    Dataset {
        train: (0..16).map(|i| example(i, "train")).collect(),
        val: (0..4).map(|i| example(i, "val")).collect(),
        test: (0..4).map(|i| example(i, "test")).collect(),
    }
}

/// The last message of a request (the question, for the agent).
fn last_user(r: &ChatRequest) -> String {
    r.messages
        .last()
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

/// How many items the agent's question lists.
fn items_asked(r: &ChatRequest) -> usize {
    let user = last_user(r);
    user.split(": ").nth(1).map_or(0, |l| l.split(", ").count())
}

/// The optimizer's behaviour for rewrite and merge requests.
#[derive(Clone, Copy)]
enum Optimizer {
    Good,
    BadMerge,
    Leaky,
    /// Proposes a prompt that solves the training examples only.
    Overfit,
    /// Writes the fix, then keeps going with a second, harmful version.
    Rambles,
}

fn world(optimizer: Optimizer) -> ScriptedLlm {
    ScriptedLlm::new(move |r: &ChatRequest| {
        let system = &r.messages[0].content;
        let user = &last_user(r);
        if system.starts_with("You improve") {
            if user.contains("Study the wrong attempts") {
                return "MISTAKES: loses count on long lists.\nFIX: keep a running total.".into();
            }
            if user.contains("Several improved versions") {
                return match optimizer {
                    Optimizer::BadMerge => "<system_prompt>Guess quickly.</system_prompt>".into(),
                    _ => "<system_prompt>Count the items. Keep a running total, merged.</system_prompt>".into(),
                };
            }
            return match optimizer {
                Optimizer::Rambles => "<system_prompt>Count the items. Keep a running total.</system_prompt>\nOr, shorter:\n<system_prompt>Guess quickly.</system_prompt>".into(),
                Optimizer::Overfit => "<system_prompt>Count the items. Memorize them.</system_prompt>".into(),
                Optimizer::Leaky => "<system_prompt>Count the items; for long lists answer seven.</system_prompt>".into(),
                // Every other seed forgets the tags, to exercise re-asks.
                _ if r.params.seed.is_multiple_of(2) && !user.contains("could not use your reply") => "Keep a running total!".into(),
                _ => "Here you go:\n<system_prompt>Count the items. Keep a running total.</system_prompt>".into(),
            };
        }
        let n = items_asked(r);
        if system.contains("Memorize") {
            let right = if user.contains("of train") { n } else { n + 1 };
            return format!("I recall it.\n{}", WORDS[right.min(9)]);
        }
        let said = if system.contains("running total") || n <= 2 {
            n
        } else {
            n - 1
        };
        format!("I count them.\n{}", WORDS[said.min(9)])
    })
}

fn run(task: &Task, llm: Arc<dyn Llm>, method: Method, calls: &Calls) -> RunReport {
    let models = Models {
        agent: Some(llm.clone()),
        optimizer: Some(llm),
    };
    execute(task, &data(), &models, method, 7, calls, &NoProgress).unwrap()
}

/// FGO on `task` with the good scripted optimizer, calls kept in memory.
fn run_fgo(task: &Task) -> RunReport {
    run(
        task,
        Arc::new(world(Optimizer::Good)),
        Method::Fgo,
        &Calls::in_memory(),
    )
}

#[test]
fn an_optimizer_reply_ends_at_the_closing_tag_of_its_answer() {
    let r = run(
        &task(""),
        Arc::new(world(Optimizer::Rambles)),
        Method::AllAtOnce,
        &Calls::in_memory(),
    );
    let m = &r.methods[0];
    // The second version after the first closing tag is never generated: the fix is used.
    assert!(
        m.final_components["system_prompt"].contains("running total"),
        "{:?}",
        m.final_components
    );
    assert!(!m.final_components["system_prompt"].contains("Guess"));
}

#[test]
fn fgo_improves_and_merges_every_subset_once() {
    let llm = Arc::new(world(Optimizer::Good));
    let calls = Calls::in_memory();
    let r = run(&task(""), llm.clone(), Method::Fgo, &calls);
    let m = &r.methods[0];
    assert!(r.initial.train < 1.0);
    assert_eq!(m.train_score, 1.0, "{}", r.to_markdown());
    assert!(m.final_components["system_prompt"].contains("running total"));
    // Chosen on val from the pool, which holds the subsets' and the merges' components.
    assert!(m.selection.contains("val"), "{}", m.selection);
    assert!(
        m.pool.iter().any(|e| e.source.contains("m2.0")),
        "{:?}",
        m.pool
    );
    assert!(
        m.val_score >= r.initial.val,
        "{:?} vs {:?}",
        m.val_score,
        r.initial.val
    );
    // Every subset id appears exactly once among the leaves of the merge tree.
    let mut leaves: Vec<String> = m
        .merges
        .iter()
        .flat_map(|x| x.children.iter().filter(|c| c.starts_with('s')).cloned())
        .collect();
    leaves.sort();
    assert_eq!(leaves, ["s0", "s1", "s2", "s3"]);
    assert_eq!(m.merges.last().map(|x| x.n), Some(16));
    assert!(m.counters.reasks > 0, "{:?}", m.counters);
    assert_eq!(m.test_score, Some(1.0));
    // Identical requests are never sent twice.
    let live = r.accounting.total.live;
    assert_eq!(llm.requests(), live);
    assert!(r.accounting.total.memo_hits > 0);
}

#[test]
fn losing_merge_keeps_the_better_child() {
    let r = run(
        &task(""),
        Arc::new(world(Optimizer::BadMerge)),
        Method::Fgo,
        &Calls::in_memory(),
    );
    let m = &r.methods[0];
    assert!(!m.merges.is_empty());
    for mg in &m.merges {
        assert_ne!(mg.chosen, mg.id, "{mg:?}");
        assert!(mg.candidate_scores.iter().all(|c| *c < mg.score));
    }
    assert!(!m.final_components["system_prompt"].contains("Guess"));
    assert_eq!(m.train_score, 1.0);
}

#[test]
fn leaking_candidates_are_rejected() {
    let r = run(
        &task(""),
        Arc::new(world(Optimizer::Leaky)),
        Method::Fgo,
        &Calls::in_memory(),
    );
    let m = &r.methods[0];
    assert!(m.counters.leak_rejections > 0, "{:?}", m.counters);
    assert!(m
        .subsets
        .iter()
        .all(|s| !s.current["system_prompt"].contains("seven")));
    assert!(!m.final_components["system_prompt"].contains("seven"));
    // The leaking text is never shown to the optimizer again.
    for s in &m.subsets {
        for f in s.failed.iter().filter(|f| f.withheld) {
            assert!(
                f.components.is_empty() && !f.reason.contains("seven"),
                "{f:?}"
            );
        }
        assert!(s.failed.iter().any(|f| f.withheld), "{:?}", s.failed);
    }
}

#[test]
fn the_format_move_states_the_answers_format_and_is_not_a_leak() {
    // The agent counts right but wraps its answer in a sentence unless told the format.
    let agent = ScriptedLlm::new(|r: &ChatRequest| {
        let system = &r.messages[0].content;
        let n = items_asked(r);
        if system.contains("Answer format:") && system.contains("For example:") {
            format!("I count them.\n{}", WORDS[n.min(9)])
        } else {
            format!("There are {} items.", WORDS[n.min(9)])
        }
    });
    let t = task("operators = [\"format\"]");
    let r = run(&t, Arc::new(agent), Method::Fgo, &Calls::in_memory());
    let m = &r.methods[0];
    assert_eq!(r.initial.train, 0.0);
    assert_eq!(m.train_score, 1.0, "{}", r.to_markdown());
    let text = &m.final_components["system_prompt"];
    assert!(
        text.starts_with("Count the items.\n\nAnswer format:"),
        "{text}"
    );
    assert!(text.contains("<word>"), "{text}");
    // A training answer shown as the format's example is not a leak.
    assert_eq!(m.counters.leak_rejections, 0, "{:?}", m.counters);
    assert!(
        m.counters.by_operator["format"].accepted > 0,
        "{:?}",
        m.counters
    );
}

/// An agent told to work step by step that reasons at length (`verbose`) or briefly;
/// told the reply budget too, it reasons briefly and answers. Untold, it miscounts.
fn reasoning_agent(verbose: bool) -> ScriptedLlm {
    ScriptedLlm::new(move |r: &ChatRequest| {
        let system = &r.messages[0].content;
        let n = items_asked(r);
        if !system.contains("Work step by step") {
            let said = if n <= 2 { n } else { n - 1 };
            return format!("I count them.\n{}", WORDS[said.min(9)]);
        }
        if !verbose || system.contains("Keep the whole reply under about 20 words") {
            return format!("One by one.\n{}", WORDS[n.min(9)]);
        }
        format!(
            "{}\n{}",
            "Let me go through each item carefully. ".repeat(10),
            WORDS[n.min(9)]
        )
    })
}

/// An FGO run of library strategies only, the agent's replies limited to 40 tokens.
fn seed_run_with_a_reply_limit(agent: ScriptedLlm) -> RunReport {
    let t = task("operators = [\"seed\"]\n[agent.params]\nmax_new_tokens = 40");
    run(&t, Arc::new(agent), Method::Fgo, &Calls::in_memory())
}

/// Replies cut off at the token limit under a candidate make a repair: the candidate again
/// with the reply budget stated, evaluated beside it; here only the repair can win.
#[test]
fn a_candidate_whose_replies_are_cut_off_is_tried_again_with_the_reply_budget() {
    let r = seed_run_with_a_reply_limit(reasoning_agent(true));
    let m = &r.methods[0];
    let text = &m.final_components["system_prompt"];
    assert!(text.contains("Work step by step"), "{}", r.to_markdown());
    assert!(text.ends_with(&crate::optimizer::methods::operators::reply_budget_note(40)));
    assert_eq!(m.train_score, 1.0, "{}", r.to_markdown());
    let records: Vec<_> = m.candidates().collect();
    // The strategy alone was cut off on its replies and lost; its repair was accepted.
    assert!(
        records
            .iter()
            .any(|c| !c.reply_budget && c.cut_off.unwrap_or(0) >= 2 && c.status != "accepted"),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|c| c.reply_budget && c.status == "accepted"),
        "{records:?}"
    );
    assert!(
        m.counters.by_operator["seed+budget"].accepted > 0,
        "{:?}",
        m.counters
    );
    // The note's number is the task's setting, not training content: no rejection.
    assert_eq!(m.counters.content_rejections, 0, "{:?}", m.counters);
    // Every evaluated candidate says on how many examples it was scored; the report names
    // the candidates cut off often, the repair's being all but cut-free.
    for c in records.iter().filter(|c| c.score.is_some()) {
        let scored = c.scored.expect("an evaluated candidate's count");
        assert!(scored >= 1 && c.cut_off.unwrap_or(0) <= scored, "{c:?}");
    }
    let often: Vec<_> = records.iter().filter(|c| c.cut_off_often()).collect();
    assert!(often.iter().all(|c| !c.reply_budget), "{often:?}");
    assert!(!often.is_empty(), "{records:?}");
    let note = r.cut_off_note();
    assert!(
        note.contains(&format!(
            "under {} of fgo's {} evaluated candidates (seed)",
            often.len(),
            records.iter().filter(|c| c.scored.is_some()).count()
        )),
        "{note}"
    );
}

/// Without cut-off replies there is no repair, and the note never appears.
#[test]
fn no_reply_budget_is_stated_when_replies_are_not_cut_off() {
    let r = seed_run_with_a_reply_limit(reasoning_agent(false));
    let m = &r.methods[0];
    let text = &m.final_components["system_prompt"];
    assert!(text.contains("Work step by step"), "{}", r.to_markdown());
    assert!(!text.contains("Keep the whole reply"), "{text}");
    assert_eq!(m.train_score, 1.0, "{}", r.to_markdown());
    assert!(m.candidates().all(|c| !c.reply_budget));
    assert!(!m.counters.by_operator.contains_key("seed+budget"));
    assert_eq!(r.cut_off_note(), "", "nothing was cut off");
}

/// An agent that a library strategy helps on lists of three and four items only (4 of the
/// 16 training examples, too few for `min_gain = 5` on either subset), and an optimizer
/// whose merges change nothing.
fn near_miss_world() -> ScriptedLlm {
    ScriptedLlm::new(|r: &ChatRequest| {
        let system = &r.messages[0].content;
        if system.starts_with("You improve") {
            return "<system_prompt>Count the items.</system_prompt>".into();
        }
        let n = items_asked(r);
        let helped = crate::optimizer::methods::operators::STRATEGIES
            .iter()
            .any(|s| system.contains(s))
            && (n == 3 || n == 4);
        let said = if helped || n <= 2 { n } else { n - 1 };
        format!("I count them.\n{}", WORDS[said.min(9)])
    })
}

/// FGO on two subsets with library strategies only, under the near-miss world.
fn near_miss_run(retrials: usize) -> RunReport {
    let mut t = task("operators = [\"seed\"]\nmin_gain = 5");
    t.spec.optimizer.subset_count = Some(2);
    t.spec.optimizer.merge_retrials = retrials;
    run(
        &t,
        Arc::new(near_miss_world()),
        Method::Fgo,
        &Calls::in_memory(),
    )
}

/// A strategy that gains on a subset too little to be accepted there is tried again at the
/// merge on top of the best child, wins on the union, and is the final component; without
/// retrials the run returns the initial component.
#[test]
fn a_near_miss_is_tried_again_at_the_merge_and_can_win_there() {
    let r = near_miss_run(2);
    let m = &r.methods[0];
    // No subset accepted anything: each gained at most 4 of its 8 examples, short of 5.
    assert_eq!(m.counters.accepted, 0, "{}", r.to_markdown());
    let merge = &m.merges[0];
    assert!(
        merge.candidate_operators.iter().any(|o| o == "retrial"),
        "{merge:?}"
    );
    let retrials = merge
        .candidate_operators
        .iter()
        .filter(|o| *o == "retrial")
        .count();
    assert!(retrials <= 2, "at most merge_retrials: {merge:?}");
    assert_eq!(merge.chosen, merge.id, "{merge:?}");
    assert_eq!(
        m.counters.by_operator["retrial"].accepted, 1,
        "{:?}",
        m.counters
    );
    let text = &m.final_components["system_prompt"];
    assert!(text.starts_with("Count the items."), "{text}");
    assert!(
        crate::optimizer::methods::operators::STRATEGIES
            .iter()
            .any(|s| text.contains(s)),
        "{text}"
    );
    assert!(m.val_score > r.initial.val, "{}", r.to_markdown());
    assert!(m.train_score > r.initial.train);
    // The report names the move beside each merge candidate's score.
    let md = r.to_markdown();
    assert!(md.contains("candidates [\"retrial "), "{md}");

    let r = near_miss_run(0);
    let m = &r.methods[0];
    assert!(
        m.merges
            .iter()
            .all(|x| !x.candidate_operators.iter().any(|o| o == "retrial")),
        "{:?}",
        m.merges
    );
    assert_eq!(m.final_components["system_prompt"], "Count the items.");
}

#[test]
fn a_component_worse_than_the_initial_on_val_is_never_returned() {
    let r = run(
        &task(""),
        Arc::new(world(Optimizer::Overfit)),
        Method::Fgo,
        &Calls::in_memory(),
    );
    let m = &r.methods[0];
    // The overfitting prompt was accepted on train and shortlisted, but lost on val.
    let overfit: Vec<_> = m
        .pool
        .iter()
        .filter(|e| e.components["system_prompt"].contains("Memorize"))
        .collect();
    assert!(overfit.iter().any(|e| e.train_gain > 0.0), "{:?}", m.pool);
    assert!(overfit
        .iter()
        .filter_map(|e| e.val_score)
        .all(|v| Some(v) < r.initial.val));
    assert_eq!(m.final_source, "initial", "{}", m.selection);
    assert_eq!(m.val_score, r.initial.val);
    // Chosen on train instead, the same run ships it.
    let t = task("selection = \"train\"");
    let r = run(
        &t,
        Arc::new(world(Optimizer::Overfit)),
        Method::Fgo,
        &Calls::in_memory(),
    );
    assert!(r.methods[0].final_components["system_prompt"].contains("Memorize"));
    assert!(r.methods[0].val_score < r.initial.val);
}

#[test]
fn a_training_set_that_fits_one_prompt_is_one_subset() {
    let mut t = task("");
    t.spec.optimizer.subset_count = None;
    let r = run_fgo(&t);
    let m = &r.methods[0];
    assert_eq!(m.subsets.len(), 1);
    assert!(
        m.subset_sizing.contains("ran as all-at-once"),
        "{}",
        m.subset_sizing
    );
    assert!(m.merges.is_empty());
    // A prompt budget too small for all of train divides it, into the fewest subsets that
    // fit when no floor binds...
    t.spec.optimizer.prompt_tokens = 256;
    t.spec.optimizer.min_subset_size = 1;
    let r = run_fgo(&t);
    let m = &r.methods[0];
    assert!(m.subsets.len() > 2, "{}", m.subset_sizing);
    assert!(m.subset_sizing.contains("fewest"), "{}", m.subset_sizing);
    // ... and into subsets of at least `min_subset_size` (16 examples, 8 each) when those
    // would be smaller: each prompt then shows the trajectories that fit.
    t.spec.optimizer.min_subset_size = 8;
    let r = run_fgo(&t);
    let m = &r.methods[0];
    assert_eq!(m.subsets.len(), 2, "{}", m.subset_sizing);
    assert!(
        m.subsets.iter().all(|s| s.examples.len() == 8),
        "{}",
        m.subset_sizing
    );
    assert!(
        m.subset_sizing.contains("min_subset_size"),
        "{}",
        m.subset_sizing
    );
}

#[test]
fn budget_stops_the_run_with_the_best_so_far() {
    // The rotation that makes an optimizer call in the first iteration.
    let t = task("operators = [\"seed\", \"rewrite\"]\n[budget]\noptimizer_tokens = 1");
    let r = run_fgo(&t);
    let m = &r.methods[0];
    let hit = m.budget_hit.as_ref().unwrap();
    assert_eq!(hit.budget, "optimizer_tokens");
    assert!(r.status.contains("budget"));
    // Stopped after one iteration: no merges; the best subset component is reported.
    assert!(m.merges.is_empty());
    assert!(m.subsets.iter().all(|s| s.iterations.len() == 1));
    assert!(m.final_components["system_prompt"].contains("running total"));
    assert!(
        m.test_score.is_some(),
        "an optimizer-token stop still evaluates on test"
    );
}

#[test]
fn an_agent_budget_stop_makes_no_selection_calls() {
    let t = task("[budget]\nagent_tokens = 50");
    let r = run_fgo(&t);
    let m = &r.methods[0];
    assert_eq!(
        m.budget_hit.as_ref().map(|h| h.budget.as_str()),
        Some("agent_tokens")
    );
    assert!(m.selection.contains("budget"), "{}", m.selection);
    assert!(r.accounting.rows.iter().all(|row| row.stage != "select"));
}

#[test]
fn all_at_once_records_truncation_and_none_evaluates_only() {
    let r = run(
        &task(""),
        Arc::new(world(Optimizer::Good)),
        Method::Both,
        &Calls::in_memory(),
    );
    assert_eq!(r.methods.len(), 2);
    let aao = &r.methods[1];
    assert_eq!(aao.method, "all_at_once");
    assert_eq!(aao.subsets[0].truncations[0].total, 16);
    assert!(r.to_markdown().contains("vs"));
    let r = run(
        &task(""),
        Arc::new(world(Optimizer::Good)),
        Method::None,
        &Calls::in_memory(),
    );
    assert!(r.methods.is_empty());
    assert!(r.initial.test.is_some());
}

#[test]
fn resume_from_a_truncated_log_reproduces_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let t = task("");
    // The uninterrupted run.
    let full_dir = dir.path().join("full");
    std::fs::create_dir_all(&full_dir).unwrap();
    let (log, _) =
        crate::optimizer::exec::events::EventLog::open(&full_dir.join("events.jsonl")).unwrap();
    let calls = Calls::new(log, Vec::new());
    let llm = Arc::new(world(Optimizer::Good));
    let full = run(&t, llm.clone(), Method::Both, &calls);
    let total_live = llm.requests();

    // A run killed part-way: keep the first 60% of the log and tear the next line.
    let text = std::fs::read_to_string(full_dir.join("events.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let keep = lines.len() * 6 / 10;
    let mut torn = lines[..keep].join("\n");
    torn.push('\n');
    torn.push_str(&lines[keep][..lines[keep].len() / 2]);
    let killed = dir.path().join("killed");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::write(killed.join("events.jsonl"), torn).unwrap();

    let (log, previous) =
        crate::optimizer::exec::events::EventLog::open(&killed.join("events.jsonl")).unwrap();
    let replayable = previous.len();
    let calls = Calls::new(log, previous);
    let llm2 = Arc::new(world(Optimizer::Good));
    let resumed = run(&t, llm2.clone(), Method::Both, &calls);
    assert_eq!(
        llm2.requests(),
        total_live - replayable,
        "finished calls are not repeated"
    );
    for (a, b) in full.methods.iter().zip(&resumed.methods) {
        assert_eq!(a.final_components, b.final_components);
        assert_eq!(a.test_score, b.test_score);
        assert_eq!(
            serde_json::to_value(&a.merges).unwrap(),
            serde_json::to_value(&b.merges).unwrap()
        );
    }
    let strip = |r: &RunReport| {
        r.accounting
            .rows
            .iter()
            .map(|t| {
                (
                    t.stage.clone(),
                    t.calls,
                    t.prompt_tokens,
                    t.completion_tokens,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&full), strip(&resumed));
    // The resumed log now holds every call once.
    let (_, all) =
        crate::optimizer::exec::events::EventLog::open(&killed.join("events.jsonl")).unwrap();
    assert_eq!(all.len(), total_live);
}

/// A run's event-log keys, each once.
fn log_keys(path: &Path) -> std::collections::BTreeSet<String> {
    let (_, events) = crate::optimizer::exec::events::EventLog::open(path).unwrap();
    events
        .into_iter()
        .filter_map(|e| match e {
            crate::optimizer::exec::events::Event::Call(r) => Some(r.key),
            _ => None,
        })
        .collect()
}

/// What a method's report says, per method, that must not depend on a method beside it.
fn method_view(r: &RunReport, method: &str) -> serde_json::Value {
    let m = r.methods.iter().find(|m| m.method == method).unwrap();
    let tokens: Vec<(String, String, usize, usize, usize)> = r
        .accounting
        .rows
        .iter()
        .filter(|t| t.method == method)
        .map(|t| {
            (
                t.stage.clone(),
                t.role.clone(),
                t.calls,
                t.prompt_tokens,
                t.completion_tokens,
            )
        })
        .collect();
    let steps: Vec<_> = r.steps.iter().filter(|s| s.method == method).collect();
    serde_json::json!({
        "components": m.final_components,
        "source": m.final_source,
        "scores": [m.train_score, m.val_score, m.test_score],
        "per_example": m.per_example,
        "counters": m.counters,
        "subsets": m.subsets,
        "merges": m.merges,
        "pool": m.pool,
        "tokens": tokens,
        "steps": steps,
    })
}

#[test]
fn both_methods_side_by_side_give_what_each_gives_alone() {
    let dir = tempfile::tempdir().unwrap();
    let t = task("");
    let run_in = |name: &str, method: Method| {
        let path = dir.path().join(format!("{name}.jsonl"));
        let (log, _) = crate::optimizer::exec::events::EventLog::open(&path).unwrap();
        let calls = Calls::new(log, Vec::new());
        let llm = Arc::new(world(Optimizer::Good));
        let r = run(&t, llm.clone(), method, &calls);
        (r, log_keys(&path), llm.requests())
    };
    let (both, both_keys, both_requests) = run_in("both", Method::Both);
    let (fgo, fgo_keys, _) = run_in("fgo", Method::Fgo);
    let (aao, aao_keys, _) = run_in("aao", Method::AllAtOnce);
    assert_eq!(method_view(&both, "fgo"), method_view(&fgo, "fgo"));
    assert_eq!(
        method_view(&both, "all_at_once"),
        method_view(&aao, "all_at_once")
    );
    let initial = |r: &RunReport| serde_json::to_value(&r.initial).unwrap();
    assert_eq!(initial(&both), initial(&fgo));
    assert_eq!(initial(&both), initial(&aao));
    // The same calls, each sent once.
    let union: std::collections::BTreeSet<String> = fgo_keys.union(&aao_keys).cloned().collect();
    assert_eq!(both_keys, union);
    assert_eq!(both_requests, union.len(), "a call was sent twice");
    // The run's total counts each call once; the methods' rows count what each used.
    let live = both.accounting.total.live;
    assert_eq!(live, union.len());
    assert!(
        both.accounting.total.shared > 0,
        "the methods shared no call"
    );
}

#[test]
fn successive_halving_changes_nothing_but_the_evaluations() {
    let mut saved_in_all = 0;
    for world_kind in [Optimizer::Good, Optimizer::Overfit, Optimizer::Leaky] {
        let go = |halving: bool| {
            let t = task(if halving { "" } else { "halving = false" });
            let llm = Arc::new(world(world_kind));
            let r = run(&t, llm.clone(), Method::Both, &Calls::in_memory());
            (r, llm.requests())
        };
        let (on, on_requests) = go(true);
        let (off, off_requests) = go(false);
        for (a, b) in on.methods.iter().zip(&off.methods) {
            assert_eq!(a.final_components, b.final_components);
            assert_eq!(
                (a.train_score, a.val_score, a.test_score),
                (b.train_score, b.val_score, b.test_score)
            );
            assert_eq!(a.counters.accepted, b.counters.accepted);
            assert_eq!(b.counters.halving_saved, 0);
            // Merges stop hopeless candidates too, and keep the same entry.
            let merged = |m: &crate::optimizer::report::MethodReport| -> Vec<(String, f64)> {
                m.merges
                    .iter()
                    .map(|g| (g.chosen.clone(), g.score))
                    .collect()
            };
            assert_eq!(merged(a), merged(b));
        }
        let saved: usize = on.methods.iter().map(|m| m.counters.halving_saved).sum();
        assert!(
            on_requests + saved >= off_requests,
            "{on_requests} + {saved} < {off_requests}"
        );
        assert!(on_requests <= off_requests);
        saved_in_all += saved;
    }
    assert!(saved_in_all > 0, "halving never stopped a candidate early");
}

/// The mechanical candidates (here `seed`) are scored on their first halving slice while
/// the optimizer writes its diagnoses and rewrites, and no request is made twice: the
/// evaluation that follows finds the early replies in the run's memo.
#[test]
fn mechanical_candidates_are_scored_while_the_optimizer_writes() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    let writing = Arc::new(AtomicUsize::new(0));
    let overlapped = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<(HashSet<String>, usize)>> = Arc::default();
    let inner = world(Optimizer::Good);
    let (w, o, s) = (writing.clone(), overlapped.clone(), seen.clone());
    let llm = Arc::new(ScriptedLlm::new(move |r: &ChatRequest| {
        let key = format!("{r:?}");
        {
            let mut seen = s.lock().unwrap();
            if !seen.0.insert(key) {
                seen.1 += 1;
            }
        }
        let system = &r.messages[0].content;
        if system.starts_with("You improve") {
            w.fetch_add(1, Ordering::SeqCst);
            // Write until a seed candidate has been scored meanwhile (or give up after a
            // while, and the assertion below fails): no fixed delay to lose on a loaded
            // machine.
            let start = std::time::Instant::now();
            while o.load(Ordering::SeqCst) == 0 && start.elapsed().as_secs() < 5 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let reply = (inner.script)(r);
            w.fetch_sub(1, Ordering::SeqCst);
            return reply;
        }
        let seeded = crate::optimizer::methods::operators::STRATEGIES
            .iter()
            .any(|st| system.contains(st));
        if seeded && w.load(Ordering::SeqCst) > 0 {
            o.fetch_add(1, Ordering::SeqCst);
        }
        (inner.script)(r)
    }));
    let t = task("operators = [\"seed\", \"rewrite\"]");
    let r = run(&t, llm.clone(), Method::Fgo, &Calls::in_memory());
    assert_eq!(r.status, "completed");
    assert!(
        overlapped.load(Ordering::SeqCst) > 0,
        "no seed candidate was scored while the optimizer wrote"
    );
    assert_eq!(seen.lock().unwrap().1, 0, "a request was made twice");
    // The same run without the optimizer's delay gives the same result.
    let plain = run(
        &t,
        Arc::new(world(Optimizer::Good)),
        Method::Fgo,
        &Calls::in_memory(),
    );
    assert_eq!(
        r.methods[0].final_components,
        plain.methods[0].final_components
    );
    assert_eq!(r.methods[0].counters, plain.methods[0].counters);
}
