"""The LR range test: it leaves the trainer exactly as it was, and finds the known answer of a toy problem."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PadCollator, accelerate_launch, lm_rows, make_args, read_losses, tiny_llama, weights
from datasets import Dataset
from torch import nn

import trainformers
from trainformers.errors import ConfigError, TrainformersError
from trainformers.lr_finder import LRFinderResult, find_lr, suggest_lrs

# ---- helpers ------------------------------------------------------------------------------------


def lm_trainer(tmp_path, dropout: float = 0.1, **overrides) -> trainformers.Trainer:
    model = tiny_llama()
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = dropout  # the test's forward passes then draw on the torch RNG
    args = make_args(tmp_path, **overrides)
    return trainformers.Trainer(model, args, data_collator=PadCollator(), train_dataset=lm_rows())


def everything(trainer) -> dict:
    """Deep copies of all that `find_lr` must leave unchanged."""
    optimizer = trainer.optimizer
    return {
        "params": {k: v.detach().clone() for k, v in trainer.model.named_parameters()},
        "buffers": weights(trainer.model),
        "grads": {k: None if v.grad is None else v.grad.clone() for k, v in trainer.model.named_parameters()},
        "modes": [m.training for m in trainer.model.modules()],
        "optimizer": None if optimizer is None else _optimizer_copy(optimizer),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
    }


def _optimizer_copy(optimizer) -> dict:
    return {
        "state": [
            (id(p), {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()})
            for group in optimizer.param_groups
            for p in group["params"]
            if p in optimizer.state
        ],
        "groups": [
            {k: [id(p) for p in v] if k == "params" else v for k, v in group.items()}
            for group in optimizer.param_groups
        ],
        "attributes": {  # e.g. `_opt_called`, set by the scheduler's wrapper around step()
            k: v if isinstance(v, (bool, int, float, str)) else type(v)
            for k, v in vars(getattr(optimizer, "optimizer", optimizer)).items()
        },
    }


def assert_same(before: dict, after: dict) -> None:
    for kind in ("params", "buffers"):
        assert before[kind].keys() == after[kind].keys()
        for name, value in before[kind].items():
            assert torch.equal(value, after[kind][name]), f"{kind} {name} changed"
    for name, grad in before["grads"].items():
        other = after["grads"][name]
        assert (grad is None) == (other is None) and (grad is None or torch.equal(grad, other)), f"grad {name} changed"
    assert before["modes"] == after["modes"]
    if before["optimizer"] is None:
        assert after["optimizer"] is None
    else:
        a, b = before["optimizer"], after["optimizer"]
        assert a["groups"] == b["groups"]  # lr, initial_lr, betas, weight_decay, ... and the same params
        assert a["attributes"] == b["attributes"]
        assert [pid for pid, _ in a["state"]] == [pid for pid, _ in b["state"]]
        for (_, sa), (_, sb) in zip(a["state"], b["state"]):
            assert sa.keys() == sb.keys()
            for key in sa:
                assert torch.equal(sa[key], sb[key]) if torch.is_tensor(sa[key]) else sa[key] == sb[key], key
    assert torch.equal(before["torch_rng"], after["torch_rng"])
    assert before["python_rng"] == after["python_rng"]
    assert all(np.array_equal(x, y) for x, y in zip(before["numpy_rng"], after["numpy_rng"]))


class LinearRegression(nn.Module):
    """y = W x, loss = mean squared error: gradient descent diverges above lr = 2 / λ_max(Hessian)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x, labels=None):
        return {"loss": nn.functional.mse_loss(self.linear(x), labels)}


class StackCollator:
    def __call__(self, rows):
        return {"x": torch.tensor([r["x"] for r in rows]), "labels": torch.tensor([r["labels"] for r in rows])}


def regression(n: int = 64, dim: int = 4) -> tuple[Dataset, float]:
    """Rows with features on different scales, and the rate above which full-batch GD diverges."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g) * torch.tensor([3.0, 1.0, 0.5, 0.1])
    y = x @ torch.randn(dim, 1, generator=g)
    hessian = 2 * x.double().T @ x.double() / n  # of mean((x W^T - y)^2) with respect to W
    critical = 2 / torch.linalg.eigvalsh(hessian).max().item()
    return Dataset.from_dict({"x": x.tolist(), "labels": y.tolist()}), critical


def regression_trainer(tmp_path, dataset, batch: int = 64, **overrides) -> trainformers.Trainer:
    settings = {"optim": "sgd", "max_grad_norm": 0.0, "per_device_train_batch_size": batch, **overrides}
    args = make_args(tmp_path, **settings)
    return trainformers.Trainer(LinearRegression(4), args, data_collator=StackCollator(), train_dataset=dataset)


# ---- leaves everything as it was ----------------------------------------------------------------


@pytest.mark.parametrize("trained", [True, False], ids=["after-train", "fresh-optimizer"])
@pytest.mark.parametrize("raise_at", [None, 5], ids=["completes", "raises"])
def test_model_optimizer_and_rng_come_back_bit_for_bit(tmp_path, monkeypatch, raise_at, trained):
    trainer = lm_trainer(tmp_path, max_steps=2, warmup_steps=5)
    if trained:
        trainer.train()  # Adam state for every parameter; the optimizer is Accelerate's wrapper now
    else:
        trainer.create_optimizer_and_scheduler(10)  # no state yet, lr 0 at the start of the warm-up
    params = dict(trainer.model.named_parameters())
    params["model.norm.weight"].grad = torch.full_like(params["model.norm.weight"], 0.5)  # a caller's gradient
    trainer.model.model.layers[1].eval()  # mixed modes come back module by module
    before = everything(trainer)
    assert bool(before["optimizer"]["state"]) is trained
    assert before["optimizer"]["groups"][0]["lr"] != before["optimizer"]["groups"][0]["initial_lr"]  # scheduled

    if raise_at is not None:
        calls = []
        real = trainer.compute_loss

        def failing(model, inputs, **kwargs):
            calls.append(1)
            if len(calls) == raise_at:
                raise RuntimeError("boom")
            return real(model, inputs, **kwargs)

        monkeypatch.setattr(trainer, "compute_loss", failing)
        with pytest.raises(RuntimeError, match="boom"):
            find_lr(trainer, 1e-5, 1.0, 10)
        assert len(calls) == raise_at
    else:
        result = find_lr(trainer, 1e-5, 1.0, 10)
        assert len(result.lrs) >= 5
    assert_same(before, everything(trainer))


def test_train_after_find_lr_is_the_run_without_it(tmp_path):
    with_test = lm_trainer(tmp_path / "a")
    result = find_lr(with_test, 1e-5, 10.0, 20)
    assert with_test.optimizer is None  # the one it created is dropped: a new learning rate would apply
    assert max(result.losses) > 3 * result.losses[0]  # it did train, far enough to break the model
    with_test.train()

    without = lm_trainer(tmp_path / "b")
    without.train()
    assert read_losses(tmp_path / "a" / "run") == read_losses(tmp_path / "b" / "run")
    a, b = weights(with_test.model), weights(without.model)
    assert all(torch.equal(a[k], b[k]) for k in b)


# ---- what it measures and suggests --------------------------------------------------------------


def test_toy_regression_finds_the_known_bound(tmp_path):
    dataset, critical = regression()
    trainer = regression_trainer(tmp_path, dataset)
    result = find_lr(trainer, critical * 1e-4, critical * 100, 100)

    assert isinstance(result, LRFinderResult)
    ratios = np.diff(np.log(result.lrs))
    np.testing.assert_allclose(ratios, np.log(1e6) / 99, rtol=1e-9)  # exponentially spaced
    assert result.lrs[0] == pytest.approx(critical * 1e-4, rel=1e-12)
    # below the bound every step shrinks the loss, so divergence can only be seen above it
    assert result.diverged and len(result.lrs) < 100
    assert critical < result.lrs[-1] < 20 * critical
    assert critical / 100 < result.suggestion < critical
    assert result.suggestion == result.steepest
    assert critical / 100 < result.min_div_10 < critical
    assert len(result.losses) == len(result.smoothed) == len(result.lrs)
    assert result.plot_path is None


def test_no_divergence_below_the_bound(tmp_path):
    dataset, critical = regression()
    result = find_lr(regression_trainer(tmp_path, dataset), critical * 1e-4, critical * 0.9, 40)
    assert not result.diverged and len(result.lrs) == 40
    assert all(b <= a for a, b in zip(result.losses, result.losses[1:]))  # GD on a quadratic below the bound
    assert result.lrs[-1] == pytest.approx(critical * 0.9, rel=1e-12)


def test_smoothing_is_a_bias_corrected_moving_average(tmp_path):
    dataset, critical = regression()
    result = find_lr(regression_trainer(tmp_path, dataset), critical * 1e-3, critical, 12, smooth_beta=0.7)
    average = 0.0
    for i, (loss, smooth) in enumerate(zip(result.losses, result.smoothed)):
        average = 0.7 * average + 0.3 * loss
        assert smooth == pytest.approx(average / (1 - 0.7 ** (i + 1)), rel=1e-12)
    raw = find_lr(regression_trainer(tmp_path, dataset), critical * 1e-3, critical, 12, smooth_beta=0.0)
    assert raw.smoothed == pytest.approx(raw.losses, rel=1e-12)


def test_accumulation_splits_the_same_step(tmp_path):
    """Batch 64 x accumulation 1 and batch 16 x accumulation 4 see the same loss curve."""
    dataset, critical = regression()
    one = find_lr(regression_trainer(tmp_path, dataset, batch=64), critical * 1e-3, critical * 0.9, 30)
    four = regression_trainer(tmp_path, dataset, batch=16, gradient_accumulation_steps=4)
    calls = []
    real = four.compute_loss

    def counting(model, inputs, **kwargs):
        calls.append(inputs["x"].shape[0])
        return real(model, inputs, **kwargs)

    four.compute_loss = counting
    split = find_lr(four, critical * 1e-3, critical * 0.9, 30)  # below the bound: rounding is not amplified
    assert len(calls) == 4 * len(split.lrs) and set(calls) == {16}
    assert split.lrs == one.lrs
    np.testing.assert_allclose(split.losses, one.losses, rtol=1e-5)


def test_gradients_are_clipped_to_max_grad_norm(tmp_path):
    dataset, critical = regression()

    def step_norms(max_grad_norm):
        trainer = regression_trainer(tmp_path, dataset, max_grad_norm=max_grad_norm)
        optimizer = trainer.create_optimizer()
        norms = []
        grads = [p for group in optimizer.param_groups for p in group["params"]]
        hook = optimizer.register_step_pre_hook(
            lambda *_: norms.append(torch.stack([p.grad.norm() for p in grads]).norm().item())
        )
        find_lr(trainer, critical * 1e-3, critical, 10)
        hook.remove()
        return norms

    assert max(step_norms(0.0)) > 1.0  # not vacuous: unclipped gradients are larger
    assert max(step_norms(0.5)) <= 0.5 + 1e-6


def test_param_group_ratios_are_kept(tmp_path):
    model = LinearRegression(4)
    extra = nn.Parameter(torch.zeros(4, 1))
    model.register_parameter("extra", extra)
    optimizer = torch.optim.SGD([{"params": [model.linear.weight], "lr": 1e-3}, {"params": [extra], "lr": 1e-2}])
    dataset, _ = regression()
    args = make_args(tmp_path, max_grad_norm=0.0, per_device_train_batch_size=64)
    trainer = trainformers.Trainer(
        model, args, data_collator=StackCollator(), train_dataset=dataset, optimizers=(optimizer, None)
    )
    seen = []
    hook = optimizer.register_step_pre_hook(lambda opt, *_: seen.append([g["lr"] for g in opt.param_groups]))
    result = find_lr(trainer, 1e-6, 1e-1, 15)
    hook.remove()

    assert len(seen) == len(result.lrs) == 15
    assert [first for first, _ in seen] == result.lrs  # the reported rate is the first group's
    for first, second in seen:
        assert second / first == pytest.approx(10.0, rel=1e-12)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-2]
    assert trainer.optimizer is optimizer  # a caller's optimizer stays


def test_plot_is_written(tmp_path):
    from matplotlib.image import imread

    dataset, critical = regression()
    out = tmp_path / "plots" / "lr_find.png"
    result = find_lr(regression_trainer(tmp_path, dataset), critical * 1e-4, critical * 100, 60, plot_path=str(out))
    assert result.plot_path == out and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert [p.name for p in out.parent.iterdir()] == ["lr_find.png"]  # no temporary file left


def test_suggestions_on_known_curves():
    lrs = np.geomspace(1e-6, 1.0, 61)
    # falls fastest at 1e-3 (the middle of a tanh in log10(lr)), lowest at the end
    curve = 2 - np.tanh(2 * (np.log10(lrs) + 3))
    steepest, min_div_10 = suggest_lrs(lrs.tolist(), curve.tolist())
    assert steepest == pytest.approx(1e-3, rel=1e-9)
    assert min_div_10 == pytest.approx(0.1, rel=1e-9)
    # only rising: no steepest descent; a NaN ends the usable curve
    assert suggest_lrs([1e-3, 1e-2, 1e-1], [1.0, 2.0, 3.0]) == (None, pytest.approx(1e-4))
    assert suggest_lrs([1e-3, 1e-2, 1e-1, 1.0], [3.0, 2.0, float("nan"), 0.1]) == (None, pytest.approx(1e-3))
    # short runs
    assert suggest_lrs([], []) == (None, None)
    assert suggest_lrs([1e-2], [1.0]) == (None, pytest.approx(1e-3))
    assert suggest_lrs([1e-3, 1e-2, 1e-1], [3.0, 2.0, 1.5]) == (pytest.approx(1e-3), pytest.approx(1e-2))


def test_falls_back_to_min_div_10_when_the_loss_never_falls(tmp_path):
    dataset, critical = regression()
    # from the start far above the bound: the loss only grows until the test stops
    result = find_lr(regression_trainer(tmp_path, dataset), critical * 3, critical * 1000, 30)
    assert result.diverged and result.steepest is None
    assert result.suggestion == result.min_div_10 == pytest.approx(result.lrs[0] / 10)


def test_a_nan_first_loss_is_an_error(tmp_path):
    dataset, _ = regression()
    trainer = regression_trainer(tmp_path, dataset)
    real = trainer.compute_loss
    trainer.compute_loss = lambda model, inputs, **kwargs: real(model, inputs, **kwargs) * float("nan")
    with pytest.raises(TrainformersError, match="first step"):
        find_lr(trainer)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_lr": 1.0, "end_lr": 1.0}, "end_lr=1.0 must be above start_lr=1.0"),
        ({"start_lr": 1.0, "end_lr": 0.1}, "end_lr=0.1 must be above"),
        ({"start_lr": 0.0}, "start_lr=0.0 must be a positive"),
        ({"num_steps": 1}, "num_steps=1 must be an integer of at least 2"),
        ({"num_steps": 10.0}, "num_steps=10.0"),
        ({"smooth_beta": 1.0}, "smooth_beta=1.0"),
        ({"diverge_factor": 1.0}, "diverge_factor=1.0"),
    ],
)
def test_bad_arguments_are_config_errors(tmp_path, kwargs, message):
    dataset, _ = regression()
    trainer = regression_trainer(tmp_path, dataset)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        find_lr(trainer, **kwargs)
    assert trainer.optimizer is None  # checked before anything was touched


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs a CUDA device")
def test_fp16_gradient_scaler_comes_back(tmp_path):
    trainer = lm_trainer(tmp_path, fp16=True, max_steps=2)
    trainer.train()
    scaler = trainer.accelerator.scaler
    before, scale = everything(trainer), scaler.state_dict()
    result = find_lr(trainer, 1e-5, 10.0, 30)
    assert result.losses and scaler.state_dict() == scale
    assert_same(before, everything(trainer))


# ---- distributed --------------------------------------------------------------------------------

DDP_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import PadCollator, lm_rows, tiny_llama
from trainformers import Trainer, TrainingArguments
from trainformers.lr_finder import find_lr

out, batch = Path(sys.argv[1]), int(sys.argv[2])
args = TrainingArguments(output_dir=str(out / "run"), per_device_train_batch_size=batch, learning_rate=1e-2,
                         report_to="none", disable_tqdm=True, seed=0, optim="adamw_torch", ddp_backend="gloo")
trainer = Trainer(tiny_llama(), args, data_collator=PadCollator(), train_dataset=lm_rows())
result = find_lr(trainer, 1e-5, 0.1, 15)
rank = trainer.accelerator.process_index
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{{rank}}.json").write_text(json.dumps({{"lrs": result.lrs, "losses": result.losses,
    "suggestion": result.suggestion, "world": trainer.accelerator.num_processes}}))
trainer.accelerator.end_training()
import os
os._exit(0)  # skip interpreter teardown: gloo's threads sometimes abort there (torch, not us)
"""


@pytest.mark.slow
def test_two_processes_run_the_global_batch(tmp_path):
    """Each of 2 ranks x batch 4 runs both halves of the global step: the curve of 1 process x batch 8."""
    script = tmp_path / "lr_find_ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    accelerate_launch(script, tmp_path / "two", 4, processes=2)
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["world"] == 2  # one curve, one suggestion for all ranks

    one = find_lr(lm_trainer(tmp_path / "one", dropout=0.0, per_device_train_batch_size=8), 1e-5, 0.1, 15)
    assert ranks[0]["lrs"] == pytest.approx(one.lrs, rel=1e-12)
    np.testing.assert_allclose(ranks[0]["losses"], one.losses, rtol=1e-4)
