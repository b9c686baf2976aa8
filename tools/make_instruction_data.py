"""Generate examples/data/python_help.jsonl: a small instruction dataset in `messages` format.

Rows are built deterministically from text that ships with Python (`pydoc_data.topics`, the
same corpus as the default run), so the default model can be fine-tuned on it without a
download: questions about a help topic answered with the topic's first sentences, string tasks
(reverse, upper-case, count words) whose answers are computed, multi-turn follow-ups, and some
rows with a system message.

    python tools/make_instruction_data.py            # rewrites examples/data/python_help.jsonl
"""

from __future__ import annotations

import json
import pydoc_data.topics
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "examples" / "data" / "python_help.jsonl"
SYSTEM = "You are a concise assistant for Python questions."
QUESTIONS = [
    "What is the Python help topic '{t}' about?",
    "Explain '{t}' in Python briefly.",
    "Summarise the '{t}' topic.",
]


def first_sentences(text: str, n: int = 2, limit: int = 300) -> str:
    lines = text.strip().splitlines()
    if len(lines) > 1 and re.fullmatch(r"[*=~^-]{3,}", lines[1].strip()):
        lines = lines[2:]  # drop the reST title and its underline
    flat = re.sub(r"\s+", " ", "\n".join(lines)).strip()
    sentences = re.split(r"(?<=[.!?])\s+", flat)
    return " ".join(sentences[:n])[:limit].strip()


def words(rng: random.Random, pool: list[str], k: int) -> str:
    return " ".join(rng.sample(pool, k))


def main() -> None:
    rng = random.Random(0)
    topics = {name: first_sentences(text) for name, text in sorted(pydoc_data.topics.topics.items())}
    topics = {name: answer for name, answer in topics.items() if len(answer) > 20}
    pool = sorted({w for text in pydoc_data.topics.topics.values() for w in re.findall(r"\b[a-z]{3,9}\b", text)})
    rows: list[dict] = []
    for name, answer in topics.items():
        for question in rng.sample(QUESTIONS, 2):
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": question.format(t=name)},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
    for _ in range(120):
        text = words(rng, pool, rng.randint(2, 5))
        task = rng.choice(["reverse", "upper", "count"])
        if task == "reverse":
            prompt, answer = f"Reverse the words: {text}", " ".join(reversed(text.split()))
        elif task == "upper":
            prompt, answer = f"Write in upper case: {text}", text.upper()
        else:
            prompt, answer = f"How many words are in: {text}", str(len(text.split()))
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    names = list(topics)
    for name in rng.sample(names, min(50, len(names))):
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": QUESTIONS[0].format(t=name)},
                    {"role": "assistant", "content": topics[name]},
                    {"role": "user", "content": "Name the topic in one word."},
                    {"role": "assistant", "content": name},
                ]
            }
        )
    rng.shuffle(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
