"""Saving and publishing: the HF `Trainer` methods that write a model, its card, results and state
(`save_model`, `push_to_hub`, `create_model_card`, `hyperparameter_search`, `log_metrics`,
`save_metrics`, `save_state`).

`Trainer` inherits these methods (as it does `EvaluationMethods`); a subclass overrides them as in
transformers. They use the trainer's `args`, `accelerator`, `model`/`model_wrapped`, `processing_class`,
callbacks and state.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt
from .callbacks import HubCallback
from .errors import ConfigError
from .results import format_metrics_block, metrics_format, save_metrics


class PublishingMethods:
    """The saving and publishing methods of `Trainer` (see the module docstring for what they rely on)."""

    args: Any
    accelerator: Any
    model: Any
    state: Any
    control: Any
    callback_handler: Any
    processing_class: Any
    _shards: Any
    is_world_process_zero: Callable[[], bool]

    # ---- experiments: search, model card (trainformers.search, trainformers.modelcard) -----

    def hyperparameter_search(
        self,
        hp_space: Callable[[Any], dict[str, Any]] | None = None,
        compute_objective: Callable[[dict[str, float]], float] | None = None,
        n_trials: int = 20,
        direction: str | list[str] = "minimize",
        backend: str | None = None,
        hp_name: Callable[[Any], str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Search hyperparameters with optuna (HF semantics); needs `model_init`. See `trainformers.search`."""
        from .search import run_hyperparameter_search

        return run_hyperparameter_search(
            self,
            hp_space=hp_space,
            compute_objective=compute_objective,
            n_trials=n_trials,
            direction=direction,
            backend=backend,
            hp_name=hp_name,
            **kwargs,
        )

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> Path:
        """Write README.md (a model card) into args.output_dir (`HubCallback.write_model_card`)."""
        return self.callback_handler.find_or_add(HubCallback).write_model_card(
            self,
            language=language,
            license=license,
            tags=tags,
            model_name=model_name,
            finetuned_from=finetuned_from,
            tasks=tasks,
            dataset_tags=dataset_tags,
            dataset=dataset,
            dataset_args=dataset_args,
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (and tokenizer) in HF format to `output_dir` (default: args.output_dir)."""
        folder = Path(output_dir or self.args.output_dir)
        self._save(folder, _internal_call=_internal_call)
        if self.args.push_to_hub and not _internal_call and self.is_world_process_zero():
            self._push_to_hub(folder, "Model save")

    def _save(self, output_dir: Path, _internal_call: bool = False) -> None:
        """The model in HF format (consolidated, whatever the engine), its tokenizer, and the arguments.

        Inside a checkpoint whose model is saved as shards (`checkpoint.save_checkpoint`), only the
        configuration and tokenizer are written here.
        """
        accel = self.accelerator
        model = getattr(self, "model_wrapped", self.model)
        main = self.args.should_save
        if main:
            output_dir.mkdir(parents=True, exist_ok=True)
        shards = self._shards
        if _internal_call and shards is not None and shards.shard_checkpoints:
            config: Any = getattr(accel.unwrap_model(model), "config", None)
            if main and hasattr(config, "save_pretrained"):
                config.save_pretrained(output_dir)
        else:
            # a sharded or partitioned model (FSDP, ZeRO-3) is gathered even on one process
            gather = accel.num_processes > 1 or accel.distributed_type.value in ("FSDP", "DEEPSPEED")
            state_dict = accel.get_state_dict(model) if gather else None
            ckpt.save_model_files(accel.unwrap_model(model), output_dir, state_dict=state_dict, is_main=main)
        if main and self.processing_class is not None and hasattr(self.processing_class, "save_pretrained"):
            self.processing_class.save_pretrained(output_dir)
        if main and not _internal_call:
            ckpt.write_json(self.args.to_dict(), output_dir / ckpt.ARGS_NAME)

    # ---- Hub (trainformers.hub; the real upload is not exercised in CI, only a fake) ---------

    def push_to_hub(self, commit_message: str = "End of training", blocking: bool = True, **kwargs: Any) -> Any:
        """Save the model to args.output_dir and upload that folder (with its model card) to the Hub.

        Waits for the background checkpoint uploads first. Checkpoint folders, `*.tmp` and `_*` are
        not uploaded. The repository is args.hub_model_id or the output_dir's name, the branch
        args.hub_revision. Works with args.push_to_hub=False too (HF semantics).

        Args:
            commit_message: the Hub commit message.
            blocking: wait for the upload; False returns a Future (a failure is then logged, not raised).
            **kwargs: passed to `create_model_card` (e.g. `tags`, `language`, `dataset`).

        Returns:
            upload_folder's CommitInfo, a Future of it when `blocking=False`, None off the main process.

        Raises:
            ConfigError: `token`, `revision` or `private` given (set the hub_* arguments instead).
        """
        unsupported = sorted(set(kwargs) & {"token", "revision", "private"})
        if unsupported:
            raise ConfigError(f"push_to_hub({', '.join(unsupported)}=...) is not supported; set args.hub_* instead")
        output_dir = Path(self.args.output_dir)
        self._save(output_dir)  # every process: a sharded model gathers its weights
        if not self.is_world_process_zero():
            return None
        return self._push_to_hub(output_dir, commit_message, blocking, **kwargs)

    def _push_to_hub(self, folder: Path, commit_message: str, blocking: bool = True, **card_kwargs: Any) -> Any:
        """Upload `folder` to the repository root (`HubCallback.push_model`; with a model card for the output_dir)."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        return self.callback_handler.find_or_add(HubCallback).push_model(
            self, folder, commit_message, blocking, **card_kwargs
        )

    # ---- results, as HF's example scripts save them (trainformers.results) ------------------

    def metrics_format(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return metrics_format(metrics)

    def log_metrics(self, split: str, metrics: dict[str, Any]) -> None:
        """Print the `***** {split} metrics *****` block (main process)."""
        if self.is_world_process_zero():
            print(format_metrics_block(split, metrics))

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
        """Write `{split}_results.json` (and update `all_results.json`) in args.output_dir (main process)."""
        if self.is_world_process_zero():
            save_metrics(self.args.output_dir, split, metrics, combined)

    def save_state(self) -> None:
        """Write `trainer_state.json` into args.output_dir (main process)."""
        if self.is_world_process_zero():
            Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
            self.state.save_to_json(Path(self.args.output_dir) / ckpt.STATE_NAME)

    def get_num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)
