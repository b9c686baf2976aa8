"""Model FLOPs and the device's peak: what the Trainer needs to log achieved TFLOP/s and MFU.

Model FLOPs per token follow PaLM (appendix B): a matmul parameter costs 2 FLOPs per token
forward, 2 for the activation gradient and 2 for its own gradient (only when it trains), so

    FLOPs per token = 4 * N + 2 * N_trainable + 12 * L * H * T

with N the parameters that do matmuls (every parameter but the input embedding, plus the LM
head; with tied embeddings, the unique parameter count), L layers, H hidden size and T the
sequence length of the batch (attention scores and values, causal masking not discounted). With
every parameter training that is the familiar 6N + 12LHT. Model FLOPs count what the model
needs, not what the hardware did: gradient checkpointing's recomputation is not in them.

MFU is achieved model FLOP/s over the peak of one device. The peak is, in order: what the user set
(`TrainingArguments.peak_tflops` or `TRAINFORMERS_PEAK_TFLOPS`), the datasheet's dense figure for
a known GPU, or a matmul measured once on this machine and cached in
`~/.cache/trainformers/peak_flops.json` (per device, threads, dtype and torch version).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# dense (no sparsity) datasheet peaks in TFLOP/s: (bf16/fp16, tf32, fp32)
GPU_PEAKS: dict[str, tuple[float, float, float]] = {
    "H200": (989.0, 494.5, 67.0),
    "H100 SXM": (989.0, 494.5, 67.0),
    "H100 PCIe": (756.0, 378.0, 51.0),
    "H100 NVL": (835.0, 417.5, 60.0),
    "H100": (989.0, 494.5, 67.0),
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.0, 183.0, 91.6),
    "L4": (121.0, 60.0, 30.3),
    "A10G": (70.0, 35.0, 31.2),
    "A10": (125.0, 62.5, 31.2),
    "RTX 4090": (165.2, 82.6, 82.6),
    "RTX 3090": (71.0, 35.6, 35.6),
    "V100": (125.0, 15.7, 15.7),
    "T4": (65.0, 8.1, 8.1),
}


@dataclass(frozen=True)
class ModelFlops:
    """FLOPs of a model per token: `fixed` (4N + 2N_trainable) plus `per_position` x sequence length."""

    fixed: float
    per_position: float
    matmul_params: int

    def per_batch(self, tokens: int, seq_len: int) -> float:
        return tokens * (self.fixed + self.per_position * seq_len)


def model_flops(model: nn.Module) -> ModelFlops:
    """The FLOPs formula of `model` (any `nn.Module`; attention only when its config names layers and width)."""
    params = {id(p): p for p in model.parameters()}  # tied weights once
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    emb_fn, head_fn = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    emb = _weight(emb_fn)
    head = _weight(head_fn)
    n = total
    if emb is not None and (head is None or head is not emb):
        n -= emb.numel()  # a lookup, not a matmul
        if emb.requires_grad:
            trainable -= emb.numel()
    config = getattr(model, "config", None)
    base = getattr(model, "get_base_model", None)
    if config is None and callable(base):
        config = getattr(base(), "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers, hidden = getattr(text, "num_hidden_layers", None), getattr(text, "hidden_size", None)
    per_position = 12.0 * layers * hidden if isinstance(layers, int) and isinstance(hidden, int) else 0.0
    return ModelFlops(fixed=4.0 * n + 2.0 * max(trainable, 0), per_position=per_position, matmul_params=n)


def _weight(getter: Any) -> torch.Tensor | None:
    if not callable(getter):
        return None
    try:
        module = getter()
    except (NotImplementedError, AttributeError):
        return None
    return getattr(module, "weight", None) if module is not None else None


# ---- the peak ----------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        model = None
    return f"{model or 'cpu'} ({os.cpu_count()} cores)"


def datasheet_peak(name: str, dtype: torch.dtype) -> float | None:
    """The dense TFLOP/s of a known GPU for `dtype`, or None."""
    column = 0 if dtype in (torch.bfloat16, torch.float16) else 1 if torch.backends.cuda.matmul.allow_tf32 else 2
    for key, peaks in GPU_PEAKS.items():  # longest names first within a family (H100 SXM before H100)
        if key.lower() in name.lower():
            return peaks[column]
    return None


def measure_matmul_tflops(
    device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 1536, 2048), reps: int = 5
) -> float:
    """Square-matmul TFLOP/s: per size the median of `reps` timed runs, then the best size."""
    return _measure(device, dtype, sizes, reps)[0]


def _measure(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...], reps: int = 5) -> tuple[float, float]:
    """(TFLOP/s, CPU share): the share is this process's CPU time over wall time x torch threads while
    measuring (about 1 on an idle CPU; well below when other processes took cores; 1 on CUDA)."""
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    rates = []
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out = torch.mm(a, b)  # warm-up (kernels, caches)
        times = []
        for _ in range(reps):
            _sync(device)
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            _sync(device)
            times.append(time.perf_counter() - start)
        rates.append(2 * n**3 / statistics.median(times) / 1e12)
    if device.type != "cpu":
        return max(rates), 1.0
    share = (time.process_time() - cpu_start) / ((time.perf_counter() - wall_start) * torch.get_num_threads())
    return max(rates), share


# Below this CPU share (see `_measure`) a CPU measurement is used for this run only, never cached:
# measured under load the cache once held 0.054 TFLOP/s for a CPU that does 0.17-0.19 (MFU 3x too high)
LOADED_SHARE = 0.8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_path() -> Path:
    root = os.environ.get("TRAINFORMERS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "trainformers"
    )
    return Path(root).expanduser() / "peak_flops.json"


@dataclass(frozen=True)
class Peak:
    tflops: float
    source: str  # "set", "datasheet", "measured", "cached", "loaded" (measured while other processes used the CPU)
    dtype: str

    def describe(self) -> str:
        how = {
            "set": "set by the user",
            "datasheet": "datasheet",
            "measured": "matmul measured now, cached",
            "cached": "matmul measured earlier, cached",
            "loaded": "matmul measured now with under 80% of its threads' CPU time (other processes or a CPU "
            "quota), so likely low; not cached",
        }[self.source]
        return f"{self.tflops:.3g} TFLOP/s {self.dtype} peak ({how})"


def peak_tflops(device: torch.device, dtype: torch.dtype, user: float | None = None) -> Peak | None:
    """The peak of one `device` for `dtype` (see the module docstring); None when disabled (user 0).

    A failure to read or write the cache only costs a new measurement.
    """
    label = str(dtype).replace("torch.", "")
    if user is None and os.environ.get("TRAINFORMERS_PEAK_TFLOPS"):
        user = float(os.environ["TRAINFORMERS_PEAK_TFLOPS"])
    if user is not None:
        return Peak(float(user), "set", label) if user > 0 else None
    name = device_name(device)
    if device.type == "cuda":
        sheet = datasheet_peak(name, dtype)
        if sheet is not None:
            return Peak(sheet, "datasheet", label)
    key = f"{name} | {device.type} | {torch.get_num_threads() if device.type == 'cpu' else 1} threads | {label} | torch {torch.__version__}"
    path = cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), (int, float)) and cached[key] > 0:
        return Peak(float(cached[key]), "cached", label)
    sizes = (4096, 8192) if device.type == "cuda" else (1024, 1536, 2048)
    value, share = _measure(device, dtype, sizes)
    if share < LOADED_SHARE:  # a figure taken on a busy CPU would make every later run's MFU too high
        return Peak(value, "loaded", label)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cached = cached if isinstance(cached, dict) else {}
        cached[key] = value
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
    return Peak(value, "measured", label)


def flops_row(flops: float, seconds: float, world: int, peak: Peak | None, prefix: str = "") -> dict[str, float]:
    """Achieved model TFLOP/s (all `world` ranks) and MFU (per device, against `peak`) of `flops`
    done by one rank in `seconds`; {} without FLOPs."""
    if not flops:
        return {}
    achieved = flops / seconds / 1e12
    row = {f"{prefix}tflops": float(f"{achieved * world:.4g}")}
    if peak is not None:
        row[f"{prefix}mfu"] = float(f"{achieved / peak.tflops:.4g}")
    return row
