"""Errors a user can cause.

Every message is one line that names the field, the value and the fix. The CLI prints a
`TrainformersError` without a traceback and exits with status 2; anything else is a bug.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TrainformersError(Exception):
    """Base class for errors caused by user input (configuration, data, checkpoints)."""


class ConfigError(TrainformersError, ValueError):
    """A configuration value is unknown, malformed or contradicts another one."""


class DataError(TrainformersError, ValueError):
    """A dataset is missing, empty or has the wrong shape."""


class CheckpointError(TrainformersError, ValueError):
    """A checkpoint or output directory cannot be used as asked."""


class NonFiniteLossError(TrainformersError, FloatingPointError):
    """A training step's loss or gradient was NaN or infinite (`nan_policy`)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def not_utf8(data: bytes, start: int, line_offset: int = 0) -> str:
    """'is not UTF-8 text (byte 0xe9 on line 2)': where the bytes `data` fail to decode, from `start`
    (a `UnicodeDecodeError`'s); `line_offset` counts the lines read before `data`."""
    line = line_offset + data.count(b"\n", 0, start) + 1
    return f"is not UTF-8 text (byte 0x{data[start]:02x} on line {line})"


def one_line(value: object, limit: int = 80) -> str:
    """`repr(value)` on one line, cut at `limit` characters: safe to put in an error message."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
