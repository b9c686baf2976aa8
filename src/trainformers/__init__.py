"""trainformers: an HF-compatible Trainer on Accelerate, with exact resume and a YAML-config CLI."""

from transformers.trainer_utils import EvalPrediction, PredictionOutput, TrainOutput

from .callbacks import EarlyStoppingCallback, ProgressCallback, TrainerCallback
from .config import RunConfig, TrainingArguments, load_config
from .cycle.config import CycleTrainingArguments
from .cycle.trainer import CycleTrainer
from .errors import CheckpointError, ConfigError, DataError, TrainformersError
from .models import DecoderLM, DecoderLMConfig
from .samples import SampleCallback
from .seq2seq import Seq2SeqTrainer, Seq2SeqTrainingArguments
from .state import TrainerControl, TrainerState
from .trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "CycleTrainer",
    "CycleTrainingArguments",
    "DataError",
    "DecoderLM",
    "DecoderLMConfig",
    "EarlyStoppingCallback",
    "EvalPrediction",
    "PredictionOutput",
    "ProgressCallback",
    "RunConfig",
    "SampleCallback",
    "Seq2SeqTrainer",
    "Seq2SeqTrainingArguments",
    "TrainOutput",
    "Trainer",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
    "TrainformersError",
    "TrainingArguments",
    "load_config",
]
