#!/usr/bin/env python3
"""How much do llama.cpp's own logits move when only the evaluation schedule
changes?  Guidance for the tolerances fgo's tests should use against the
fixtures (fgo cannot be expected to be closer to llama.cpp than llama.cpp is to
itself under a different batch split or thread count).

For each alias, on the "paragraph" logits prompt, compares the fixture setting
(whole prompt in one batch, n_threads=2, F32 KV cache) with
  - the same, run again (determinism),
  - token-by-token evaluation (batch of 1, like a decode loop),
  - n_threads=1,
  - an F16 KV cache (llama.cpp's default), batched and token by token,
and, within F16, token-by-token against batched,
and reports the max |difference| over all positions and all vocabulary entries,
the max difference restricted to each position's top-20, and how many positions
change their argmax.

Usage: .venv-ref/bin/python scripts/reference/noise_check.py [ALIAS ...]
"""
from __future__ import annotations

import os
import sys

import numpy as np
from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(__file__))
import make_fixtures as mf  # noqa: E402


def logits(path, tokens, n_threads=2, one_by_one=False, kv="f32"):
    llm = mf.load_full(path, kv_type=kv, n_threads=n_threads)
    llm.reset()
    if one_by_one:
        for t in tokens:
            llm.eval([t])
    else:
        llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    del llm
    return out


def compare(name, a, b):
    d = np.abs(a - b)
    top = np.argsort(-a, axis=1)[:, :20]
    dtop = np.take_along_axis(d, top, axis=1)
    flips = int(np.sum(np.argmax(a, axis=1) != np.argmax(b, axis=1)))
    print(f"    {name:<16} max|d| all={d.max():.4f}  top20={dtop.max():.4f}  "
          f"mean top20={dtop.mean():.5f}  argmax flips={flips}/{a.shape[0]}", flush=True)


def main() -> int:
    aliases = sys.argv[1:] or mf.ALIASES + [mf.TINY_ALIAS]
    manifest = mf.read_manifest()
    for alias in aliases:
        if alias == mf.TINY_ALIAS:
            path = mf.TINY_PATH
            tokens = mf.TINY_LOGITS_PROMPTS[2][1]
        else:
            path = os.path.join(mf.MODELS_DIR, manifest[alias]["file"])
            vocab = Llama(model_path=path, vocab_only=True, verbose=False)
            tokens = vocab.tokenize(mf.PARAGRAPH.encode(), add_bos=True, special=True)
            del vocab
        print(f"== {alias} ({len(tokens)} tokens)", flush=True)
        base = logits(path, tokens)
        compare("rerun", base, logits(path, tokens))
        compare("token-by-token", base, logits(path, tokens, one_by_one=True))
        compare("n_threads=1", base, logits(path, tokens, n_threads=1))
        f16 = logits(path, tokens, kv="f16")
        compare("kv f16", base, f16)
        compare("kv f16 1-by-1", base, logits(path, tokens, kv="f16", one_by_one=True))
        compare("f16: 1-by-1/batch", f16, logits(path, tokens, kv="f16", one_by_one=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
