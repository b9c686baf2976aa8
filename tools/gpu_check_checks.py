"""The functional rows of tools/gpu_check.py: tiny models trained through the public API, one function a row.

Each `check_*` takes a `Context` and returns (status, detail); raising `CheckFailed` (or anything
else) makes the row FAIL with the error's first line. Models are built from configs in-process
(no Hub, no network). Run as a script only as the worker of the engine rows (ddp, fsdp2, zero2,
zero3), which need a launcher; `engine_row` starts it as

    python -m torch.distributed.run --standalone --nproc_per_node 1 tools/gpu_check_checks.py fsdp2 WORKDIR RUNS.json

"Exact" means bitwise. Where a resumed (or checkpointed) run is not bitwise equal to its
reference, the reference is trained once more and the difference must stay within 4x that
repeat-run noise (a GPU kernel that is not deterministic); a difference on a deterministic
platform fails.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainerCallback, default_data_collator

from trainformers import DecoderLM, DecoderLMConfig, Trainer, TrainingArguments
from trainformers.data import CausalLMCollator

VOCAB = 256
STEPS, STOP_AT = 6, 3  # resume rows: 6 optimizer steps, interrupted after the checkpoint of step 3
PAD = CausalLMCollator(pad_token_id=0, pad_to_multiple_of=None)  # labels: input_ids, padding -100
NOISE_FACTOR = 4.0  # a non-bitwise result passes within this multiple of the repeat-run difference
# torch.compile against eager, fp32 (TF32 off), 8 steps, relative loss difference. Measured on this
# project's 2-core CPU (torch 2.13): inductor 1.7e-7, aot_eager 0. GPU kernels reorder reductions
# too, and Adam turns near-zero gradient noise into +-lr updates; a semantic error (a mask, the loss
# normalisation) moves the loss by 1e-2 or more. The row prints the measured difference.
COMPILE_RTOL = {"cuda": 1e-3, "cpu": 1e-5}


class CheckFailed(Exception):
    """A check's invariant does not hold; the message is the row's detail."""


@dataclass
class Context:
    """What a check needs to know: where it runs, where to write, how long it has."""

    cuda: bool
    workdir: Path
    log: Path  # the row's log file (the engine rows append their launcher's output to it)
    timeout_s: float

    @property
    def precision(self) -> str:
        return "bf16" if self.cuda else "fp32"


# ---- models, data, runs --------------------------------------------------------------------------


def tiny_decoder(seed: int, dropout: float = 0.0) -> DecoderLM:
    torch.manual_seed(seed)
    config = DecoderLMConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        dropout=dropout,
    )
    return DecoderLM(config)


def token_rows(n: int = 48, seed: int = 0, min_len: int = 8, max_len: int = 32) -> Dataset:
    """Variable-length rows (padded by `PAD`): label counts differ per micro-batch, which accumulation
    must get right."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        rows.append({"input_ids": ids})
    return Dataset.from_list(rows)


def token_blocks(n: int, seq: int, seed: int = 0, vocab: int = VOCAB) -> Dataset:
    """Fixed-length random blocks (packed: no padding, no mask), labels = input_ids."""
    ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()}).with_format("torch")


def training_args(out: Path, **overrides: Any) -> TrainingArguments:
    defaults: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_steps=STEPS,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        report_at_end=False,
        seed=0,
        optim="adamw_torch",
        dataloader_pin_memory=False,
    )
    return TrainingArguments(**{**defaults, **overrides})


class LossRecorder(TrainerCallback):
    """The logged training loss of every step (logging_steps=1)."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = float(logs["loss"])


class StopAt(TrainerCallback):
    """Stop training after optimizer step `step`: the interruption of the resume rows."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


@dataclass
class Run:
    """What a training run left: its logged losses, its saved model, what `inspect` noted."""

    losses: dict[int, float]
    final: Path | None  # the folder save_model wrote, or None
    notes: dict[str, Any]  # what `inspect` read off the trainer after train()


Inspect = Callable[[Trainer], dict[str, Any]]


def train_run(
    out: Path,
    model: torch.nn.Module,
    args: dict[str, Any],
    *,
    data: Any,
    collator: Callable | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    inspect: Inspect | None = None,
) -> Run:
    """Train `model` into `out` (resuming from the newest checkpoint there), then save `out/final`."""
    recorder = LossRecorder()
    extra = [StopAt(stop_at)] if stop_at is not None else []
    trainer = Trainer(
        model=model,
        args=training_args(out, **args),
        train_dataset=data,
        data_collator=collator or PAD,
        callbacks=[recorder, *extra],
    )
    trainer.train(resume_from_checkpoint=True if resume else None)
    notes = inspect(trainer) if inspect is not None else {}
    final = None
    if stop_at is None:
        final = out / "final"
        trainer.save_model(str(final))
    del trainer
    return Run(recorder.losses, final, notes)


def load_final(folder: Path) -> dict[str, torch.Tensor]:
    """The weights `from_pretrained` reads from a saved folder (float32 copies); every key must match."""
    model, info = AutoModelForCausalLM.from_pretrained(str(folder), output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if problems:
        raise CheckFailed(f"{folder.name}/ does not load cleanly with from_pretrained: {problems}")
    return {k: v.detach().float().cpu() for k, v in model.state_dict().items()}


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if set(a) != set(b):
        raise CheckFailed(f"the saved models differ in keys: {sorted(set(a) ^ set(b))[:3]}")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def max_loss_diff(a: dict[int, float], b: dict[int, float], steps: range) -> float:
    for name, losses in (("reference", a), ("compared", b)):
        if any(s not in losses for s in steps):
            raise CheckFailed(f"the {name} run logged losses for steps {sorted(losses)}, expected {list(steps)}")
        if not all(math.isfinite(losses[s]) for s in steps):
            raise CheckFailed(f"the {name} run logged a non-finite loss: {losses}")
    return max(abs(a[s] - b[s]) for s in steps)


def verdict(what: str, d_loss: float, d_weights: float, noise_loss: float, noise_weights: float) -> str:
    """Bitwise equal, or within NOISE_FACTOR times the repeat-run noise; otherwise CheckFailed."""
    if d_loss == 0 and d_weights == 0:
        return f"{what}: losses and final/ weights bitwise equal"
    figures = (
        f"max |dloss| {d_loss:.2g}, max |dw| {d_weights:.2g}; repeat-run noise {noise_loss:.2g}, {noise_weights:.2g}"
    )
    if d_loss <= NOISE_FACTOR * noise_loss and d_weights <= NOISE_FACTOR * noise_weights:
        return f"{what}: within {NOISE_FACTOR:g}x repeat-run noise ({figures})"
    raise CheckFailed(f"{what}: not equal ({figures})")


def compare_to_reference(
    what: str, reference: Run, compared: Run, again: Run, steps: range = range(1, STEPS + 1)
) -> str:
    """`compared` against `reference` (losses over `steps`, final/ weights), judged by `verdict`
    with `again` (the reference trained twice) as the noise."""
    ref_w = load_final(reference.final)
    return verdict(
        what,
        max_loss_diff(reference.losses, compared.losses, steps),
        max_weight_diff(ref_w, load_final(compared.final)),
        max_loss_diff(reference.losses, again.losses, range(1, STEPS + 1)),
        max_weight_diff(ref_w, load_final(again.final)),
    )


def resume_runs(ctx: Context, args: dict[str, Any], *, inspect: Inspect | None = None) -> dict[str, Run]:
    """An uninterrupted run ("full"), one stopped after step STOP_AT's checkpoint and resumed in a new
    Trainer ("resumed"), and the uninterrupted run again ("again": the noise of `verdict`).

    The resumed Trainer gets a model of another seed, so its weights must come from the checkpoint.
    Dropout 0.1: the random state must come back too.
    """
    args = {**args, "save_strategy": "steps", "save_steps": STOP_AT}
    data = token_rows()
    full = train_run(ctx.workdir / "full", tiny_decoder(0, 0.1), args, data=data, inspect=inspect)
    cut = train_run(ctx.workdir / "cut", tiny_decoder(0, 0.1), args, data=data, stop_at=STOP_AT)
    if sorted(cut.losses) != list(range(1, STOP_AT + 1)):
        raise CheckFailed(f"the interrupted run logged steps {sorted(cut.losses)}, expected 1..{STOP_AT}")
    resumed = train_run(ctx.workdir / "cut", tiny_decoder(123, 0.1), args, data=data, resume=True, inspect=inspect)
    if sorted(resumed.losses) != list(range(STOP_AT + 1, STEPS + 1)):
        raise CheckFailed(
            f"the resumed run logged steps {sorted(resumed.losses)}, expected {STOP_AT + 1}..{STEPS} "
            f"(did it resume from the checkpoint of step {STOP_AT}?)"
        )
    again = train_run(ctx.workdir / "again", tiny_decoder(0, 0.1), args, data=data)
    return {"full": full, "resumed": resumed, "again": again}


def resume_verdict(runs: dict[str, Run], must_match: tuple[str, ...] = ()) -> str:
    """The row detail of `resume_runs`: final/ trained, `must_match` notes equal, resumed = uninterrupted."""
    full, resumed = runs["full"], runs["resumed"]
    full_w, initial = load_final(full.final), tiny_decoder(0).state_dict()
    if all(torch.equal(full_w[k], initial[k].float()) for k in full_w.keys() & initial.keys()):
        raise CheckFailed("final/ holds the initial weights: nothing was trained or saved")
    for key in must_match:
        if full.notes.get(key) != resumed.notes.get(key):
            raise CheckFailed(f"{key} differs after resume: {resumed.notes.get(key)} vs {full.notes.get(key)}")
    steps = range(STOP_AT + 1, STEPS + 1)
    return compare_to_reference(f"resumed at step {STOP_AT} = uninterrupted", full, resumed, runs["again"], steps)


# ---- the rows -------------------------------------------------------------------------------------


def mixed_precision(expected: str) -> Inspect:
    """Fail unless Accelerate trains in `expected` (fp16: with a gradient scaler, whose scale is noted)."""

    def inspect(trainer: Trainer) -> dict[str, Any]:
        got = str(trainer.accelerator.mixed_precision)
        if got != expected:
            raise CheckFailed(f"asked for {expected} but Accelerate trains in mixed_precision={got!r}")
        if expected != "fp16":
            return {}
        scaler = trainer.accelerator.scaler
        if scaler is None:
            raise CheckFailed("fp16 without a gradient scaler")
        return {"grad scale": float(scaler.get_scale())}

    return inspect


def check_bf16_resume(ctx: Context) -> tuple[str, str]:
    """bf16 training and exact resume (fp32 on a CPU: the smoke test)."""
    runs = resume_runs(ctx, {"bf16": True} if ctx.cuda else {}, inspect=mixed_precision("bf16") if ctx.cuda else None)
    losses = runs["full"].losses
    return "PASS", f"{ctx.precision}; {resume_verdict(runs)}; loss {losses[1]:.3f} -> {losses[STEPS]:.3f}"


def check_fp16_resume(ctx: Context) -> tuple[str, str]:
    """fp16 with the gradient scaler; the scale must come back on resume too."""
    runs = resume_runs(ctx, {"fp16": True}, inspect=mixed_precision("fp16"))
    detail = resume_verdict(runs, must_match=("grad scale",))
    return "PASS", f"fp16; {detail}; grad scale {runs['full'].notes['grad scale']:g} in both"


def count_block_calls(model: DecoderLM) -> None:
    """Count block 0's forward calls in `model.layers[0].calls` (forward hooks miss the recompute)."""
    block, forward = model.layers[0], model.layers[0].forward
    block.calls = 0

    def counted(*args: Any, **kwargs: Any) -> Any:
        block.calls += 1
        return forward(*args, **kwargs)

    block.forward = counted


def check_gradient_checkpointing(ctx: Context) -> tuple[str, str]:
    """gradient_checkpointing=True trains like False: same losses and weights, blocks run twice per micro-batch."""
    args = {"bf16": True} if ctx.cuda else {}
    data = token_rows()
    runs, calls = {}, {}
    for name, on in (("off", False), ("on", True), ("again", False)):
        model = tiny_decoder(0, dropout=0.1)  # the recompute must replay dropout's random numbers
        count_block_calls(model)
        runs[name] = train_run(ctx.workdir / name, model, {**args, "gradient_checkpointing": on}, data=data)
        calls[name] = model.layers[0].calls
    if calls["on"] != 2 * calls["off"]:
        raise CheckFailed(f"block 0 ran {calls['on']} times with checkpointing, {calls['off']} without: no recompute")
    detail = compare_to_reference("checkpointed = not", runs["off"], runs["on"], runs["again"])
    return "PASS", f"{ctx.precision}; {detail}; block 0 forward {calls['on']}x vs {calls['off']}x"


def check_torch_compile(ctx: Context) -> tuple[str, str]:
    """torch_compile=True trains and its losses match eager within COMPILE_RTOL (fp32, TF32 off)."""
    from torch._dynamo.utils import counters

    # on a CPU the inductor compile of even a tiny model took 86 s on this project's 2 cores, so
    # the smoke test compiles with aot_eager: Dynamo capture and AOTAutograd, no code generation
    backend = "inductor" if ctx.cuda else "aot_eager"
    args: dict[str, Any] = {"learning_rate": 1e-3, "max_steps": 8}
    if ctx.cuda:
        args["tf32"] = False
    data = token_blocks(32, 32)
    eager = train_run(ctx.workdir / "eager", tiny_decoder(0), args, data=data, collator=default_data_collator)
    counters.clear()
    start = time.perf_counter()
    compiled = train_run(
        ctx.workdir / "compiled",
        tiny_decoder(0),
        {**args, "torch_compile": True, "torch_compile_backend": backend},
        data=data,
        collator=default_data_collator,
    )
    seconds = time.perf_counter() - start
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    if graphs == 0:
        raise CheckFailed("torch_compile=True but Dynamo compiled no graph: the model ran eagerly")
    steps = range(1, args["max_steps"] + 1)
    rel = max_loss_diff(eager.losses, compiled.losses, steps) / abs(eager.losses[1])
    tol = COMPILE_RTOL["cuda" if ctx.cuda else "cpu"]
    detail = (
        f"{backend}, fp32: max relative loss difference {rel:.2g} over {len(steps)} steps (tolerance {tol:g}); "
        f"{graphs} graphs, {breaks} graph breaks; compiled run {seconds:.0f} s"
    )
    if rel > tol:
        raise CheckFailed(detail)
    return "PASS", detail


def check_qlora(ctx: Context) -> tuple[str, str]:
    """4-bit QLoRA: a tiny Llama quantized by bitsandbytes, LoRA from a peft LoraConfig, bf16."""
    import bitsandbytes as bnb
    from peft import LoraConfig, PeftModel
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = ctx.workdir / "base"
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(base)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)

    def load() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(
            str(base), quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0}
        )

    model = load()
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    if n4 == 0:
        raise CheckFailed("no bitsandbytes Linear4bit layer after loading with load_in_4bit")
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    recorder = LossRecorder()
    trainer = Trainer(
        model=model,
        args=training_args(ctx.workdir / "run", bf16=True, learning_rate=1e-3),
        train_dataset=token_rows(),
        data_collator=PAD,
        callbacks=[recorder],
        peft_config=lora,
    )
    before = {n: (p.requires_grad, p.detach().clone()) for n, p in trainer.model.named_parameters()}
    trained = [n for n, (grad, _) in before.items() if grad]
    if not trained or not all("lora_" in n for n in trained):
        raise CheckFailed(f"the trainable parameters are not the LoRA ones: {trained[:3]}")
    trainer.train()
    after = {n: p.detach() for n, p in trainer.model.named_parameters()}
    unchanged = [n for n in trained if torch.equal(before[n][1], after[n])]
    moved = [n for n, (grad, value) in before.items() if not grad and not torch.equal(value, after[n])]
    if unchanged or moved:
        raise CheckFailed(f"{len(unchanged)} LoRA tensors did not change, {len(moved)} frozen tensors did")
    losses = [recorder.losses[s] for s in sorted(recorder.losses)]
    if len(losses) != STEPS or not all(math.isfinite(x) for x in losses):
        raise CheckFailed(f"logged losses {losses}")
    final = ctx.workdir / "run" / "final"
    trainer.save_model(str(final))
    saved = {n: p.detach() for n, p in PeftModel.from_pretrained(load(), str(final)).named_parameters()}
    differ = [n for n in trained if n not in saved or not torch.equal(after[n].float(), saved[n].float())]
    if differ:
        raise CheckFailed(f"the adapter loaded from final/ differs in {len(differ)} tensors, e.g. {differ[0]}")
    return "PASS", (
        f"{n4} Linear4bit (nf4), {len(trained)} LoRA tensors trained, base unchanged; loss {losses[0]:.3f} -> "
        f"{losses[-1]:.3f}; the adapter in final/ loads equal"
    )


# ---- engines: FSDP2 and DeepSpeed on one GPU, under a launcher ----------------------------------


def engine_args(name: str, cuda: bool = True) -> dict[str, Any]:
    """TrainingArguments fields of an engine row, as users write them (HF/axolotl keys, DeepSpeed "auto")."""
    args: dict[str, Any] = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}
    if cuda:
        args["bf16"] = True
    if name == "fsdp2":
        args["fsdp"] = "full_shard auto_wrap"
        args["fsdp_config"] = {"version": 2, "transformer_layer_cls_to_wrap": ["Block"]}  # DecoderLM's block
    elif name.startswith("zero"):
        zero: dict[str, Any] = {"stage": int(name[-1])}
        if zero["stage"] == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True  # a whole model in final/
        args["deepspeed"] = {
            "train_micro_batch_size_per_gpu": "auto",
            "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"},
            "zero_optimization": zero,
            "zero_allow_untested_optimizer": True,  # the Trainer's torch AdamW
        }
    return args


def engine_applied(name: str) -> Inspect:
    """Fail unless the engine really wraps the model (issue 17: FSDP and DeepSpeed were dropped silently)."""

    def inspect(trainer: Trainer) -> dict[str, Any]:
        accel = trainer.accelerator
        wrapped = getattr(trainer, "model_wrapped", trainer.model)
        kind = str(getattr(accel.distributed_type, "value", accel.distributed_type))
        if name == "ddp":
            if not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
                raise CheckFailed(f"torchrun with one process: {kind}, {type(wrapped).__name__}, not DDP")
            return {"engine": f"DDP ({kind}, 1 process)"}
        if name == "fsdp2":
            from torch.distributed.tensor import DTensor

            # fully_shard turns parameters into DTensors and the class into FSDP<name>: the evidence
            if not any(isinstance(p, DTensor) for p in wrapped.parameters()):
                raise CheckFailed(f"FSDP2 asked for, but no parameter is a DTensor ({kind}, {type(wrapped).__name__})")
            return {"engine": f"FSDP2 ({kind}, {type(wrapped).__name__})"}
        stage = int(name[-1])
        if not hasattr(wrapped, "zero_optimization_stage"):
            raise CheckFailed(f"DeepSpeed asked for, but the model is a {type(wrapped).__name__} ({kind})")
        if wrapped.zero_optimization_stage() != stage:
            raise CheckFailed(f"ZeRO-{stage} asked for, the engine runs stage {wrapped.zero_optimization_stage()}")
        # the engine steps at accumulation boundaries only; told no accumulation it would step on every
        # backward (2x here; issue 17). A resumed engine counts from the checkpoint or from zero.
        if wrapped.global_steps not in (trainer.state.global_step, trainer.state.global_step - STOP_AT):
            raise CheckFailed(f"the DeepSpeed engine made {wrapped.global_steps} steps in {trainer.state.global_step}")
        return {"engine": f"DeepSpeed ZeRO-{stage}"}

    return inspect


def engine_row(name: str) -> Callable[[Context], tuple[str, str]]:
    """The row: `resume_runs` under torchrun with one process (the worker below writes them as JSON),
    then `resume_verdict` here, outside the engine (a live ZeRO-3 config would make `from_pretrained`
    build a partitioned model)."""

    def check(ctx: Context) -> tuple[str, str]:
        from gpu_check import error_line

        result = ctx.workdir / "runs.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
        command += [__file__, name, str(ctx.workdir), str(result)]
        sys.stdout.flush()
        with open(ctx.log, "ab") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=max(ctx.timeout_s - 15, 1))
            except subprocess.TimeoutExpired:
                proc.terminate()  # torchrun passes SIGTERM on to its workers (in sessions of their own)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise CheckFailed(f"torchrun did not finish in {ctx.timeout_s - 15:.0f} s") from None
        if not result.is_file():
            raise CheckFailed(f"torchrun exited {proc.returncode}: {error_line(ctx.log.read_text(errors='replace'))}")
        outcome = json.loads(result.read_text())
        if "error" in outcome:
            raise CheckFailed(outcome["error"])
        runs = {
            key: Run(
                {int(s): v for s, v in run["losses"].items()},
                Path(run["final"]) if run["final"] else None,
                run["notes"],
            )
            for key, run in outcome["runs"].items()
        }
        engine = runs["full"].notes["engine"]
        return "PASS", f"{engine}, {ctx.precision}, accumulation 2; {resume_verdict(runs)}; final/ loads"

    return check


def worker_main(argv: list[str]) -> int:
    """Under torchrun: `resume_runs` of engine `argv[0]` in `argv[1]`; rank 0 writes them (or the error) to `argv[2]`."""
    from gpu_check import first_line

    name, workdir, result = argv[0], Path(argv[1]), Path(argv[2])
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    ctx = Context(cuda=torch.cuda.is_available(), workdir=workdir, log=Path(os.devnull), timeout_s=0)
    try:
        runs = resume_runs(ctx, engine_args(name, ctx.cuda), inspect=engine_applied(name))
        outcome: dict[str, Any] = {
            "runs": {
                k: {"losses": r.losses, "final": str(r.final) if r.final else None, "notes": r.notes}
                for k, r in runs.items()
            }
        }
        code = 0
    except Exception as err:  # the row's FAIL; the traceback goes to the log
        import traceback

        traceback.print_exc()
        outcome, code = {"error": first_line(err)}, 1
    if int(os.environ.get("RANK", "0")) == 0:
        result.write_text(json.dumps(outcome))
    return code


def environment() -> dict[str, Any]:
    """What the table's header names: the device (this initialises CUDA: call it in a child)."""
    info: dict[str, Any] = {"cuda": torch.cuda.is_available(), "torch": torch.__version__}
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info["device"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
        info["gpus"] = torch.cuda.device_count()
    return info


CHECKS: dict[str, Callable[[Context], tuple[str, str]]] = {
    "bf16-exact-resume": check_bf16_resume,
    "fp16-scaler-exact-resume": check_fp16_resume,
    "ddp-save-resume-final": engine_row("ddp"),
    "fsdp2-save-resume-final": engine_row("fsdp2"),
    "zero2-save-resume-final": engine_row("zero2"),
    "zero3-save-resume-final": engine_row("zero3"),
    "qlora-4bit": check_qlora,
    "torch-compile-vs-eager": check_torch_compile,
    "grad-checkpointing-vs-off": check_gradient_checkpointing,
}


def run(check_id: str, ctx: Context) -> tuple[str, str]:
    """Run one row. The functional rows ask for deterministic kernels on CUDA (never enforced: a
    kernel without a deterministic version only warns); the throughput row runs as users would."""
    if not ctx.cuda:
        torch.set_num_threads(max(1, int(os.environ.get("GPU_CHECK_THREADS", "1"))))
    if check_id == "throughput-vs-hf":
        from gpu_check_throughput import check_throughput  # it builds on this module

        return check_throughput(ctx)
    if ctx.cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return CHECKS[check_id](ctx)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
