"""cycleformers 0.1.0 side of the CycleTrainer benchmark (run in bench/cycleformers_peer/.venv).

    bench/cycleformers_peer/.venv/bin/python bench/cycleformers_peer/run_peer.py \
        --mode causal|seq2seq|macct --steps 50 --batch 16 --seed 0 --out out/peer_causal.json

Modes: causal = two GPT-2-like models (task.build_gpt2, seeds S and S+1); seq2seq = two T5-like
models (task.build_t5, seeds S and S+1); macct = one GPT-2-like base (seed S) with LoRA adapters
A and B (r 16, alpha 32, dropout 0.05, target c_attn: cycleformers' ModelConfig defaults).
Settings: AdamW (optim adamw_torch) lr 3e-4, constant schedule, no warm-up, weight decay 0, no
accumulation, batch per direction `--batch`; generation greedy with cycleformers' hard-coded
max_new_tokens=100; torch threads 2. One cycleformers step = model B generates from a real B
batch and model A trains on it, then model A generates from a real A batch and model B trains
(two generate + two forward/backward + two optimizer steps).

Timing: a TrainerCallback stamps on_train_begin / on_step_begin / on_step_end. `steps_wall_s` is
first on_step_begin -> last on_step_end (all N steps, nothing else); `train_wall_s` is the whole
trainer.train() call (adds dataloader set-up and callbacks). Model/data/trainer construction
(incl. cycleformers' dataset.map with num_proc=4) is outside both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # task.py here, _machine.py in bench/

import task  # noqa: E402
from _machine import Load  # noqa: E402
from _machine import vm_mb as vm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["causal", "seq2seq", "macct"], required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-new-tokens", type=int, default=1, help="100 forces every row to the cap: equal work")
    ap.add_argument(
        "--no-gen-guard",
        action="store_true",
        help="seq2seq: drop the min_new_tokens=1 / suppress pad+bos workaround (crashes)",
    )
    ap.add_argument("--workdir", default=str(HERE / "out" / "trainer_tmp"))
    args = ap.parse_args()

    threads = task.set_threads(args.threads)

    import cycleformers
    import peft
    import torch
    import transformers
    from cycleformers import CycleTrainer, CycleTrainingArguments
    from transformers import TrainerCallback

    t_setup = time.perf_counter()
    tok = task.get_tokenizer()
    data = task.build_data(args.seed)
    if args.mode == "causal":
        model_A, model_B = task.build_gpt2(tok, args.seed), task.build_gpt2(tok, args.seed + 1)
        checksums = {"A": task.checksum(model_A), "B": task.checksum(model_B)}
        params = {"A": task.n_params(model_A), "B": task.n_params(model_B)}
        kw = {"models": {"A": model_A, "B": model_B}}
        for m in (model_A, model_B):  # equal settings with ours: at least one token before EOS
            m.generation_config.min_new_tokens = args.min_new_tokens
    elif args.mode == "seq2seq":
        model_A, model_B = task.build_t5(tok, args.seed), task.build_t5(tok, args.seed + 1)
        checksums = {"A": task.checksum(model_A), "B": task.checksum(model_B)}
        params = {"A": task.n_params(model_A), "B": task.n_params(model_B)}
        kw = {"models": {"A": model_A, "B": model_B}}
        if not args.no_gen_guard:
            # Workaround (NOTES.md): without it cycleformers crashes in the first step's B
            # direction: a T5 that starts with EOS/pad for every row decodes (skip_special_tokens)
            # to "" for the whole batch, the re-encoded encoder input has 0 columns and
            # T5Stack.forward raises "cannot reshape tensor of 0 elements into shape [-1, 0]".
            for m in (model_A, model_B):
                m.generation_config.min_new_tokens = 1
                m.generation_config.suppress_tokens = [tok.pad_token_id, tok.bos_token_id]
    else:
        base = task.build_gpt2(tok, args.seed)
        checksums = {"base": task.checksum(base)}
        params = {"base": task.n_params(base)}
        lora = peft.LoraConfig(
            task_type="CAUSAL_LM",
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules=["c_attn"],
            bias="none",
        )
        kw = {"models": base, "peft_configs": lora}
        base.generation_config.min_new_tokens = (
            args.min_new_tokens
        )  # equal settings with ours: at least one token before EOS

    targs = CycleTrainingArguments(
        output_dir=args.workdir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=args.seed,
        data_seed=args.seed,
    )

    class Stamps(TrainerCallback):
        def __init__(self):
            self.train_begin = None
            self.step_begin: list[float] = []
            self.step_end: list[float] = []
            self.logs: list[dict] = []

        def on_train_begin(self, a, s, c, **k):
            self.train_begin = time.perf_counter()

        def on_step_begin(self, a, s, c, **k):
            self.step_begin.append(time.perf_counter())

        def on_step_end(self, a, s, c, **k):
            self.step_end.append(time.perf_counter())

        def on_log(self, a, s, c, logs=None, **k):
            self.logs.append({"step": s.global_step, **{k2: float(v) for k2, v in (logs or {}).items()}})

    stamps = Stamps()
    result: dict = {
        "library": "cycleformers",
        "mode": args.mode,
        "steps": args.steps,
        "batch": args.batch,
        "seed": args.seed,
        "threads": threads,
        "versions": {
            "cycleformers": cycleformers.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "nproc": os.cpu_count(),
        "param_checksums": checksums,
        "params": params,
        "tokenizer_fingerprint": task.tokenizer_fingerprint(tok),
        "settings": {
            "optim": "adamw_torch",
            "lr": args.lr,
            "lr_scheduler": "constant",
            "warmup": 0,
            "weight_decay": 0.0,
            "grad_accum": 1,
            "max_new_tokens": 100,
            "generation": "greedy",
            "seq2seq_gen_guard": "min_new_tokens=1, suppress_tokens=[pad, bos]"
            if args.mode == "seq2seq" and not args.no_gen_guard
            else None,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["c_attn"]}
            if args.mode == "macct"
            else None,
        },
    }
    print(json.dumps({k: result[k] for k in ("mode", "versions", "param_checksums", "params")}), flush=True)
    try:
        trainer = CycleTrainer(
            args=targs,
            tokenizers=tok,
            train_dataset_A=data["unpaired_A"],
            train_dataset_B=data["unpaired_B"],
            callbacks=[stamps],
            **kw,
        )
        result["setup_s"] = time.perf_counter() - t_setup
        result["rss_before_train_mb"] = vm("VmRSS")
        result["hwm_before_train_mb"] = vm("VmHWM")
        try:  # reset VmHWM so that the value after train() is the peak *during* training
            Path("/proc/self/clear_refs").write_text("5")
            result["hwm_reset"] = True
        except OSError:
            result["hwm_reset"] = False
        load = Load()
        cpu0 = os.times()
        t0 = time.perf_counter()
        trainer.train()
        t1 = time.perf_counter()
        cpu1 = os.times()
        foreign = load.foreign()
    except Exception as e:  # record the library's failure as it is
        import traceback

        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()[-4000:]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(result["traceback"], file=sys.stderr)
        sys.exit(1)

    n = len(stamps.step_end)
    steps_wall = stamps.step_end[-1] - stamps.step_begin[0]
    per_step = [e - b for b, e in zip(stamps.step_begin, stamps.step_end)]
    last = stamps.logs[-1] if stamps.logs else {}
    result.update(
        {
            "steps_done": n,
            "train_wall_s": t1 - t0,
            "steps_wall_s": steps_wall,
            "steps_per_s": n / steps_wall,
            "samples_per_s": 2 * args.batch * n / steps_wall,
            "train_call_steps_per_s": n / (t1 - t0),
            "step_s_median": statistics.median(per_step),
            "step_s_first": per_step[0],
            "steps_per_s_excl_first": (n - 1) / (stamps.step_end[-1] - stamps.step_end[0]) if n > 1 else None,
            "peak_rss_mb_ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_mb_during_train": vm("VmHWM"),
            "children_ru_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "n_logs": len(stamps.logs),
            "last_loss_A": last.get("train_loss_A"),
            "last_loss_B": last.get("train_loss_B"),
            "first_loss_A": stamps.logs[0].get("train_loss_A") if stamps.logs else None,
            "first_loss_B": stamps.logs[0].get("train_loss_B") if stamps.logs else None,
            "last_lr_A": last.get("learning_rate_A"),
            "log_history_len": len(trainer.state.log_history),
            "foreign_cores_during_train": foreign,
            "own_cpu_s_during_train": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "step_s": per_step,
            "losses": stamps.logs,
        }
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    keys = (
        "mode",
        "steps_done",
        "steps_wall_s",
        "steps_per_s",
        "samples_per_s",
        "train_wall_s",
        "peak_rss_mb_ru_maxrss",
        "peak_rss_mb_during_train",
        "last_loss_A",
        "last_loss_B",
    )
    print(json.dumps({k: result[k] for k in keys}))


if __name__ == "__main__":
    main()
