//! Hand-written SVG charts for the report: score per step, and tokens by stage.
//!
//! Plain SVG with no scripts or external resources, so the files render anywhere (a browser,
//! a Markdown viewer) and diff well.

use std::fmt::Write as _;

use crate::optimizer::report::stats::wilson95;
use crate::optimizer::report::RunReport;

const W: f64 = 640.0;
const H: f64 = 320.0;
const PAD: f64 = 48.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn frame(title: &str) -> String {
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">\n");
    let _ = writeln!(s, "<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        W / 2.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        H - PAD,
        W - PAD / 2.0,
        H - PAD
    );
    let _ = writeln!(
        s,
        "<line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"black\"/>",
        H - PAD
    );
    s
}

/// One method's scores at one stage of the chart.
#[derive(Default, Clone)]
struct StagePoint {
    /// On the training examples the component was selected on.
    selected: Option<f64>,
    val: Option<f64>,
    /// Test score with its 95% interval.
    test: Option<(f64, f64, f64)>,
}

/// The stages of a method: initial, each optimization iteration, each merge level, final.
fn stages(
    report: &RunReport,
    m: &crate::optimizer::report::MethodReport,
) -> Vec<(String, StagePoint)> {
    let test_interval = |score: Option<f64>| {
        let n = report.sizes[2];
        score.and_then(|v| wilson95((v * n as f64).round() as usize, n).map(|i| (v, i.low, i.high)))
    };
    let mut out = vec![(
        "initial".to_string(),
        StagePoint {
            selected: Some(report.initial.train),
            val: report.initial.val,
            test: test_interval(report.initial.test),
        },
    )];
    let iterations = m
        .subsets
        .iter()
        .map(|s| s.iterations.len())
        .max()
        .unwrap_or(0);
    for it in 0..iterations {
        let (mut sum, mut n) = (0.0, 0usize);
        for s in &m.subsets {
            let score = s
                .iterations
                .get(it)
                .or(s.iterations.last())
                .map_or(s.initial_score, |r| r.score_after);
            sum += score * s.examples.len() as f64;
            n += s.examples.len();
        }
        out.push((
            format!("iteration {}", it + 1),
            StagePoint {
                selected: (n > 0).then(|| sum / n as f64),
                ..StagePoint::default()
            },
        ));
    }
    let levels = m.merges.iter().map(|r| r.level).max().unwrap_or(0);
    for level in 1..=levels {
        let recs: Vec<_> = m.merges.iter().filter(|r| r.level == level).collect();
        let n: usize = recs.iter().map(|r| r.n).sum();
        let sum: f64 = recs.iter().map(|r| r.score * r.n as f64).sum();
        out.push((
            format!("merge {level}"),
            StagePoint {
                selected: (n > 0).then(|| sum / n as f64),
                ..StagePoint::default()
            },
        ));
    }
    out.push((
        "final".to_string(),
        StagePoint {
            selected: Some(m.train_score),
            val: m.val_score,
            test: test_interval(m.test_score),
        },
    ));
    out
}

/// Per method, the score at each stage: on the training examples its component was
/// selected on (solid), on val (dashed), and on test with its 95% interval (squares).
pub fn score_chart(report: &RunReport) -> String {
    let mut s = frame("Score by stage: train (selected on), val, test with 95% interval");
    let bottom = H - PAD - 16.0;
    let y_of = |v: f64| bottom - v * (bottom - PAD);
    for v in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = y_of(v);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{y:.1}\" text-anchor=\"end\">{:.0}%</text>",
            PAD - 4.0,
            v * 100.0
        );
        let _ = writeln!(
            s,
            "<line x1=\"{PAD}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>",
            W - PAD / 2.0
        );
    }
    let per_method: Vec<(&str, Vec<(String, StagePoint)>)> = if report.methods.is_empty() {
        let test = report.initial.test.and_then(|v| {
            let n = report.sizes[2];
            wilson95((v * n as f64).round() as usize, n).map(|i| (v, i.low, i.high))
        });
        vec![(
            "initial",
            vec![(
                "initial".to_string(),
                StagePoint {
                    selected: Some(report.initial.train),
                    val: report.initial.val,
                    test,
                },
            )],
        )]
    } else {
        report
            .methods
            .iter()
            .map(|m| (m.method.as_str(), stages(report, m)))
            .collect()
    };
    // The x axis: the stages in order, the union over methods.
    let mut labels: Vec<String> = Vec::new();
    for (_, st) in &per_method {
        for (label, _) in st {
            if !labels.contains(label) {
                let at = if label == "final" {
                    labels.len()
                } else {
                    labels
                        .iter()
                        .position(|l| l == "final")
                        .unwrap_or(labels.len())
                };
                labels.insert(at, label.clone());
            }
        }
    }
    let step = (W - 1.5 * PAD - 150.0) / (labels.len().max(2) - 1) as f64;
    let x_of = |label: &str| {
        PAD + 20.0 + step * labels.iter().position(|l| l == label).unwrap_or(0) as f64
    };
    for l in &labels {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x_of(l),
            bottom + 14.0,
            escape(l)
        );
    }
    for (mi, (name, st)) in per_method.iter().enumerate() {
        let color = COLORS[mi % COLORS.len()];
        let dx = 4.0 * mi as f64;
        let series = |pick: &dyn Fn(&StagePoint) -> Option<f64>| -> Vec<(f64, f64, String)> {
            st.iter()
                .filter_map(|(l, p)| {
                    pick(p).map(|v| {
                        (
                            x_of(l) + dx,
                            y_of(v),
                            format!("{name} {l}: {:.1}%", 100.0 * v),
                        )
                    })
                })
                .collect()
        };
        for (points, dash) in [
            (series(&|p| p.selected), ""),
            (series(&|p| p.val), " stroke-dasharray=\"5,3\""),
        ] {
            let path: Vec<String> = points
                .iter()
                .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"{dash} points=\"{}\"/>",
                path.join(" ")
            );
            for (x, y, title) in &points {
                let _ = writeln!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"><title>{}</title></circle>", escape(title));
            }
        }
        for (l, p) in st {
            if let Some((v, lo, hi)) = p.test {
                let x = x_of(l) + dx + 8.0;
                let _ = writeln!(
                    s,
                    "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{color}\"/>",
                    y_of(lo),
                    y_of(hi)
                );
                let _ = writeln!(
                    s,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"6\" height=\"6\" fill=\"{color}\"><title>{}</title></rect>",
                    x - 3.0,
                    y_of(v) - 3.0,
                    escape(&format!("{name} {l} test: {:.1}% [{:.1}, {:.1}]", 100.0 * v, 100.0 * lo, 100.0 * hi))
                );
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{:.0}%</text>",
                    x + 5.0,
                    y_of(v) + 4.0,
                    100.0 * v
                );
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>",
            W - 150.0,
            40.0 + 14.0 * mi as f64,
            escape(name)
        );
    }
    let ly = 40.0 + 14.0 * per_method.len() as f64 + 6.0;
    let _ = writeln!(s, "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"black\"/><text x=\"{}\" y=\"{}\">train (selected on)</text>", W - 150.0, W - 130.0, W - 125.0, ly + 4.0);
    let _ = writeln!(s, "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\" stroke-dasharray=\"5,3\"/><text x=\"{}\" y=\"{}\">val</text>", W - 150.0, ly + 14.0, W - 130.0, ly + 14.0, W - 125.0, ly + 18.0);
    let _ = writeln!(s, "<rect x=\"{}\" y=\"{}\" width=\"6\" height=\"6\"/><text x=\"{}\" y=\"{}\">test, 95% interval</text>", W - 143.0, ly + 25.0, W - 125.0, ly + 32.0);
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">stage</text>",
        W / 2.0,
        H - 10.0
    );
    s.push_str("</svg>\n");
    s
}

/// Prompt and completion tokens per (method, stage, role), as horizontal bars.
pub fn tokens_chart(report: &RunReport) -> String {
    let rows = &report.accounting.rows;
    let mut s = frame("Tokens by stage (prompt | completion)");
    let max = rows.iter().map(|r| r.tokens()).max().unwrap_or(1).max(1) as f64;
    let bar_h = ((H - 2.0 * PAD) / rows.len().max(1) as f64).min(24.0);
    let left = PAD + 150.0;
    for (i, r) in rows.iter().enumerate() {
        let y = PAD + i as f64 * bar_h;
        let wp = (W - left - PAD) * r.prompt_tokens as f64 / max;
        let wc = (W - left - PAD) * r.completion_tokens as f64 / max;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 4.0,
            y + bar_h * 0.7,
            escape(&format!("{}/{}/{}", r.method, r.stage, r.role))
        );
        let _ = writeln!(
            s,
            "<rect x=\"{left}\" y=\"{y:.1}\" width=\"{wp:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
            bar_h * 0.8,
            COLORS[0]
        );
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{wc:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
            left + wp,
            bar_h * 0.8,
            COLORS[1]
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            left + wp + wc + 4.0,
            y + bar_h * 0.7,
            r.tokens()
        );
    }
    s.push_str("</svg>\n");
    s
}
