#!/usr/bin/env bash
# The main job on the default model, fetched if missing. With no arguments it runs the
# default demonstration; otherwise the arguments go to `fgo` unchanged.
#
#   scripts/run.sh                      # fetch the default model and generate with it
#   scripts/run.sh generate -m smollm2-135m --prompt "Hi"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fgo/target}"
default_model="qwen2.5-coder-1.5b"
cargo build --release --quiet
fgo="$CARGO_TARGET_DIR/release/fgo"
if [ "$#" -eq 0 ]; then
  scripts/fetch-models.sh "$default_model"
  exec "$fgo" generate --model "$default_model" --json \
    --prompt "What is the capital of France? Answer with one word."
fi
# Fetch the model named on the command line when it is a known alias.
model=""
prev=""
for arg in "$@"; do
  case "$prev" in -m|--model) model="$arg" ;; esac
  case "$arg" in --model=*) model="${arg#--model=}" ;; esac
  prev="$arg"
done
if [ -n "$model" ] && grep -q "^${model}	" models/manifest.tsv 2>/dev/null; then
  scripts/fetch-models.sh "$model"
fi
exec "$fgo" "$@"
