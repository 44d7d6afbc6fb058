//! The study chart (`study.svg`): test score per method and training-set size.
//!
//! One group of columns per training-set size, one column per method: a dot per seed, a
//! bar from the lower to the upper end of the 95% interval over seeds (clipped to 0-100%)
//! and a wide tick at the mean. Plain hand-written SVG, like the run charts.

use std::fmt::Write as _;

use super::{Study, METHOD_NAMES};

const W: f64 = 640.0;
const H: f64 = 360.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 52.0;
/// Colors of `fgo`, `all_at_once` and `none` ([`METHOD_NAMES`] order), fixed so that a
/// method has one color in every study.
const COLORS: [&str; 3] = ["#1f77b4", "#d62728", "#7f7f7f"];

fn color(method: &str) -> &'static str {
    METHOD_NAMES
        .iter()
        .position(|m| *m == method)
        .map_or("#000000", |i| COLORS[i])
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The chart of a study, as an SVG document.
pub fn study_chart(study: &Study) -> String {
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y_of = |v: f64| TOP + (1.0 - v.clamp(0.0, 1.0)) * plot_h;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">\n");
    let _ = writeln!(s, "<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        LEFT + plot_w / 2.0,
        escape(&format!(
            "{}: test score over seeds (mean, 95% interval)",
            study.task
        ))
    );
    for v in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = y_of(v);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>",
            LEFT + plot_w
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>",
            LEFT - 4.0,
            y + 4.0,
            100.0 * v
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{:.1}\" stroke=\"black\"/>",
        TOP + plot_h
    );
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h
    );
    let _ = writeln!(
        s,
        "<text x=\"14\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1})\">test score</text>",
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">training examples</text>",
        LEFT + plot_w / 2.0,
        H - 10.0
    );

    let groups = study.train_sizes.len().max(1) as f64;
    let group_w = plot_w / groups;
    let columns = study.methods.len().max(1) as f64;
    let col_w = group_w / (columns + 1.0);
    for (gi, &n) in study.train_sizes.iter().enumerate() {
        let gx = LEFT + gi as f64 * group_w;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n}</text>",
            gx + group_w / 2.0,
            TOP + plot_h + 16.0
        );
        for (mi, m) in study.methods.iter().enumerate() {
            let color = color(m);
            let x = gx + col_w * (mi as f64 + 1.0);
            let Some(r) = study
                .results
                .iter()
                .find(|r| &r.method == m && r.train_size == n)
            else {
                continue;
            };
            if let Some(i) = r.test {
                let (lo, hi, mean) = (y_of(i.low), y_of(i.high), y_of(i.mean));
                let _ = writeln!(
                    s,
                    "<line x1=\"{x:.1}\" y1=\"{lo:.1}\" x2=\"{x:.1}\" y2=\"{hi:.1}\" stroke=\"{color}\" stroke-width=\"2\"/>"
                );
                for y in [lo, hi] {
                    let _ = writeln!(
                        s,
                        "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{color}\"/>",
                        x - 4.0,
                        x + 4.0
                    );
                }
                let _ = writeln!(
                    s,
                    "<line x1=\"{:.1}\" y1=\"{mean:.1}\" x2=\"{:.1}\" y2=\"{mean:.1}\" stroke=\"{color}\" stroke-width=\"3\"><title>{}</title></line>",
                    x - 9.0,
                    x + 9.0,
                    escape(&format!(
                        "{m}, {n} training examples: mean {:.1}% [{:.1}%, {:.1}%]",
                        100.0 * i.mean,
                        100.0 * i.low,
                        100.0 * i.high
                    ))
                );
            }
            for p in &r.per_seed {
                let Some(v) = p.test else { continue };
                let _ = writeln!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"none\" stroke=\"{color}\"><title>{}</title></circle>",
                    x + 12.0,
                    y_of(v),
                    escape(&format!("{m}, seed {}: {:.1}%", p.seed, 100.0 * v))
                );
            }
        }
    }
    let legend_x = LEFT + plot_w + 16.0;
    for (mi, m) in study.methods.iter().enumerate() {
        let color = color(m);
        let y = TOP + 8.0 + 16.0 * mi as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{legend_x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" stroke-width=\"3\"/>",
            legend_x + 14.0
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{}</text>",
            legend_x + 20.0,
            y + 4.0,
            escape(m)
        );
    }
    let y = TOP + 8.0 + 16.0 * study.methods.len() as f64 + 8.0;
    for (i, line) in ["tick: mean", "line: 95% interval", "circle: one seed"]
        .iter()
        .enumerate()
    {
        let _ = writeln!(
            s,
            "<text x=\"{legend_x:.1}\" y=\"{:.1}\" fill=\"#555\">{line}</text>",
            y + 14.0 * i as f64
        );
    }
    s.push_str("</svg>\n");
    s
}
