//! `fgo generate`: one completion, as text or as JSON with usage and timings.

use std::io::Read;

use clap::Args;
use fgo::engine::chat::ChatMessage;
use fgo::engine::sampling::SamplingParams;
use fgo::engine::{GenerationRequest, Prompt};
use serde_json::json;

use fgo::llm::openai::OpenAiLlm;
use fgo::llm::{ChatRequest, Llm};

use super::{EngineArgs, LoadedModel};

/// The most bytes of prompt read from standard input (any context window fills far sooner).
const STDIN_LIMIT: u64 = 64 << 20;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// For a remote model (NAME@URL): the environment variable holding its API key.
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// System message.
    #[arg(long)]
    system: Option<String>,
    /// User message (read from stdin when absent).
    #[arg(short, long)]
    prompt: Option<String>,
    /// Complete the prompt as raw text, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P.
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep only the K most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Random seed (the same seed gives the same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this string appears (repeatable); it is not included in the output.
    #[arg(long)]
    stop: Vec<String>,
    /// Print a JSON object with the text, usage and timings.
    #[arg(long)]
    json: bool,
}

pub fn run(mut args: GenerateArgs) -> anyhow::Result<()> {
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        max_new_tokens: args.max_tokens,
        stop: args.stop.clone(),
        ignore_eos: false,
    };
    params.validate()?;
    let user = match args.prompt.take() {
        Some(p) => p,
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .take(STDIN_LIMIT + 1)
                .read_to_end(&mut bytes)?;
            if bytes.len() as u64 > STDIN_LIMIT {
                anyhow::bail!(
                    "standard input: larger than {} MiB, the limit for a prompt",
                    STDIN_LIMIT >> 20
                );
            }
            String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("standard input: the prompt is not UTF-8"))?
        }
    };
    let prompt = if args.raw {
        let system = args.system.take().map(|s| s + "\n").unwrap_or_default();
        Prompt::Text {
            text: system + &user,
        }
    } else {
        let mut messages = Vec::new();
        if let Some(system) = args.system.take() {
            messages.push(ChatMessage::system(system));
        }
        messages.push(ChatMessage::user(user));
        Prompt::Chat { messages }
    };
    let engine = match args.engine.load_model(args.api_key_env.as_deref())? {
        LoadedModel::Local(engine) => engine,
        LoadedModel::Remote(llm) => return run_remote(&llm, prompt, params, &args),
    };
    let context = engine.config().context_length;
    if args.max_tokens > context {
        anyhow::bail!(
            "invalid value for `--max-tokens`: {} is more than the context window of {context} tokens",
            args.max_tokens
        );
    }
    let completion = engine.generate(&GenerationRequest { prompt, params })?;
    if args.json {
        let t = completion.timings;
        let u = completion.usage;
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        let out = json!({
            "model": args.engine.model,
            "path": engine.path(),
            "text": completion.text,
            "finish_reason": completion.finish_reason,
            "usage": u,
            "peak_rss_bytes": fgo::engine::bench::peak_rss_bytes(),
            "timings": {
                "load_s": engine.load_time().as_secs_f64(),
                "prompt_s": t.prefill_s,
                "generation_s": t.decode_s,
                "prompt_tokens_per_s": rate(u.prompt_tokens - u.cached_prompt_tokens, t.prefill_s),
                "generation_tokens_per_s": rate(u.completion_tokens.saturating_sub(1), t.decode_s),
            },
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!("{}", completion.text);
    }
    Ok(())
}

/// `fgo generate` on a remote model: one chat completion request.
fn run_remote(
    llm: &OpenAiLlm,
    prompt: Prompt,
    params: SamplingParams,
    args: &GenerateArgs,
) -> anyhow::Result<()> {
    let Prompt::Chat { messages } = prompt else {
        anyhow::bail!(
            "invalid value for `--raw`: a remote model completes chat messages only; drop `--raw`"
        );
    };
    let context = llm.context_length();
    if args.max_tokens > context {
        anyhow::bail!(
            "invalid value for `--max-tokens`: {} is more than the context window of {context} tokens",
            args.max_tokens
        );
    }
    let completion = llm
        .complete(&[ChatRequest { messages, params }])
        .pop()
        .unwrap_or_else(|| Err(fgo::Error::Request("no completion produced".into())))?;
    if args.json {
        let t = completion.timings;
        let out = json!({
            "model": llm.name(),
            "endpoints": llm.endpoints(),
            "text": completion.text,
            "finish_reason": completion.finish_reason,
            "usage": completion.usage,
            "timings": {
                "queue_s": t.queue_s,
                "prompt_s": t.prefill_s,
                "generation_s": t.decode_s,
            },
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!("{}", completion.text);
    }
    Ok(())
}
