#!/usr/bin/env python3
"""`fgo serve` spoken to by the official OpenAI Python client.

Checks (default): a chat completion, a streamed one whose deltas join to the same text,
and n = 2 with sampling. Exits non-zero on the first failure.

--bench: aggregate decode throughput of CLIENTS concurrent streaming clients, and
prefix reuse across clients sharing a system prompt; prints one JSON object.

    python tests/serve_openai.py --base-url http://127.0.0.1:8080/v1 [--bench]
"""

import argparse
import concurrent.futures
import json
import sys
import time

from openai import OpenAI

QUESTION = "What is the capital of France?"
SYSTEM = "You are a helpful assistant."


def check(condition, message):
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


def checks(client, model):
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION},
    ]
    whole = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0
    )
    text = whole.choices[0].message.content
    check(isinstance(text, str) and text, f"chat text: {whole}")
    check(whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens,
          f"usage: {whole.usage}")
    check(whole.usage.prompt_tokens_details is not None, f"usage details: {whole.usage}")

    pieces = []
    finish = None
    usage = None
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    check("".join(pieces) == text, f"streamed {''.join(pieces)!r} != {text!r}")
    check(finish in ("stop", "length"), f"finish reason {finish!r}")
    check(usage is not None and usage.completion_tokens == whole.usage.completion_tokens,
          f"stream usage {usage}")

    two = client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=1.0, seed=5, n=2
    )
    check(len(two.choices) == 2, f"n=2 gave {len(two.choices)} choices")
    check(sorted(c.index for c in two.choices) == [0, 1], "choice indexes")
    texts = [c.message.content for c in two.choices]
    check(texts[0] != texts[1], f"the two choices are the same: {texts}")

    completion = client.completions.create(model=model, prompt="The capital of France is",
                                           max_tokens=6, temperature=0)
    check(completion.choices[0].text, f"completion: {completion}")
    models = client.models.list()
    check(any(m.id == model for m in models.data), f"models: {models}")
    print("serve_openai: all checks passed")


def bench(client, model, clients, max_tokens, rounds):
    """Decode throughput at `clients` concurrent streams, then prefix reuse."""
    def one(i):
        start = time.perf_counter()
        first = None
        stream = client.completions.create(
            model=model, prompt=f"Story {i}: once upon a time", max_tokens=max_tokens,
            temperature=0, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        tokens = 0
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - start
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens, first

    # Warm up once (page in the weights).
    one(-1)
    best = None
    for _ in range(rounds):
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, range(clients)))
        wall = time.perf_counter() - start
        tokens = sum(t for t, _ in results)
        rate = tokens / wall
        if best is None or rate > best["decode_tokens_per_s"]:
            firsts = sorted(f for _, f in results if f is not None)
            best = {
                "clients": clients,
                "completion_tokens": tokens,
                "wall_s": round(wall, 3),
                "decode_tokens_per_s": round(rate, 1),
                "median_first_token_s": round(firsts[len(firsts) // 2], 3) if firsts else None,
            }

    system = SYSTEM + " " + "Keep every answer short, exact and polite. " * 40

    def ask(i):
        r = client.chat.completions.create(
            model=model, max_tokens=4, temperature=0,
            messages=[{"role": "system", "content": system},
                      {"role": "user", "content": f"Question {i}: name a number."}],
        )
        return r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        usage = list(pool.map(ask, range(clients)))
    prompt = sum(p for p, _ in usage)
    cached = sum(c for _, c in usage)
    best["prefix_requests"] = clients
    best["prefix_prompt_tokens"] = prompt
    best["prefix_cached_tokens"] = cached
    best["prefix_cached_fraction"] = round(cached / prompt, 3) if prompt else 0.0
    print(json.dumps(best))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--bench", action="store_true")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0,
                    timeout=600)
    model = client.models.list().data[0].id
    if args.bench:
        bench(client, model, args.clients, args.max_tokens, args.rounds)
    else:
        checks(client, model)


if __name__ == "__main__":
    main()
