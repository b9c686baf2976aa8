"""Cycle-consistency training (iterative back-translation): `CycleTrainer` and its parts.

`cycle.inputs` builds the training batch of one direction from the other model's synthetic
sources and this domain's real targets.
"""
