"""DeepSpeed is applied or refused in one line, never silently dropped (FSDP: tests/test_fsdp.py)."""

from __future__ import annotations

import pytest
from conftest import PadCollator, lm_rows, make_args, tiny_llama

from trainformers import ConfigError, Trainer


def _trainer(tmp_path, **overrides):
    return Trainer(
        model=tiny_llama(), args=make_args(tmp_path, **overrides), train_dataset=lm_rows(8), data_collator=PadCollator()
    )


def test_deepspeed_without_its_package_is_refused(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ConfigError, match=r"training.deepspeed is set but the deepspeed package is not installed"):
        _trainer(tmp_path, deepspeed={"zero_optimization": {"stage": 2}})


def test_the_command_line_refuses_deepspeed_before_loading_anything(tmp_path, capsys):
    from trainformers.cli import main

    code = main(
        ["train", "--training.deepspeed", '{"zero_optimization": {"stage": 2}}', "--training.output_dir", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "training.deepspeed" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing was written: no tokenizer, no data, no run


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}, r"has a 'optimizer' section"),
        ({"zero_optimization": {"stage": 2}, "scheduler": {"type": "WarmupLR"}}, r"has a 'scheduler' section"),
        ({"zero_optimization": {"stage": 5}}, r"zero_optimization.stage=5 must be 0, 1, 2 or 3"),
    ],
)
def test_a_deepspeed_config_this_trainer_cannot_carry_out_is_refused_first(tmp_path, config, message):
    with pytest.raises(ConfigError, match=message) as raised:
        _trainer(tmp_path, deepspeed=config)
    assert "\n" not in str(raised.value)


def test_deepspeed_without_a_launcher_is_refused(tmp_path, monkeypatch):
    import importlib.util

    from trainformers.accel import check_engines

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real(name, *a)
    )
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    args = make_args(tmp_path, deepspeed={"zero_optimization": {"stage": 2}})
    with pytest.raises(ConfigError, match=r"training.deepspeed needs a distributed launch, one process too"):
        check_engines(args)
