#!/usr/bin/env bash
# Our single-sequence speed beside llama.cpp's on the same files and thread count, taken
# alternately in one sitting (these machines share hosts, so only same-sitting ratios
# mean anything). Prints a Markdown table for BENCHMARKS.md.
#
#   scripts/llama-side-by-side.sh [ALIAS...]     (default: the four models)
#
# Needs llama-bench (scripts/llama-bench-build.sh builds it; LLAMA_BENCH overrides).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fgo/target}"
threads="${FGO_BENCH_THREADS:-2}"
llama="${LLAMA_BENCH:-$(scripts/llama-bench-build.sh)}"
if [ "$#" -eq 0 ]; then
  set -- smollm2-135m gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b
fi
cargo build --release --quiet
scripts/fetch-models.sh "$@" >&2
echo "| model | pp512 ours / llama.cpp | tg128 ours / llama.cpp | tg128 after 512 ours / llama.cpp |"
echo "|---|---|---|---|"
for model in "$@"; do
  file="$(awk -F'\t' -v a="$model" '$1 == a { print $2 }' models/manifest.tsv)"
  ours="$("$CARGO_TARGET_DIR/release/fgo" bench --model "$model" --threads "$threads" --scenarios single --json)"
  theirs="$("$llama" -m "models/$file" -t "$threads" -p 512 -n 128 -r 2 -o json)"
  theirs_d="$("$llama" -m "models/$file" -t "$threads" -p 0 -n 128 -d 512 -r 2 -o json)"
  python3 - "$ours" "$theirs" "$theirs_d" <<'PY'
import json, sys
ours = json.loads(sys.argv[1]); r = ours["report"]
rows = json.loads(sys.argv[2]) + json.loads(sys.argv[3])
def llama(p, n, d):
    for x in rows:
        if x["n_prompt"] == p and x["n_gen"] == n and x.get("n_depth", 0) == d:
            return x["avg_ts"]
    return float("nan")
lp, lt, ld = llama(512, 0, 0), llama(0, 128, 0), llama(0, 128, 512)
print("| %s | %.0f / %.0f (%.2fx) | %.1f / %.1f (%.2fx) | %.1f / %.1f (%.2fx) |" % (
    ours["model"], r["pp_tokens_per_s"], lp, r["pp_tokens_per_s"] / lp,
    r["tg_tokens_per_s"], lt, r["tg_tokens_per_s"] / lt,
    r["tg_after_prompt_tokens_per_s"], ld, r["tg_after_prompt_tokens_per_s"] / ld))
PY
done
