"""State files without pickle: optimizer, scheduler, scaler and RNG state round-trip exactly through safetensors."""

from __future__ import annotations

import copy
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainformers.errors import CheckpointError
from trainformers.state_files import load_legacy_state, load_state_file, save_state_file, state_file_problem


def assert_same(a: Any, b: Any, where: str = "/", *, cuda_ok: bool = False) -> None:
    """Equal and of the same types all the way down: dict key types and order, tuple vs list, tensor dtypes.

    `b` is what was loaded: its tensors are on the CPU (`a`'s on the GPU too with `cuda_ok`).
    """
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{where}: {a.dtype}{list(a.shape)} != {b.dtype}{list(b.shape)}"
        )
        a = a.cpu() if cuda_ok else a
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())), where
        assert b.device.type == "cpu", where
    elif isinstance(a, dict):
        assert list(a) == list(b) and [type(k) for k in a] == [type(k) for k in b], (
            f"{where}: keys {list(a)} != {list(b)}"
        )
        for k in a:
            assert_same(a[k], b[k], f"{where}{k}/", cuda_ok=cuda_ok)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}{i}/", cuda_ok=cuda_ok)
    elif isinstance(a, float):
        assert repr(a) == repr(b), f"{where}: {a!r} != {b!r}"  # nan == nan, -0.0 != 0.0
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def round_trip(obj: Any, tmp_path: Path) -> Any:
    path = tmp_path / "state.safetensors"
    save_state_file(obj, path)
    assert not Path(f"{path}.tmp").exists()
    loaded = load_state_file(path)
    assert_same(obj, loaded)
    return loaded


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 4, generator=g)
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()


def groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights, "weight_decay": 0.1}, {"params": biases, "weight_decay": 0.0}]


OPTIMIZERS = {
    "adamw_float_lr": lambda params: torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95)),
    "adamw_tensor_lr": lambda params: torch.optim.AdamW(
        params, lr=torch.tensor(1e-2), betas=(0.9, 0.95), foreach=False
    ),
    "adamw_amsgrad": lambda params: torch.optim.AdamW(params, lr=1e-2, amsgrad=True),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=1e-1, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_optimizer_state_round_trips_and_the_next_step_is_bit_identical(kind, tmp_path):
    model = tiny_model()
    optimizer = OPTIMIZERS[kind](groups(model))
    for step in range(2):
        train_step(model, optimizer, seed=step)
    saved = optimizer.state_dict()
    assert isinstance(next(iter(saved["state"])), int)  # param ids: the int keys JSON alone would lose
    loaded = round_trip(saved, tmp_path)
    if kind.startswith("adamw"):
        assert isinstance(loaded["param_groups"][0]["betas"], tuple)
        assert loaded["state"][0]["step"].dim() == 0
    if kind == "adamw_tensor_lr":
        assert isinstance(loaded["param_groups"][0]["lr"], torch.Tensor) and loaded["param_groups"][0]["lr"].dim() == 0

    resumed = copy.deepcopy(model)
    resumed_optimizer = OPTIMIZERS[kind](groups(resumed))
    resumed_optimizer.load_state_dict(loaded)
    train_step(model, optimizer, seed=2)
    train_step(resumed, resumed_optimizer, seed=2)
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


def test_bf16_optimizer_state_keeps_its_dtype(tmp_path):
    model = tiny_model().to(torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4, dtype=torch.bfloat16)).float().pow(2).mean().backward()
    optimizer.step()
    loaded = round_trip(optimizer.state_dict(), tmp_path)
    assert loaded["state"][0]["exp_avg"].dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["cosine", "linear", "cosine_with_min_lr", "reduce_lr_on_plateau"])
def test_scheduler_state_round_trips(name, tmp_path):
    from transformers import get_scheduler

    def make():
        optimizer = torch.optim.AdamW(tiny_model().parameters(), lr=1e-3)
        extra = {"scheduler_specific_kwargs": {"min_lr_rate": 0.1}} if name == "cosine_with_min_lr" else {}
        return get_scheduler(name, optimizer, num_warmup_steps=2, num_training_steps=10, **extra)

    scheduler = make()
    for _ in range(3):
        scheduler.optimizer.step()
        scheduler.step(1.0) if name == "reduce_lr_on_plateau" else scheduler.step()
    saved = scheduler.state_dict()
    if name == "reduce_lr_on_plateau":
        assert saved["mode_worse"] == math.inf  # non-finite floats
    else:
        # transformers' lambdas are functools.partial objects: LambdaLR saves their (empty) __dict__, not the function
        assert saved["lr_lambdas"] == [{}]
    loaded = round_trip(saved, tmp_path)
    resumed = make()
    resumed.load_state_dict(loaded)
    assert resumed.get_last_lr() == scheduler.get_last_lr()
    if name != "reduce_lr_on_plateau":
        scheduler.step(), resumed.step()
        assert resumed.get_last_lr() == scheduler.get_last_lr()


def test_grad_scaler_state_round_trips(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=7)
    saved = scaler.state_dict()
    assert saved and isinstance(saved["growth_interval"], int) and isinstance(saved["scale"], float)
    round_trip(saved, tmp_path)


def test_rng_state_round_trips_and_restores_the_same_draws(tmp_path):
    from trainformers.checkpoint import rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # numpy then holds a cached gaussian
    state = rng_state()
    first = (random.random(), np.random.standard_normal(), torch.rand(3))
    loaded = round_trip(state, tmp_path)
    assert loaded["cpu"].dtype == torch.uint8 and loaded["python"]["state"].dtype == torch.int64
    set_rng_state(loaded)
    again = (random.random(), np.random.standard_normal(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_every_kind_of_value_round_trips_exactly(tmp_path):
    base = torch.arange(12, dtype=torch.float32)
    shared = torch.ones(2)
    obj = {
        0: {"a/b": torch.tensor(1.5), "a": {"b": torch.tensor(2.5)}},  # "a/b" twice as a path: names stay unique
        1: (1, [2, (3,)], ()),
        "floats": [math.nan, math.inf, -math.inf, -0.0, 1e-300, 0.1],
        "ints": [0, -1, 2**80, True, False],
        (1, "x"): None,
        None: 'ünïcödé " \\ {"tensor": "x"}',  # a string that looks like a tag stays a string
        2.5: [],
        "bool keys": {False: {}, True: [1]},
        "tensors": [
            torch.tensor(7, dtype=torch.int64),  # 0-dim
            torch.zeros(0, 3),
            torch.tensor([1, 255], dtype=torch.uint8),
            torch.tensor([True, False]),
            torch.randn(3, dtype=torch.bfloat16),
            torch.randn(2, dtype=torch.float16),
            base[2:5],  # a view
            base.view(3, 4).t(),  # the same storage, not contiguous
            base,
        ],
        "same": [shared, shared],
    }
    loaded = round_trip(obj, tmp_path)
    assert loaded["same"][0] is loaded["same"][1]  # one object saved once, loaded as one object


def test_tensors_are_named_by_where_they_sit(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "s.safetensors"
    save_state_file({"state": {0: {"exp_avg": torch.ones(1)}}, "a/b": torch.ones(1), "a": {"b": torch.ones(1)}}, path)
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["a/b", "a/b#1", "state/0/exp_avg"]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_loaded_tensors_do_not_map_the_file(tmp_path):
    path = tmp_path / "optimizer.safetensors"
    save_state_file({"exp_avg": torch.randn(100_000)}, path)
    loaded = load_state_file(path)
    assert str(path) not in Path("/proc/self/maps").read_text()  # the checkpoint can be rotated away on any OS
    path.unlink()
    assert loaded["exp_avg"].isfinite().all()


@pytest.mark.parametrize("root", [torch.arange(3), [torch.ones(1), 2], (), "text", None])
def test_a_root_that_is_not_a_dict_round_trips(root, tmp_path):
    round_trip(root, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_saved_from_the_cpu(tmp_path):
    model = tiny_model().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, capturable=True)  # "step" on the GPU too
    model(torch.randn(2, 4, device="cuda")).pow(2).mean().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    path = tmp_path / "s.safetensors"
    save_state_file(saved, path)
    loaded = load_state_file(path)
    assert_same(saved, loaded, cuda_ok=True)
    assert all(t.device.type == "cpu" for t in loaded["state"][0].values())


def test_a_value_of_another_type_is_refused_with_where_it_sits(tmp_path):
    with pytest.raises(TypeError, match=r"can't store a set at '/state/0/x'"):
        save_state_file({"state": {0: {"x": {1}}}}, tmp_path / "s.safetensors")
    with pytest.raises(TypeError, match="frozenset key"):
        save_state_file({frozenset(): 1}, tmp_path / "s.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "s.safetensors"
    save_state_file({"x": 1}, path)
    with pytest.raises(TypeError):
        save_state_file({"x": torch.ones(2).to_sparse()}, path)
    assert load_state_file(path) == {"x": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


# ---- damaged files ---------------------------------------------------------------------------


def saved_file(tmp_path: Path) -> Path:
    path = tmp_path / "optimizer.safetensors"
    save_state_file({"state": {0: {"exp_avg": torch.randn(1000)}}, "param_groups": [{"lr": 0.1}]}, path)
    return path


def damaged(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_state_file(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"checkpoint file '{path}' is damaged (")
    return message


def test_a_missing_state_file_says_the_checkpoint_is_incomplete(tmp_path):
    path = tmp_path / "optimizer.safetensors"
    with pytest.raises(CheckpointError, match="is missing; the checkpoint is incomplete"):
        load_state_file(path)
    assert state_file_problem(path) == "missing"


def test_an_empty_file_is_damaged(tmp_path):
    path = saved_file(tmp_path)
    path.write_bytes(b"")
    assert "(empty)" in damaged(path)
    assert state_file_problem(path) == "empty"


def test_a_truncated_file_is_damaged(tmp_path):
    path = saved_file(tmp_path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 7):
        path.write_bytes(data[:cut])
        damaged(path)
        assert state_file_problem(path).startswith("damaged (")


def test_random_bytes_are_damaged(tmp_path):
    path = tmp_path / "optimizer.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    damaged(path)


def test_a_flipped_byte_in_a_tensor_fails_its_checksum(tmp_path):
    path = saved_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "tensor 'state/0/exp_avg' fails its checksum" in damaged(path)
    assert "checksum" in state_file_problem(path)


def test_a_safetensors_file_that_is_not_a_state_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"format": "pt"})
    assert "not a trainformers state file" in damaged(path)


@pytest.mark.parametrize(
    "structure",
    ['{"tensor": "nope"}', '{"dict": [[[1], 2]]}', '{"weird": 1}', "[NaN]", "{"],
)
def test_bad_metadata_is_damaged(structure, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "s.safetensors"
    metadata = {"trainformers_state": structure, "trainformers_state_format": "1"}
    save_file({"x": torch.ones(1)}, str(path), metadata=metadata)
    damaged(path)


# ---- legacy .pt/.pth files -------------------------------------------------------------------


class Malicious:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_legacy_state_loads_as_before(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters())
    train_step(model, optimizer, seed=0)
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    assert_same(optimizer.state_dict(), load_legacy_state(tmp_path / "optimizer.pt"))


def test_a_malicious_legacy_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state": Malicious(marker)}, tmp_path / "optimizer.pt")
    with pytest.raises(CheckpointError, match=r"is damaged or not a plain state file \(") as info:
        load_legacy_state(tmp_path / "optimizer.pt")
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_damaged_legacy_files_are_refused(tmp_path):
    path = tmp_path / "rng_state_0.pth"
    torch.save({"cpu": torch.get_rng_state()}, path)
    data = path.read_bytes()
    for broken in (b"", data[: len(data) // 2], np.random.default_rng(0).bytes(2000)):
        path.write_bytes(broken)
        with pytest.raises(CheckpointError, match="is damaged or not a plain state file") as info:
            load_legacy_state(path)
        assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="is missing; the checkpoint is incomplete"):
        load_legacy_state(tmp_path / "scaler.pt")
