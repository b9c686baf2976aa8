"""Cycle-consistency training (iterative back-translation): `CycleTrainer` and its parts.

- `cycle.trainer`: `CycleTrainer`, the loop (two models or MACCT adapters, causal/seq2seq/mixed).
- `cycle.config`: `CycleTrainingArguments`.
- `cycle.inputs`: the training batch of one direction from synthetic sources and real targets.
- `cycle.generation`: the synthetic sources (bounded, cached generation).
- `cycle.streams`: independent, resumable row streams of the unpaired datasets.
- `cycle.metrics`: exact match, BLEU, chrF on generated texts.
- `cycle.tasks`, `cycle.demo_data`: task processors (translation, NER) and the embedded demo.
"""

from .config import CycleTrainingArguments
from .trainer import CycleTrainer

__all__ = ["CycleTrainer", "CycleTrainingArguments"]
