"""DeepSpeed is applied or refused in one line, never silently dropped (FSDP: tests/test_fsdp.py)."""

from __future__ import annotations

import pytest
from conftest import PadCollator, lm_rows, make_args, tiny_llama

from trainformers import ConfigError, Trainer


def _trainer(tmp_path, **overrides):
    return Trainer(
        model=tiny_llama(), args=make_args(tmp_path, **overrides), train_dataset=lm_rows(8), data_collator=PadCollator()
    )


def test_deepspeed_without_its_package_or_a_gpu_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"training.deepspeed (is set but the deepspeed package|needs a CUDA GPU)"):
        _trainer(tmp_path, deepspeed={"zero_optimization": {"stage": 2}})


def test_the_command_line_refuses_deepspeed_before_loading_anything(tmp_path, capsys):
    from trainformers.cli import main

    code = main(
        ["train", "--training.deepspeed", '{"zero_optimization": {"stage": 2}}', "--training.output_dir", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "training.deepspeed" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing was written: no tokenizer, no data, no run
