"""What HF's example scripts do with a metrics dict: print it, save it, format it.

`Trainer.log_metrics`, `save_metrics`, `metrics_format` and `save_state` call these, with the
same output as transformers (`train_results.json`, `eval_results.json`, `all_results.json`, the
`***** train metrics *****` block), so scripts and the tools that read those files keep working.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .state import atomic_write_text


def metrics_format(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Human-readable values: runtimes as h:mm:ss.ff, FLOPs in GF, memory in MB, floats to 4 decimals."""
    out: dict[str, Any] = dict(metrics)
    for key, value in out.items():
        if "_mem_" in key and isinstance(value, int):
            out[key] = f"{value >> 20}MB"
        elif "_runtime" in key and isinstance(value, (int, float)):
            out[key] = str(datetime.timedelta(seconds=int(value))) + f".{int(value % 1 * 100):02d}"
        elif key == "total_flos" and isinstance(value, (int, float)):
            out[key] = f"{int(value) >> 30}GF"
        elif isinstance(value, float):
            out[key] = round(value, 4)
    return out


def format_metrics_block(split: str, metrics: Mapping[str, Any]) -> str:
    """The `***** {split} metrics *****` block of `log_metrics`, one aligned `key = value` line per metric."""
    formatted = metrics_format(metrics)
    if not formatted:
        return f"***** {split} metrics *****"
    key_width = max(len(str(k)) for k in formatted)
    value_width = max(len(str(v)) for v in formatted.values())
    lines = [f"  {key: <{key_width}} = {formatted[key]!s:>{value_width}}" for key in sorted(formatted)]
    return "\n".join([f"***** {split} metrics *****", *lines])


def save_metrics(output_dir: str | Path, split: str, metrics: Mapping[str, Any], combined: bool = True) -> Path:
    """Write `{split}_results.json` (and merge it into `all_results.json` with `combined`) in `output_dir`."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}_results.json"
    atomic_write_text(path, json.dumps(dict(metrics), indent=4, sort_keys=True))
    if combined:
        every = folder / "all_results.json"
        merged = json.loads(every.read_text(encoding="utf-8")) if every.is_file() else {}
        merged.update(metrics)
        atomic_write_text(every, json.dumps(merged, indent=4, sort_keys=True))
    return path


def memory_text(mb: float) -> str:
    """'1.85 GiB' (or '640 MiB' below 1 GiB): a peak_memory_mb value for the summaries."""
    return f"{mb / 1024:.2f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"
