#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: fetches the test models (verified, cached
# under ~/.cache/fgo), builds llama.cpp's server for the HTTP backend's tests (cached too),
# then builds and runs every test, then replays and briefly runs every fuzz target.
#
#   scripts/test.sh [extra cargo test arguments]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# Build outputs live outside the clone by default so that fresh clones reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fgo/target}"
scripts/fetch-models.sh all
# The HTTP backend's tests run llama.cpp's server; its build is cached under ~/.cache/fgo.
FGO_LLAMA_SERVER="$(scripts/llama-build.sh llama-server)"
export FGO_LLAMA_SERVER
# The optimizer's folders follow its flow (data <- exec <- methods <- report).
scripts/layers.sh
cargo test --all-targets "$@"
# Every fuzz target: its corpus and past crashes replayed, then a short run of new inputs.
scripts/fuzz.sh --time "${FGO_FUZZ_SMOKE_S:-10}"
