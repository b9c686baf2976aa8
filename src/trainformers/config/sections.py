"""The sections of a `trainformers train` run file: `model`, `data` (and `training`), as `RunConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .fields import (
    DATA_FORMATS,
    MODEL_DTYPES,
    MODEL_PRESETS,
    TRAINING_MODES,
    arg,
    check_field_types,
    check_int,
    check_seed,
    choice,
)
from .mixture import STOPPING_STRATEGIES, source_sections
from .training import TrainingArguments
from .yaml_io import YamlDumper


@dataclass
class ModelSection:
    """The `model` section: a pretrained checkpoint, or the size of a model trained from scratch."""

    name_or_path: str | None = arg(
        None, "Hub name or local directory of a pretrained model; None trains a new model from scratch."
    )
    tokenizer: str | None = arg(
        None, "Tokenizer name or path; None: name_or_path's, or from scratch a BPE tokenizer trained on the data."
    )
    vocab_size: int = arg(4096, "Vocabulary size of a tokenizer trained on the data.")
    hidden_size: int = arg(128, "Width of the from-scratch model.")
    num_layers: int = arg(4, "Number of decoder layers of the from-scratch model.")
    num_heads: int = arg(4, "Attention heads; hidden_size must be divisible by it.")
    num_kv_heads: int | None = arg(None, "Key/value heads for grouped-query attention; None means num_heads.")
    intermediate_size: int | None = arg(None, "MLP width; None lets the model builder derive it from hidden_size.")
    max_position_embeddings: int = arg(512, "Longest sequence the model can attend over.")
    dropout: float = arg(0.0, "Dropout probability, in [0, 1).")
    tie_word_embeddings: bool = arg(True, "Share the input embedding and output projection weights.")
    preset: str | None = arg(
        None,
        "DecoderLM size preset (nano, tiny, small, base): fills hidden_size, num_layers, num_heads and "
        "num_kv_heads where they are left at their defaults.",
    )
    num_experts: int = arg(1, "More than 1 turns the MLPs of moe_layers into a top-k mixture of experts.")
    num_experts_per_tok: int = arg(2, "Experts each token is routed to (top-k).")
    moe_layers: list[int] | None = arg(None, "Indices of the layers that get experts; None means every layer.")
    capacity_factor: float | None = arg(
        None, "Cap each expert at capacity_factor * tokens * k / experts; None: no cap."
    )
    load_balance_coef: float | None = arg(
        None, "Weight of the router load-balance loss C*sum(f_i*P_i); None keeps the model config's (0.01)."
    )
    auxiliary_coef: float | None = arg(
        None, "Weight of the auxiliary usage loss sum((f_i-1/C)^2); None keeps the model config's (0.0)."
    )
    z_loss_coef: float | None = arg(None, "Weight of the router z-loss; None keeps the model config's (0.001).")
    load_in_4bit: bool = arg(
        False, "Load the pretrained base model quantized to 4 bits (bitsandbytes; needs a CUDA GPU)."
    )
    load_in_8bit: bool = arg(
        False, "Load the pretrained base model quantized to 8 bits (bitsandbytes; needs a CUDA GPU)."
    )
    bnb_4bit_quant_type: str = arg("nf4", "4-bit data type: nf4 or fp4.")
    bnb_4bit_compute_dtype: str = arg("bfloat16", "Dtype of the 4-bit matmuls: bfloat16, float16 or float32.")
    bnb_4bit_use_double_quant: bool = arg(
        False, "Quantize the 4-bit quantization constants too (saves ~0.4 bit/param)."
    )
    dtype: str = arg("float32", "Dtype to load or build the weights in: float32, bfloat16, float16 or auto.")
    trust_remote_code: bool = arg(False, "Allow running model code downloaded from the Hub.")
    save_dtype: str | None = arg(
        None, "Dtype of the weights written to final/: bfloat16, float16 or float32; None: the dtype they trained in."
    )
    sample_prompt: str = arg("The ", "Prompt of the sample generated at the end of a run; '' disables it.")
    sample_max_new_tokens: int = arg(
        40, "Tokens generated for the end-of-run sample and each generate_every_eval sample."
    )
    generate_every_eval: list[str] | int | None = arg(
        None,
        "Greedy samples at every evaluation (log.jsonl, the trackers, report.md): a list of prompts, or N for "
        "the first N prompts of the eval set (instruction rows: the conversation up to its first answer; "
        "text: a row's first 16 tokens); None: off.",
    )

    def __post_init__(self) -> None:
        check_field_types(self, "model.")
        self.dtype = choice("model.dtype", self.dtype, MODEL_DTYPES)
        if self.save_dtype is not None:
            self.save_dtype = choice("model.save_dtype", self.save_dtype, MODEL_DTYPES[:3])
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "max_position_embeddings"):
            check_int(f"model.{name}", getattr(self, name), 1)
        check_int("model.sample_max_new_tokens", self.sample_max_new_tokens, 0)
        self._check_generate_every_eval()
        if self.preset is not None:
            self.preset = choice("model.preset", self.preset, tuple(MODEL_PRESETS))
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name, value in zip(
                ("hidden_size", "num_layers", "num_heads", "num_kv_heads"), MODEL_PRESETS[self.preset]
            ):
                if getattr(self, name) == defaults[name]:  # a size set explicitly (not the default) wins
                    setattr(self, name, value)
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("Can't set both model.load_in_4bit and model.load_in_8bit; pick one")
        self.bnb_4bit_quant_type = choice("model.bnb_4bit_quant_type", self.bnb_4bit_quant_type, ("nf4", "fp4"))
        self.bnb_4bit_compute_dtype = choice(
            "model.bnb_4bit_compute_dtype", self.bnb_4bit_compute_dtype, ("bfloat16", "float16", "float32")
        )
        check_int("model.num_experts", self.num_experts, 1)
        if self.num_experts > 1 and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ConfigError(
                f"model.num_experts_per_tok={self.num_experts_per_tok} must be between 1 and "
                f"model.num_experts={self.num_experts}"
            )
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        check_int("model.num_kv_heads", self.num_kv_heads, 1)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} must be divisible by model.num_heads={self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model.num_heads={self.num_heads} must be divisible by model.num_kv_heads={self.num_kv_heads}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout={self.dropout!r} must be in [0, 1)")

    def _check_generate_every_eval(self) -> None:
        prompts = self.generate_every_eval
        if isinstance(prompts, str):
            self.generate_every_eval = prompts = [prompts]  # one prompt
        if isinstance(prompts, int):
            check_int("model.generate_every_eval", prompts, 1)
        elif prompts is not None and not (
            isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)
        ):
            raise ConfigError(
                f"model.generate_every_eval={prompts!r} must be a list of prompts, a number of eval-set rows, or null"
            )
        if prompts is not None and self.sample_max_new_tokens < 1:
            raise ConfigError(
                "Can't set both model.generate_every_eval and model.sample_max_new_tokens=0: the samples would be "
                "empty; raise sample_max_new_tokens"
            )


@dataclass
class DataSection:
    """The `data` section: where the rows come from and how they become training batches."""

    source: str | None = arg(
        None,
        "None uses the corpus embedded in Python's standard library; else a local file (json, jsonl, csv, "
        "parquet, txt), several files or a glob, a save_to_disk directory, or a Hub dataset name.",
    )
    sources: list[dict[str, Any]] | None = arg(
        None,
        "A mixture instead of data.source: a list of {source, weight, num_samples, ...}; weight: its share of "
        "the training rows (on every entry or none), num_samples: its first N rows; an entry may also set subset, "
        "split, eval_split, revision, text_field, format, template, response_field, system_prompt, "
        "num_eval_samples (else the data section's).",
    )
    stopping_strategy: str = arg(
        "all_exhausted",
        "Weighted data.sources: all_exhausted draws until every source was read once (the smaller ones "
        "repeat), first_exhausted stops when one runs out (the rest of the others unused).",
    )
    subset: str | None = arg(None, "Hub dataset configuration name (e.g. 'wikitext-2-raw-v1').")
    split: str = arg("train", "Split to train on.")
    eval_split: str | None = arg(
        None, "Named split to evaluate on (e.g. 'validation'); None carves validation_split_percentage from train."
    )
    revision: str | None = arg(None, "Hub dataset revision (branch, tag or commit).")
    streaming: bool = arg(False, "Stream the dataset instead of loading it (data larger than memory); needs max_steps.")
    training_mode: str = arg(
        "pretraining",
        "pretraining (text -> next-token prediction) or instruction (chat/instruction rows, loss on assistant "
        "tokens only); instruction_finetuning is an alias.",
    )
    text_field: str | list[str] = arg("text", "Column(s) holding the text (pretraining); several are joined.")
    format: str = arg(
        "auto",
        "Instruction row format: auto, messages, conversations, prompt_response, alpaca or template.",
    )
    template: str | None = arg(
        None, "For format 'template': the user turn as a Python format string over the row, e.g. 'Q: {question}'."
    )
    response_field: str | None = arg(None, "For format 'template': the column holding the assistant's answer.")
    system_prompt: str | None = arg(None, "A system message added to instruction rows that have none.")
    train_on_prompt: bool = arg(False, "Instruction mode: also compute the loss on the prompt (user/system) tokens.")
    chat_template: str | None = arg(
        None,
        "A chat template by name (alpaca, chatml, gemma, llama2, llama3, mistral, phi3, vicuna, zephyr) or a Jinja "
        "template, overriding the tokenizer's; None uses the tokenizer's, or the built-in default.",
    )
    max_length: int = arg(128, "Longest sequence in tokens: the block length when packing, else the truncation length.")
    packing: bool = arg(
        True,
        "Pretraining: join documents with EOS and cut blocks of max_length, all full but the last (padded); no token dropped. "
        "Instruction: pack conversations padding-free (positions and labels kept per conversation).",
    )
    padding_free: bool = arg(
        False,
        "Pretraining: pack whole documents per batch with position_ids restarting per document (documents "
        "kept apart) instead of cutting blocks; implies packing: false.",
    )
    pad_to_multiple_of: int | None = arg(8, "Dynamic padding rounds each batch's length up to this multiple.")
    padding_side: str = arg("right", "Side to pad on: right (training) or left.")
    validation_split_percentage: float = arg(
        5, "Percent of the data held out for evaluation when no eval_split is named; 0 disables it."
    )
    num_samples: int | None = arg(None, "Use only the first N rows of the source; None uses all.")
    num_eval_samples: int | None = arg(
        None, "Hold out exactly N rows (a stream: its first N) instead of validation_split_percentage."
    )
    num_proc: int | None = arg(None, "Processes for tokenisation (datasets.map); None tokenises in this process.")
    seed: int | None = arg(None, "Seed for shuffling and the held-out split; None uses training.seed.")

    def __post_init__(self) -> None:
        check_field_types(self, "data.")
        check_seed("data.seed", self.seed)
        check_int("data.max_length", self.max_length, 1)
        if self.num_samples is not None:
            check_int("data.num_samples", self.num_samples, 1)
        if self.num_proc is not None:
            check_int("data.num_proc", self.num_proc, 1)
        if self.num_eval_samples is not None:
            check_int("data.num_eval_samples", self.num_eval_samples, 1)
        if self.pad_to_multiple_of is not None:
            check_int("data.pad_to_multiple_of", self.pad_to_multiple_of, 1)
        if not 0 <= self.validation_split_percentage < 100:
            value = self.validation_split_percentage
            raise ConfigError(f"data.validation_split_percentage={value!r} must be in [0, 100)")
        mode = {"instruction_finetuning": "instruction"}.get(self.training_mode, self.training_mode)
        self.training_mode = choice("data.training_mode", mode, TRAINING_MODES)
        self.format = choice("data.format", self.format, DATA_FORMATS)
        self.padding_side = choice("data.padding_side", self.padding_side, ("right", "left"))
        if isinstance(self.text_field, (list, tuple)):
            if not self.text_field or not all(isinstance(f, str) for f in self.text_field):
                raise ConfigError(f"data.text_field={self.text_field!r} must be a column name or a list of them")
            self.text_field = list(self.text_field)
        if self.padding_free:
            self.packing = False  # documented: padding-free is the other way to pack
        if self.format == "template" and (not self.template or not self.response_field):
            raise ConfigError(
                "data.format='template' needs data.template (e.g. 'Q: {question}') and data.response_field"
            )
        if self.chat_template is not None:
            from ..data.chat_templates import resolve_chat_template

            resolve_chat_template(self.chat_template)  # an unknown name fails here, before anything is read
        self.stopping_strategy = choice("data.stopping_strategy", self.stopping_strategy, STOPPING_STRATEGIES)
        if self.sources is not None:
            if self.source is not None:
                raise ConfigError("Can't set both data.source and data.sources; make data.source an entry of sources")
            source_sections(self)  # every entry checked now, before any data is read


SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "training": TrainingArguments, "peft": dict}


@dataclass
class RunConfig:
    """A whole run: the `model`, `data` and `training` sections of a run file, and its number of processes."""

    model: ModelSection = field(default_factory=ModelSection, metadata={"help": "What is trained."})
    data: DataSection = field(default_factory=DataSection, metadata={"help": "What it is trained on."})
    training: TrainingArguments = field(default_factory=TrainingArguments, metadata={"help": "How it is trained."})
    peft: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "PEFT adapter options (LoraConfig fields, `method` for other PEFT methods); None trains fully."
        },
    )
    num_processes: int | None = field(
        default=None,
        metadata={
            "help": "Processes `trainformers train` launches (a run file's training.num_gpus; --num-processes "
            "on the command line); None: one, or as many as an outside launcher started."
        },
    )

    early_stopping: tuple[int, float] | None = field(
        default=None,
        metadata={
            "help": "(patience, threshold) of EarlyStoppingCallback, from a run file's "
            "training.early_stopping_patience/early_stopping_threshold; None: no early stopping."
        },
    )

    mapped: list[str] = field(
        default_factory=list,
        compare=False,
        metadata={
            "help": "One line per seed-layout key the run file used and what it became (printed in the run "
            "header; config.yaml holds the keys it became)."
        },
    )

    def __post_init__(self) -> None:
        if self.data.seed is None:
            self.data.seed = self.training.seed
        if self.model.generate_every_eval is not None and self.training.eval_strategy == "no":
            raise ConfigError(
                "model.generate_every_eval samples at each evaluation, but training.eval_strategy is 'no'; "
                "set training.eval_strategy to steps or epoch, or drop generate_every_eval"
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved configuration as plain data, one dict per section."""
        stopping = (
            {"early_stopping_patience": self.early_stopping[0], "early_stopping_threshold": self.early_stopping[1]}
            if self.early_stopping
            else {}
        )
        return {
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "training": {**self.training.to_dict(), **stopping},
            **({"peft": dict(self.peft)} if self.peft else {}),
        }

    def to_yaml(self) -> str:
        """The resolved configuration as YAML that `load_config` reads back to an equal config.

        Except `num_processes`, a comment on top: how many processes run is the command line's to say.
        """
        text = yaml.dump(self.to_dict(), Dumper=YamlDumper, sort_keys=False, allow_unicode=True)
        if self.num_processes is not None:
            n = self.num_processes
            text = f"# on {n} process{'es' if n != 1 else ''}: trainformers train FILE --num-processes {n}\n{text}"
        return text

    def save(self, path: str | Path) -> None:
        """Write `to_yaml()` to `path`, creating its parent directory."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")


# YAML 1.1 (PyYAML's default) reads `no`/`off` as False, so `eval_strategy: no` would become a
# bool, and `3e-4` (no dot) as a string. The loader uses the YAML 1.2 rules for both.
