"""The GPU check of issue 17: what only a CUDA machine can show, one table row each, in under 8 minutes.

    tools/gpu_check.sh                    # on a CUDA machine (make gpu-check): every row, writes gpu_check.md
    tools/gpu_check.sh --cpu-smoke        # the rows a CPU can run, at toy sizes (tests/test_gpu_check.py)
    tools/gpu_check.sh --list             # the rows
    tools/gpu_check.sh --only bf16-exact-resume,qlora-4bit --out /tmp/g.md

Rows (tools/gpu_check_checks.py, tools/gpu_check_throughput.py): bf16 and fp16 (grad scaler)
training with exact resume; DDP, FSDP2 and DeepSpeed ZeRO-2/3 on one GPU under torchrun, with
save, resume and a consolidated final/ loaded by from_pretrained (DDP also runs on a CPU: it is
the smoke test of the engine rows' launcher); 4-bit QLoRA through bitsandbytes; torch.compile
against eager; gradient checkpointing against none; tokens/s and MFU of a 336M DecoderLM in bf16
under our Trainer and transformers.Trainer. A row is PASS, FAIL or SKIP (a package it needs is
missing, or no CUDA in --cpu-smoke); a SKIP never counts as a pass.

Every row runs in a process of its own, forked from this one, which never touches CUDA (with
--cpu-smoke, after the heavy imports: the rows do not pay them again). Each row has a session of
its own: at its timeout the whole group is stopped (SIGTERM, which torchrun passes on to its
workers, then SIGKILL) and the row FAILs. Any exception in a row is a FAIL with the error's first
line; its full output is in the row's log (next to --out). On a GPU the throughput row runs first
and alone, then the others a few at a time, the longest first. The rows' timeouts are cut to
what is left of the total budget (470 s on a GPU). Exit status: 0 when nothing failed, 1 when a
row failed, 2 when a GPU run finds no CUDA device.

--inject-fail ID and --inject-hang ID make a row raise or hang, to show a failure turns the exit
status non-zero and a hang is cut at its timeout (the test does both).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
# all rows together: on a GPU 8 minutes were asked (start-up and a margin kept); the CPU smoke
# test takes ~30 s on 2 idle cores, its timeouts only catch hangs on a machine shared with others
BUDGET_S = {"gpu": 470, "smoke": 300}
JOBS = {"gpu": 3, "smoke": 2}  # rows at a time after the throughput row (one GPU is plenty for tiny models)


@dataclass(frozen=True)
class Check:
    id: str
    what: str
    timeout_s: int  # on a GPU
    smoke_timeout_s: int | None = None  # None: needs CUDA (SKIP in --cpu-smoke)
    needs: tuple[str, ...] = ()  # packages; one missing makes the row SKIP
    alone: bool = False  # a timing: on a GPU it runs first, by itself


CHECKS = (
    Check("bf16-exact-resume", "bf16; resumed from step 3 = uninterrupted (losses, final/ weights)", 90, 120),
    Check("fp16-scaler-exact-resume", "fp16 with the grad scaler; exact resume, the scale included", 90),
    Check("ddp-save-resume-final", "DDP, 1 process under torchrun (the engine rows' harness), as FSDP2", 120, 180),
    Check(
        "fsdp2-save-resume-final",
        "FSDP2, 1 GPU under torchrun: save, exact resume, final/ by from_pretrained",
        180,
        180,
    ),
    Check("zero2-save-resume-final", "DeepSpeed ZeRO-2 ('auto' values), as FSDP2", 180, needs=("deepspeed",)),
    Check("zero3-save-resume-final", "DeepSpeed ZeRO-3, consolidated final/, as FSDP2", 180, needs=("deepspeed",)),
    Check("qlora-4bit", "nf4 Llama + peft LoraConfig: trains, saves", 120, needs=("bitsandbytes", "peft")),
    Check("torch-compile-vs-eager", "torch_compile=True trains; losses = eager within a tolerance", 180, 120),
    Check("grad-checkpointing-vs-off", "gradient_checkpointing=True recomputes; losses = without", 90, 120),
    Check("throughput-vs-hf", "tokens/s, MFU of a 336M DecoderLM (bf16): ours vs HF Trainer", 180, 120, alone=True),
)
BY_ID = {c.id: c for c in CHECKS}


@dataclass
class Row:
    check: str
    status: str
    seconds: float
    detail: str


# ---- errors and processes -----------------------------------------------------------------------


def first_line(err: BaseException) -> str:
    """A row's detail for `err`: a broken invariant's message (CheckFailed) as it is, else 'Type: line'."""
    text = (str(err).strip().splitlines() or [""])[0]
    return (text if type(err).__name__ == "CheckFailed" else f"{type(err).__name__}: {text}")[:300]


def error_line(output: str) -> str:
    """The last 'SomethingError: ...' line in `output` (a torchrun worker's, not the launcher's
    ChildFailedError), else its last line."""
    lines = [re.sub(r"^\[rank\d+\]:\s*", "", line.strip()) for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt|Failed)\b", line)]
    errors = [line for line in errors if "ChildFailedError" not in line] or errors
    return (errors or lines or ["no output"])[-1][:300]


def stop_group(pid: int, grace_s: float = 10.0) -> None:
    """Stop the process group `pid` leads: SIGTERM (torchrun passes it on to its workers, which run
    in sessions of their own), then SIGKILL what is left; reap the leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)  # what the leader left behind (compile workers, ...)
    except ProcessLookupError:
        pass


def child_main(target: str, args: dict, write_fd: int, inject: str | None) -> NoReturn:
    """In the forked process: run `target` (a row id, or "environment"); {status, detail} to the pipe."""
    os.setsid()
    # appending: a row's launcher (torchrun) appends its workers' output to the same file
    log = os.open(args["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        if inject == "fail":
            raise RuntimeError(f"injected failure (--inject-fail {target})")
        if inject == "hang":
            time.sleep(10**6)
        import gpu_check_checks

        if target == "environment":
            result = {"status": PASS, "detail": json.dumps(gpu_check_checks.environment())}
        else:
            ctx = gpu_check_checks.Context(
                cuda=args["cuda"], workdir=Path(args["workdir"]), log=Path(args["log"]), timeout_s=args["timeout_s"]
            )
            status, detail = gpu_check_checks.run(target, ctx)
            result = {"status": status, "detail": detail}
    except BaseException as err:  # any failure of a row, even SystemExit, is its FAIL
        traceback.print_exc()
        result = {"status": FAIL, "detail": first_line(err)}
    sys.stdout.flush()
    sys.stderr.flush()
    data = json.dumps(result).encode()
    while data:
        data = data[os.write(write_fd, data) :]
    os._exit(0)


class Child:
    """One row in a forked process of its own session, its result coming back through a pipe."""

    def __init__(self, target: str, args: dict, inject: str | None) -> None:
        self.target, self.log = target, Path(args["log"])
        self.start = time.monotonic()
        self.deadline = self.start + args["timeout_s"]
        self.timeout_s = args["timeout_s"]
        self.output = b""
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(read_fd)
            child_main(target, args, write_fd, inject)
        os.close(write_fd)
        self.fd = read_fd

    def read(self) -> bool:
        """Read what is there; True once the child closed the pipe."""
        chunk = os.read(self.fd, 1 << 16)
        self.output += chunk
        return not chunk

    def finish(self) -> Row:
        os.close(self.fd)
        _, code = os.waitpid(self.pid, 0)
        stop_group(self.pid, grace_s=0)  # anything it started and left running
        seconds = time.monotonic() - self.start
        try:
            result = json.loads(self.output)
        except ValueError:
            why = (
                f"signal {-os.waitstatus_to_exitcode(code)}" if os.WIFSIGNALED(code) else f"exit {os.WEXITSTATUS(code)}"
            )
            return Row(self.target, FAIL, seconds, f"the row's process died ({why}): {error_line(self.log_text())}")
        return Row(self.target, result["status"], seconds, result["detail"])

    def kill(self) -> Row:
        os.close(self.fd)
        stop_group(self.pid)
        return Row(self.target, FAIL, time.monotonic() - self.start, f"timed out after {self.timeout_s:.0f} s")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def run_rows(
    targets: list[tuple[str, dict, str | None]], jobs: int, budget_end: float, done: Callable[[Row], None] = print
) -> list[Row]:
    """Run (target, args, injection) rows, `jobs` at a time, each within its timeout and the budget;
    `done` hears of each row as it ends."""
    rows: list[Row] = []
    queue, running = list(targets), {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                target, args, inject = queue.pop(0)
                left = budget_end - time.monotonic()
                if left < 10:
                    rows.append(Row(target, FAIL, 0.0, "not run: the time budget of the whole check was spent"))
                    done(rows[-1])
                    continue
                child = Child(target, {**args, "timeout_s": min(args["timeout_s"], left)}, inject)
                running[child.fd] = child
            if not running:
                break
            wait = max(0.0, min(c.deadline for c in running.values()) - time.monotonic())
            ready, _, _ = select.select(list(running), [], [], wait)
            for fd in ready:
                if running[fd].read():
                    rows.append(running.pop(fd).finish())
                    done(rows[-1])
            for fd, child in list(running.items()):
                if time.monotonic() >= child.deadline:
                    rows.append(running.pop(fd).kill())
                    done(rows[-1])
    finally:
        for child in running.values():  # interrupted (Ctrl-C): leave nothing running
            stop_group(child.pid, grace_s=2)
    return rows


# ---- the report ---------------------------------------------------------------------------------


def versions() -> str:
    names = ("torch", "transformers", "accelerate", "peft", "deepspeed", "bitsandbytes")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} -")
    try:
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return ", ".join(found) + f"; trainformers at {sha or 'unknown commit'} (src/ of this tree)"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "CPU")
    except OSError:
        model = "CPU"
    return f"{model}, {os.cpu_count()} cores"


def render(rows: list[Row], title: str, device: str, seconds: float) -> str:
    counts = {s: sum(r.status == s for r in rows) for s in (PASS, FAIL, SKIP)}
    lines = [
        f"### {title}",
        "",
        f"Device: {device}. {versions()}.",
        f"{len(rows)} rows: {counts[PASS]} PASS, {counts[FAIL]} FAIL, {counts[SKIP]} SKIP; {seconds:.0f} s in all.",
        "",
        "| check | status | seconds | detail |",
        "|---|---|---:|---|",
    ]
    for r in rows:
        detail = r.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r.check} | {r.status} | {r.seconds:.1f} | {detail} |")
    return "\n".join(lines) + "\n"


# ---- main ---------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="run what a CPU can, at toy sizes; GPU rows SKIP")
    parser.add_argument("--out", default="gpu_check.md", help="markdown table written here (logs: next to it)")
    parser.add_argument("--only", help="comma-separated row ids (see --list)")
    parser.add_argument("--list", action="store_true", help="print the row ids and exit")
    parser.add_argument("--timeout-s", type=float, help="one timeout for every row, instead of each row's own")
    parser.add_argument("--inject-fail", action="append", default=[], metavar="ID", help="make row ID raise")
    parser.add_argument("--inject-hang", action="append", default=[], metavar="ID", help="make row ID hang")
    opts = parser.parse_args(argv)
    wanted = opts.only.split(",") if opts.only else [c.id for c in CHECKS]
    for check_id in [*wanted, *opts.inject_fail, *opts.inject_hang]:
        if check_id not in BY_ID:
            parser.error(f"unknown row {check_id!r}; the rows are: {', '.join(BY_ID)}")
    opts.selected = [c for c in CHECKS if c.id in wanted]
    return opts


def main(argv: list[str]) -> int:
    opts = parse(argv)
    if opts.list:
        for c in CHECKS:
            print(f"{c.id:28} {c.what}{'' if c.smoke_timeout_s else ' (CUDA only)'}")
        return 0
    mode = "smoke" if opts.cpu_smoke else "gpu"
    started = time.monotonic()
    out = Path(opts.out)
    logs = out.with_name(out.stem + "_logs")
    logs.mkdir(parents=True, exist_ok=True)
    src = str(ROOT / "src")  # this tree's trainformers, in this process, the rows and torchrun's workers
    sys.path.insert(0, src)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.environ.update(
        TOKENIZERS_PARALLELISM="false", GPU_CHECK_THREADS=str(max(1, (os.cpu_count() or 1) // JOBS[mode]))
    )
    if opts.cpu_smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before any torch import, here or in a row

    rows: dict[str, Row] = {}
    runnable = []
    for c in opts.selected:
        missing = [p for p in c.needs if importlib.util.find_spec(p) is None]
        if opts.cpu_smoke and c.smoke_timeout_s is None:
            rows[c.id] = Row(c.id, SKIP, 0.0, "needs CUDA")
        elif missing:
            rows[c.id] = Row(c.id, SKIP, 0.0, f"{' and '.join(missing)} not installed")
        else:
            runnable.append(c)
    real = [c for c in runnable if c.id not in opts.inject_fail + opts.inject_hang]
    # --cpu-smoke: import once here, shared by every forked row (a single row gains nothing). Not on
    # a GPU: a library that touched CUDA at import (torch.cuda.is_available() initialises the
    # driver) would leave CUDA unusable in the forked rows; there each row imports for itself
    if opts.cpu_smoke and len(real) > 1:
        try:
            import gpu_check_checks  # noqa: F401
            import gpu_check_throughput  # noqa: F401
        except Exception as err:  # each row then fails with it on its own
            print(f"preload failed: {first_line(err)}", file=sys.stderr)

    budget_end = started + BUDGET_S[mode]
    device = cpu_name()
    if not opts.cpu_smoke:
        probe = {"log": str(logs / "environment.log"), "timeout_s": 120, "cuda": True, "workdir": str(logs)}
        (env_row,) = run_rows([("environment", probe, None)], 1, budget_end, done=lambda row: None)
        env = json.loads(env_row.detail) if env_row.status == PASS else {}
        if not env.get("cuda"):
            why = f"torch {env['torch']} finds none" if env else env_row.detail
            print(f"gpu_check: no CUDA device ({why}); run tools/gpu_check.sh --cpu-smoke on a CPU", file=sys.stderr)
            return 2
        device = f"{env['device']} x{env['gpus']} (one used)"
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))  # the rows' runs; removed at the end

    def target(c: Check) -> tuple[str, dict, str | None]:
        timeout = opts.timeout_s or (c.smoke_timeout_s if opts.cpu_smoke else c.timeout_s)
        (work / c.id).mkdir()
        args = {"log": str(logs / f"{c.id}.log"), "timeout_s": timeout, "cuda": not opts.cpu_smoke}
        args["workdir"] = str(work / c.id)
        inject = "fail" if c.id in opts.inject_fail else "hang" if c.id in opts.inject_hang else None
        return c.id, args, inject

    # the timing row alone first (on a GPU); then the longest rows first, so the slowest one does not start last
    runnable.sort(key=lambda c: c.smoke_timeout_s if opts.cpu_smoke else c.timeout_s, reverse=True)
    alone = [c for c in runnable if c.alone and not opts.cpu_smoke]

    def done(row: Row) -> None:
        rows[row.check] = row
        print(f"[{time.monotonic() - started:5.0f} s] {row.check}: {row.status} {row.detail}", flush=True)

    for phase, jobs in ((alone, 1), ([c for c in runnable if c not in alone], JOBS[mode])):
        run_rows([target(c) for c in phase], jobs, budget_end, done)
    shutil.rmtree(work, ignore_errors=True)

    ordered = [rows[c.id] for c in opts.selected]
    title = (
        "GPU check, CPU smoke (`tools/gpu_check.sh --cpu-smoke`, toy sizes)"
        if opts.cpu_smoke
        else "GPU check (`tools/gpu_check.sh`)"
    )
    text = render(ordered, title, device, time.monotonic() - started)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text + f"\nwritten to {out}; each row's output in {logs}/")
    return 1 if any(r.status == FAIL for r in ordered) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
