//! `fgo serve`: the embedded engine as an OpenAI-compatible HTTP server.

use std::net::ToSocketAddrs;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fgo::serve::{ServeOptions, BODY_LIMIT};

use super::EngineArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to listen on; loopback by default (0.0.0.0 opens the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on standard output).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every request, KEY being the value of this
    /// environment variable (the key itself never appears on the command line or in logs).
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// Most sequences queued or running at once; a request beyond it is answered 429.
    #[arg(long, default_value_t = 1024)]
    max_queue: usize,
    /// Most sequences in one forward step (default 256; 1: no batching).
    #[arg(long)]
    max_batch: Option<usize>,
    /// Tokens generated for a request that gives no max_tokens (within the context).
    #[arg(long, default_value_t = 1024)]
    default_max_tokens: usize,
    /// Seconds the requests in flight may run on after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    /// The model's name in responses and /v1/models (default: the --model value).
    #[arg(long)]
    served_model_name: Option<String>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.max_queue == 0 {
        anyhow::bail!("invalid value for `--max-queue`: must be at least 1");
    }
    if args.default_max_tokens == 0 {
        anyhow::bail!("invalid value for `--default-max-tokens`: must be at least 1");
    }
    let api_key = match &args.api_key_env {
        Some(var) => {
            let key = std::env::var(var)
                .ok()
                .filter(|k| !k.trim().is_empty())
                .with_context(|| {
                    format!("--api-key-env: the environment variable `{var}` is unset or empty")
                })?;
            Some(key.trim().to_string())
        }
        None => None,
    };
    let addr = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .with_context(|| format!("--host `{}`", args.host))?
        .next()
        .with_context(|| format!("--host `{}`: no address", args.host))?;
    let engine = load(&args.engine, args.max_batch)?;
    let model_name = args.served_model_name.clone().unwrap_or_else(|| {
        // A path names the model by its file.
        std::path::Path::new(&args.engine.model)
            .file_name()
            .map_or(args.engine.model.clone(), |n| {
                n.to_string_lossy().into_owned()
            })
    });
    let options = ServeOptions {
        addr,
        model_name,
        api_key,
        max_queue: args.max_queue,
        default_max_tokens: args.default_max_tokens,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        body_limit: BODY_LIMIT,
        http_threads: 2,
    };
    fgo::serve::run(engine, options, |bound| {
        outln!("listening on http://{bound}");
        Ok(())
    })?;
    Ok(())
}

/// [`EngineArgs::load`] with the running batch bounded.
fn load(engine: &EngineArgs, max_batch: Option<usize>) -> anyhow::Result<fgo::engine::Engine> {
    super::configure_threads(engine.threads)?;
    let path = fgo::engine::source::resolve(&engine.model)?;
    let options = fgo::engine::LoadOptions {
        device: fgo::engine::device::parse_device(&engine.device)?,
        tokenizer_json: engine.tokenizer.clone(),
        kv_budget_bytes: engine.kv_budget,
        prefix_reuse: !engine.no_prefix_reuse,
        max_batch,
        kv_dtype: engine.kv_dtype,
    };
    tracing::info!(path = %path.display(), "loading model");
    Ok(fgo::engine::Engine::load(&path, &options)?)
}
