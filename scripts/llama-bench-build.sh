#!/usr/bin/env bash
# Builds llama.cpp's llama-bench (see scripts/llama-build.sh) and prints its path.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/llama-build.sh" llama-bench
