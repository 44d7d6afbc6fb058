//! `fgo bench`: single-sequence prompt-processing and generation speed, and peak memory.

use clap::Args;
use fgo::engine::bench;
use serde_json::json;

use super::EngineArgs;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Prompt tokens processed in one step (pp).
    #[arg(long, default_value_t = 512)]
    pp: usize,
    /// Tokens generated one at a time (tg).
    #[arg(long, default_value_t = 128)]
    tg: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let engine = args.engine.load()?;
    let report = bench::run(engine.model(), args.pp, args.tg)?;
    let peak = bench::peak_rss_bytes();
    let threads = rayon::current_num_threads();
    if args.json {
        let out = json!({
            "model": args.engine.model,
            "threads": threads,
            "load_s": engine.load_time().as_secs_f64(),
            "report": report,
            "peak_rss_bytes": peak,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("model {} ({threads} threads)", args.engine.model);
        println!(
            "pp{:<5} {:8.1} tokens/s",
            report.prompt_tokens, report.pp_tokens_per_s
        );
        println!(
            "tg{:<5} {:8.1} tokens/s",
            report.generated_tokens, report.tg_tokens_per_s
        );
        println!(
            "tg{} after {}: {:.1} tokens/s",
            report.generated_tokens, report.prompt_tokens, report.tg_after_prompt_tokens_per_s
        );
        if let Some(bytes) = peak {
            println!("peak memory {:.0} MB", bytes as f64 / 1e6);
        }
    }
    Ok(())
}
