#!/usr/bin/env python3
"""Generates the data of the example tasks under examples/ (fixed seed, no dependencies).

    python3 scripts/gen_examples.py            # rewrites examples/*/data.jsonl

Each task is chosen so that the wording of the agent's instructions changes a small model's
score: counting needs a running total over mixed number words, date arithmetic needs a
month-length procedure, extraction needs a strict output format.
"""
import datetime
import json
import pathlib
import random

SEED = 20250506
N = 400
ROOT = pathlib.Path(__file__).resolve().parent.parent / "examples"

NAMES = ["Mia", "Noah", "Ava", "Liam", "Zoe", "Omar", "Iris", "Theo", "Lena", "Ravi", "Nina", "Hugo"]
WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
GROUPS = {
    "pieces of fruit": ["apple", "pear", "orange", "plum", "banana", "peach", "kiwi", "mango"],
    "vegetables": ["carrot", "onion", "potato", "leek", "tomato", "pepper", "zucchini"],
    "animals": ["cat", "dog", "rabbit", "goat", "duck", "horse", "sheep"],
}
DISTRACTORS = ["a notebook", "two pencils", "a scarf", "three coins", "a map", "an umbrella"]


def plural(word, n):
    if n == 1:
        return word
    if word in ("sheep",):
        return word
    if word.endswith(("o",)) and word not in ("avocado",):
        return word + "es"
    if word.endswith("ch"):
        return word + "es"
    if word == "peach":
        return "peaches"
    return word + "s"


def counting(rng, i):
    name = rng.choice(NAMES)
    group = rng.choice(list(GROUPS))
    kinds = rng.sample(GROUPS[group], rng.randint(2, 5))
    counts = [rng.randint(1, 6) for _ in kinds]
    parts = []
    for k, c in zip(kinds, counts):
        if c == 1:
            parts.append(("an " if k[0] in "aeiou" else "a ") + k)
        else:
            num = WORDS[c] if rng.random() < 0.5 else str(c)
            parts.append(f"{num} {plural(k, c)}")
    if rng.random() < 0.5:
        parts.insert(rng.randint(0, len(parts)), rng.choice(DISTRACTORS))
    listing = ", ".join(parts[:-1]) + " and " + parts[-1]
    verb = rng.choice(["has", "saw", "bought", "packed"])
    q = f"{name} {verb} {listing}. How many {group} did {name} {'have' if verb == 'has' else verb.rstrip('s') if verb == 'has' else {'saw': 'see', 'bought': 'buy', 'packed': 'pack'}[verb]} in total?"
    return {"id": f"count-{i}", "question": q, "answer": sum(counts)}


def dates(rng, i):
    start = datetime.date(2020, 1, 1) + datetime.timedelta(days=rng.randint(0, 2000))
    n = rng.choice([rng.randint(1, 12), rng.randint(13, 45), rng.randint(46, 120)])
    after = rng.random() < 0.7
    unit_weeks = rng.random() < 0.2 and n % 7 == 0
    delta = datetime.timedelta(days=n)
    end = start + delta if after else start - delta
    amount = f"{n // 7} weeks" if unit_weeks else f"{n} days"
    style = rng.random()
    if style < 0.5:
        shown = start.isoformat()
    else:
        shown = start.strftime("%B %d, %Y").replace(" 0", " ")
    q = f"What is the date {amount} {'after' if after else 'before'} {shown}?"
    return {"id": f"date-{i}", "question": q, "answer": end.isoformat()}


CITIES = ["Berlin", "Lyon", "Porto", "Oslo", "Turin", "Ghent", "Krakow", "Leeds", "Bilbao", "Graz"]
TEMPLATES = [
    "Hi, please send {qty} units of {item} to our {city} office, thanks!",
    "Order: {item} x{qty}, deliver to {city}.",
    "Could you ship {qty_word} boxes of {item}? Destination: {city}. Regards",
    "We need {item} ({qty} pcs) in {city} by next week.",
    "Re: restock - {city} warehouse wants {qty} more {item}.",
]


def extraction(rng, i):
    item = f"{rng.choice('ABCDEFGHKLMNPRSTX')}{rng.choice('ABCDEFGHKLMNPRSTX')}-{rng.randint(100, 999)}"
    qty = rng.randint(1, 9) if rng.random() < 0.4 else rng.randint(10, 250)
    city = rng.choice(CITIES)
    t = rng.choice(TEMPLATES)
    if "{qty_word}" in t and qty > 9:
        t = TEMPLATES[0]
    msg = t.format(item=item, qty=qty, qty_word=WORDS.get(qty, str(qty)), city=city)
    return {"id": f"order-{i}", "message": msg, "answer": f"item={item};qty={qty};city={city}"}


def main():
    for name, gen in [("counting", counting), ("dates", dates), ("extraction", extraction)]:
        rng = random.Random(f"{SEED}-{name}")
        rows = [gen(rng, i) for i in range(N)]
        out = ROOT / name / "data.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{out}: {len(rows)} examples")


if __name__ == "__main__":
    main()
