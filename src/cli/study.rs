//! `fgo study TASK --seeds N --methods fgo,all-at-once,none [--train-sizes 50,200]`: a
//! grid of runs, one run directory per (training-set size, seed), summarized over seeds.
//!
//! The grid is resumable cell by cell: a cell with a report is read, one with an event log
//! but no report is continued as `fgo resume` continues it, any other is run as
//! `fgo optimize` runs it. A cell made for other options (another method set, seed or
//! optimizer model, or other data) is refused rather than mixed in. Models are loaded once
//! for the whole grid.
//!
//! Cells run side by side, `--jobs` at a time, on the same models: their calls share the
//! engine's batches and cached prefixes, and a call that every cell makes alike (the
//! initial evaluation) is made once. A cell's result does not depend on what runs beside
//! it (the embedded engine's completions do not depend on their batch), so `--jobs 1`
//! gives the same cells, only later.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use fgo::optimizer::data::dataset::Dataset;
use fgo::optimizer::data::task::Task;
use fgo::optimizer::exec::pool::CallPool;
use fgo::optimizer::report::run::{check_same, Models};
use fgo::optimizer::report::rundir::RunDir;
use fgo::optimizer::report::study::{self, Cell, CellSource, Study};
use fgo::optimizer::report::Method;

use super::optimize::{run_in_dir, Among, ModelCache, RuntimeArgs};

/// The `--methods` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StudyMethodArg {
    /// Divide, optimize each subset, merge progressively.
    Fgo,
    /// Every trajectory in one optimizer prompt (baseline).
    AllAtOnce,
    /// The initial components, scored in the same runs.
    None,
}

impl StudyMethodArg {
    fn report_name(self) -> &'static str {
        match self {
            StudyMethodArg::Fgo => "fgo",
            StudyMethodArg::AllAtOnce => "all_at_once",
            StudyMethodArg::None => "none",
        }
    }
}

/// Arguments of `fgo study`.
#[derive(Debug, Args)]
pub struct StudyArgs {
    /// The task file (TOML).
    pub task: PathBuf,
    /// Number of seeds: every cell is run with seeds 0..N.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Methods to compare, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fgo,all-at-once,none"
    )]
    pub methods: Vec<StudyMethodArg>,
    /// Training-set sizes, comma-separated; each overrides `data.max_train` (default: the
    /// task's training set as it is).
    #[arg(long, value_delimiter = ',')]
    pub train_sizes: Vec<usize>,
    /// Directory for the cells and the summary (default: runs/study-TASK).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use this optimizer model instead of the task's.
    #[arg(long)]
    pub optimizer_model: Option<String>,
    /// Cells run at once, sharing the models (1: one after another).
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Print study.json on stdout instead of study.md.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// One training-set size of the grid: its task and data.
struct SizeSpec {
    train_size: usize,
    /// The task; for an overridden size its path is `OUT/train{N}.task.toml`.
    task: Task,
    /// The text to write at `task.path` before the cells are made (overridden sizes only).
    task_text: Option<String>,
    data: Dataset,
}

/// Runs `fgo study`.
pub fn run(args: StudyArgs) -> anyhow::Result<()> {
    if args.seeds == 0 {
        anyhow::bail!("invalid value for `--seeds`: must be at least 1");
    }
    if args.jobs == 0 {
        anyhow::bail!("invalid value for `--jobs`: must be at least 1");
    }
    let (task, data) = fgo::optimizer::data::prepare(&args.task)?;
    let methods: Vec<String> = args
        .methods
        .iter()
        .map(|m| m.report_name().to_string())
        .collect();
    let method = study::cell_method(&methods);
    let out = args.out.clone().unwrap_or_else(|| {
        let name: String = task
            .spec
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        PathBuf::from("runs").join(format!("study-{name}"))
    });
    let mut sizes = Vec::new();
    if args.train_sizes.is_empty() {
        let mut task = task;
        override_optimizer(&mut task, &args.optimizer_model);
        sizes.push(SizeSpec {
            train_size: data.train.len(),
            task,
            task_text: None,
            data,
        });
    } else {
        let text = std::fs::read_to_string(&task.path)
            .with_context(|| format!("reading {}", task.path.display()))?;
        for &n in &args.train_sizes {
            sizes.push(size_spec(&task, &text, &out, n, &args.optimizer_model)?);
        }
    }
    // Bad input is refused above, before anything is written.
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for size in &sizes {
        if let Some(text) = &size.task_text {
            let path = &size.task.path;
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }

    let mut cache = ModelCache::new(&args.runtime)?;
    // Every cell is checked (and its models loaded) before any runs, in grid order.
    let mut planned = Vec::new();
    for size in &sizes {
        for seed in 0..args.seeds {
            let dir = out.join(study::cell_name(size.train_size, seed));
            let plan = plan_cell(&mut cache, size, &dir, method, seed, &args.optimizer_model)
                .with_context(|| format!("cell {}", dir.display()))?;
            planned.push((size, seed, dir, plan));
        }
    }
    let to_run: Vec<&Pending> = planned
        .iter()
        .filter_map(|(.., plan)| plan.as_ref())
        .collect();
    let started = std::time::Instant::now();
    run_cells(&to_run, method, args.jobs)?;
    let wall_s = started.elapsed().as_secs_f64();
    let mut cells = Vec::new();
    for (size, seed, dir, plan) in planned {
        cells.push(Cell {
            train_size: size.train_size,
            seed,
            source: plan.map_or(CellSource::Read, |p| p.source),
            // The summary reads every cell's report.json, even one just written: parsing
            // a float back may move it by one unit in the last place, and a fresh cell
            // must summarize exactly as it will when read.
            report: RunDir::read_report(&dir)?,
            dir,
        });
    }
    let summary = study::summarize(&methods, &cells)?;
    summary.write(&out)?;
    print_study(&summary, &out, wall_s, args.jobs, args.json)
}

fn override_optimizer(task: &mut Task, optimizer_model: &Option<String>) {
    if let Some(m) = optimizer_model {
        task.spec.optimizer.model = Some(m.clone());
    }
}

/// The task and data of one training-set size: the task text with `data.max_train` set,
/// to be written to `OUT/train{N}.task.toml` (the file its cells are made from), resolved
/// against the original task's directory.
fn size_spec(
    task: &Task,
    text: &str,
    out: &Path,
    train_size: usize,
    optimizer_model: &Option<String>,
) -> anyhow::Result<SizeSpec> {
    if train_size == 0 {
        anyhow::bail!("invalid value for `--train-sizes`: a size must be at least 1");
    }
    let sized = study::with_max_train(text, &task.path, train_size)?;
    let path = out.join(format!("train{train_size}.task.toml"));
    let mut sized_task = Task::from_str(&sized, &path, &task.base_dir)?;
    let data = Dataset::load(&sized_task)?;
    if data.train.len() < train_size {
        anyhow::bail!(
            "invalid value for `--train-sizes`: {train_size} training examples asked, the task has {}",
            data.train.len()
        );
    }
    fgo::optimizer::data::validate(&sized_task, &data)?;
    sized_task.initial = task.initial.clone();
    override_optimizer(&mut sized_task, optimizer_model);
    Ok(SizeSpec {
        train_size,
        task: sized_task,
        task_text: Some(sized),
        data,
    })
}

/// A cell to resume or run, with what its run needs.
struct Pending {
    dir: PathBuf,
    run_dir: RunDir,
    task: Task,
    data: Dataset,
    models: Models,
    seed: u64,
    source: CellSource,
}

/// Checks one cell: `None` when its report is there to read, else the run to resume or
/// start (its models loaded).
fn plan_cell(
    cache: &mut ModelCache,
    size: &SizeSpec,
    dir: &Path,
    method: Method,
    seed: u64,
    optimizer_model: &Option<String>,
) -> anyhow::Result<Option<Pending>> {
    let has_report = dir.join("report.json").is_file();
    if has_report || dir.join("events.jsonl").is_file() {
        let (run_dir, task) = RunDir::open(dir)?;
        check_same(run_dir.meta.method, method, dir)?;
        if run_dir.meta.seed != seed || &run_dir.meta.optimizer_model != optimizer_model {
            anyhow::bail!(
                "the run has seed {} and optimizer model {:?}, not seed {seed} and {:?}",
                run_dir.meta.seed,
                run_dir.meta.optimizer_model,
                optimizer_model
            );
        }
        if has_report {
            run_dir.check_data(&size.data)?;
            return Ok(None);
        }
        let data = Dataset::load(&task)?;
        fgo::optimizer::data::validate(&task, &data)?;
        run_dir.check_data(&data)?;
        run_dir.check_data(&size.data)?;
        let models = cache.models(&task, method)?;
        return Ok(Some(Pending {
            dir: dir.to_path_buf(),
            run_dir,
            task,
            data,
            models,
            seed,
            source: CellSource::Resumed,
        }));
    }
    let run_dir = RunDir::create(
        dir,
        &size.task,
        &size.data,
        method,
        seed,
        optimizer_model.clone(),
    )?;
    let models = cache.models(&size.task, method)?;
    Ok(Some(Pending {
        dir: dir.to_path_buf(),
        run_dir,
        task: size.task.clone(),
        data: size.data.clone(),
        models,
        seed,
        source: CellSource::Run,
    }))
}

/// Runs the cells, `jobs` at a time in grid order, on one pool of shared calls. A cell
/// that fails does not stop the others (each keeps its log, so a rerun continues it); the
/// first failure in grid order is returned once all have ended.
fn run_cells(cells: &[&Pending], method: Method, jobs: usize) -> anyhow::Result<()> {
    let pool = Arc::<CallPool>::default();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    // Progress lines name their cell when cells run side by side.
    let labelled = jobs > 1 && cells.len() > 1;
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(cells.len()) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(cell) = cells.get(index) else {
                    break;
                };
                tracing::info!(cell = %cell.dir.display(), "study cell");
                let name = cell
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned());
                let label = labelled.then_some(name.as_deref()).flatten();
                let result = run_in_dir(
                    &cell.run_dir,
                    &cell.task,
                    &cell.data,
                    &cell.models,
                    method,
                    cell.seed,
                    Among { pool: &pool, label },
                );
                if let Err(e) = result {
                    let e = e.context(format!("cell {}", cell.dir.display()));
                    failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((index, e));
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    failures.sort_by_key(|(index, _)| *index);
    match failures.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// Prints study.json (with `--json`) or study.md on stdout; before study.md, a line with
/// this invocation's own wall time, which the summary leaves out (it is a function of the
/// cells' reports only).
fn print_study(
    study: &Study,
    out: &Path,
    wall_s: f64,
    jobs: usize,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(study)?);
        return Ok(());
    }
    let count = |s: CellSource| study.cells.iter().filter(|c| c.source == s).count();
    outln!(
        "study directory {}: {} cells ({} run, {} resumed, {} read), {:.1} s, at most {} side by side\n",
        out.display(),
        study.cells.len(),
        count(CellSource::Run),
        count(CellSource::Resumed),
        count(CellSource::Read),
        wall_s,
        jobs
    );
    out!("{}", study.to_markdown());
    Ok(())
}
