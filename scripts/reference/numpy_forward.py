#!/usr/bin/env python3
"""A plain float64 numpy forward pass (weights dequantized with gguf-py, no
activation quantization, no F16 anywhere) for the llama, qwen2 and qwen3
architectures, compared against the llama.cpp logits fixtures.

Purpose: a third, independent opinion on the logits.  It tells how far
llama.cpp's quantized-activation arithmetic is from the exact math of the same
weights (the quantity fgo's tolerances have to absorb), and it checks that
llama.cpp reads the synthetic qwen3-tiny.gguf the way it was meant (NEOX RoPE,
per-head q/k RMS norm before RoPE, GQA, separate output matrix).

With --act-quant, the input of every quantized matmul is rounded to 8 bits the
way ggml's CPU backend does (Q8_K blocks of 256 for K-quant weights, blocks of
32 otherwise), which isolates the effect of that rounding.

Usage: .venv-ref/bin/python scripts/reference/numpy_forward.py [--act-quant] [ALIAS ...]
       (default: smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b qwen3-tiny;
        gemma3 is not implemented)
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

sys.path.insert(0, os.path.dirname(__file__))
import make_fixtures as mf  # noqa: E402


class Weights:
    def __init__(self, path):
        self.r = GGUFReader(path)
        self.t = {t.name: t for t in self.r.tensors}
        self.meta = {k: f.contents() for k, f in self.r.fields.items()
                     if not k.startswith("tokenizer.ggml.")}

    def get(self, name, rows=None):
        t = self.t.get(name)
        if t is None:
            return None
        data = t.data if rows is None else t.data[rows]
        return dequantize(np.asarray(data), t.tensor_type).astype(np.float64)

    def mm(self, x, name, act_quant=False):
        """x @ W.T.  With act_quant, x is first rounded the way ggml's CPU backend
        rounds the input of a quantized matmul: 8-bit, one scale per block of 256
        (Q8_K) for K-quant weights, per block of 32 (Q8_0/Q8_1) for the others."""
        t = self.t[name]
        if act_quant and t.tensor_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            block = 256 if t.tensor_type in K_QUANTS else 32
            xb = x.reshape(x.shape[0], -1, block)
            d = np.abs(xb).max(axis=-1, keepdims=True) / 127.0
            d[d == 0] = 1.0
            x = (np.round(xb / d) * d).reshape(x.shape)
        return x @ self.get(name).T

    def kv(self, key, default=None):
        arch = self.meta["general.architecture"]
        return self.meta.get(f"{arch}.{key}", default)


K_QUANTS = {GGMLQuantizationType.Q2_K, GGMLQuantizationType.Q3_K, GGMLQuantizationType.Q4_K,
            GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K}


def rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, base, neox):
    # x: (n_tok, n_head, d)
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # (d/2,)
    ang = pos[:, None].astype(np.float64) * inv[None, :]       # (n_tok, d/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if neox:
        a, b = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def forward(w: Weights, tokens: list[int], act_quant: bool = False) -> np.ndarray:
    arch = w.meta["general.architecture"]
    assert arch in ("llama", "qwen2", "qwen3"), arch
    neox = arch != "llama"
    n_layer = int(w.kv("block_count"))
    n_head = int(w.kv("attention.head_count"))
    n_kv = int(w.kv("attention.head_count_kv"))
    n_embd = int(w.kv("embedding_length"))
    hd = int(w.kv("attention.key_length", n_embd // n_head))
    eps = float(w.kv("attention.layer_norm_rms_epsilon"))
    base = float(w.kv("rope.freq_base", 10000.0))
    n = len(tokens)
    pos = np.arange(n)

    x = w.get("token_embd.weight", rows=np.array(tokens))
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(n_layer):
        p = f"blk.{i}."
        h = rms(x, w.get(p + "attn_norm.weight"), eps)
        q, k, v = (w.mm(h, p + f"attn_{s}.weight", act_quant) for s in "qkv")
        for s, name in ((q, "q"), (k, "k"), (v, "v")):
            b = w.get(p + f"attn_{name}.bias")
            if b is not None:
                s += b
        q = q.reshape(n, n_head, hd)
        k = k.reshape(n, n_kv, hd)
        v = v.reshape(n, n_kv, hd)
        qn, kn = w.get(p + "attn_q_norm.weight"), w.get(p + "attn_k_norm.weight")
        if qn is not None:
            q, k = rms(q, qn, eps), rms(k, kn, eps)
        q, k = rope(q, pos, base, neox), rope(k, pos, base, neox)
        g = n_head // n_kv
        out = np.empty((n, n_head, hd))
        for hh in range(n_head):
            kk, vv = k[:, hh // g], v[:, hh // g]
            s = q[:, hh] @ kk.T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            out[:, hh] = s @ vv
        x = x + w.mm(out.reshape(n, n_head * hd), p + "attn_output.weight", act_quant)
        h = rms(x, w.get(p + "ffn_norm.weight"), eps)
        gate = w.mm(h, p + "ffn_gate.weight", act_quant)
        up = w.mm(h, p + "ffn_up.weight", act_quant)
        x = x + w.mm(gate / (1 + np.exp(-gate)) * up, p + "ffn_down.weight", act_quant)
    x = rms(x, w.get("output_norm.weight"), eps)
    out_name = "output.weight" if "output.weight" in w.t else "token_embd.weight"
    return w.mm(x, out_name, act_quant)


def main() -> int:
    args = sys.argv[1:]
    act_quant = "--act-quant" in args
    aliases = [a for a in args if not a.startswith("--")] or ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "qwen3-tiny"]
    manifest = mf.read_manifest()
    for alias in aliases:
        fx = json.load(open(os.path.join(mf.FIXTURES, "logits", f"{alias}.json")))
        path = mf.TINY_PATH if alias == mf.TINY_ALIAS else os.path.join(mf.MODELS_DIR, manifest[alias]["file"])
        w = Weights(path)
        mode = "with 8-bit activation rounding" if act_quant else "exact"
        print(f"== {alias}: numpy float64 ({mode}) vs llama.cpp fixture (top-20 logits of every position)", flush=True)
        for case in fx["cases"]:
            ref = forward(w, case["tokens"], act_quant)
            d = np.array([[abs(ref[p][i] - l) for i, l in pos["top"]] for p, pos in enumerate(case["positions"])])
            flips = sum(int(np.argmax(ref[p]) != pos["top"][0][0]) for p, pos in enumerate(case["positions"]))
            worst = int(np.argmax(d.max(axis=1)))
            print(f"    {case['name']:<10} {len(case['tokens']):>4} tokens  max|d| {d.max():.4f} (position {worst})  "
                  f"mean {d.mean():.4f}  without position 0: max {d[1:].max() if len(d) > 1 else 0:.4f}  "
                  f"argmax differs at {flips} positions", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
