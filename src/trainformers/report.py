"""Read back runs' `log.jsonl`: a picture (`report.png`), a Markdown report (`report.md`), a summary.

`trainformers report RUN_DIR [RUN_DIR ...]` and the Trainer at the end of `train()`
(`report_at_end`) call `write_report`; several runs give overlaid curves (`compare.png/.md`).
Works on finished runs and on runs still going or killed: a half-written last line is skipped.
Plotting uses matplotlib's object API with the Agg canvas, never pyplot, so it neither needs a
display nor changes the backend for the user's own plots.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError
from .events import TrainerCallback
from .results import memory_text

__all__ = [
    "COMPARE_FILE",
    "COMPARE_MD",
    "LOG_FILE",
    "REPORT_FILE",
    "REPORT_MD",
    "Line",
    "Panel",
    "config_diff",
    "ema",
    "format_value",
    "is_eval_metric",
    "plot_run",
    "read_log",
    "report_at_end",
    "report_panels",
    "samples_by_step",
    "summarize_run",
    "write_report",
]

LOG_FILE = "log.jsonl"
REPORT_FILE = "report.png"
REPORT_MD = "report.md"
COMPARE_FILE = "compare.png"  # several runs: written into out_dir (default: the first run's directory)
COMPARE_MD = "compare.md"
FIGSIZE = (12.0, 8.0)  # inches; at DPI this is always 1200 x 800 px, whatever the panels
DPI = 100
SMOOTH_MIN_POINTS = 10  # shorter curves are drawn as they are: an EMA of 6 points says nothing
SAMPLE_STEPS = 5  # report.md shows the samples (SampleCallback) of the last 5 evaluations that logged any
ROUTER_KEYS = ("load_balance_loss", "auxiliary_loss", "router_z_loss", "expert_usage_max")
PANEL_TITLES = (
    "loss",
    "loss per direction",
    "eval metrics",
    "learning rate",
    "grad norm",
    "throughput",
    "router / expert usage",
)
# Locations, not settings: every run differs there, so the config diff leaves them out.
_NOT_SETTINGS = frozenset({"output_dir", "logging_dir", "hub_token"})
_HIGHER_IS_BETTER = ("accuracy", "exact_match", "bleu", "chrf", "f1", "precision", "recall", "rouge", "score", "auc")
_DIRECTION = re.compile(r"^loss_([A-Z])$")  # CycleTrainer: loss_A (A -> B model), loss_B

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
            raise CheckpointError(f"{path} line {i + 1} is not valid JSON; delete that line to read the rest") from None
        if not isinstance(row, dict):
            raise CheckpointError(f"{path} line {i + 1} is not a JSON object; delete that line to read the rest")
        rows.append(row)
    return rows


# ---- the picture ---------------------------------------------------------------------------


@dataclass
class Line:
    """One curve: `key` of run `run`. kind: 'raw' (thin, faint), 'smooth' (its EMA), 'line', 'points'."""

    run: str
    key: str
    steps: list[float]
    values: list[float]
    kind: str = "line"


@dataclass
class Panel:
    """One subplot of the report; `title` is one of `PANEL_TITLES`."""

    title: str
    lines: list[Line] = field(default_factory=list)
    log_y: bool = False
    ylabel: str = ""


def report_panels(runs: Mapping[str, list[dict[str, Any]]]) -> list[Panel]:
    """Return the panels to draw for `{run label: log rows}`, in `PANEL_TITLES` order.

    A panel is present only when some run logged its keys: `loss` (training loss raw and
    EMA-smoothed, eval loss as points), `loss per direction` (CycleTrainer's `loss_A`/`loss_B`),
    `eval metrics` (every other `eval_*` model metric), `learning rate` and `grad norm` (per
    direction for cycle runs), `throughput` (tokens/s, else samples/s) and `router / expert
    usage` (MoE router terms). Curves of several runs share the panels.
    """
    panels = {title: Panel(title) for title in PANEL_TITLES}
    for run, rows in runs.items():
        for title, lines in _run_lines(run, rows).items():
            panels[title].lines += lines
    for title in ("eval metrics", "router / expert usage"):  # mixed scales (perplexity and accuracy)
        values = [v for line in panels[title].lines for v in line.values if math.isfinite(v)]
        panels[title].log_y = bool(values) and min(values) > 0 and max(values) / min(values) > 100
    units = {line.key for line in panels["throughput"].lines}
    per_second = {"tokens_per_second": "tokens/s", "samples_per_second": "samples/s"}
    panels["throughput"].ylabel = per_second[units.pop()] if len(units) == 1 else "per second"
    return [panel for panel in panels.values() if panel.lines]


def _run_lines(run: str, rows: list[dict[str, Any]]) -> dict[str, list[Line]]:
    keys = list(dict.fromkeys(key for row in rows for key in row))

    def plain(key: str, kind: str = "line") -> list[Line]:
        steps, values = _series(rows, key)
        return [Line(run, key, steps, values, kind)] if steps else []

    def curve(key: str) -> list[Line]:
        steps, values = _series(rows, key)
        if len(steps) < SMOOTH_MIN_POINTS:
            return plain(key)
        return [Line(run, key, steps, values, "raw"), Line(run, key, steps, ema(values), "smooth")]

    sides = [m.group(1) for key in keys if (m := _DIRECTION.match(key))]

    def per_side(base: str) -> list[Line]:
        found = [line for s in sides for line in plain(f"{base}_{s}")]
        return found or plain(base)

    throughput = "tokens_per_second" if "tokens_per_second" in keys else "samples_per_second"
    return {
        "loss": curve("loss") + plain("eval_loss", "points"),
        "loss per direction": [line for s in sides for line in curve(f"loss_{s}")],
        "eval metrics": [line for key in keys if _is_eval_metric(key) for line in plain(key, "points")],
        "learning rate": per_side("learning_rate"),
        "grad norm": per_side("grad_norm"),
        "throughput": plain(throughput),
        "router / expert usage": [line for key in keys if _is_router_key(key) for line in plain(key)],
    }


def ema(values: Sequence[float], span: float | None = None) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing); non-finite values pass through.

    `span` defaults to 5% of the points (at least 1, which returns the values unchanged).
    """
    span = span if span is not None else max(1.0, len(values) / 20)
    weight = 1.0 - 2.0 / (span + 1.0)
    out, avg, norm = [], 0.0, 0.0
    for value in values:
        if not math.isfinite(value):
            out.append(value)
            continue
        avg = weight * avg + (1.0 - weight) * value
        norm = weight * norm + (1.0 - weight)  # the bias correction: early points are not pulled to 0
        out.append(avg / norm)
    return out


def _draw(panels: list[Panel], title: str, out: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    n = len(panels)
    nrows, ncols = (1, 1) if n <= 1 else (1, 2) if n == 2 else (2, 2) if n <= 4 else (2, 3) if n <= 6 else (3, 3)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    fig.suptitle(title)
    runs = list(dict.fromkeys(line.run for panel in panels for line in panel.lines))
    for ax, panel in zip(axes, panels):
        draw_panel(ax, panel, runs)
    for ax in axes[n:]:
        ax.set_axis_off()
    if not panels:
        axes[0].text(0.5, 0.5, "no metrics logged yet", ha="center", va="center")
    return save_png(fig, out)


def draw_panel(ax: Any, panel: Panel, runs: list[str]) -> None:
    """Several runs: one colour per run, one line style per key. One run: one colour per key."""
    multi = len(runs) > 1
    keys = list(dict.fromkeys(line.key for line in panel.lines))
    for line in panel.lines:
        k = keys.index(line.key)
        color = f"C{runs.index(line.run) % 10}" if multi else f"C{k % 10}"
        style = ("-", "--", ":", "-.")[k % 4] if multi else "-"
        name = f"{line.run}: {line.key}" if multi else line.key
        if line.kind == "raw":
            ax.plot(line.steps, line.values, style, color=color, linewidth=0.8, alpha=0.3, label="_nolegend_")
        elif line.kind == "smooth":
            ax.plot(line.steps, line.values, style, color=color, linewidth=1.8, label=f"{name} (EMA)")
        elif len(line.steps) == 1:  # one value (e.g. perplexity computed at the end): a marker that says it
            ax.plot(line.steps, line.values, "D", color=color, markersize=6, label=name)
            ax.annotate(
                f"{name} = {line.values[0]:.4g}",
                (line.steps[0], line.values[0]),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize="small",
                color=color,
            )
        elif line.kind == "points":
            ax.plot(line.steps, line.values, style, color=color, marker="o", markersize=3.5, label=name)
        else:
            ax.plot(line.steps, line.values, style, color=color, linewidth=1.2, label=name)
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    if panel.log_y:
        ax.set_yscale("log")
    if len([line for line in panel.lines if line.kind != "raw"]) > 1 or not panel.ylabel:
        ax.legend(fontsize="small")  # the keys drawn say what the panel shows


def plot_run(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Plot a run's logged metrics against the optimizer step and write a 1200x800 PNG.

    The panels are those of `report_panels`. `write_report` draws the same picture and adds
    `report.md`.

    Args:
        run_dir: A run's output directory.
        out_path: Where to write; `run_dir/report.png` by default.

    Returns:
        The path of the written image.

    Raises:
        CheckpointError: as `read_log`.
    """
    rows = read_log(run_dir)
    label = Path(run_dir).resolve().name
    out = Path(out_path) if out_path is not None else Path(run_dir) / REPORT_FILE
    return _draw(report_panels({label: rows}), f"{label}: {_headline(rows)}", out)


def save_png(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as PNG under a temporary name, then rename it, so a viewer
    never sees half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)
    return path


# ---- the report ----------------------------------------------------------------------------


def write_report(
    run_dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | Path | None = None,
    labels: Sequence[str] | None = None,
    *,
    training_args: Any = None,
) -> tuple[Path, Path]:
    """Write the picture and the Markdown report of one run, or the comparison of several.

    One run: `report.png` and `report.md` in `out_dir` (default: the run's directory). Several:
    overlaid curves in `compare.png` and a side-by-side `compare.md` in `out_dir` (default: the
    first run's directory). The Markdown has the summary (steps, epochs, training time, tokens
    seen), the final and best value (with its step) of every model metric, and the settings that
    differ from the defaults (see `config_diff`), and embeds the PNG with a relative link.

    Args:
        run_dirs: A run directory, or a sequence of them.
        out_dir: Where to write; see above.
        labels: A name per run for legends and tables; default the directories' names.
        training_args: The arguments of the first run, used for the config diff when its
            directory has no saved configuration (a Python-API run without checkpoints).

    Returns:
        `(png_path, markdown_path)`.

    Raises:
        CheckpointError: a run directory has no readable `log.jsonl`.
        ConfigError: no run directory, or labels that don't match the runs one to one.
    """
    single = isinstance(run_dirs, (str, os.PathLike))
    dirs = [Path(run_dirs)] if single else [Path(d) for d in run_dirs]
    if not dirs:
        raise ConfigError("write_report needs at least one run directory")
    names = list(labels) if labels is not None else _default_labels(dirs)
    if len(names) != len(dirs) or len(set(names)) != len(names):
        raise ConfigError(f"labels {names} must name each of the {len(dirs)} runs once, without repeats")
    runs = {name: read_log(d) for name, d in zip(names, dirs)}
    diffs = [config_diff(d, training_args if i == 0 else None) for i, d in enumerate(dirs)]
    out = Path(out_dir) if out_dir is not None else dirs[0]
    panels = report_panels(runs)
    if len(dirs) == 1:
        rows = runs[names[0]]
        png = _draw(panels, f"{names[0]}: {_headline(rows)}", out / REPORT_FILE)
        text = _run_markdown(names[0], dirs[0], rows, diffs[0], png.name)
        md = out / REPORT_MD
    else:
        png = _draw(panels, "comparison: " + " vs ".join(names), out / COMPARE_FILE)
        text = _compare_markdown(names, dirs, list(runs.values()), diffs, png.name)
        md = out / COMPARE_MD
    from .state import atomic_write_text

    atomic_write_text(md, text)
    return png, md


class ReportCallback(TrainerCallback):
    """Writes `report.png`/`report.md` into the output directory when training ends (`args.report_at_end`)."""

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if getattr(args, "report_at_end", False) and state.is_world_process_zero:
            report_run(args)


def report_run(args: Any) -> Path | None:
    """Write the report of the run in `args.output_dir` (when it has a `log.jsonl`).

    Never raises: a report is a convenience, so a failure is logged as a warning.

    Returns:
        The PNG's path, or None (no `log.jsonl`, or the report failed).
    """
    try:
        run_dir = Path(args.output_dir)
        if not (run_dir / LOG_FILE).is_file():
            return None
        return write_report(run_dir, training_args=args)[0]
    except Exception as err:  # noqa: BLE001 - the run itself finished; only its report failed
        logger.warning("no run report written: %s: %s", type(err).__name__, err)
        return None


def report_at_end(trainer: Any) -> Path | None:
    """Write `report.png`/`report.md` into a trainer's output directory (the command layer calls it
    again after the final evaluation, so the report shows it).

    Returns:
        The PNG's path, or None (`report_at_end` off, not the main process, no `log.jsonl`, or the
        report failed: it never raises).
    """
    args = trainer.args
    if not getattr(args, "report_at_end", True):
        return None
    if hasattr(trainer, "is_world_process_zero") and not trainer.is_world_process_zero():
        return None
    return report_run(args)


def _default_labels(dirs: list[Path]) -> list[str]:
    """The directories' names; where two share a name (runs/a/final, runs/b/final), more of the path."""
    for depth in (1, 2, 3):
        names = ["/".join(d.resolve().parts[-depth:]) for d in dirs]
        if len(set(names)) == len(names):
            return names
    return [str(d) for d in dirs]


def _overview(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    summary = _summarize(rows)
    runtime, tokens = summary["train_runtime"], summary["num_input_tokens_seen"]
    if tokens is None and runtime:
        # no exact count logged: the mean logged throughput times the runtime (evaluation included)
        _, speeds = _series(rows, "tokens_per_second")
        tokens_text = f"≈ {int(sum(speeds) / len(speeds) * runtime):,} (from tokens/s)" if speeds else "n/a"
    else:
        tokens_text = f"{int(tokens):,}" if tokens is not None else "n/a"
    epoch = summary["epoch"]
    peak = summary["peak_memory_mb"]
    return [
        ("steps", str(summary["steps"])),
        ("epochs", format_value(epoch) if epoch is not None else "n/a"),
        ("training time", _duration(runtime) if runtime is not None else "n/a (run not finished)"),
        ("tokens seen", tokens_text),
        ("peak memory", memory_text(peak) if peak is not None else "n/a"),
    ]


def _metrics(rows: list[dict[str, Any]]) -> dict[str, tuple[float, Any, float, Any]]:
    """`{key: (final, final_step, best, best_step)}` for every model metric, in logged order."""
    out = {}
    for key in dict.fromkeys(key for row in rows for key in row):
        if not _is_model_metric(key):
            continue
        steps, values = _series(rows, key)
        finite = [(v, s) for s, v in zip(steps, values) if math.isfinite(v)]
        if not finite:
            continue
        pick = max if _higher_is_better(key) else min
        best, best_step = pick(finite, key=lambda pair: pair[0])
        out[key] = (values[-1], steps[-1], best, best_step)
    return out


def _run_markdown(label: str, run_dir: Path, rows: list[dict[str, Any]], diff: tuple[str, list], png: str) -> str:
    lines = [f"# Run report: {label}", "", f"Run directory: `{run_dir}`", "", f"![training curves]({png})", ""]
    lines += ["## Summary", "", "| | |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in _overview(rows)]
    lines += ["", "## Metrics", ""]
    metrics = _metrics(rows)
    if metrics:
        lines += ["| metric | final | at step | best | at step |", "| --- | ---: | ---: | ---: | ---: |"]
        for key, (final, step, best, best_step) in metrics.items():
            lines.append("| " + " | ".join([key, *map(format_value, (final, step, best, best_step))]) + " |")
    else:
        lines.append("No metrics logged yet.")
    lines += _samples_markdown(rows)
    source, changes = diff
    lines += ["", "## Configuration: differences from the defaults", "", f"Read from {source}.", ""]
    if changes:
        lines += ["| setting | value | default |", "| --- | --- | --- |"]
        lines += [f"| {key} | {_cell(value)} | {_cell(default)} |" for key, value, default in changes]
    else:
        lines.append("No differences found.")
    return "\n".join(lines) + "\n"


def samples_by_step(rows: list[dict[str, Any]]) -> dict[Any, list[dict[str, str]]]:
    """`{step: samples}` of the `samples` rows `SampleCallback` logs, in step order; a step logged
    twice keeps its last row."""
    found = {row.get("step"): row["samples"] for row in rows if isinstance(row.get("samples"), list)}
    return dict(sorted(found.items(), key=lambda item: item[0] if _is_number(item[0]) else math.inf))


def _samples_markdown(rows: list[dict[str, Any]]) -> list[str]:
    by_step = samples_by_step(rows)
    if not by_step:
        return []
    shown = list(by_step.items())[-SAMPLE_STEPS:]
    older = len(by_step) - len(shown)
    note = f" (the last {len(shown)}; {older} earlier in log.jsonl)" if older else ""
    lines = ["", "## Samples", "", f"Greedy completions at each evaluation{note}.", ""]
    lines += ["| step | prompt | completion |", "| ---: | --- | --- |"]
    for step, samples in shown:
        for sample in samples:
            prompt, completion = (_cell(str(sample.get(key, ""))) for key in ("prompt", "completion"))
            lines.append(f"| {format_value(step)} | {prompt} | {completion} |")
    return lines


def _compare_markdown(
    names: list[str], dirs: list[Path], all_rows: list[list[dict[str, Any]]], diffs: list[tuple[str, list]], png: str
) -> str:
    head = ["| | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    lines = [f"# Run comparison: {', '.join(names)}", "", f"![training curves]({png})", "", "## Summary", "", *head]
    lines.append("| run directory | " + " | ".join(f"`{d}`" for d in dirs) + " |")
    overviews = [_overview(rows) for rows in all_rows]
    for i, (name, _) in enumerate(overviews[0]):
        lines.append(f"| {name} | " + " | ".join(o[i][1] for o in overviews) + " |")
    metrics = [_metrics(rows) for rows in all_rows]
    keys = list(dict.fromkeys(key for m in metrics for key in m))
    for title, value_at in (("Final metrics", 0), ("Best metrics", 2)):
        lines += ["", f"## {title}", "", *head]
        for key in keys:
            cells = [
                f"{format_value(m[key][value_at])} (step {format_value(m[key][value_at + 1])})" if key in m else "–"
                for m in metrics
            ]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "## Configuration: differences from the defaults", ""]
    changed = [{key: value for key, value, _ in changes} for _, changes in diffs]
    defaults = {key: default for _, changes in diffs for key, _, default in changes}
    if defaults:
        lines += ["| setting | default | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]
        for key, default in defaults.items():
            cells = [_cell(c[key]) if key in c else "(default)" for c in changed]
            lines.append(f"| {key} | {_cell(default)} | " + " | ".join(cells) + " |")
    else:
        lines.append("No differences found.")
    lines += ["", "Configurations read from: " + "; ".join(f"{n}: {src}" for n, (src, _) in zip(names, diffs))]
    return "\n".join(lines) + "\n"


# ---- the configuration diff ----------------------------------------------------------------


def config_diff(run_dir: str | Path, training_args: Any = None) -> tuple[str, list[tuple[str, Any, Any]]]:
    """The settings of a run that differ from their defaults.

    Looks, in order, for `config.yaml` (`trainformers train`: model, data, training and peft
    sections against `ModelSection`, `DataSection`, `TrainingArguments`), `cycle_config.yaml`
    (`trainformers cycle`), `training_args` (a `TrainingArguments` or subclass instance), then
    `training_args.json` in the run directory, its `final/` or its newest checkpoint. Paths
    (`output_dir`, `logging_dir`) are left out; every `peft` key counts as a difference.

    Returns:
        `(where it was read from, [(section.key, value, default), ...])`; `("no saved
        configuration", [])` when nothing was found.
    """
    from .config import read_yaml

    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():
        from .config import SECTIONS

        return "config.yaml", _diff_sections(read_yaml(run_dir / "config.yaml"), SECTIONS)
    if (run_dir / "cycle_config.yaml").is_file():
        from .cycle.config import CYCLE_SECTIONS

        return "cycle_config.yaml", _diff_sections(read_yaml(run_dir / "cycle_config.yaml"), CYCLE_SECTIONS)
    if training_args is not None and hasattr(training_args, "to_dict"):
        sections = {"training": type(training_args)}
        return "the Trainer's arguments", _diff_sections({"training": training_args.to_dict()}, sections)
    from .checkpoint import ARGS_NAME, list_checkpoints

    for folder in [run_dir, run_dir / "final", *reversed(list_checkpoints(run_dir))]:
        if (folder / ARGS_NAME).is_file():
            values = json.loads((folder / ARGS_NAME).read_text(encoding="utf-8"))
            from .config import TrainingArguments
            from .cycle.config import CycleTrainingArguments

            cycle = set(_defaults(CycleTrainingArguments)) - set(_defaults(TrainingArguments))
            cls = CycleTrainingArguments if cycle & set(values) else TrainingArguments
            source = str((folder / ARGS_NAME).relative_to(run_dir))
            return source, _diff_sections({"training": values}, {"training": cls})
    return "no saved configuration", []


def settings_changed(config: Mapping[str, Any], sections: Mapping[str, type]) -> list[tuple[str, Any, Any]]:
    """`[(section.key, value, default), ...]` for the settings of a configuration (as `RunConfig.to_dict()`
    gives it) that differ from their defaults; paths are left out."""
    return _diff_sections(json.loads(json.dumps(dict(config), default=str)), sections)


def _diff_sections(config: Any, sections: Mapping[str, type]) -> list[tuple[str, Any, Any]]:
    changes = []
    for section, values in (config or {}).items():
        if not isinstance(values, Mapping):
            continue
        defaults = _defaults(sections.get(section, dict))
        for key, value in values.items():
            if key in _NOT_SETTINGS or (key in defaults and _same(value, defaults[key])):
                continue
            if section == "data" and key == "seed" and value == (config.get("training") or {}).get("seed", 42):
                continue  # data.seed defaults to training.seed, and the saved config holds it resolved
            changes.append((f"{section}.{key}", value, defaults.get(key)))
    return changes


@functools.cache
def _defaults(cls: type) -> dict[str, Any]:
    """A config dataclass's default values, as saved (normalised by `__post_init__`, JSON-safe)."""
    if not dataclasses.is_dataclass(cls):
        return {}  # free-form section (peft): every key is a choice
    try:
        instance = cls()
    except Exception:  # noqa: BLE001 - a subclass with required fields: no defaults to compare
        return {}
    values = instance.to_dict() if hasattr(instance, "to_dict") else dataclasses.asdict(instance)
    return json.loads(json.dumps(values, default=str))


def _same(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) or a == b
    return a == b


# ---- the summary ---------------------------------------------------------------------------


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """Summarise a run from its log.

    Args:
        run_dir: A run's output directory.

    Returns:
        A dict with `steps` (last logged optimizer step, 0 if none), `epoch` (last logged,
        or None), `final_loss`, `min_loss`, `min_loss_step` (training loss), `best_eval_loss`,
        `best_eval_step`, `eval_step` and `eval` (the metrics of the last evaluation, keyed as
        logged), `train_runtime` (seconds, summed over the `train()` calls that finished),
        `num_input_tokens_seen` (last logged), `samples_step` and `samples` (the last
        `SampleCallback` row's), and `peak_memory_mb` (the highest logged). Values not logged are None (`eval` is then `{}`, `samples` `[]`).

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
    runtimes = [row["train_runtime"] for row in rows if _is_number(row.get("train_runtime"))]
    seen = [row["num_input_tokens_seen"] for row in rows if _is_number(row.get("num_input_tokens_seen"))]
    by_step = samples_by_step(rows)
    samples_step, samples = list(by_step.items())[-1] if by_step else (None, [])
    peaks = [row[key] for row in rows for key in ("peak_memory_mb", "train_peak_memory_mb") if _is_number(row.get(key))]
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
        "train_runtime": sum(runtimes) if runtimes else None,
        "num_input_tokens_seen": seen[-1] if seen else None,
        "samples_step": samples_step,
        "samples": samples,
        "peak_memory_mb": max(peaks, default=None),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """Return `(steps, values)` of the rows that have a numeric `key` and a numeric step."""
    pairs = [(row["step"], row[key]) for row in rows if _is_number(row.get(key)) and _is_number(row.get("step"))]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _minimum(steps: list[float], values: list[float]) -> tuple[float | None, float | None]:
    """Return the smallest finite value and its step, or (None, None)."""
    finite = [(v, s) for s, v in zip(steps, values) if math.isfinite(v)]
    if not finite:
        return None, None
    value, step = min(finite, key=lambda pair: pair[0])
    return value, step


def is_eval_metric(key: str) -> bool:
    """Whether a logged key is an evaluation result (`eval_loss` included), not a timing:
    `eval_runtime` and `eval_*_per_second` measure the machine, not the model."""
    return key.startswith("eval_") and key != "eval_runtime" and not key.endswith("_per_second")


def _is_eval_metric(key: str) -> bool:
    return key != "eval_loss" and is_eval_metric(key)  # the panels and tables list eval_loss apart


def _is_router_key(key: str) -> bool:
    return key in ROUTER_KEYS or key.startswith(("expert_usage", "router_"))


def _is_model_metric(key: str) -> bool:
    """What the report tables list: losses and eval metrics, not timings, rates or counters."""
    return (
        key in ("loss", "lm_loss", "train_loss")
        or bool(_DIRECTION.match(key))
        or is_eval_metric(key)
        or _is_router_key(key)
    )


def _higher_is_better(key: str) -> bool:
    name = key.lower()
    return "loss" not in name and "perplexity" not in name and any(word in name for word in _HIGHER_IS_BETTER)


def format_value(value: Any) -> str:
    """A number as the reports write it: whole numbers without a point, other floats to 5
    significant digits (`3.1416`, `5e-05`); anything else as `str`."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def _cell(value: Any) -> str:
    text = format_value(value) if _is_number(value) else json.dumps(value) if not isinstance(value, str) else value
    return text.replace("|", "\\|").replace("\n", " ")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _headline(rows: list[dict[str, Any]]) -> str:
    """Return e.g. 'step 200, loss 2.31, eval_loss 2.45' for the figure's title."""
    summary = _summarize(rows)
    parts = [f"step {summary['steps']}"] if rows else []
    if summary["final_loss"] is not None:
        parts.append(f"loss {summary['final_loss']:.4g}")
    if _is_number(summary["eval"].get("eval_loss")):
        parts.append(f"eval_loss {summary['eval']['eval_loss']:.4g}")
    return ", ".join(parts) or "empty log"
