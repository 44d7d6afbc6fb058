//! Hand-written SVG charts for the report: score per step, and tokens by stage.
//!
//! Plain SVG with no scripts or external resources, so the files render anywhere (a browser,
//! a Markdown viewer) and diff well.

use std::fmt::Write as _;

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

/// Score (0-100%) of every recorded step, one line per method.
pub fn score_chart(report: &RunReport) -> String {
    let mut s = frame("Score per step (mean over the examples scored)");
    for v in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = H - PAD - v * (H - 2.0 * PAD);
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
    let n = report.steps.len().max(2) as f64;
    let x_of = |i: usize| PAD + (i as f64) * (W - 1.5 * PAD) / (n - 1.0);
    let mut methods: Vec<&str> = report.steps.iter().map(|p| p.method.as_str()).collect();
    methods.dedup();
    methods.sort_unstable();
    methods.dedup();
    for (mi, m) in methods.iter().enumerate() {
        let color = COLORS[mi % COLORS.len()];
        let pts: Vec<(f64, f64, &str)> = report
            .steps
            .iter()
            .enumerate()
            .filter(|(_, p)| p.method == *m)
            .map(|(i, p)| {
                (
                    x_of(i),
                    H - PAD - p.score * (H - 2.0 * PAD),
                    p.label.as_str(),
                )
            })
            .collect();
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            path.join(" ")
        );
        for (x, y, label) in &pts {
            let _ = writeln!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"><title>{}</title></circle>", escape(label));
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>",
            W - 150.0,
            36.0 + 14.0 * mi as f64,
            escape(m)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>",
        W / 2.0,
        H - 12.0
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
