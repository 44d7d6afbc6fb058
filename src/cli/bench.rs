//! `fgo bench`: single-sequence speed (pp/tg), aggregate decoding with many concurrent
//! sequences, the shared-prefix workload with prefix reuse off and on, and peak memory.

use clap::{Args, ValueEnum};
use fgo::engine::bench::{self, ConcurrencyPoint, PrefixShape};
use serde_json::json;

use super::EngineArgs;

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// pp and tg of one sequence.
    Single,
    /// Aggregate decoding at each `--concurrency`.
    Concurrency,
    /// Requests sharing a long prefix, prefix reuse off then on.
    Prefix,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Which scenarios to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "single,concurrency,prefix"
    )]
    scenarios: Vec<Scenario>,
    /// Prompt tokens processed in one step (pp).
    #[arg(long, default_value_t = 512)]
    pp: usize,
    /// Tokens generated one at a time (tg).
    #[arg(long, default_value_t = 128)]
    tg: usize,
    /// Concurrent sequences for aggregate decoding (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,32")]
    concurrency: Vec<usize>,
    /// Decode steps per concurrency level (after a 16-token prompt each).
    #[arg(long, default_value_t = 32)]
    concurrency_steps: usize,
    /// Requests in the prefix scenario.
    #[arg(long, default_value_t = 64)]
    prefix_requests: usize,
    /// Shared prefix length in the prefix scenario.
    #[arg(long, default_value_t = 512)]
    prefix_tokens: usize,
    /// Distinct suffix length per request in the prefix scenario.
    #[arg(long, default_value_t = 32)]
    suffix_tokens: usize,
    /// Tokens generated per request in the prefix scenario.
    #[arg(long, default_value_t = 16)]
    prefix_new_tokens: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency.contains(&0) {
        anyhow::bail!("invalid value for `--concurrency`: every level must be at least 1");
    }
    let engine = args.engine.load()?;
    let context = engine.config().context_length;
    let within_context = [
        ("--pp", args.pp),
        ("--tg", args.tg),
        ("--concurrency-steps", args.concurrency_steps),
        ("--prefix-new-tokens", args.prefix_new_tokens),
        (
            "--prefix-tokens plus --suffix-tokens",
            args.prefix_tokens.saturating_add(args.suffix_tokens),
        ),
    ];
    for (option, tokens) in within_context {
        if tokens > context {
            anyhow::bail!(
                "invalid value for `{option}`: {tokens} tokens is more than the context \
                 window of {context} tokens"
            );
        }
    }
    // Each request is a sequence of its own; more than a few thousand only exhausts memory.
    let most_sequences = 4096;
    for (option, n) in [
        ("--prefix-requests", args.prefix_requests),
        (
            "--concurrency",
            args.concurrency.iter().copied().max().unwrap_or(1),
        ),
    ] {
        if n > most_sequences {
            anyhow::bail!("invalid value for `{option}`: {n} is more than {most_sequences}");
        }
    }
    let threads = rayon::current_num_threads();
    let wants = |s| args.scenarios.contains(&s);
    if !args.json {
        outln!("model {} ({threads} threads)", args.engine.model);
    }
    let single = if wants(Scenario::Single) {
        let r = bench::run(engine.model(), args.pp, args.tg)?;
        if !args.json {
            outln!(
                "pp{:<5} {:8.1} tokens/s",
                r.prompt_tokens,
                r.pp_tokens_per_s
            );
            outln!(
                "tg{:<5} {:8.1} tokens/s",
                r.generated_tokens,
                r.tg_tokens_per_s
            );
            outln!(
                "tg{} after {}: {:.1} tokens/s",
                r.generated_tokens,
                r.prompt_tokens,
                r.tg_after_prompt_tokens_per_s
            );
        }
        Some(r)
    } else {
        None
    };
    let mut concurrency: Vec<ConcurrencyPoint> = Vec::new();
    if wants(Scenario::Concurrency) {
        for &n in &args.concurrency {
            let rate = bench::decode_throughput(engine.model(), n, 16, args.concurrency_steps)?;
            let base = concurrency
                .iter()
                .find(|p| p.sequences == 1)
                .map(|p| p.tokens_per_s);
            let point = ConcurrencyPoint {
                sequences: n,
                tokens_per_s: rate,
                speedup: base.map(|b| rate / b).or((n == 1).then_some(1.0)),
            };
            if !args.json {
                let speedup = point
                    .speedup
                    .map(|s| format!(" ({s:.1}x one sequence)"))
                    .unwrap_or_default();
                outln!("decode x{n:<3} {rate:8.1} tokens/s{speedup}");
            }
            concurrency.push(point);
        }
    }
    let prefix = if wants(Scenario::Prefix) {
        let shape = PrefixShape {
            requests: args.prefix_requests,
            prefix_tokens: args.prefix_tokens,
            suffix_tokens: args.suffix_tokens,
            new_tokens: args.prefix_new_tokens,
        };
        let r = bench::prefix_scenario(&engine, shape)?;
        if !args.json {
            outln!(
                "prefix {}x({}+{}) +{} new: reuse off {:.2} s, on {:.2} s ({:.1}x), {} of {} \
                 prompt tokens from the cache",
                shape.requests,
                shape.prefix_tokens,
                shape.suffix_tokens,
                shape.new_tokens,
                r.reuse_off_s,
                r.reuse_on_s,
                r.speedup,
                r.cached_prompt_tokens,
                r.prompt_tokens
            );
        }
        Some(r)
    } else {
        None
    };
    let peak = bench::peak_rss_bytes();
    let kv = engine.kv_stats();
    if args.json {
        let out = json!({
            "model": args.engine.model,
            "threads": threads,
            "load_s": engine.load_time().as_secs_f64(),
            "report": single,
            "concurrency": concurrency,
            "prefix": prefix,
            "kv_cache": kv,
            "peak_rss_bytes": peak,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else if let Some(bytes) = peak {
        outln!(
            "peak memory {:.0} MB (key/value budget {:.0} MB)",
            bytes as f64 / 1e6,
            kv.bytes as f64 / 1e6
        );
    }
    Ok(())
}
