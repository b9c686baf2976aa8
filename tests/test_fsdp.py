"""FSDP2 for real: the HF/axolotl settings mapped and checked, two CPU processes (gloo) sharding the model
through Accelerate's own FSDP2 code, sharded checkpoints that resume to the identical run, and a
consolidated final/ equal to one process's model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import PadCollator, accelerate_launch, lm_rows, make_args, tiny_llama
from safetensors.torch import load_file

from trainformers import ConfigError, Trainer, TrainingArguments
from trainformers.fsdp import fsdp_settings

SCRIPT = Path(__file__).parent / "engine_run.py"


# ---- the settings, as transformers and axolotl spell them ----------------------------------


def test_hf_and_axolotl_keys_map_onto_one_setting():
    hf = fsdp_settings(["full_shard", "auto_wrap"], {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]})
    axolotl = fsdp_settings(
        ["full_shard"],
        {
            "fsdp_version": 2,
            "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
            "fsdp_offload_params": "false",
            "fsdp_state_dict_type": "sharded_state_dict",
            "fsdp_reshard_after_forward": True,
        },
    )
    assert hf == axolotl
    assert hf is not None and hf.version == 2 and hf.wrap_classes == ("LlamaDecoderLayer",)
    assert hf.reshard_after_forward and hf.sharded_checkpoints and not hf.offload_params


@pytest.mark.parametrize(
    ("options", "config", "expected"),
    [
        (["shard_grad_op"], {}, {"reshard_after_forward": False}),
        (["full_shard", "offload"], {}, {"offload_params": True}),
        (["full_shard"], {"cpu_offload": True}, {"offload_params": True}),
        (["full_shard"], {"activation_checkpointing": "true"}, {"activation_checkpointing": True}),
        (["full_shard"], {"cpu_ram_efficient_loading": True}, {"cpu_ram_efficient_loading": True}),
        (["full_shard"], {"state_dict_type": "FULL_STATE_DICT"}, {"state_dict_type": "FULL_STATE_DICT"}),
        (["full_shard"], {"auto_wrap_policy": "SIZE_BASED_WRAP", "min_num_params": 1000}, {"min_num_params": 1000}),
        (["full_shard"], {"use_orig_params": True, "sync_module_states": "true"}, {"version": 2}),
        (["full_shard"], {"version": 1, "backward_prefetch": "BACKWARD_PRE"}, {"version": 1}),
        (["auto_wrap"], {"sharding_strategy": "SHARD_GRAD_OP"}, {"reshard_after_forward": False}),
    ],
)
def test_each_setting_is_carried(options, config, expected):
    settings = fsdp_settings(options, config)
    for name, value in expected.items():
        assert getattr(settings, name) == value


@pytest.mark.parametrize(
    ("options", "config", "message"),
    [
        (["full_shard"], {"fsdp_reshard_after_forwardd": True}, r"key 'fsdp_reshard_after_forwardd'.*did you mean "),
        (["full_shard"], {"version": 3}, r"version=3 must be 1 or 2"),
        (["hybrid_shard"], {}, r"FSDP2 has no HYBRID_SHARD sharding strategy"),
        (["no_shard"], {}, r"FSDP2 has no NO_SHARD.*use DDP"),
        (["full_shard"], {"forward_prefetch": True}, r"forward_prefetch is an FSDP1 setting"),
        (["full_shard"], {"use_orig_params": False}, r"use_orig_params=false is an FSDP1 setting"),
        (["full_shard"], {"xla": True}, r"XLA FSDP is not supported"),
        (["full_shard"], {"auto_wrap_policy": "transformer"}, r"auto_wrap_policy='transformer' is not one of"),
        (["full_shard"], {"state_dict_type": "LOCAL_STATE_DICT"}, r"state_dict_type='LOCAL_STATE_DICT'"),
        (["full_shard"], {"auto_wrap_policy": "SIZE_BASED_WRAP"}, r"needs min_num_params > 0"),
        (["full_shard"], {"min_num_params": 1000}, r"min_num_params=1000 applies only to auto_wrap_policy=SIZE"),
        (["full_shard"], {"activation_checkpointing": "yes"}, r"activation_checkpointing='yes' must be true or false"),
        (["full_shard", "shard_grad_op"], {}, r"names two sharding strategies"),
        (["full_shard"], {"sharding_strategy": "SHARD_GRAD_OP"}, r"fsdp=full_shard contradicts fsdp_config"),
        (["shard_grad_op"], {"reshard_after_forward": True}, r"contradicts the sharding strategy SHARD_GRAD_OP"),
        (["full_shard"], {"version": 2, "fsdp_version": 1}, r"gives 'version' twice"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(options, config, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as raised:
        TrainingArguments(output_dir=str(tmp_path), report_to="none", fsdp=options, fsdp_config=config)
    assert "\n" not in str(raised.value)


def test_fsdp_config_without_fsdp_is_refused_and_the_saved_form_reads_back(tmp_path):
    with pytest.raises(ConfigError, match="fsdp_config is set but training.fsdp is empty"):
        TrainingArguments(output_dir=str(tmp_path), fsdp_config={"version": 2})
    args = TrainingArguments(output_dir=str(tmp_path), fsdp=True, fsdp_config={"fsdp_version": "2"})
    assert args.fsdp == ["auto_wrap"] and args.fsdp_config == {"version": "2"}  # on; FULL_SHARD by default
    again = TrainingArguments(**json.loads(json.dumps(args.to_dict())))
    assert again.fsdp == args.fsdp and again.fsdp_config == args.fsdp_config


def test_fsdp_in_a_single_process_is_refused_not_dropped(tmp_path):
    args = make_args(tmp_path, fsdp="full_shard auto_wrap")
    with pytest.raises(ConfigError, match=r"training.fsdp is not applied in this run \(.*\): FSDP needs a distributed"):
        Trainer(model=tiny_llama(), args=args, train_dataset=lm_rows(8), data_collator=PadCollator())
    assert "ACCELERATE_USE_FSDP" not in os.environ  # not left behind for the next Accelerator of this process


@pytest.mark.parametrize(
    ("config", "message"),
    [({"version": 1}, r"version=1 runs only on CUDA GPUs"), ({"offload_params": True}, r"on the CPU, where the")],
)
def test_what_the_cpu_cannot_carry_out_is_refused(config, message, tmp_path):
    args = make_args(tmp_path, fsdp="full_shard", fsdp_config=config, use_cpu=True)
    with pytest.raises(ConfigError, match=message):
        Trainer(model=tiny_llama(), args=args, train_dataset=lm_rows(8), data_collator=PadCollator())


# ---- two CPU processes -----------------------------------------------------------------------


def _launch(out: Path, processes: int, batch: int, accum: int, extra: dict | None = None, flags=()) -> dict:
    accelerate_launch(SCRIPT, out, batch, accum, json.dumps(extra or {}), processes=processes, flags=flags)
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    return out, _launch(out, 1, 4, 2)


def _assert_same_model(a: Path, b: Path) -> None:
    # measured: the two-process FSDP model ends at most 1.93e-6 from one process's (summation order)
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert sorted(left) == sorted(right)
    for name, value in left.items():
        torch.testing.assert_close(value, right[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.xdist_group("fsdp")
def test_fsdp2_on_two_cpu_processes_shards_matches_one_process_and_resumes_exactly(one_process, tmp_path):
    ref_dir, ref = one_process
    fsdp = {"fsdp": "full_shard auto_wrap", "fsdp_config": {"fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}}
    two = _launch(tmp_path, 2, 2, 2, fsdp)  # 2 ranks x 2 rows x 2 accumulation = one process's 4 x 2
    assert two["world"] == 2 and two["distributed_type"] == "DistributedType.FSDP"
    sharding = two["sharding"]
    assert sharding["type"].startswith("FSDP") and sharding["layer_type"] == "FSDPLlamaDecoderLayer"
    assert sharding["local_rows"] * 2 == sharding["rows"]  # each rank holds half of each weight
    assert two["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    # resumed from checkpoint-3 in a fresh Trainer: the same steps to the last bit
    assert two["resumed_losses"] == two["losses"] and two["eval_loss"] == pytest.approx(ref["eval_loss"], rel=1e-5)
    assert two["uneven_eval_loss"] == pytest.approx(ref["uneven_eval_loss"], rel=1e-5)  # no hang, no row twice
    assert two["after"] == {  # the next Trainer of the process is plain DDP again
        "distributed_type": "DistributedType.MULTI_CPU",
        "ACCELERATE_USE_FSDP": None,
        "ACCELERATE_USE_DEEPSPEED": None,
    }
    checkpoint = tmp_path / "run" / "checkpoint-3"
    for folder in ("model_shards", "optimizer_shards"):
        names = {p.name for p in (checkpoint / folder).iterdir()}
        assert names == {".metadata", "__0_0.distcp", "__1_0.distcp"}, folder  # each rank its shard
    assert not (checkpoint / "model.safetensors").exists() and not (checkpoint / "optimizer.safetensors").exists()
    _assert_same_model(tmp_path / "run" / "final", ref_dir / "run" / "final")
    torch.testing.assert_close(
        load_file(tmp_path / "resumed" / "final" / "model.safetensors"),
        load_file(tmp_path / "run" / "final" / "model.safetensors"),
        rtol=0,
        atol=0,
    )
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")  # the consolidated model loads as any other


@pytest.mark.slow
@pytest.mark.xdist_group("fsdp")
def test_fsdp_from_accelerate_launch_flags_with_consolidated_checkpoints(one_process, tmp_path):
    ref_dir, ref = one_process
    flags = (
        "--use_fsdp",
        "--fsdp_version", "2",
        "--fsdp_state_dict_type", "FULL_STATE_DICT",
        "--fsdp_activation_checkpointing", "true",
        "--fsdp_cpu_ram_efficient_loading", "true",
        "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
        "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer",
    )  # fmt: skip
    two = _launch(tmp_path, 2, 2, 2, flags=flags)
    assert two["distributed_type"] == "DistributedType.FSDP"
    assert two["sharding"]["layer_type"] == "FSDPCheckpointWrapper"  # activation checkpointing applied
    assert two["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    assert two["resumed_losses"] == two["losses"]
    checkpoint = tmp_path / "run" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").is_file() and not (checkpoint / "model_shards").exists()
    assert (checkpoint / "optimizer_shards" / ".metadata").is_file()  # the optimizer stays sharded
    _assert_same_model(checkpoint, ref_dir / "run" / "checkpoint-3")
    _assert_same_model(tmp_path / "run" / "final", ref_dir / "run" / "final")


@pytest.mark.slow
@pytest.mark.xdist_group("fsdp")
def test_fsdp2_on_one_process_saves_a_consolidated_model(one_process, tmp_path):
    # `--nproc_per_node 1` is how FSDP runs on one GPU; final/ must be gathered there too
    ref_dir, ref = one_process
    one = _launch(tmp_path, 1, 4, 2, {"fsdp": True}, flags=("--use_fsdp", "--fsdp_version", "2"))
    assert one["world"] == 1 and one["distributed_type"] == "DistributedType.FSDP"
    assert one["sharding"]["layer_type"] == "FSDPLlamaDecoderLayer"  # wrapped by the model's _no_split_modules
    assert one["losses"] == pytest.approx(ref["losses"], rel=1e-6) and one["resumed_losses"] == one["losses"]
    _assert_same_model(tmp_path / "run" / "final", ref_dir / "run" / "final")
