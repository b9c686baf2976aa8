"""Callbacks and run state, driven through `CallbackHandler` with fake args (no model, no trainer)."""

from __future__ import annotations

import inspect
import json
import logging
import math
from types import SimpleNamespace

import pytest

from trainformers.callbacks import (
    CallbackHandler,
    DefaultFlowCallback,
    EarlyStoppingCallback,
    JsonlLoggerCallback,
    PrinterCallback,
    ProgressCallback,
    TrackerCallback,
    TrainerCallback,
)
from trainformers.errors import ConfigError
from trainformers.state import ExportableState, TrainerControl, TrainerState

EVENTS = [
    "on_init_end",
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_step_begin",
    "on_pre_optimizer_step",
    "on_optimizer_step",
    "on_substep_end",
    "on_step_end",
    "on_evaluate",
    "on_predict",
    "on_save",
    "on_log",
    "on_prediction_step",
    "on_push_begin",
]


def make_args(**overrides):
    """The TrainingArguments attributes the callbacks read, with HF defaults."""
    args = dict(
        output_dir="out",
        logging_strategy="steps",
        logging_steps=500,
        logging_first_step=False,
        eval_strategy="no",
        eval_steps=None,
        eval_delay=0,
        save_strategy="steps",
        save_steps=500,
        metric_for_best_model=None,
        greater_is_better=None,
        load_best_model_at_end=False,
        disable_tqdm=False,
        max_steps=-1,
        num_train_epochs=3,
    )
    args.update(overrides)
    return SimpleNamespace(**args)


class Recorder(TrainerCallback):
    """Records (name, event, selected kwargs) into a shared list."""

    def __init__(self, calls=None, name="class"):
        self.calls = calls if calls is not None else []
        self.name = name

    def __getattribute__(self, attr):
        if attr in EVENTS:

            def record(args, state, control, **kwargs):
                self.calls.append((self.name, attr, kwargs))

            return record
        return super().__getattribute__(attr)


# --- dispatch -------------------------------------------------------------------------------


def test_every_hf_event_exists_with_hf_signature():
    hf = pytest.importorskip("transformers.trainer_callback")
    hf_events = sorted(n for n in vars(hf.TrainerCallback) if n.startswith("on_"))
    assert hf_events == sorted(EVENTS)
    for name in EVENTS:
        params = list(inspect.signature(getattr(TrainerCallback, name)).parameters)
        assert params[:4] == ["self", "args", "state", "control"] and params[-1] == "kwargs"
        assert callable(getattr(CallbackHandler, name))


def test_events_reach_a_class_and_an_instance_in_order_with_kwargs():
    instance = Recorder(name="instance")
    handler = CallbackHandler([Recorder, instance], "MODEL", "TOK", "OPT", "SCHED")
    handler.callbacks[0].calls = instance.calls  # share one list to see the interleaving
    handler.train_dataloader = "TRAIN_DL"
    args, state, control = make_args(), TrainerState(), TrainerControl()

    handler.on_train_begin(args, state, control)
    handler.on_log(args, state, control, logs={"loss": 1.0})
    handler.on_evaluate(args, state, control, metrics={"eval_loss": 2.0})

    assert [(n, e) for n, e, _ in instance.calls] == [
        ("class", "on_train_begin"),
        ("instance", "on_train_begin"),
        ("class", "on_log"),
        ("instance", "on_log"),
        ("class", "on_evaluate"),
        ("instance", "on_evaluate"),
    ]
    kwargs = instance.calls[0][2]
    assert kwargs["model"] == "MODEL" and kwargs["optimizer"] == "OPT" and kwargs["lr_scheduler"] == "SCHED"
    assert kwargs["processing_class"] == "TOK" and kwargs["tokenizer"] == "TOK"
    assert kwargs["train_dataloader"] == "TRAIN_DL" and kwargs["eval_dataloader"] is None
    assert instance.calls[2][2]["logs"] == {"loss": 1.0}
    assert instance.calls[4][2]["metrics"] == {"eval_loss": 2.0}


def test_an_hf_style_callback_runs_unchanged():
    class OldStyle(TrainerCallback):  # the shape of callbacks written for transformers
        def __init__(self):
            self.seen = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append((logs, kwargs["tokenizer"]))

        def on_evaluate(self, args, state, control, metrics, **kwargs):
            self.seen.append(metrics)

    cb = OldStyle()
    handler = CallbackHandler([DefaultFlowCallback, cb], None, "TOK", None, None)
    args, state, control = make_args(), TrainerState(), TrainerControl()
    handler.on_log(args, state, control, logs={"loss": 0.5})
    handler.on_evaluate(args, state, control, metrics={"eval_loss": 0.4})
    assert cb.seen == [({"loss": 0.5}, "TOK"), {"eval_loss": 0.4}]


def test_a_returned_control_replaces_the_current_one():
    replacement = TrainerControl(should_training_stop=True)

    class Replacer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            return replacement

    seen = []

    class After(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(control)

    handler = CallbackHandler([DefaultFlowCallback, Replacer, After], None, None, None, None)
    original = TrainerControl()
    result = handler.on_step_end(make_args(), TrainerState(max_steps=10, global_step=1), original)
    assert result is replacement and seen == [replacement]
    assert not original.should_training_stop


def test_handler_resets_flags_like_hf():
    handler = CallbackHandler([DefaultFlowCallback], None, None, None, None)
    args, state = make_args(), TrainerState()
    control = TrainerControl(True, True, True, True, True)
    control = handler.on_step_begin(args, state, control)
    assert (control.should_log, control.should_evaluate, control.should_save) == (False, False, False)
    assert control.should_training_stop and control.should_epoch_stop
    control = handler.on_epoch_begin(args, state, control)
    assert not control.should_epoch_stop and control.should_training_stop
    control = handler.on_train_begin(args, state, control)
    assert not control.should_training_stop
    for event, flag, extra in [
        ("on_log", "should_log", {"logs": {}}),
        ("on_evaluate", "should_evaluate", {"metrics": {}}),
        ("on_save", "should_save", {}),
    ]:
        setattr(control, flag, True)
        control = getattr(handler, event)(args, state, control, **extra)
        assert not getattr(control, flag)


def test_add_pop_remove_by_class_and_instance(caplog):
    printer = PrinterCallback()
    handler = CallbackHandler([DefaultFlowCallback, printer, ProgressCallback], None, None, None, None)
    assert handler.callback_list == "DefaultFlowCallback, PrinterCallback, ProgressCallback"

    with caplog.at_level(logging.WARNING, logger="trainformers.callbacks"):
        handler.add_callback(PrinterCallback)
    assert "second PrinterCallback" in caplog.text

    assert handler.pop_callback(printer) is printer  # the instance, not the other PrinterCallback
    assert handler.callback_list == "DefaultFlowCallback, ProgressCallback, PrinterCallback"
    assert isinstance(handler.pop_callback(ProgressCallback), ProgressCallback)
    assert handler.pop_callback(ProgressCallback) is None
    assert handler.pop_callback(printer) is None
    handler.remove_callback(PrinterCallback)
    handler.remove_callback(printer)  # absent: no error
    assert handler.callback_list == "DefaultFlowCallback"
    flow = handler.callbacks[0]
    handler.remove_callback(flow)
    assert handler.callbacks == []


def test_no_default_flow_callback_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="trainformers.callbacks"):
        CallbackHandler([PrinterCallback], None, None, None, None)
    assert "DefaultFlowCallback" in caplog.text


# --- DefaultFlowCallback --------------------------------------------------------------------


def run_steps(
    args, max_steps, logging_steps=500, eval_steps=500, save_steps=500, epochs=None, flow=DefaultFlowCallback
):
    """Drive step events (and epoch ends every `epochs` steps); return {flag: [steps set]}."""
    handler = CallbackHandler([flow], None, None, None, None)
    state = TrainerState(max_steps=max_steps, logging_steps=logging_steps, eval_steps=eval_steps, save_steps=save_steps)
    control = handler.on_train_begin(args, state, TrainerControl())
    seen = {"log": [], "evaluate": [], "save": [], "stop": [], "epoch_end": []}
    for step in range(1, max_steps + 1):
        control = handler.on_step_begin(args, state, control)
        state.global_step = step
        state.epoch = step / epochs if epochs else 0.0
        control = handler.on_step_end(args, state, control)
        at_epoch_end = epochs and step % epochs == 0
        if at_epoch_end:
            control = handler.on_epoch_end(args, state, control)
        for flag in ("log", "evaluate", "save"):
            if getattr(control, f"should_{flag}"):
                seen[flag].append(step)
        if control.should_training_stop:
            seen["stop"].append(step)
        if at_epoch_end:
            seen["epoch_end"].append(step)
    return seen


def test_flow_steps_strategy_with_first_step_and_final_step():
    args = make_args(logging_first_step=True, eval_strategy="steps", save_strategy="steps")
    seen = run_steps(args, max_steps=25, logging_steps=10, eval_steps=8, save_steps=20)
    assert seen["log"] == [1, 10, 20]
    assert seen["evaluate"] == [8, 16, 24, 25]  # the last step is evaluated too
    assert seen["save"] == [20, 25]  # ... and saved
    assert seen["stop"] == [25]


def test_flow_final_step_on_the_schedule_is_not_doubled():
    args = make_args(eval_strategy="steps", save_strategy="steps")
    seen = run_steps(args, max_steps=20, logging_steps=10, eval_steps=10, save_steps=10)
    assert seen["evaluate"] == [10, 20] and seen["save"] == [10, 20] and seen["log"] == [10, 20]


def test_flow_eval_delay_in_steps():
    args = make_args(eval_strategy="steps", eval_delay=15)
    seen = run_steps(args, max_steps=30, eval_steps=5)
    assert seen["evaluate"] == [15, 20, 25, 30]


def test_flow_epoch_strategy_acts_at_epoch_ends_with_eval_delay_in_epochs():
    args = make_args(logging_strategy="epoch", eval_strategy="epoch", save_strategy="epoch", eval_delay=2)
    seen = run_steps(args, max_steps=12, epochs=4)  # 3 epochs of 4 steps
    assert seen["log"] == [4, 8, 12]
    assert seen["evaluate"] == [8, 12]  # epochs 2 and 3
    assert seen["save"] == [4, 8, 12]
    assert seen["stop"] == [12]


def test_flow_no_strategy_does_nothing_but_stop():
    args = make_args(logging_strategy="no", eval_strategy="no", save_strategy="no")
    seen = run_steps(args, max_steps=10, logging_steps=1, eval_steps=1, save_steps=1, epochs=5)
    assert seen == {"log": [], "evaluate": [], "save": [], "stop": [10], "epoch_end": [5, 10]}


def test_flow_save_best_does_not_save_on_schedule():
    args = make_args(eval_strategy="steps", save_strategy="best", metric_for_best_model="loss")
    seen = run_steps(args, max_steps=7, eval_steps=2, save_steps=2)
    assert seen["save"] == []
    assert seen["evaluate"] == [2, 4, 6, 7]


def test_flow_zero_interval_never_fires():
    args = make_args(eval_strategy="steps")
    seen = run_steps(args, max_steps=4, logging_steps=0, eval_steps=0, save_steps=0)
    assert seen["log"] == [] and seen["save"] == [4] and seen["evaluate"] == [4]


@pytest.mark.parametrize(
    "overrides, epochs",
    [
        ({"logging_first_step": True, "eval_strategy": "steps", "save_strategy": "steps"}, None),
        ({"eval_strategy": "steps", "eval_delay": 9, "save_strategy": "best", "metric_for_best_model": "loss"}, 6),
        ({"logging_strategy": "epoch", "eval_strategy": "epoch", "save_strategy": "epoch", "eval_delay": 2}, 5),
        ({"logging_strategy": "no", "eval_strategy": "no", "save_strategy": "no"}, 4),
    ],
)
def test_flow_matches_the_installed_transformers(overrides, epochs, caplog):
    hf = pytest.importorskip("transformers.trainer_callback")
    args = make_args(**overrides)
    kw = dict(max_steps=23, logging_steps=4, eval_steps=3, save_steps=5, epochs=epochs)
    assert run_steps(args, **kw) == run_steps(args, **kw, flow=hf.DefaultFlowCallback)


def test_hf_early_stopping_runs_in_our_handler_like_ours(caplog):
    hf = pytest.importorskip("transformers.trainer_callback")
    args = make_args(
        eval_strategy="steps", metric_for_best_model="accuracy", greater_is_better=True, load_best_model_at_end=True
    )
    values = [0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.6, 0.65]
    ours = evaluate_sequence(EarlyStoppingCallback(2, 0.01), args, values)
    theirs = evaluate_sequence(hf.EarlyStoppingCallback(2, 0.01), args, values)
    assert ours == theirs == 4


# --- JsonlLoggerCallback ------------------------------------------------------------------


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_writes_rows_with_step_and_epoch(tmp_path):
    args = make_args(output_dir=str(tmp_path / "run"))
    cb = JsonlLoggerCallback()
    logs = {"loss": 1.5, "learning_rate": 1e-3}
    cb.on_log(args, TrainerState(global_step=3, epoch=0.123456), TrainerControl(), logs=logs)
    cb.on_log(args, TrainerState(global_step=4, epoch=0.2), TrainerControl(), logs={"eval_loss": math.nan})
    cb.on_log(args, TrainerState(global_step=5, is_world_process_zero=False), TrainerControl(), logs=logs)
    rows = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert rows[0] == {"loss": 1.5, "learning_rate": 1e-3, "step": 3, "epoch": 0.1235}
    assert rows[1]["step"] == 4 and math.isnan(rows[1]["eval_loss"])
    assert len(rows) == 2  # nothing from other processes
    assert logs == {"loss": 1.5, "learning_rate": 1e-3}  # the row passed in is not modified


def test_jsonl_resume_keeps_rows_up_to_the_checkpoint(tmp_path):
    args = make_args(output_dir=str(tmp_path))
    cb = JsonlLoggerCallback()
    for step in range(1, 8):
        cb.on_log(args, TrainerState(global_step=step), TrainerControl(), logs={"loss": float(step)})
    path = tmp_path / "log.jsonl"
    with path.open("a") as f:
        f.write('{"loss": 9.0, "st')  # a row cut by kill -9

    resumed = TrainerState(global_step=4)
    JsonlLoggerCallback().on_train_begin(args, resumed, TrainerControl())
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 4]
    cb.on_log(args, TrainerState(global_step=5), TrainerControl(), logs={"loss": 5.0})
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 4, 5]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_jsonl_fresh_run_leaves_file_alone(tmp_path):
    args = make_args(output_dir=str(tmp_path))
    JsonlLoggerCallback().on_train_begin(args, TrainerState(global_step=0), TrainerControl())
    assert not (tmp_path / "log.jsonl").exists()


# --- EarlyStoppingCallback ----------------------------------------------------------------


def evaluate_sequence(cb, args, values):
    """Feed evaluations like the trainer does; return the 1-based evaluation that stopped training."""
    handler = CallbackHandler([DefaultFlowCallback, cb], None, None, None, None)
    state, control = TrainerState(), TrainerControl()
    control = handler.on_train_begin(args, state, control)
    for i, value in enumerate(values, start=1):
        control = handler.on_evaluate(args, state, control, metrics={"eval_accuracy": value})
        # The trainer updates best_metric after the on_evaluate event (HF `_determine_best_metric`).
        better = (lambda a, b: a > b) if args.greater_is_better else (lambda a, b: a < b)
        if state.best_metric is None or better(value, state.best_metric):
            state.best_metric = value
        if control.should_training_stop:
            return i
    return None


@pytest.mark.parametrize("greater_is_better, sign", [(True, 1.0), (False, -1.0)])
def test_early_stopping_after_exactly_patience_bad_evaluations(greater_is_better, sign):
    args = make_args(
        eval_strategy="steps",
        metric_for_best_model="accuracy",
        greater_is_better=greater_is_better,
        load_best_model_at_end=True,
    )
    values = [sign * v for v in [0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.6, 0.65]]
    #                           new  new  =1   =2   new  =1   =2   =3  -> stops at 8 with patience 3
    assert evaluate_sequence(EarlyStoppingCallback(3), args, values) == 8
    assert evaluate_sequence(EarlyStoppingCallback(2), args, values) == 4
    assert evaluate_sequence(EarlyStoppingCallback(4), args, values) is None


@pytest.mark.parametrize("greater_is_better, sign", [(True, 1.0), (False, -1.0)])
def test_early_stopping_threshold(greater_is_better, sign):
    args = make_args(
        eval_strategy="epoch",
        metric_for_best_model="eval_accuracy",
        greater_is_better=greater_is_better,
        load_best_model_at_end=True,
    )
    small_gains = [sign * v for v in [0.5, 0.505, 0.51, 0.515]]  # each +0.005 over the best
    assert evaluate_sequence(EarlyStoppingCallback(2, 0.01), args, small_gains) == 3
    assert evaluate_sequence(EarlyStoppingCallback(2, 0.001), args, small_gains) is None


def test_early_stopping_state_round_trips_through_trainer_state(tmp_path):
    args = make_args(eval_strategy="steps", metric_for_best_model="accuracy", greater_is_better=True)
    cb = EarlyStoppingCallback(3, 0.1)
    state = TrainerState(best_metric=0.9)
    cb.on_evaluate(args, state, TrainerControl(), metrics={"eval_accuracy": 0.5})
    cb.on_evaluate(args, state, TrainerControl(), metrics={"eval_accuracy": 0.5})
    assert cb.early_stopping_patience_counter == 2

    TrainerState(stateful_callbacks=[cb, TrainerControl()]).save_to_json(tmp_path / "s.json")
    saved = TrainerState.load_from_json(tmp_path / "s.json").stateful_callbacks
    restored = EarlyStoppingCallback.from_state(saved["EarlyStoppingCallback"])
    assert isinstance(restored, ExportableState)
    assert (restored.early_stopping_patience, restored.early_stopping_threshold) == (3, 0.1)
    assert restored.early_stopping_patience_counter == 2
    control = TrainerControl()
    restored.on_evaluate(args, state, control, metrics={"eval_accuracy": 0.5})
    assert control.should_training_stop  # the third bad evaluation, across the resume


def test_stateful_callbacks_keep_every_instance_of_a_class():
    state = TrainerState(stateful_callbacks=[EarlyStoppingCallback(1), EarlyStoppingCallback(2)])
    saved = state.stateful_callbacks["EarlyStoppingCallback"]
    assert [s["args"]["early_stopping_patience"] for s in saved] == [1, 2]
    with pytest.raises(TypeError, match="PrinterCallback"):
        TrainerState(stateful_callbacks=[PrinterCallback()])


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"metric_for_best_model": None, "eval_strategy": "steps"}, "metric_for_best_model"),
        ({"metric_for_best_model": "loss", "eval_strategy": "no"}, "eval_strategy"),
    ],
)
def test_early_stopping_misconfiguration_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field) as info:
        EarlyStoppingCallback().on_train_begin(make_args(**overrides), TrainerState(), TrainerControl())
    assert "\n" not in str(info.value)


def test_early_stopping_bad_arguments_name_the_argument():
    with pytest.raises(ConfigError, match="early_stopping_patience"):
        EarlyStoppingCallback(0)
    with pytest.raises(ConfigError, match="early_stopping_threshold"):
        EarlyStoppingCallback(1, -0.5)


def test_early_stopping_without_load_best_model_at_end_only_warns(caplog):
    args = make_args(eval_strategy="steps", metric_for_best_model="loss", load_best_model_at_end=False)
    with caplog.at_level(logging.WARNING, logger="trainformers.callbacks"):
        EarlyStoppingCallback().on_train_begin(args, TrainerState(), TrainerControl())
    assert "load_best_model_at_end" in caplog.text


def test_early_stopping_missing_metric_warns_once_and_disables(caplog):
    args = make_args(eval_strategy="steps", metric_for_best_model="bleu", greater_is_better=True)
    cb, state, control = EarlyStoppingCallback(1), TrainerState(best_metric=1.0), TrainerControl()
    with caplog.at_level(logging.WARNING, logger="trainformers.callbacks"):
        cb.on_evaluate(args, state, control, metrics={"eval_loss": 1.0})
        cb.on_evaluate(args, state, control, metrics={"eval_bleu": 0.0})  # would stop if enabled
    assert caplog.text.count("eval_bleu") == 1
    assert not control.should_training_stop


# --- TrainerState / TrainerControl --------------------------------------------------------


def test_trainer_state_json_round_trip_with_our_fields(tmp_path):
    state = TrainerState(
        epoch=1.25,
        global_step=40,
        max_steps=100,
        logging_steps=5,
        eval_steps=10,
        save_steps=20,
        num_input_tokens_seen=12345,
        total_flos=1.5e12,
        best_metric=0.25,
        best_global_step=30,
        best_model_checkpoint="out/checkpoint-30",
        log_history=[{"loss": 0.1 + 0.2, "step": 5}],
        micro_step=160,
        epoch_step=12,
        trial_params={"lr": 0.001},
    )
    path = tmp_path / "trainer_state.json"
    state.save_to_json(path)
    assert TrainerState.load_from_json(path) == state  # floats exactly (0.1 + 0.2 in the log history)
    text = path.read_text()
    assert text.startswith('{\n  "best_global_step": 30,') and text.endswith("}\n")  # sorted, indented
    assert list(tmp_path.iterdir()) == [path]


def test_trainer_state_loading_ignores_unknown_keys_and_fills_defaults(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"global_step": 7, "from_a_newer_version": [1, 2], "epoch": 0.5}))
    state = TrainerState.load_from_json(path)
    assert (state.global_step, state.epoch, state.micro_step, state.log_history) == (7, 0.5, 0, [])


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_trainer_state_loading_bad_files_raises_one_line_value_error(tmp_path, content):
    path = tmp_path / "trainer_state.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="trainer state") as info:
        TrainerState.load_from_json(path)
    assert "\n" not in str(info.value)


def test_trainer_control_resets_and_exports():
    control = TrainerControl(True, True, True, True, True)
    control._new_step()
    assert control == TrainerControl(should_training_stop=True, should_epoch_stop=True)
    control._new_epoch()
    assert control == TrainerControl(should_training_stop=True)
    control._new_training()
    assert control == TrainerControl()
    saving = TrainerControl(should_save=True)
    assert TrainerControl.from_state(saving.state()) == saving


# --- ProgressCallback / PrinterCallback / TrackerCallback ---------------------------------


def drive_a_short_run(cb, args, state):
    handler = CallbackHandler([DefaultFlowCallback, cb], None, None, None, None)
    control = handler.on_train_begin(args, state, TrainerControl())
    for step in range(state.global_step + 1, state.max_steps + 1):
        control = handler.on_step_begin(args, state, control)
        state.global_step = step
        control = handler.on_step_end(args, state, control)
        control = handler.on_log(args, state, control, logs={"loss": 0.5, "learning_rate": 1e-4})
    handler.eval_dataloader = [0, 1, 2]
    for _ in range(3):
        control = handler.on_prediction_step(args, state, control)
    control = handler.on_evaluate(args, state, control, metrics={"eval_loss": 0.4})
    control = handler.on_log(args, state, control, logs={"eval_loss": 0.4})
    handler.on_train_end(args, state, control)


def test_progress_with_disable_tqdm_makes_no_bar(capsys):
    cb = ProgressCallback()
    drive_a_short_run(cb, make_args(disable_tqdm=True), TrainerState(max_steps=5))
    assert cb.training_bar is None and cb.prediction_bar is None
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_counts_steps_from_a_resumed_step(capsys, monkeypatch):
    monkeypatch.setattr(ProgressCallback, "_terminal", staticmethod(lambda: True))  # as in a terminal
    cb = ProgressCallback()
    bars = []
    original = ProgressCallback.on_step_end

    def spy(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        bars.append((self.training_bar.n, self.training_bar.total))

    cb.on_step_end = spy.__get__(cb)
    drive_a_short_run(cb, make_args(), TrainerState(max_steps=6, global_step=2))
    assert bars == [(3, 6), (4, 6), (5, 6), (6, 6)]
    assert cb.training_bar is None and cb.prediction_bar is None  # closed at the end
    assert "eval_loss" in capsys.readouterr().out  # the eval row is printed once
    # Not the main process of its machine: no bar at all.
    other = ProgressCallback()
    drive_a_short_run(other, make_args(), TrainerState(max_steps=3, is_local_process_zero=False))
    assert other.training_bar is None


def test_printer_prints_rows_on_the_main_process_only(capsys):
    logs = {"loss": 0.123456, "total_flos": 1.0, "step": 3}
    PrinterCallback().on_log(make_args(), TrainerState(), TrainerControl(), logs=logs)
    other_process = TrainerState(is_local_process_zero=False)
    PrinterCallback().on_log(make_args(), other_process, TrainerControl(), logs=logs)
    assert capsys.readouterr().out == "{'loss': 0.1235, 'step': 3}\n"  # numbers as numbers
    assert "total_flos" in logs


class FakeTracker:
    def __init__(self, name):
        self.name = name
        self.logged = []
        self.finishes = 0

    def log(self, values, step=None):
        self.logged.append((values, step))

    def finish(self):
        self.finishes += 1


class FakeAccelerator:
    def __init__(self, trackers):
        self.trackers = trackers


def test_tracker_forwards_numeric_values_with_the_step_named_as_hf_names_them():
    from trainformers.trackers import finish_trackers

    panels, mlflow = FakeTracker("tensorboard"), FakeTracker("mlflow")
    accelerator = FakeAccelerator([panels, mlflow])
    cb = TrackerCallback(accelerator)
    state = TrainerState(global_step=12)
    cb.on_log(make_args(), state, TrainerControl(), logs={"loss": 0.5, "epoch": 1, "note": "x", "flag": True})
    assert panels.logged == [({"train/loss": 0.5, "train/epoch": 1}, 12)]
    assert mlflow.logged == [({"loss": 0.5, "epoch": 1}, 12)]  # HF's MLflowCallback keeps the names
    cb.on_train_end(make_args(), state, TrainerControl())
    assert panels.finishes == 0  # rows logged after train() (evaluate, perplexity) go to the same run
    cb.on_log(make_args(), state, TrainerControl(), logs={"eval_perplexity": 41.0})
    assert panels.logged[-1] == ({"eval/perplexity": 41.0}, 12)
    finish_trackers(accelerator)  # at process exit, when the next run starts, or by the CLI's end_run
    finish_trackers(accelerator)
    assert panels.finishes == mlflow.finishes == 1
    cb.on_log(make_args(), state, TrainerControl(), logs={"loss": 1.0})
    assert len(panels.logged) == 2  # a finished run is sent nothing more


def test_tracker_without_trackers_does_nothing():
    accelerator = FakeAccelerator([])
    cb = TrackerCallback(accelerator)
    cb.on_log(make_args(), TrainerState(), TrainerControl(), logs={"loss": 0.5})
    cb.on_train_end(make_args(), TrainerState(), TrainerControl())


def test_without_a_terminal_every_row_is_a_line_of_its_own(capsys, monkeypatch):
    # nohup, SLURM, CI: no bar whose redraws would hide the training loss in \r noise
    monkeypatch.setattr(ProgressCallback, "_terminal", staticmethod(lambda: False))
    cb = ProgressCallback()
    drive_a_short_run(cb, make_args(), TrainerState(max_steps=6, global_step=2))
    assert cb.training_bar is None
    lines = capsys.readouterr().out.splitlines()
    assert any("'loss': " in line and "'loss': '" not in line for line in lines), lines
    assert any("eval_loss" in line for line in lines)
