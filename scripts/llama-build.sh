#!/usr/bin/env bash
# Builds one program of llama.cpp (llama-bench, llama-server, ...) from the source that the
# PyPI package llama-cpp-python carries (the only way to get llama.cpp here), for side-by-side
# speed comparisons and for protocol tests against a server fgo did not write. Prints the
# path of the binary. The first build takes about 8 minutes on 2 cores; later ones reuse the
# build tree; idempotent.
#
#   scripts/llama-build.sh llama-server     (builds under ~/.cache/fgo/llamacpp)
#
# AMX is turned off: these virtual machines advertise AMX tiles but fault on them.
set -euo pipefail
target="${1:?usage: scripts/llama-build.sh TARGET (llama-bench, llama-server)}"
dir="${FGO_LLAMACPP_DIR:-$HOME/.cache/fgo/llamacpp}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
mkdir -p "$dir"
cd "$dir"
src="$dir/llama_cpp_python-$version/vendor/llama.cpp"
binary="$src/build/bin/$target"
if [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi
# One build at a time: concurrent callers (CI steps, tests) wait here.
exec 9>"$dir/.lock"
flock 9
if [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi
if [ ! -x venv/bin/cmake ]; then
  python3 -m venv venv
  venv/bin/pip install -q cmake ninja scikit-build-core >&2
fi
if [ ! -f "llama_cpp_python-$version.tar.gz" ]; then
  venv/bin/pip download -q --no-deps --no-binary llama-cpp-python --no-build-isolation \
    "llama-cpp-python==$version" -d . >&2
fi
if [ ! -d "$src" ]; then
  tar xzf "llama_cpp_python-$version.tar.gz"
fi
cd "$src"
export PATH="$dir/venv/bin:$PATH"
if [ ! -f build/build.ninja ]; then
  flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
  if grep -qw avx512f /proc/cpuinfo; then
    flags+=(-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON)
  fi
  if grep -qw avx_vnni /proc/cpuinfo; then
    flags+=(-DGGML_AVX_VNNI=ON)
  fi
  cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${flags[@]}" \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF >&2
fi
ninja -C build "$target" >&2
echo "$binary"
