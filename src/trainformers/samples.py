"""Samples while training: greedy continuations of a few prompts at every evaluation.

`SampleCallback` generates after each evaluation and logs one row, `{"samples": [{"prompt",
"completion"}, ...]}`, at the evaluation's step: into `log.jsonl` and the printed rows like any row,
to the trackers as text (`send_samples`), and `report.md` lists them. Decoding is greedy, so the
samples depend only on the weights, and the RNG state is restored afterwards: a run with samples
trains exactly as one without. `eval_prompts` takes prompts from a tokenised held-out set.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from .errors import ConfigError
from .events import TrainerCallback
from .losses import IGNORE_INDEX

__all__ = ["EVAL_PROMPT_TOKENS", "SampleCallback", "eval_prompts", "generate_samples", "run_prompts", "send_samples"]

logger = logging.getLogger(__name__)

EVAL_PROMPT_TOKENS = 16  # a held-out text row (or one labelled throughout) is cut to its first 16 tokens

# A prompt: text (encoded as `trainformers generate` encodes it), a conversation (`{"role", "content"}`
# messages, rendered with the tokenizer's chat template and a generation prompt), or token ids.
Prompt = str | Sequence[Mapping[str, str]] | Sequence[int]


class SampleCallback(TrainerCallback):
    """Generate greedily from `prompts` after every evaluation and log the completions.

    The row `{"samples": [{"prompt": ..., "completion": ...}, ...]}` is logged at the evaluation's
    step (once per step, also when several eval sets are evaluated). A completion stops at
    `max_new_tokens`, EOS or a chat template's end-of-turn token, which is not shown.

    Where it runs: on rank 0 alone; the other ranks go on to the next step and wait for it at its
    first collective. Under FSDP or DeepSpeed every rank generates, since a sharded model's forward
    needs them all (`synced_gpus` keeps them in step until the longest sample ends), and rank 0 logs.

    Args:
        prompts: Each a text, a conversation, or token ids (see `Prompt`; `eval_prompts` takes
            them from a held-out set).
        max_new_tokens: The longest completion, in tokens.

    Raises:
        ConfigError: no prompts or `max_new_tokens` < 1; at evaluation, no tokenizer
            (`processing_class`) on the Trainer.

    Example:
        >>> trainer = Trainer(model, args, ..., processing_class=tokenizer,
        ...                   callbacks=[SampleCallback(["The meaning of"], max_new_tokens=20)])
    """

    def __init__(self, prompts: Iterable[Prompt], max_new_tokens: int = 40) -> None:
        self.prompts = list(prompts)
        if not self.prompts:
            raise ConfigError("SampleCallback needs at least one prompt")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"SampleCallback max_new_tokens={max_new_tokens!r} must be an integer >= 1")
        self.max_new_tokens = max_new_tokens
        self._sampled_step: int | None = None

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        processing_class: Any = None,
        log_row: Any = None,
        **kwargs: Any,
    ) -> None:
        if model is None or state.global_step == self._sampled_step:
            return
        self._sampled_step = state.global_step
        collective = bool(getattr(args, "fsdp", None) or getattr(args, "deepspeed", None)) and _world_size() > 1
        if not (collective or state.is_world_process_zero):
            return
        if processing_class is None:
            raise ConfigError("SampleCallback needs the Trainer's processing_class (a tokenizer) to encode its prompts")
        samples = generate_samples(model, processing_class, self.prompts, self.max_new_tokens, synced=collective)
        if state.is_world_process_zero and log_row is not None:
            log_row({"samples": samples})


def generate_samples(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], max_new_tokens: int, *, synced: bool = False
) -> list[dict[str, str]]:
    """Greedy completions of `prompts`, one at a time (no padding to get right).

    The model is put in eval mode and back in the mode it was in; the CPU and (current) accelerator
    RNG states are restored, so nothing the training does next sees a difference.

    Args:
        model: A `transformers` model with `generate` (a PEFT model works too).
        tokenizer: Its tokenizer.
        prompts: Texts, conversations or token ids (see `Prompt`).
        max_new_tokens: The longest completion.
        synced: Keep every rank generating until all are done (a sharded model; see `SampleCallback`).

    Returns:
        `[{"prompt": shown prompt, "completion": decoded new tokens}, ...]`, in the order of `prompts`.
    """
    from .data.chat import stop_token_ids

    device = next(model.parameters()).device
    stop = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop or [0])[0]
    was_training = model.training
    model.eval()
    rng = {"devices": []} if device.type == "cpu" else {"devices": [device.index or 0], "device_type": device.type}
    samples = []
    try:
        with torch.random.fork_rng(**rng), torch.no_grad():
            for prompt in prompts:
                ids = _encode(tokenizer, prompt, stop).to(device)
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=stop or None,
                    pad_token_id=pad,
                    synced_gpus=synced,
                )
                new = out[0, ids.shape[1] :].tolist()
                new = list(itertools.takewhile(lambda t: t not in stop, new))  # up to the stop token, not shown
                samples.append({"prompt": _shown(tokenizer, prompt), "completion": tokenizer.decode(new)})
    finally:
        model.train(was_training)
    return samples


def _encode(tokenizer: Any, prompt: Prompt, stop: list[int]) -> torch.Tensor:
    if isinstance(prompt, str):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    elif prompt and isinstance(prompt[0], Mapping):
        from .data.chat import render_chat

        text = render_chat(list(prompt), tokenizer, add_generation_prompt=True)  # type: ignore[arg-type]
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:
        ids = torch.tensor([list(prompt)], dtype=torch.long)
    if ids.shape[1] == 0:  # an empty prompt: start from BOS (or EOS, a document boundary)
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else (stop or [0])[0]
        ids = torch.tensor([[start]])
    return ids


def _shown(tokenizer: Any, prompt: Prompt) -> str:
    """A prompt as the log shows it: a text as given, a conversation's last message, ids decoded."""
    if isinstance(prompt, str):
        return prompt
    if prompt and isinstance(prompt[0], Mapping):
        return str(prompt[-1]["content"])  # type: ignore[index]
    return tokenizer.decode(list(prompt), skip_special_tokens=True)


def eval_prompts(dataset: Any, n: int, max_tokens: int = EVAL_PROMPT_TOKENS) -> list[list[int]]:
    """Prompts from the first `n` rows of a tokenised held-out set (`input_ids`, optional `labels`).

    A row whose first tokens are unlabelled (a conversation, loss on the answers) gives the tokens
    before its first label: the conversation up to its first answer, with the chat template's
    generation prompt. Any other row (text; a conversation trained on its prompt too) gives its
    first `max_tokens` tokens.

    Returns:
        Token id lists, at most `n` (fewer when the set has fewer rows).
    """
    prompts = []
    for row in itertools.islice(dataset, n):
        ids, labels = list(row["input_ids"]), row.get("labels")
        first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), 0) if labels is not None else 0
        prompts.append(ids[:first] if first else ids[:max_tokens])
    return prompts


def run_prompts(config: Any, eval_dataset: Any) -> list[Prompt]:
    """The prompts of a run file's `model.generate_every_eval`: N takes them from the eval set
    (`eval_prompts`); listed prompts are texts, or in an instruction run user turns (after
    `data.system_prompt` when set), rendered with the run's chat template."""
    wanted = config.model.generate_every_eval
    if isinstance(wanted, int):
        return list(eval_prompts(eval_dataset, wanted))
    if config.data.training_mode != "instruction":
        return list(wanted)
    system = [{"role": "system", "content": config.data.system_prompt}] if config.data.system_prompt else []
    return [[*system, {"role": "user", "content": prompt}] for prompt in wanted]


def send_samples(trackers: Iterable[Any], samples: list[dict[str, str]], step: int) -> None:
    """Send a samples row to the trackers that take text: a table where the tracker has `log_table`
    (W&B, ClearML), Markdown text on TensorBoard (`add_text`), a text artifact on MLflow. Other
    trackers get nothing (`log.jsonl` and `report.md` hold every sample)."""
    rows = [[step, s["prompt"], s["completion"]] for s in samples]
    text = "\n\n".join(f"**{_md(s['prompt'])}** → {_md(s['completion'])}" for s in samples)
    for tracker in trackers:
        if hasattr(tracker, "log_table"):
            tracker.log_table("samples", columns=["step", "prompt", "completion"], data=rows, step=step)
        elif tracker.name == "tensorboard":
            tracker.log({"samples": text}, step=step)
        elif tracker.name == "mlflow":
            import mlflow

            mlflow.log_text(text, f"samples/step_{step}.md")


def _md(text: str) -> str:
    """Text inside Markdown as written: line breaks kept, `*` and `_` not read as emphasis."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_").replace("\n", "  \n")


def _world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
