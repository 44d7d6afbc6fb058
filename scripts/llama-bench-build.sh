#!/usr/bin/env bash
# Builds llama.cpp's llama-bench from the source that the PyPI package llama-cpp-python
# carries (the only way to get llama.cpp here), for side-by-side speed comparisons.
# Prints the path of the binary. Takes about 8 minutes on 2 cores; idempotent.
#
#   scripts/llama-bench-build.sh            (builds under ~/.cache/fgo/llamacpp)
#
# AMX is turned off: these virtual machines advertise AMX tiles but fault on them.
set -euo pipefail
dir="${FGO_LLAMACPP_DIR:-$HOME/.cache/fgo/llamacpp}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
mkdir -p "$dir"
cd "$dir"
bench="$dir/llama_cpp_python-$version/vendor/llama.cpp/build/bin/llama-bench"
if [ -x "$bench" ]; then
  echo "$bench"
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
tar xzf "llama_cpp_python-$version.tar.gz"
cd "llama_cpp_python-$version/vendor/llama.cpp"
export PATH="$dir/venv/bin:$PATH"
flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
if grep -qw avx512f /proc/cpuinfo; then
  flags+=(-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON)
fi
if grep -qw avx_vnni /proc/cpuinfo; then
  flags+=(-DGGML_AVX_VNNI=ON)
fi
cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${flags[@]}" \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF >&2
ninja -C build llama-bench >&2
echo "$bench"
