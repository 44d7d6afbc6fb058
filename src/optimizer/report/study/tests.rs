use std::path::{Path, PathBuf};

use super::*;
use crate::optimizer::methods::env::Counters;
use crate::optimizer::report::MethodReport;
use crate::optimizer::report::{
    Accounting, ExampleIds, ExampleScores, InitialScores, RunReport, Totals,
};

fn method(name: &str, test: &[f64]) -> MethodReport {
    MethodReport {
        method: name.into(),
        final_components: Default::default(),
        final_source: "initial".into(),
        train_score: 0.0,
        train_n: 1,
        val_score: None,
        test_score: Some(test.iter().sum::<f64>() / test.len() as f64),
        subsets: Vec::new(),
        merges: Vec::new(),
        counters: Counters::default(),
        budget_hit: None,
        per_example: ExampleScores {
            test: test.to_vec(),
            ..ExampleScores::default()
        },
        pool: Vec::new(),
        selection: String::new(),
        subset_sizing: String::new(),
    }
}

fn row(method: &str, role: &str, prompt: usize, completion: usize) -> Totals {
    Totals {
        method: method.into(),
        stage: "optimize".into(),
        role: role.into(),
        prompt_tokens: prompt,
        completion_tokens: completion,
        memo_hits: usize::from(method == "all_at_once"),
        ..Totals::default()
    }
}

/// A cell whose initial components score `none` on test and FGO and all-at-once `fgo`
/// and `aao`, with `tokens` optimizer prompt tokens per method.
fn cell(train_size: usize, seed: u64, none: &[f64], fgo: &[f64], aao: &[f64]) -> Cell {
    let report = RunReport {
        schema_version: 1,
        task: "t".into(),
        method: Method::Both,
        seed,
        agent_model: "agent.gguf".into(),
        optimizer_model: Some("opt.gguf".into()),
        sizes: [train_size, 0, none.len()],
        status: "completed".into(),
        initial: InitialScores {
            components: Default::default(),
            train: 0.0,
            val: None,
            test: Some(none.iter().sum::<f64>() / none.len() as f64),
            per_example: ExampleScores {
                test: none.to_vec(),
                ..ExampleScores::default()
            },
        },
        methods: vec![method("fgo", fgo), method("all_at_once", aao)],
        steps: Vec::new(),
        accounting: Accounting {
            rows: vec![
                row("shared", "agent", 1000, 10),
                row("fgo", "agent", 500, 5),
                row("fgo", "optimizer", 100 + seed as usize, 7),
                row("all_at_once", "optimizer", 300, 9),
            ],
            total: Totals::default(),
        },
        elapsed_s: 10.0 + seed as f64,
        example_ids: ExampleIds {
            val: Vec::new(),
            test: (0..none.len()).map(|i| format!("x{i}")).collect(),
        },
        comparisons: Vec::new(),
        constant_baseline: None,
        engine: Vec::new(),
        model_notes: Default::default(),
    };
    Cell {
        train_size,
        seed,
        dir: PathBuf::from(cell_name(train_size, seed)),
        source: CellSource::Run,
        report,
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn cell_method_shares_one_run_for_both_optimizers() {
    assert_eq!(
        cell_method(&names(&["fgo", "all_at_once", "none"])),
        Method::Both
    );
    assert_eq!(cell_method(&names(&["none", "fgo"])), Method::Fgo);
    assert_eq!(cell_method(&names(&["all_at_once"])), Method::AllAtOnce);
    assert_eq!(cell_method(&names(&["none"])), Method::None);
    assert_eq!(cell_name(50, 3), "train50-seed3");
}

#[test]
fn max_train_is_set_and_the_rest_kept() {
    let text = "name = \"t\"\n[data]\ntrain = \"a.jsonl\"\nmax_train = 9\n[agent]\ntype = \"chat\"\nuser = \"{{q}}\"\nextract = { type = \"regex\", pattern = \"-?\\\\d+\" }\n";
    let out = with_max_train(text, Path::new("t.toml"), 3).expect("valid toml");
    let v: toml::Table = toml::from_str(&out).expect("output parses");
    let orig: toml::Table = toml::from_str(text).expect("input parses");
    assert_eq!(v["data"]["max_train"].as_integer(), Some(3));
    assert_eq!(v["data"]["train"], orig["data"]["train"]);
    assert_eq!(v["agent"], orig["agent"]);
    let added = with_max_train("name = \"t\"\n", Path::new("t.toml"), 2).expect("toml");
    let v: toml::Table = toml::from_str(&added).expect("parses");
    assert_eq!(v["data"]["max_train"].as_integer(), Some(2));
    let e = with_max_train("data = 3\n", Path::new("t.toml"), 2).unwrap_err();
    assert!(e.to_string().contains("`data`"), "{e}");
}

#[test]
fn summary_of_two_seeds() {
    let cells = [
        cell(2, 0, &[0.0, 1.0, 0.0], &[1.0, 1.0, 0.0], &[0.0, 1.0, 1.0]),
        cell(2, 1, &[0.0, 0.0, 0.0], &[1.0, 1.0, 1.0], &[0.0, 0.0, 0.0]),
    ];
    let s = summarize(&names(&["none", "fgo", "all_at_once"]), &cells).expect("summary");
    assert_eq!(s.methods, names(&["fgo", "all_at_once", "none"]));
    assert_eq!(
        (s.seeds.clone(), s.train_sizes.clone()),
        (vec![0, 1], vec![2])
    );
    assert_eq!(s.optimizer_model.as_deref(), Some("opt.gguf"));

    let fgo = &s.results[0];
    assert_eq!((fgo.method.as_str(), fgo.train_size), ("fgo", 2));
    let tests: Vec<Option<f64>> = fgo.per_seed.iter().map(|p| p.test).collect();
    assert_eq!(tests, vec![Some(2.0 / 3.0), Some(1.0)]);
    let i = fgo.test.expect("interval");
    // Two values 2/3 and 1: mean 5/6, s = (1/3)/sqrt(2), half width t(1) * s / sqrt(2).
    assert!((i.mean - 5.0 / 6.0).abs() < 1e-12);
    assert!(
        (i.high - i.mean - 12.706_204_736 / 6.0).abs() < 1e-9,
        "{i:?}"
    );
    let solved = fgo.solved.expect("solved");
    assert_eq!((solved.solved, solved.n), (5, 6));
    // Optimizer tokens of the method only: 100 and 101 prompt tokens, 7 completion.
    assert_eq!(fgo.optimizer_prompt_tokens, 100.5);
    assert_eq!(fgo.optimizer_completion_tokens, 7.0);
    assert_eq!(fgo.per_seed[0].optimizer_memo_hits, 0);
    let aao = &s.results[1];
    assert_eq!(aao.per_seed[1].optimizer_memo_hits, 1);
    let none = &s.results[2];
    assert_eq!(none.method, "none");
    assert_eq!(none.optimizer_prompt_tokens, 0.0);
    assert_eq!(none.per_seed[1].test, Some(0.0));

    // fgo vs none, all_at_once vs none, fgo vs all_at_once; pooled over both seeds.
    let pairs: Vec<(&str, &str)> = s
        .comparisons
        .iter()
        .map(|c| (c.a.as_str(), c.b.as_str()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("fgo", "none"),
            ("all_at_once", "none"),
            ("fgo", "all_at_once")
        ]
    );
    let c = &s.comparisons[0];
    let p = c.paired.as_ref().expect("pairs");
    assert_eq!((c.cells, p.n, p.wins, p.losses, p.ties), (2, 6, 4, 0, 2));
    assert!((p.mcnemar_p - 2.0 / 16.0).abs() < 1e-12);
    let p = s.comparisons[2].paired.as_ref().expect("pairs");
    assert_eq!((p.wins, p.losses), (4, 1));

    assert_eq!(s.timing[0].total_s, 21.0);
    assert_eq!(s.timing[0].mean_cell_s, 10.5);
    assert_eq!(s.cells[1].dir, PathBuf::from("train2-seed1"));

    let md = s.to_markdown();
    for needle in [
        "| fgo | 2 | 83.3% |",
        "| 300 | 9 | 2 |",
        "s0: 66.7%, s1: 100.0%",
        "| 2 | fgo | none | 6 | 4 | 0 | 2 | 0.125 |",
        "![test score per method and size](study.svg)",
    ] {
        assert!(md.contains(needle), "study.md lacks `{needle}`:\n{md}");
    }
    let svg = study_chart(&s);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<circle").count(),
        6,
        "a dot per method and seed"
    );
    for label in [
        "test score",
        "training examples",
        ">fgo<",
        ">all_at_once<",
        ">none<",
    ] {
        assert!(svg.contains(label), "chart lacks {label}");
    }
    // A method keeps its color whatever else the study compares.
    let only_none = summarize(&names(&["none"]), &cells).expect("summary");
    for chart in [svg, study_chart(&only_none)] {
        assert!(chart.contains("fill=\"#7f7f7f\">none</text>"), "{chart}");
    }
}

#[test]
fn a_cell_without_a_requested_method_is_refused() {
    let mut c = cell(2, 0, &[1.0], &[1.0], &[1.0]);
    c.report.methods.pop();
    let e = summarize(&names(&["all_at_once"]), &[c]).unwrap_err();
    assert!(e.to_string().contains("all_at_once"), "{e}");
    assert!(summarize(&names(&["fgo"]), &[]).is_err());
}

#[test]
fn cells_without_test_scores_leave_the_pool() {
    let mut c = cell(2, 0, &[1.0, 0.0], &[1.0, 1.0], &[0.0, 0.0]);
    c.report.methods[0].per_example.test.clear();
    c.report.methods[0].test_score = None;
    let s = summarize(&names(&["fgo", "none"]), &[c]).expect("summary");
    assert_eq!(s.results[0].test, None);
    assert_eq!(s.results[0].solved, None);
    assert_eq!(
        (s.comparisons[0].cells, s.comparisons[0].paired.clone()),
        (0, None)
    );
    assert!(s.to_markdown().contains("| 2 | fgo | none | 0 | - |"));
}

#[test]
fn the_constant_baseline_is_averaged_per_size_and_named_in_the_markdown() {
    use crate::optimizer::data::baseline::ConstantBaseline;
    let with = |mut c: Cell, answer: &str, test: f64| {
        c.report.constant_baseline = Some(ConstantBaseline {
            answer: answer.into(),
            train: 0.5,
            val: None,
            test: Some(test),
        });
        c
    };
    let cells = vec![
        with(cell(4, 0, &[0.0, 1.0], &[1.0, 1.0], &[0.0, 1.0]), "No", 0.5),
        with(
            cell(4, 1, &[0.0, 1.0], &[1.0, 1.0], &[0.0, 1.0]),
            "Yes",
            0.25,
        ),
        with(
            cell(4, 2, &[0.0, 1.0], &[1.0, 1.0], &[0.0, 1.0]),
            "No",
            0.75,
        ),
        // A size whose cells have no baseline (a command metric) gets no line.
        cell(8, 0, &[0.0, 1.0], &[1.0, 1.0], &[0.0, 1.0]),
    ];
    let study = summarize(&names(&["fgo", "all_at_once", "none"]), &cells).expect("summary");
    assert_eq!(study.constant.len(), 1);
    let c = &study.constant[0];
    assert_eq!((c.train_size, c.cells), (4, 3));
    assert_eq!(c.answers, names(&["No", "Yes"]));
    assert!((c.mean_test - 0.5).abs() < 1e-12);
    let md = study.to_markdown();
    assert!(
        md.contains("Train 4: giving every test example the same answer (`No`, `Yes`"),
        "{md}"
    );
    assert!(!md.contains("Train 8: giving"), "{md}");
}

#[test]
fn the_report_speaks_of_the_constant_answer_only_when_it_matters() {
    use crate::optimizer::data::baseline::ConstantBaseline;
    // Initial 0.5 on test, FGO 1.0, all-at-once 0.5.
    let mut r = cell(4, 0, &[0.0, 1.0], &[1.0, 1.0], &[0.0, 1.0]).report;
    let baseline = |test: f64| ConstantBaseline {
        answer: "No".into(),
        train: 0.5,
        val: None,
        test: Some(test),
    };
    assert_eq!(r.constant_note(), "", "no baseline, no note");
    // Far below everything: the row is enough.
    r.constant_baseline = Some(baseline(0.0));
    assert_eq!(r.constant_note(), "");
    assert!(r.at_most_constant().is_empty());
    // Level with the initial component and all-at-once: both said.
    r.constant_baseline = Some(baseline(0.5));
    let note = r.constant_note();
    assert!(
        note.contains("(`No`, the best on train) scores 50.0% on test"),
        "{note}"
    );
    assert!(
        note.ends_with("Not above it on test: all_at_once."),
        "{note}"
    );
    assert!(r.to_markdown().contains(&note));
}

#[test]
fn the_report_speaks_of_cut_off_replies_only_when_many_were() {
    // Four test examples; the initial component, FGO and all-at-once.
    let mut r = cell(4, 0, &[0.0; 4], &[1.0; 4], &[0.0; 4]).report;
    assert_eq!(r.cut_off_note(), "", "none cut off, no note");
    // One of four: too few to say anything.
    r.methods[0].per_example.test_cut_off = 1;
    assert_eq!(r.cut_off_note(), "");
    r.methods[0].per_example.test_cut_off = 3;
    r.initial.per_example.test_cut_off = 2;
    let note = r.cut_off_note();
    assert!(
        note.contains(
            "2 of 4 test replies under the initial component; 3 of 4 test replies under fgo's final component."
        ),
        "{note}"
    );
    assert!(!note.contains("all_at_once"), "{note}");
    assert!(r.to_markdown().contains(&note));
    // Candidates: cut off in 5 of 20 scored replies (a quarter) counts, 1 of 2 does not
    // (too few), nor does an unevaluated one.
    let candidate = |operator: &str, cut_off: Option<usize>, scored: Option<usize>| {
        crate::optimizer::methods::slot::CandidateRecord {
            operator: operator.into(),
            status: "rolled_back".into(),
            score: None,
            check_score: None,
            detail: String::new(),
            cut_off,
            scored,
            reply_budget: false,
        }
    };
    let mut slot =
        crate::optimizer::methods::slot::Slot::new(0, vec![0], Default::default(), Vec::new());
    slot.iterations
        .push(crate::optimizer::methods::slot::IterationRecord {
            iteration: 0,
            score_before: 0.0,
            score_after: 0.0,
            diagnosis: String::new(),
            candidates: vec![
                candidate("seed", Some(5), Some(20)),
                candidate("rewrite", Some(1), Some(2)),
                candidate("format", None, Some(20)),
                candidate("strategy", Some(3), None),
            ],
        });
    r.methods[1].subsets.push(slot);
    let note = r.cut_off_note();
    assert!(
        note.contains("a quarter or more of the scored replies under 1 of all_at_once's 3 evaluated candidates (seed)."),
        "{note}"
    );
    // Older reports without the count read as none cut off.
    let old: ExampleScores = serde_json::from_str(r#"{"val": [], "test": [1.0]}"#).unwrap();
    assert_eq!(old.test_cut_off, 0);
}
