//! Progress of the optimizer subcommands on stderr.
//!
//! On a terminal each stage gets one line, redrawn in place about once a second: a bar of
//! the stage's steps, the steps done, the calls finished in the batch in flight, the stage's
//! elapsed time and an ETA. The line stays on screen when the next stage begins, so a run
//! ends with one line per stage. When stderr is not a terminal (a file, a pipe, CI logs),
//! each update is one plain line instead. Under `-q` nothing is printed.
//!
//! The ETA extrapolates the stage's finished steps; before the first step of a stage ends,
//! it extrapolates the calls finished in the batch in flight (the stage's remaining batches
//! are not counted then).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fgo::optimizer::exec::agent::Components;
use fgo::optimizer::exec::calls::BatchObserver;
use fgo::optimizer::methods::env::Progress;

/// Width of the bar, in characters.
const BAR_WIDTH: usize = 20;
/// Line width when the terminal's is unknown (`COLUMNS` is rarely exported).
const DEFAULT_COLUMNS: usize = 80;
/// How often the ticker redraws the line (for the elapsed time and the ETA).
const REDRAW_EVERY: Duration = Duration::from_secs(1);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Quiet,
    Lines,
    Bar,
}

/// What one stage's line shows.
#[derive(Debug, Clone, PartialEq)]
struct StageView {
    stage: String,
    /// Steps finished, of `total` (0 = unknown).
    done: usize,
    total: usize,
    message: String,
    /// Calls finished of those submitted in the live batch in flight (0 of 0: none).
    calls_done: usize,
    calls_total: usize,
    stage_elapsed_s: f64,
    batch_elapsed_s: f64,
}

impl StageView {
    /// Seconds left: from the finished steps, else from the batch in flight.
    fn eta_s(&self) -> Option<f64> {
        if self.done > 0 && self.total > self.done {
            let per_step = self.stage_elapsed_s / self.done as f64;
            Some(per_step * (self.total - self.done) as f64)
        } else if self.done == 0 && self.calls_done > 0 && self.calls_total > self.calls_done {
            let per_call = self.batch_elapsed_s / self.calls_done as f64;
            Some(per_call * (self.calls_total - self.calls_done) as f64)
        } else {
            None
        }
    }

    /// The terminal line, cut to `columns` characters.
    fn bar_line(&self, columns: usize) -> String {
        let filled = (BAR_WIDTH * self.done.min(self.total))
            .checked_div(self.total)
            .unwrap_or(0);
        let mut line = format!(
            "{:<8} [{}{}]",
            self.stage,
            "#".repeat(filled),
            "-".repeat(BAR_WIDTH - filled)
        );
        if self.total > 0 {
            line.push_str(&format!(" {}/{}", self.done, self.total));
        }
        if self.calls_total > 0 {
            line.push_str(&format!(" calls {}/{}", self.calls_done, self.calls_total));
        }
        line.push_str(&format!(" {}", clock(self.stage_elapsed_s)));
        if let Some(eta) = self.eta_s() {
            line.push_str(&format!(" eta {}", clock(eta)));
        }
        if !self.message.is_empty() {
            line.push_str(&format!("  {}", self.message));
        }
        line.chars().take(columns.saturating_sub(1)).collect()
    }

    /// The plain line printed when stderr is not a terminal.
    fn plain_line(&self, run_elapsed_s: f64) -> String {
        let count = if self.total > 0 {
            format!(" {}/{}", self.done, self.total)
        } else {
            String::new()
        };
        let eta = if self.done > 0 {
            self.eta_s()
                .map(|s| format!(", eta {s:.0}s"))
                .unwrap_or_default()
        } else {
            String::new()
        };
        format!(
            "[{run_elapsed_s:>7.1}s] {}{count}: {}{eta}",
            self.stage, self.message
        )
    }
}

/// `m:ss`, or `h:mm:ss` from an hour on.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

struct State {
    stage: String,
    stage_start: Instant,
    done: usize,
    total: usize,
    message: String,
    calls_done: usize,
    calls_total: usize,
    batch_start: Instant,
    /// A bar line is on screen without its newline.
    drawn: bool,
}

struct Shared {
    mode: Mode,
    /// Put before every plain line (empty for a run alone).
    prefix: String,
    start: Instant,
    columns: usize,
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while drawing must not stop the run: keep using the state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn view(&self, st: &State) -> StageView {
        StageView {
            stage: st.stage.clone(),
            done: st.done,
            total: st.total,
            message: st.message.clone(),
            calls_done: st.calls_done,
            calls_total: st.calls_total,
            stage_elapsed_s: st.stage_start.elapsed().as_secs_f64(),
            batch_elapsed_s: st.batch_start.elapsed().as_secs_f64(),
        }
    }

    fn draw(&self, st: &mut State) {
        let line = self.view(st).bar_line(self.columns);
        let mut err = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not fail the run.
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        st.drawn = true;
    }

    /// Leaves the current bar line on screen, completed, and moves to the next line.
    fn finish_line(&self, st: &mut State) {
        if !st.drawn {
            return;
        }
        if st.total > 0 {
            st.done = st.total;
        }
        st.calls_done = 0;
        st.calls_total = 0;
        self.draw(st);
        eprintln!();
        st.drawn = false;
    }

    fn update(&self, stage: &str, done: usize, total: usize, message: &str) {
        if self.mode == Mode::Quiet {
            return;
        }
        let mut st = self.lock();
        if st.stage != stage {
            if self.mode == Mode::Bar {
                self.finish_line(&mut st);
            }
            st.stage = stage.to_string();
            st.stage_start = Instant::now();
            st.calls_done = 0;
            st.calls_total = 0;
        }
        st.done = done;
        st.total = total;
        st.message = message.to_string();
        match self.mode {
            Mode::Bar => self.draw(&mut st),
            Mode::Lines => {
                let line = self
                    .view(&st)
                    .plain_line(self.start.elapsed().as_secs_f64());
                eprintln!("{}{line}", self.prefix);
            }
            Mode::Quiet => {}
        }
    }

    fn calls(&self, finished: usize, submitted: usize) {
        if self.mode != Mode::Bar {
            return;
        }
        let mut st = self.lock();
        if finished == 0 {
            st.batch_start = Instant::now();
        }
        st.calls_done = finished;
        st.calls_total = submitted;
        self.draw(&mut st);
    }

    fn best(&self, method: &str, note: &str) {
        if self.mode == Mode::Quiet {
            return;
        }
        let mut st = self.lock();
        let line = format!(
            "{}[{:>7.1}s] best for {method}: {note}",
            self.prefix,
            self.start.elapsed().as_secs_f64()
        );
        if self.mode == Mode::Bar && st.drawn {
            eprint!("\r\x1b[2K{line}\n");
            self.draw(&mut st);
        } else {
            eprintln!("{line}");
        }
    }
}

/// Progress on stderr: a redrawn bar per stage on a terminal, plain lines elsewhere,
/// nothing under `-q`. Dropping it finishes the bar's line.
pub(crate) struct StderrProgress {
    shared: Arc<Shared>,
    ticker: Option<JoinHandle<()>>,
}

impl StderrProgress {
    /// Chooses the display from `-q` and whether stderr is a terminal.
    pub(crate) fn new() -> Self {
        let mode = if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        };
        Self::with(mode, String::new())
    }

    /// Plain lines that start with `label`, terminal or not (nothing under `-q`): for
    /// several runs side by side, whose redrawn bars would overwrite one another.
    pub(crate) fn labelled(label: &str) -> Self {
        Self::with(Mode::Lines, format!("{label} "))
    }

    fn with(mode: Mode, prefix: String) -> Self {
        // The global `-q` sets the log level to errors only; progress follows it.
        let mode = if tracing::enabled!(tracing::Level::WARN) {
            mode
        } else {
            Mode::Quiet
        };
        let columns = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse().ok())
            .filter(|&c: &usize| c >= 20)
            .unwrap_or(DEFAULT_COLUMNS);
        let now = Instant::now();
        let shared = Arc::new(Shared {
            mode,
            prefix,
            start: now,
            columns,
            state: Mutex::new(State {
                stage: String::new(),
                stage_start: now,
                done: 0,
                total: 0,
                message: String::new(),
                calls_done: 0,
                calls_total: 0,
                batch_start: now,
                drawn: false,
            }),
            stop: AtomicBool::new(false),
        });
        let ticker = (mode == Mode::Bar).then(|| {
            let shared = shared.clone();
            std::thread::spawn(move || tick(&shared))
        });
        Self { shared, ticker }
    }

    /// An observer for [`fgo::optimizer::exec::calls::Calls`] that counts the calls of each batch.
    pub(crate) fn observer(&self) -> BatchObserver {
        let shared = self.shared.clone();
        Box::new(move |finished, submitted| shared.calls(finished, submitted))
    }
}

/// Redraws the line now and then so that the elapsed time and the ETA move during a long
/// batch.
fn tick(shared: &Shared) {
    let step = Duration::from_millis(100);
    let mut since = Duration::ZERO;
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        since += step;
        if since >= REDRAW_EVERY {
            since = Duration::ZERO;
            let mut st = shared.lock();
            if st.drawn {
                shared.draw(&mut st);
            }
        }
    }
}

impl Drop for StderrProgress {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        let mut st = self.shared.lock();
        self.shared.finish_line(&mut st);
    }
}

impl Progress for StderrProgress {
    fn update(&self, stage: &str, done: usize, total: usize, message: &str) {
        self.shared.update(stage, done, total, message);
    }

    fn best(&self, method: &str, _components: &Components, note: &str) {
        self.shared.best(method, note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> StageView {
        StageView {
            stage: "optimize".into(),
            done: 1,
            total: 3,
            message: "iteration 2 on 4 subsets".into(),
            calls_done: 5,
            calls_total: 12,
            stage_elapsed_s: 75.0,
            batch_elapsed_s: 10.0,
        }
    }

    #[test]
    fn bar_line_shows_steps_calls_elapsed_and_eta() {
        assert_eq!(
            view().bar_line(200),
            "optimize [######--------------] 1/3 calls 5/12 1:15 eta 2:30  iteration 2 on 4 subsets"
        );
    }

    #[test]
    fn eta_before_the_first_step_comes_from_the_batch_in_flight() {
        let v = StageView {
            stage: "initial".into(),
            done: 0,
            total: 1,
            message: String::new(),
            ..view()
        };
        // 5 calls in 10 s, 7 to go.
        assert_eq!(v.eta_s(), Some(14.0));
        assert_eq!(
            v.bar_line(200),
            "initial  [--------------------] 0/1 calls 5/12 1:15 eta 0:14"
        );
        let idle = StageView {
            calls_done: 0,
            calls_total: 0,
            ..v
        };
        assert_eq!(idle.eta_s(), None);
    }

    #[test]
    fn bar_line_fits_the_terminal() {
        let line = view().bar_line(40);
        assert_eq!(line.chars().count(), 39);
        assert!(line.starts_with("optimize [######"));
    }

    #[test]
    fn plain_line_keeps_the_log_format() {
        assert_eq!(
            view().plain_line(100.0),
            "[  100.0s] optimize 1/3: iteration 2 on 4 subsets, eta 150s"
        );
        let unknown = StageView {
            stage: "merge".into(),
            done: 0,
            total: 0,
            message: "level 1".into(),
            ..view()
        };
        assert_eq!(unknown.plain_line(3.31), "[    3.3s] merge: level 1");
    }

    #[test]
    fn clock_formats_minutes_and_hours() {
        assert_eq!(clock(0.4), "0:00");
        assert_eq!(clock(61.0), "1:01");
        assert_eq!(clock(3725.0), "1:02:05");
    }
}
