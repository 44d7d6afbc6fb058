#!/usr/bin/env bash
# Makes (once) a virtual environment with the official `openai` Python client, for protocol
# tests of `fgo serve` by a client fgo did not write. Prints the path of its python.
#
#   scripts/openai-venv.sh                  (under ~/.cache/fgo/openai-venv)
set -euo pipefail
dir="${FGO_OPENAI_VENV:-$HOME/.cache/fgo/openai-venv}"
version="${OPENAI_PYTHON_VERSION:-3.57.0}"
python="$dir/bin/python"
if [ -x "$python" ] && "$python" -c "import openai" 2>/dev/null; then
  echo "$python"
  exit 0
fi
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
if [ ! -x "$python" ]; then
  python3 -m venv "$dir"
fi
"$dir/bin/pip" install -q "openai==$version" >&2
echo "$python"
