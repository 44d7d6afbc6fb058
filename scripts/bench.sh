#!/usr/bin/env bash
# Single-sequence speed and peak memory of each model, 2 threads, as a Markdown table for
# BENCHMARKS.md. Builds the release binary and fetches the models first.
#
#   scripts/bench.sh [ALIAS...]      (default: the four models of models/manifest.tsv)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fgo/target}"
threads="${FGO_BENCH_THREADS:-2}"
if [ "$#" -eq 0 ]; then
  set -- smollm2-135m gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b
fi
cargo build --release --quiet
scripts/fetch-models.sh "$@" >&2
echo "| model | pp512 (tokens/s) | tg128 (tokens/s) | tg128 after 512 (tokens/s) | peak RSS (MB) |"
echo "|---|---|---|---|---|"
for model in "$@"; do
  "$CARGO_TARGET_DIR/release/fgo" bench --model "$model" --threads "$threads" --scenarios single --json |
    python3 -c '
import json, sys
d = json.load(sys.stdin); r = d["report"]
print("| %s | %.1f | %.1f | %.1f | %.0f |" % (d["model"], r["pp_tokens_per_s"], r["tg_tokens_per_s"],
      r["tg_after_prompt_tokens_per_s"], (d["peak_rss_bytes"] or 0) / 1e6))'
done
