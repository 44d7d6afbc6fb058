#!/usr/bin/env bash
# One optimization run three ways on the same model file, one after the other: in-process,
# through fgo's HTTP backend against `fgo serve`, and through the same backend against
# llama.cpp's server. Prints a Markdown table (wall time by the run's own clock, optimizer
# and agent tokens, cached prompt tokens, final test score) for BENCHMARKS.md.
#
#   scripts/remote-side-by-side.sh [TASK] [MODEL_ALIAS]
#     (default: examples/counting/task-small.toml on smollm2-135m, --method fgo)
#
# The task's agent and optimizer are both replaced by the model. Only one server runs at a
# time; llama-server gets 32 slots of 4096 tokens (FGO_LLAMA_SLOTS), as many as fgo keeps
# in flight per endpoint. The run directories stay under OUT (FGO_SIDE_BY_SIDE_OUT,
# default runs/side-by-side-UNIXTIME). Needs llama-server (scripts/llama-build.sh builds
# it; FGO_LLAMA_SERVER overrides).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fgo/target}"
task="${1:-examples/counting/task-small.toml}"
alias="${2:-smollm2-135m}"
threads="${FGO_BENCH_THREADS:-2}"
slots="${FGO_LLAMA_SLOTS:-32}"
llama="${FGO_LLAMA_SERVER:-$(scripts/llama-build.sh llama-server)}"
cargo build --release --quiet
fgo="$CARGO_TARGET_DIR/release/fgo"
scripts/fetch-models.sh "$alias" >&2
file="$(awk -F'\t' -v a="$alias" '$1 == a { print $2 }' models/manifest.tsv)"
model="$root/models/$file"
work="${FGO_SIDE_BY_SIDE_OUT:-runs/side-by-side-$(date +%s)}"
mkdir -p "$work"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
}
trap cleanup EXIT

# A copy of the task beside its data, with both models set to SPEC.
task_with() {
  local spec="$1" out="$2"
  python3 - "$task" "$spec" "$out" <<'PY'
import re, sys
src, spec, out = sys.argv[1:4]
text = open(src).read()
text = re.sub(r'(?m)^model = ".*"$', 'model = "%s"' % spec, text)
open(out, "w").write(text)
PY
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_up() {
  local url="$1"
  for _ in $(seq 1 600); do
    if curl -sf "$url/v1/models" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "remote-side-by-side: no server at $url" >&2
  exit 1
}

run() {
  local label="$1" spec="$2"
  local t="$(dirname "$task")/.side-by-side-$label.toml"
  task_with "$spec" "$t"
  "$fgo" optimize "$t" --method fgo --seed 0 --threads "$threads" --kv-budget 1G \
    --out "$work/$label" --json --quiet >"$work/$label.json" || {
    rm -f "$t"
    echo "remote-side-by-side: the $label run failed" >&2
    exit 1
  }
  rm -f "$t"
}

run in-process "$model"

port="$(free_port)"
"$fgo" serve --model "$model" --threads "$threads" --kv-budget 1G --port "$port" \
  --served-model-name m >/dev/null 2>"$work/serve.log" &
server=$!
wait_up "http://127.0.0.1:$port"
run fgo-serve "m@http://127.0.0.1:$port/v1"
kill "$server"; wait "$server" 2>/dev/null || true; server=""

port="$(free_port)"
"$llama" -m "$model" -t "$threads" -tb "$threads" -np "$slots" -c $((slots * 4096)) \
  --host 127.0.0.1 --port "$port" --alias m >"$work/llama.log" 2>&1 &
server=$!
wait_up "http://127.0.0.1:$port"
run llama-server "m@http://127.0.0.1:$port/v1"
kill "$server"; wait "$server" 2>/dev/null || true; server=""

python3 - "$work" "$alias" "$task" <<'PY'
import json, sys
work, alias, task = sys.argv[1:4]
print("%s, `fgo optimize --method fgo --seed 0`, %s as agent and optimizer:" % (task, alias))
print()
print("| backend | wall (s) | calls live | prompt tokens | cached | completion tokens | initial test | final test |")
print("|---|---|---|---|---|---|---|---|")
pct = lambda x: "%.1f%%" % (100 * x)
for label in ["in-process", "fgo-serve", "llama-server"]:
    r = json.load(open("%s/%s.json" % (work, label)))
    t = r["accounting"]["total"]
    print("| %s | %.1f | %d | %d | %d (%.0f%%) | %d | %s | %s |" % (
        label, r["elapsed_s"], t["live"], t["prompt_tokens"], t["cached_prompt_tokens"],
        100.0 * t["cached_prompt_tokens"] / max(1, t["prompt_tokens"]),
        t["completion_tokens"], pct(r["initial"]["test"]), pct(r["methods"][0]["test_score"])))
PY
