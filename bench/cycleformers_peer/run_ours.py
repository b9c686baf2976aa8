"""trainformers side of the CycleTrainer benchmark (run with the repo's .venv), same task and settings
as run_peer.py (cycleformers 0.1.0 in bench/cycleformers_peer/.venv):

    .venv/bin/python bench/cycleformers_peer/run_ours.py --mode causal|seq2seq|macct --steps 20 --out out/ours.json

--gen parity: greedy, at most 100 new tokens, stopping when every row has emitted EOS, as cycleformers
does, min_new_tokens 1 (set for the peer too); --gen bounded: min_new_tokens 1 and
max_new_tokens_ratio 1.5 (new tokens bounded by 1.5x the longest input), our recommended setting. Timing as in run_peer.py (callback stamps).
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
    ap.add_argument("--gen", choices=["parity", "bounded"], default="parity")
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-new-tokens", type=int, default=1, help="100 forces every row to the cap: equal work")
    ap.add_argument("--workdir", default=str(HERE / "out" / "ours_tmp"))
    args = ap.parse_args()
    threads = task.set_threads(args.threads)

    import peft
    import torch
    import transformers
    from datasets import Dataset

    import trainformers
    from trainformers import CycleTrainer, CycleTrainingArguments, TrainerCallback

    t_setup = time.perf_counter()
    tok = task.get_tokenizer()
    data = task.build_data(args.seed)
    if args.mode in ("causal", "seq2seq"):
        build = task.build_gpt2 if args.mode == "causal" else task.build_t5
        model_A, model_B = build(tok, args.seed), build(tok, args.seed + 1)
        checksums = {"A": task.checksum(model_A), "B": task.checksum(model_B)}
        params = {"A": task.n_params(model_A), "B": task.n_params(model_B)}
        kw = {"models": {"A": model_A, "B": model_B}}
    else:
        base = task.build_gpt2(tok, args.seed)
        checksums = {"base": task.checksum(base)}
        params = {"base": task.n_params(base)}
        lora = peft.LoraConfig(
            task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["c_attn"], bias="none"
        )
        kw = {"models": base, "peft_configs": lora}
    # parity: cycleformers' rule, a hard cap of 100 new tokens and a stop when every row has emitted
    # EOS, with min_new_tokens 1 in both libraries (run_peer.py sets it in the generation config).
    min_new = args.min_new_tokens
    ratio = 1.5 if args.gen == "bounded" else None
    targs = CycleTrainingArguments(
        output_dir=args.workdir,
        overwrite_output_dir=True,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=args.seed,
        data_seed=args.seed,
        max_new_tokens_A=100,
        max_new_tokens_B=100,
        min_new_tokens_A=min_new,
        min_new_tokens_B=min_new,
        max_new_tokens_ratio_A=ratio,
        max_new_tokens_ratio_B=ratio,
        sep_seq="\n\n",
        max_seq_length=512,
    )

    class Stamps(TrainerCallback):
        def __init__(self):
            self.step_begin: list[float] = []
            self.step_end: list[float] = []
            self.logs: list[dict] = []

        def on_step_begin(self, a, s, c, **k):
            self.step_begin.append(time.perf_counter())

        def on_step_end(self, a, s, c, **k):
            self.step_end.append(time.perf_counter())

        def on_log(self, a, s, c, logs=None, **k):
            self.logs.append({"step": s.global_step, **{k2: float(v) for k2, v in (logs or {}).items()}})

    stamps = Stamps()
    result: dict = {
        "library": "trainformers",
        "mode": args.mode,
        "gen": args.gen,
        "steps": args.steps,
        "batch": args.batch,
        "seed": args.seed,
        "threads": threads,
        "versions": {
            "trainformers": trainformers.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "param_checksums": checksums,
        "params": params,
        "tokenizer_fingerprint": task.tokenizer_fingerprint(tok),
    }
    trainer = CycleTrainer(
        targs,
        tokenizers=tok,
        callbacks=[stamps],
        train_dataset_A=Dataset.from_dict({"text": list(data["unpaired_A"]["text"])}),
        train_dataset_B=Dataset.from_dict({"text": list(data["unpaired_B"]["text"])}),
        **kw,
    )
    result["setup_s"] = time.perf_counter() - t_setup
    result["rss_before_train_mb"] = vm("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    load = Load()
    t0 = time.perf_counter()
    trainer.train()
    t1 = time.perf_counter()
    n = len(stamps.step_end)
    steps_wall = stamps.step_end[-1] - stamps.step_begin[0]
    per_step = [e - b for b, e in zip(stamps.step_begin, stamps.step_end)]
    rows = [r for r in stamps.logs if "loss_A" in r]
    result.update(
        {
            "steps_done": n,
            "train_wall_s": t1 - t0,
            "steps_wall_s": steps_wall,
            "steps_per_s": n / steps_wall,
            "samples_per_s": 2 * args.batch * n / steps_wall,
            "step_s_median": statistics.median(per_step),
            "peak_rss_mb_ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_mb_during_train": vm("VmHWM"),
            "foreign_cores_during_train": load.foreign(),
            "first_loss_A": rows[0]["loss_A"] if rows else None,
            "first_loss_B": rows[0]["loss_B"] if rows else None,
            "last_loss_A": rows[-1]["loss_A"] if rows else None,
            "last_loss_B": rows[-1]["loss_B"] if rows else None,
            "generation_share": statistics.mean(r["generation_share"] for r in rows) if rows else None,
            "dropped_rows": sum(r.get("dropped_A", 0) + r.get("dropped_B", 0) for r in rows),
            "step_s": per_step,
        }
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    keys = (
        "mode",
        "gen",
        "steps_done",
        "steps_per_s",
        "samples_per_s",
        "peak_rss_mb_during_train",
        "last_loss_A",
        "last_loss_B",
    )
    print(json.dumps({k: result[k] for k in keys}))


if __name__ == "__main__":
    main()
