#!/usr/bin/env python3
"""Cross-check the llama.cpp tokenizer fixtures against Hugging Face transformers'
GGUF tokenizer conversion (a second, independent implementation).

transformers builds a `tokenizers` (Rust) tokenizer from the GGUF metadata:
    transformers.integrations.gguf.get_gguf_tokenizer / convert_gguf_tokenizer
which is exactly what `AutoTokenizer.from_pretrained(dir, gguf_file=...)` does.
That module imports torch at top level only to name dtypes for tensor loading;
the tokenizer path never touches torch.  PyPI's torch for Linux is the CUDA
build (multiple GB with its nvidia-* dependencies), so instead of installing it
we register a minimal stand-in module named `torch` (after importing
transformers, so transformers itself still sees no torch).

Usage (from the repository root):
    .venv-ref/bin/pip install transformers      # tokenizers comes with it
    .venv-ref/bin/python scripts/reference/crosscheck_transformers.py [ALIAS ...]

Prints every case where the two disagree; exit status 0 regardless (the
disagreements are documented in README.md).
"""
from __future__ import annotations

import json
import os
import sys
import types

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def install_torch_stub() -> None:
    try:
        import torch  # noqa: F401  (a real torch is fine too)
        return
    except ImportError:
        pass
    class _Anything:
        """Stands in for any torch attribute used at import time (dtype names,
        torch.device in type hints, decorators); never called on the tokenizer path."""

        def __getattr__(self, name):
            return _Anything()

        def __call__(self, *a, **k):
            return a[0] if len(a) == 1 and callable(a[0]) and not k else _Anything()

        def __getitem__(self, key):
            return _Anything()

        def __or__(self, other):
            return _Anything()

        __ror__ = __or__

    class _StubModule(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Anything()

    stub = _StubModule("torch")
    sys.modules["torch"] = stub
    for sub in ("nn", "nn.functional"):
        sys.modules["torch." + sub] = _StubModule("torch." + sub)


def main() -> int:
    import transformers  # first, so that its is_torch_available() check sees no torch

    install_torch_stub()
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    aliases = sys.argv[1:] or ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "qwen3-tiny"]
    print(f"transformers {transformers.__version__}")
    total_bad = 0
    for alias in aliases:
        fx = json.load(open(os.path.join(FIXTURES, "tokenizer", f"{alias}.json")))
        path = os.path.join(FIXTURES, fx["file"]) if alias == "qwen3-tiny" else os.path.join(REPO, "models", fx["file"])
        arch, tdict, _ = get_gguf_tokenizer(path)
        tok, _ = convert_gguf_tokenizer(arch, tdict)
        bad = 0
        for case in fx["cases"]:
            hf = tok.encode(case["text"], add_special_tokens=False).ids
            if hf != case["ids"]:
                bad += 1
                print(f"[{alias}] MISMATCH {case['text']!r}\n    llama.cpp:    {case['ids']}\n    transformers: {hf}")
        print(f"[{alias}] {len(fx['cases']) - bad}/{len(fx['cases'])} cases agree "
              f"(pre-tokenizer {tdict.get('pre_tokenizer_type')!r})")
        total_bad += bad
    print(f"total mismatching cases: {total_bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
