#!/usr/bin/env python3
"""Generate golden fixtures for fgo from llama.cpp (via llama-cpp-python).

Writes, for every model alias in models/manifest.tsv that is listed in ALIASES
(and for the synthetic tests/fixtures/qwen3-tiny.gguf):

  tests/fixtures/tokenizer/<alias>.json  llama.cpp token ids for fixed strings
  tests/fixtures/logits/<alias>.json     top-20 logits at every position of 3 prompts
  tests/fixtures/greedy/<alias>.json     64 (tiny: 32) greedy tokens for 4 (tiny: 2) prompts

Usage (from the repository root):
    .venv-ref/bin/python scripts/reference/make_fixtures.py [--only tokenizer,logits,greedy] [ALIAS ...]

See scripts/reference/README.md for the environment and the exact versions.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS_DIR = os.path.join(REPO, "models")
FIXTURES = os.path.join(REPO, "tests", "fixtures")
TINY_ALIAS = "qwen3-tiny"
TINY_PATH = os.path.join(FIXTURES, "qwen3-tiny.gguf")

ALIASES = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]

# llama-cpp-python version -> the llama.cpp commit it vendors (from its CHANGELOG.md;
# the sdist carries no git metadata, so the compiled library cannot report it).
LLAMA_CPP_COMMITS = {"0.3.36": "0c1e57098"}

# Evaluation parameters (identical for logits and greedy fixtures).
N_CTX = 512
N_BATCH = 512
N_THREADS = 2
TOP_K = 20
DECIMALS = 4
# KV cache element type.  llama.cpp's default is F16, but with an F16 cache its
# batched prefill and its one-token decode round attention differently, and on
# these quantized models that moves logits by up to ~1.5 (see README.md).
# With F32 the two schedules agree bit for bit, so the fixtures do not depend on
# how the tokens were batched.  Overridable with --kv-type.
KV_TYPES = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16}
KV_TYPE = "f32"


def reference_string() -> str:
    v = llama_cpp.__version__
    commit = LLAMA_CPP_COMMITS.get(v, "unknown")
    return f"llama-cpp-python {v} (llama.cpp ggml-org/llama.cpp@{commit}), CPU, n_threads={N_THREADS}, kv={KV_TYPE}"


# --------------------------------------------------------------------------
# Tokenizer strings: the same for every model, plus model-specific specials.
# --------------------------------------------------------------------------
COMMON_STRINGS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "  two leading and two trailing  ",
    "a  b   c    d     e",
    "tab\tseparated\t\tvalues\t",
    "line one\nline two\n\nline four\n",
    "\n\n\n   x",
    "   \t \n  mixed \r\n whitespace \t\n",
    "   ",
    "1234567890",
    "3.14159",
    "2026-11-22",
    "Order #42 costs $1,299.99 (or 1e-9), not 100000000000000000000.",
    "Mixed123numbers456and789letters",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m \u00fcber",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u4e2d\u6587\u6587\u672c\u3002",
    "emoji: \U0001F680\U0001F525\U0001F44D\U0001F3FD \U0001F468\u200D\U0001F469\u200D\U0001F467",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "combining: e\u0301 a\u0308 n\u0303 (decomposed) vs \u00e9 \u00e4 \u00f1",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5",
    "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b\n",
    '{"name": "fgo", "version": [1, 2, 3], "ok": true, "nested": {"k": null}}',
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    for x in &v {\n        println!(\"{x}\");\n    }\n}\n",
    "don't won't it's we've they'd you're I'm",
    "I'LL DON'T We'Re SHE'S",
    "!!! ??? ... --- *** ===> <<< >>> ;;",
    "https://example.com/path?q=1&r=two#frag",
    "",
]

CHATML_SPECIALS = [
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more<|im_start|>",
    "<|endoftext|>",
    "a<|endoftext|>b",
]
GEMMA_SPECIALS = [
    "<start_of_turn>user\nhi<end_of_turn>",
    "<bos>",
    "<bos>Hello world",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<eos>",
]

# --------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------
PARAGRAPH = (
    "The history of computing is a story of abstraction. Early machines were programmed by "
    "rewiring panels and flipping switches, and every program was tied to the hardware it ran on. "
    "Assembly languages gave names to instructions, compilers turned formulas into machine code, "
    "and operating systems hid the details of disks, memory and devices behind files and processes. "
    "Each layer let programmers think about larger problems while trusting the layers below. "
    "Today a single line of code can start a web server, train a neural network, or query a database "
    "spread across many continents, yet underneath it all the processor still fetches, decodes and "
    "executes one simple instruction after another."
)


def chat(style: str, user: str, system: str | None = None) -> str:
    if style == "gemma":
        body = (system + "\n\n" + user) if system else user
        return f"<start_of_turn>user\n{body}<end_of_turn>\n<start_of_turn>model\n"
    s = ""
    if system:
        s += f"<|im_start|>system\n{system}<|im_end|>\n"
    return s + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def logits_prompts(style: str) -> list[tuple[str, str]]:
    return [
        ("capital", "The capital of France is"),
        ("chat", chat(style, "What is the capital of France? Answer in one short sentence.",
                      system="You are a helpful assistant.")),
        ("paragraph", PARAGRAPH),
    ]


def greedy_prompts(style: str) -> list[tuple[str, str]]:
    return [
        ("capital", "The capital of France is"),
        ("chat_code", chat(style, "Write a Python function that returns the n-th Fibonacci number.")),
        ("code_completion", "def fibonacci(n):\n    "),
        ("story", "Once upon a time, in a small village by the sea,"),
    ]


# Tiny random qwen3 model: prompts given directly as token ids.  Its vocabulary
# (see make_qwen3_tiny.py) has 305 ids: 0..255 byte tokens, 256..301 merges,
# 302 <|endoftext|>, 303 <|im_start|>, 304 <|im_end|>.
TINY_LOGITS_PROMPTS = [
    ("ids5", [72, 258, 30, 100, 270]),
    ("ids17", [303, 84, 256, 304, 11, 12, 13, 14, 15, 0, 1, 2, 3, 188, 200, 250, 301]),
    ("ids40", [(i * 37 + 11) % 302 for i in range(40)]),
]
TINY_GREEDY_PROMPTS = [
    ("ids6", [303, 84, 73, 256, 304, 72]),
    ("ids12", [(i * 89 + 23) % 302 for i in range(12)]),  # chosen for no near-ties (min margin 0.13)
]
TINY_STRINGS = [
    "Hello world",
    "the cat sat on the mat",
    "  two  spaces\n\nnewlines\tand tab",
    "def f(x):\n    return x + 1\n",
    "12345 caf\u00e9 \u65e5\u672c \U0001F680",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "a<|endoftext|>b",
    "",
]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest() -> dict[str, dict]:
    out = {}
    with open(os.path.join(MODELS_DIR, "manifest.tsv")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            out[cols[0]] = {"file": cols[1], "sha256": cols[2]}
    return out


def dump_json(obj, path: str) -> None:
    """JSON with one case / one position per line: readable, diffable, small.
    ensure_ascii so that no editor can NFC-normalise the test strings."""

    def enc(o, depth):
        scalar_list = isinstance(o, list) and all(not isinstance(x, (list, dict)) for x in o)
        if depth >= 4 or scalar_list or not isinstance(o, (list, dict)) or \
                (isinstance(o, dict) and "top" in o):
            return json.dumps(o, ensure_ascii=True, separators=(",", ":"))
        pad = " " * (depth + 1)
        if isinstance(o, dict):
            items = [f"{pad}{json.dumps(k)}: {enc(v, depth + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
        items = [pad + enc(v, depth + 1) for v in o]
        return "[\n" + ",\n".join(items) + "\n" + " " * depth + "]"

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(enc(obj, 0) + "\n")
    os.replace(tmp, path)
    print(f"  wrote {os.path.relpath(path, REPO)} ({os.path.getsize(path)} bytes)", flush=True)


def r(x: float) -> float:
    return round(float(x), DECIMALS)


def top_k(row: np.ndarray) -> list[list]:
    assert np.all(np.isfinite(row)), "non-finite logits"
    idx = np.argpartition(-row, TOP_K)[: TOP_K * 2] if row.size > 2 * TOP_K else np.arange(row.size)
    # sort by logit desc, then id asc (deterministic tie order)
    idx = sorted(idx.tolist(), key=lambda i: (-float(row[i]), i))[:TOP_K]
    return [[int(i), r(row[i])] for i in idx]


def header(alias, path, sha, llm_meta=None):
    return {"alias": alias, "file": os.path.basename(path), "sha256": sha, "reference": reference_string()}


def meta_flag(meta: dict, key: str, default: bool) -> bool:
    v = meta.get(key)
    if v is None:
        return default
    return str(v).lower() in ("true", "1")


def load_full(path: str, kv_type: str | None = None, n_threads: int = N_THREADS) -> Llama:
    t = KV_TYPES[kv_type or KV_TYPE]
    return Llama(model_path=path, logits_all=True, n_ctx=N_CTX, n_threads=n_threads,
                 n_threads_batch=n_threads, n_batch=N_BATCH, type_k=t, type_v=t,
                 flash_attn=False, verbose=False)


def eval_params(add_bos: bool, add_eos: bool) -> dict:
    return {"n_ctx": N_CTX, "n_batch": N_BATCH, "n_threads": N_THREADS,
            "kv_cache_type": KV_TYPE, "flash_attn": False,
            "metadata_add_bos": add_bos, "metadata_add_eos": add_eos,
            "tokenize": "llama_tokenize(add_special=True, parse_special=True)"}


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------
def make_tokenizer(alias, path, sha, strings):
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    cases = []
    for s in strings:
        ids = llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
        cases.append({"text": s, "ids": [int(i) for i in ids]})
    # sanity: the special-token strings must map to single ids
    meta = llm.metadata
    out = header(alias, path, sha)
    out["tokenizer_model"] = meta.get("tokenizer.ggml.model")
    out["tokenizer_pre"] = meta.get("tokenizer.ggml.pre")
    out["n_vocab"] = llm.n_vocab()
    out["call"] = "Llama(model_path, vocab_only=True).tokenize(text.encode('utf-8'), add_bos=False, special=True)"
    out["cases"] = cases
    dump_json(out, os.path.join(FIXTURES, "tokenizer", f"{alias}.json"))
    del llm


def run_logits(llm: Llama, tokens: list[int]) -> list[dict]:
    llm.reset()
    llm.eval(tokens)
    scores = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    assert np.all(np.isfinite(scores)), "NaN/inf in logits"
    return [{"top": top_k(scores[i])} for i in range(len(tokens))]


def run_greedy(llm: Llama, tokens: list[int], n_new: int) -> tuple[list[int], list[float]]:
    llm.reset()
    llm.eval(tokens)
    gen, margins = [], []
    for step in range(n_new):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        assert np.all(np.isfinite(row)), "NaN/inf in logits"
        t = int(np.argmax(row))  # lowest id wins a tie
        second = float(np.max(np.delete(row, t)))
        gen.append(t)
        margins.append(r(row[t] - second))
        if step + 1 < n_new:
            llm.eval([t])  # one token at a time, like a decoder loop
    return gen, margins


def make_model_fixtures(alias, path, sha, logit_prompts, greedy_prompts, n_new, what):
    """logit_prompts / greedy_prompts: lists of (name, text or list-of-ids)."""
    t0 = time.time()
    llm = load_full(path)
    meta = llm.metadata
    add_bos = meta_flag(meta, "tokenizer.ggml.add_bos_token", False)
    add_eos = meta_flag(meta, "tokenizer.ggml.add_eos_token", False)

    def toks(p):
        if isinstance(p, list):
            return p
        # add_bos=True here means llama.cpp's add_special: BOS only if the metadata says so
        return [int(i) for i in llm.tokenize(p.encode("utf-8"), add_bos=True, special=True)]

    if "logits" in what:
        cases = []
        for name, p in logit_prompts:
            tokens = toks(p)
            c = {"name": name}
            if isinstance(p, str):
                c["text"] = p
            c["tokens"] = tokens
            c["positions"] = run_logits(llm, tokens)
            cases.append(c)
        out = header(alias, path, sha)
        out["params"] = eval_params(add_bos, add_eos)
        out["n_vocab"] = llm.n_vocab()
        out["top_k"] = TOP_K
        out["cases"] = cases
        dump_json(out, os.path.join(FIXTURES, "logits", f"{alias}.json"))

    if "greedy" in what:
        cases = []
        for name, p in greedy_prompts:
            tokens = toks(p)
            gen, margins = run_greedy(llm, tokens, n_new)
            c = {"name": name}
            if isinstance(p, str):
                c["text"] = p
                c["generated_text"] = llm.detokenize(gen, special=True).decode("utf-8", "replace")
            c["prompt_tokens"] = tokens
            c["generated"] = gen
            c["margins"] = margins
            cases.append(c)
        out = header(alias, path, sha)
        out["params"] = eval_params(add_bos, add_eos)
        out["n_new"] = n_new
        out["method"] = ("eval(prompt) in one batch, then argmax of the last logits row (ties: lowest id) "
                         "and eval([token]) one at a time; no sampling, no penalties, EOS not special")
        out["cases"] = cases
        dump_json(out, os.path.join(FIXTURES, "greedy", f"{alias}.json"))
    del llm
    print(f"  {alias}: {time.time() - t0:.1f}s", flush=True)


def specials_for(alias: str) -> tuple[str, list[str]]:
    if alias.startswith("gemma"):
        return "gemma", GEMMA_SPECIALS
    return "chatml", CHATML_SPECIALS


def main() -> int:
    global KV_TYPE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("aliases", nargs="*", help=f"default: {' '.join(ALIASES + [TINY_ALIAS])}")
    ap.add_argument("--only", default="tokenizer,logits,greedy")
    ap.add_argument("--kv-type", choices=sorted(KV_TYPES), default=KV_TYPE,
                    help="KV cache element type (default %(default)s; llama.cpp's own default is f16)")
    args = ap.parse_args()
    KV_TYPE = args.kv_type
    what = set(args.only.split(","))
    aliases = args.aliases or ALIASES + [TINY_ALIAS]
    print(reference_string(), flush=True)

    manifest = read_manifest()
    for alias in aliases:
        print(f"== {alias}", flush=True)
        if alias == TINY_ALIAS:
            if not os.path.exists(TINY_PATH):
                sys.exit(f"{TINY_PATH} missing: run scripts/reference/make_qwen3_tiny.py first")
            sha = sha256_file(TINY_PATH)
            if "tokenizer" in what:
                make_tokenizer(alias, TINY_PATH, sha, TINY_STRINGS)
            make_model_fixtures(alias, TINY_PATH, sha, TINY_LOGITS_PROMPTS, TINY_GREEDY_PROMPTS, 32, what)
            continue
        m = manifest[alias]
        path = os.path.join(MODELS_DIR, m["file"])
        sha = sha256_file(path)
        if sha != m["sha256"]:
            sys.exit(f"{path}: sha256 {sha} != manifest {m['sha256']}")
        style, specials = specials_for(alias)
        if "tokenizer" in what:
            make_tokenizer(alias, path, sha, COMMON_STRINGS + specials)
        make_model_fixtures(alias, path, sha, logits_prompts(style), greedy_prompts(style), 64, what)
    return 0


if __name__ == "__main__":
    sys.exit(main())
