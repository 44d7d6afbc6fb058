#!/usr/bin/env bash
# Coverage-guided fuzzing of fgo's readers and parsers with cargo fuzz (libFuzzer, address
# sanitizer). Each target starts from its committed corpus (fuzz/corpus/TARGET) and the
# inputs that once crashed it (fuzz/regressions/TARGET), replays them all, then fuzzes for
# the given time; new inputs go to a working corpus under ~/.cache/fgo/fuzz-corpus. A crash
# stops the script with the input's path (under fuzz/artifacts/TARGET).
#
#   scripts/fuzz.sh [--time SECONDS] [--replay-only] [--merge] [TARGET...]
#
#   --time S        fuzz each target for S seconds (default 600)
#   --replay-only   only replay the committed corpus and regressions (no new inputs)
#   --merge         afterwards, minimise the working corpus into fuzz/corpus (to commit)
#   TARGET          default: every target in fuzz/Cargo.toml
#
# Installs cargo-fuzz from crates.io when it is missing. Uses a nightly toolchain when
# rustup has one, else the stable one with RUSTC_BOOTSTRAP=1 (the sanitizer flags are
# unstable options).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds=600
replay_only=0
merge=0
targets=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --time) seconds="${2:?--time needs seconds}"; shift 2 ;;
    --replay-only) replay_only=1; shift ;;
    --merge) merge=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(awk -F'"' '/^name = / && NR > 3 { print $2 }' fuzz/Cargo.toml)
fi
if ! cargo fuzz --help >/dev/null 2>&1; then
  # One install at a time: two scripts started together would both build it.
  mkdir -p "$HOME/.cache/fgo"
  exec 8>"$HOME/.cache/fgo/.cargo-fuzz-install.lock"
  flock 8
fi
if ! cargo fuzz --help >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >&2
fi
exec 8>&-
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
export CARGO_TARGET_DIR="${FGO_FUZZ_TARGET_DIR:-$HOME/.cache/fgo/fuzz-target}"
work="${FGO_FUZZ_CORPUS_DIR:-$HOME/.cache/fgo/fuzz-corpus}"
# Inputs as large as the tiny test model for the model readers, 64 KiB for the rest.
max_len() {
  case "$1" in
    gguf_header|model_load) echo 200000 ;;
    *) echo 65536 ;;
  esac
}
flags=(-rss_limit_mb=2048 -timeout=20)
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "fuzz/corpus/$t" "fuzz/regressions/$t" "fuzz/artifacts/$t"
  len="$(max_len "$t")"
  echo "fuzz: $t: replaying the corpus and regressions" >&2
  cargo "${toolchain[@]}" fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" "fuzz/regressions/$t" -- \
    -runs=0 -max_len="$len" "${flags[@]}"
  if [ "$replay_only" -eq 0 ]; then
    echo "fuzz: $t: fuzzing for ${seconds}s" >&2
    cargo "${toolchain[@]}" fuzz run --fuzz-dir fuzz "$t" "$work/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -max_len="$len" -print_final_stats=1 "${flags[@]}" \
      -artifact_prefix="fuzz/artifacts/$t/"
  fi
  if [ "$merge" -eq 1 ]; then
    tmp="$(mktemp -d)"
    cargo "${toolchain[@]}" fuzz run --fuzz-dir fuzz "$t" "$tmp" "fuzz/corpus/$t" "$work/$t" -- \
      -merge=1 -max_len="$len" "${flags[@]}"
    rm -rf "fuzz/corpus/$t"
    mv "$tmp" "fuzz/corpus/$t"
  fi
done
echo "fuzz: ${#targets[@]} targets, no crash" >&2
