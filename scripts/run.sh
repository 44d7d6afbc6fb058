#!/usr/bin/env bash
# The main job on the default model, fetched if missing. With no arguments it optimizes the
# system prompt of the counting example with FGO (agent and optimizer: qwen2.5-coder-1.5b)
# in its reduced configuration (examples/counting/task-small.toml: 32 train, 16 val, 60
# test examples), writes a run directory under runs/, and prints the final prompt, a word
# diff of what changed and the scores before and after on test; `--full` runs the full
# configuration (task.toml) instead. Otherwise the arguments go to `fgo` unchanged.
#
#   scripts/run.sh                      # fetch the models and optimize examples/counting
#   scripts/run.sh --full               # the same with 96 train examples (much longer)
#   scripts/run.sh optimize examples/dates/task.toml --method both --seed 1
#   scripts/run.sh generate -m smollm2-135m --prompt "Hi"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fgo/target}"
default_model="qwen2.5-coder-1.5b"
default_task="examples/counting/task-small.toml"
if [ "${1:-}" = "--full" ]; then
  default_task="examples/counting/task.toml"
  shift
  if [ "$#" -gt 0 ]; then
    echo "scripts/run.sh: --full takes no other arguments" >&2
    exit 2
  fi
fi

is_alias() { grep -q "^$1	" models/manifest.tsv 2>/dev/null; }

# The model aliases a task file names (`model = "..."`: the agent's and the optimizer's).
task_models() {
  sed -n 's/^[[:space:]]*model[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$1" |
    while read -r m; do if is_alias "$m"; then echo "$m"; fi; done
}

cargo build --release --quiet
fgo="$CARGO_TARGET_DIR/release/fgo"
if [ "$#" -eq 0 ]; then
  echo "optimizing $default_task with FGO (see runs/ for the run directory)" >&2
  # The optimizer defaults to the agent's model when a task names none: fetch the default too.
  mapfile -t models < <({ echo "$default_model"; task_models "$default_task"; } | sort -u)
  scripts/fetch-models.sh "${models[@]}"
  exec "$fgo" optimize "$default_task"
fi
# Fetch the models named on the command line (`-m`/`--model`, or in a task file) when they
# are known aliases.
models=()
prev=""
for arg in "$@"; do
  name=""
  case "$prev" in -m|--model|--optimizer-model) name="$arg" ;; esac
  case "$arg" in --model=*|--optimizer-model=*) name="${arg#*=}" ;; esac
  if [ -n "$name" ] && is_alias "$name"; then models+=("$name"); fi
  if [[ "$arg" == *.toml && -f "$arg" ]]; then
    mapfile -t -O "${#models[@]}" models < <(task_models "$arg")
  fi
  prev="$arg"
done
if [ "${#models[@]}" -gt 0 ]; then
  mapfile -t models < <(printf '%s\n' "${models[@]}" | sort -u)
  scripts/fetch-models.sh "${models[@]}"
fi
exec "$fgo" "$@"
