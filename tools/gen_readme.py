"""Regenerate the argument lists in README.md from the help text of the config dataclasses."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- arguments:start -->", "<!-- arguments:end -->"


def render() -> str:
    from trainformers.config import DataSection, ModelSection, TrainingArguments, arguments_markdown_table
    from trainformers.cycle.config import CYCLE_FIELDS, CycleDataSection, CycleTrainingArguments

    parts = [
        arguments_markdown_table(TrainingArguments),
        "\nThe `model:` section of a run file:\n",
        arguments_markdown_table(ModelSection),
        "\nThe `data:` section of a run file:\n",
        arguments_markdown_table(DataSection),
        "\n`CycleTrainingArguments` adds to `TrainingArguments` (the `training:` section of a cycle run file):\n",
        arguments_markdown_table(CycleTrainingArguments, only=CYCLE_FIELDS),
        "\nThe `data:` section of a cycle run file:\n",
        arguments_markdown_table(CycleDataSection),
    ]
    return "\n".join(parts).strip() + "\n"


def updated(text: str) -> str:
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{render()}{END}", text)


if __name__ == "__main__":
    README.write_text(updated(README.read_text()))
    sys.exit(0)
