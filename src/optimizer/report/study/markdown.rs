//! `study.md`: the study summary for people, as Markdown tables.

use std::fmt::Write as _;

use super::Study;

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

impl Study {
    /// The Markdown summary (`study.md`).
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# fgo study: {}\n", self.task);
        let _ = writeln!(
            s,
            "Agent `{}`, optimizer `{}`. Seeds {:?}, training-set sizes {:?}. Scores are on the test split.\n",
            self.agent_model,
            self.optimizer_model.as_deref().unwrap_or("-"),
            self.seeds,
            self.train_sizes
        );
        let _ = writeln!(s, "![test score per method and size](study.svg)\n");
        let _ = writeln!(s, "## Test score over seeds\n\nMean over seeds with its 95% Student-t interval; solved examples pooled over seeds with the Wilson 95% interval; optimizer tokens are a mean per seed of what the method's own calls spent: a request another method of the same run already made is answered by the run's memo at no cost (memo hits, summed over seeds).\n");
        let _ = writeln!(s, "| method | train | mean test | 95% interval | per seed | solved | 95% interval | optimizer prompt tokens | optimizer completion tokens | optimizer memo hits |\n|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.results {
            let (mean, ci) = r.test.map_or(("-".into(), "-".into()), |i| {
                (pct(i.mean), format!("[{}, {}]", pct(i.low), pct(i.high)))
            });
            let per_seed: Vec<String> = r
                .per_seed
                .iter()
                .map(|p| format!("s{}: {}", p.seed, p.test.map_or("-".into(), pct)))
                .collect();
            let (solved, sci) = r.solved.map_or(("-".into(), "-".into()), |v| {
                (
                    format!("{}/{}", v.solved, v.n),
                    format!("[{}, {}]", pct(v.interval.low), pct(v.interval.high)),
                )
            });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} |",
                r.method,
                r.train_size,
                mean,
                ci,
                per_seed.join(", "),
                solved,
                sci,
                r.optimizer_prompt_tokens,
                r.optimizer_completion_tokens,
                r.per_seed
                    .iter()
                    .map(|p| p.optimizer_memo_hits)
                    .sum::<usize>()
            );
        }
        for c in &self.constant {
            let answers: Vec<String> = c
                .answers
                .iter()
                .map(|a| format!("`{}`", a.replace('`', "'")))
                .collect();
            let _ = writeln!(
                s,
                "\nTrain {}: giving every test example the same answer ({}, the best on each seed's train) scores {} on test (mean over {} seeds): a method can reach that by moving the agent towards one answer, without solving more.",
                c.train_size,
                answers.join(", "),
                pct(c.mean_test),
                c.cells
            );
        }
        let _ = writeln!(s, "\n## Paired comparisons on test\n\nPairs are (seed, test example), pooled over the seeds of a size. A win is an example `a` solves and `b` does not; p is the exact two-sided McNemar test on wins against losses; the interval is a {}-resample bootstrap of the mean score difference (seed {}).\n", self.bootstrap_resamples, self.bootstrap_seed);
        let _ = writeln!(s, "| train | a | b | pairs | wins | losses | ties | McNemar p | mean difference | 95% interval |\n|---|---|---|---|---|---|---|---|---|---|");
        for c in &self.comparisons {
            match &c.paired {
                Some(p) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {:+.1} pts | [{:+.1}, {:+.1}] |",
                        c.train_size,
                        c.a,
                        c.b,
                        p.n,
                        p.wins,
                        p.losses,
                        p.ties,
                        p.mcnemar_p,
                        100.0 * p.mean_diff,
                        100.0 * p.diff_low,
                        100.0 * p.diff_high
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | 0 | - | - | - | - | - | - |",
                        c.train_size, c.a, c.b
                    );
                }
            }
        }
        let _ = writeln!(s, "\n## Cells\n\n| train | seed | run directory | status | examples (train/val/test) | wall time (s) |\n|---|---|---|---|---|---|");
        for c in &self.cells {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {}/{}/{} | {:.1} |",
                c.train_size,
                c.seed,
                c.dir.display(),
                c.status,
                c.sizes[0],
                c.sizes[1],
                c.sizes[2],
                c.elapsed_s
            );
        }
        for t in &self.timing {
            let _ = writeln!(
                s,
                "\nTraining-set size {}: {:.1}s per cell on average, {:.1}s summed over its cells (cells run side by side overlap in time).",
                t.train_size, t.mean_cell_s, t.total_s
            );
        }
        s
    }
}
