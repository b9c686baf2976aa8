"""Read back a run's `log.jsonl`: plots (`report.png`) and a summary, for `trainformers report`.

Works on finished runs and on runs still going or killed: a half-written last line is skipped.
Plotting uses matplotlib's object API with the Agg canvas, never pyplot, so it neither needs a
display nor changes the backend for the user's own plots.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from trainformers.errors import CheckpointError

__all__ = ["LOG_FILE", "REPORT_FILE", "plot_run", "read_log", "summarize_run"]

LOG_FILE = "log.jsonl"
REPORT_FILE = "report.png"

logger = logging.getLogger(__name__)


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """Return the rows of `run_dir/log.jsonl`, in order.

    Args:
        run_dir: A run's output directory.

    Returns:
        One dict per logged row (keys such as `step`, `epoch`, `loss`, `eval_loss`). A last
        line cut short by a killed run is skipped with a warning.

    Raises:
        CheckpointError: there is no `log.jsonl`, or a line other than the last is corrupt.
    """
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise CheckpointError(f"no {LOG_FILE} in {run_dir}; is it a trainformers run directory?")
    # errors="replace": a kill can cut a multi-byte character in half on the last line.
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == last:
                logger.warning("%s: skipped the incomplete last line (a run cut short?)", path)
                break
            raise CheckpointError(
                f"{path} line {i + 1} is not valid JSON; delete that line to read the rest"
            ) from None
        if not isinstance(row, dict):
            raise CheckpointError(
                f"{path} line {i + 1} is not a JSON object; delete that line to read the rest"
            )
        rows.append(row)
    return rows


def plot_run(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Plot a run's logged metrics against the optimizer step and write a PNG.

    Panels, each drawn only when the log has it: training loss with the evaluation loss on the
    same axes; learning rate; gradient norm; one panel per other `eval_*` metric (timings such
    as `eval_runtime` left out).

    Args:
        run_dir: A run's output directory.
        out_path: Where to write; `run_dir/report.png` by default.

    Returns:
        The path of the written image.

    Raises:
        CheckpointError: as `read_log`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_log(run_dir)
    out = Path(out_path) if out_path is not None else Path(run_dir) / REPORT_FILE
    panels = _panels(rows)

    ncols = 1 if len(panels) <= 1 else 2
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(6.0 * ncols, 3.4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fig.suptitle(f"{Path(run_dir).resolve().name}: {_headline(rows)}")
    for ax, (title, series) in zip(axes, panels):
        for label, (steps, values), style in series:
            ax.plot(steps, values, style, label=label, markersize=4)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend()
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if not panels:
        axes[0].text(0.5, 0.5, "no metrics logged yet", ha="center", va="center")

    return save_png(fig, out)


def save_png(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as PNG under a temporary name, then rename it, so a viewer
    never sees half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)
    return path


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """Summarise a run from its log.

    Args:
        run_dir: A run's output directory.

    Returns:
        A dict with `steps` (last logged optimizer step, 0 if none), `epoch` (last logged,
        or None), `final_loss`, `min_loss`, `min_loss_step` (training loss), `best_eval_loss`,
        `best_eval_step`, `eval_step` and `eval` (the metrics of the last evaluation, keyed as
        logged). Values not logged are None (`eval` is then `{}`).

    Raises:
        CheckpointError: as `read_log`.
    """
    return _summarize(read_log(run_dir))


def _summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    steps = [row["step"] for row in rows if _is_number(row.get("step"))]
    epochs = [row["epoch"] for row in rows if _is_number(row.get("epoch"))]
    loss_steps, losses = _series(rows, "loss")
    final_loss = losses[-1] if losses else None
    min_loss, min_loss_step = _minimum(loss_steps, losses)
    best_eval_loss, best_eval_step = _minimum(*_series(rows, "eval_loss"))
    eval_rows = [row for row in rows if any(key.startswith("eval_") for key in row)]
    last_eval = eval_rows[-1] if eval_rows else {}
    return {
        "steps": max(steps, default=0),
        "epoch": epochs[-1] if epochs else None,
        "final_loss": final_loss,
        "min_loss": min_loss,
        "min_loss_step": min_loss_step,
        "best_eval_loss": best_eval_loss,
        "best_eval_step": best_eval_step,
        "eval_step": last_eval.get("step"),
        "eval": {k: v for k, v in last_eval.items() if k.startswith("eval_")},
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """Return `(steps, values)` of the rows that have a numeric `key` and a numeric step."""
    pairs = [
        (row["step"], row[key])
        for row in rows
        if _is_number(row.get(key)) and _is_number(row.get("step"))
    ]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _minimum(steps: list[float], values: list[float]) -> tuple[float | None, float | None]:
    """Return the smallest finite value and its step, or (None, None)."""
    finite = [(v, s) for s, v in zip(steps, values) if math.isfinite(v)]
    if not finite:
        return None, None
    value, step = min(finite, key=lambda pair: pair[0])
    return value, step


def _is_eval_metric(key: str) -> bool:
    # eval_runtime and eval_*_per_second measure the machine, not the model.
    return (
        key.startswith("eval_")
        and key != "eval_loss"
        and key != "eval_runtime"
        and not key.endswith("_per_second")
    )


def _panels(rows: list[dict[str, Any]]) -> list[tuple[str, list]]:
    """Return `(title, [(label, (steps, values), style), ...])` for every panel to draw."""
    panels: list[tuple[str, list]] = []
    loss = [
        (label, series, style)
        for label, series, style in [
            ("train", _series(rows, "loss"), "-"),
            ("eval", _series(rows, "eval_loss"), "o-"),
        ]
        if series[0]
    ]
    if loss:
        panels.append(("loss", loss))
    for key in ("learning_rate", "grad_norm"):
        series = _series(rows, key)
        if series[0]:
            panels.append((key.replace("_", " "), [(key, series, "-")]))
    metrics = dict.fromkeys(key for row in rows for key in row if _is_eval_metric(key))
    for key in metrics:
        series = _series(rows, key)
        if series[0]:
            panels.append((key, [(key, series, "o-")]))
    return panels


def _headline(rows: list[dict[str, Any]]) -> str:
    """Return e.g. 'step 200, loss 2.31, eval_loss 2.45' for the figure's title."""
    summary = _summarize(rows)
    parts = [f"step {summary['steps']}"] if rows else []
    if summary["final_loss"] is not None:
        parts.append(f"loss {summary['final_loss']:.4g}")
    if _is_number(summary["eval"].get("eval_loss")):
        parts.append(f"eval_loss {summary['eval']['eval_loss']:.4g}")
    return ", ".join(parts) or "empty log"
