"""Optimizer, scheduler, grad-scaler and RNG state on disk without pickle.

A state file is one safetensors file: its tensors are the state's tensors, and its header
metadata holds the rest of the structure as JSON. Loading it runs no pickle, so a checkpoint
from anywhere is safe to resume from. `load_legacy_state` reads the `.pt`/`.pth` files of older
releases and of Hugging Face's Trainer with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Callable
from typing import Any

import torch

from .errors import CheckpointError

STATE_SUFFIX = ".safetensors"
FORMAT_VERSION = "1"
_STRUCTURE_KEY = "trainformers_state"  # the JSON skeleton
_CRC_KEY = "trainformers_crc32"  # {tensor name: CRC-32 of its bytes}; safetensors itself has no checksum
_VERSION_KEY = "trainformers_state_format"
_HEADER_PREFIX = "Error while deserializing header: "


def save_state_file(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write `obj` to the safetensors file `path` atomically (`path`.tmp, then `os.replace`).

    `obj` is a nest of dicts (keys str, int, float, bool, None or tuples of these), lists,
    tuples, tensors, ints, floats (nan and inf too), bools, None and strings: what
    `state_dict()` of a torch optimizer, LR scheduler or GradScaler returns. The file's tensors
    are `obj`'s tensors, named by where they sit ("state/0/exp_avg"), on the CPU, contiguous,
    of the same dtype and shape; the metadata entry "trainformers_state" is the JSON skeleton of
    the rest, in which a dict is {"dict": [[key, value], ...]}, a tuple {"tuple": [...]}, a
    tensor {"tensor": name} and a non-finite float {"float": "nan"}; lists, strings, ints,
    finite floats, bools and None are themselves. One tensor object met twice is stored once and
    loads as one object; other tensors that share storage are stored as copies.

    Raises:
        TypeError: `obj` holds a value of another type (named with where it sits).
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(obj, "", _Tensors(tensors))
    metadata = {
        "format": "pt",
        _VERSION_KEY: FORMAT_VERSION,
        _STRUCTURE_KEY: json.dumps(skeleton, separators=(",", ":"), allow_nan=False),
        _CRC_KEY: json.dumps({name: _crc32(t) for name, t in tensors.items()}, separators=(",", ":")),
    }
    from safetensors.torch import save_file

    tmp = f"{os.fspath(path)}.tmp"
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_state_file(path: str | os.PathLike[str]) -> Any:
    """The structure `save_state_file` wrote to `path`, its tensors on the CPU; runs no pickle.

    Every tensor's bytes are checked against the CRC-32 saved with them.

    Raises:
        CheckpointError: the file is missing, or is empty, truncated, garbled or not a state file.
    """
    try:
        return _read(path, decode=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file '{path}' is missing; the checkpoint is incomplete") from None
    except _Damaged as err:
        raise CheckpointError(f"checkpoint file '{path}' is damaged ({err}); resume from an older checkpoint") from None


def state_file_problem(path: str | os.PathLike[str]) -> str | None:
    """'missing', 'empty' or 'damaged (...)' for a state file that won't load; None when whole.

    Reads the header and checks every tensor's checksum one tensor at a time, as
    `zipfile.testzip` does for a torch archive, without building the structure.
    """
    try:
        _read(path, decode=False)
    except FileNotFoundError:
        return "missing"
    except _Damaged as err:
        return "empty" if str(err) == "empty" else f"damaged ({err})"
    return None


def load_legacy_state(path: str | os.PathLike[str]) -> Any:
    """A `.pt`/`.pth` state of an older release or of transformers' Trainer, by `torch.load(weights_only=True)`.

    weights_only refuses a pickle that would build anything but tensors and plain containers,
    so a malicious file is reported, not run.

    Raises:
        CheckpointError: the file is missing, damaged, or not a plain state file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file '{path}' is missing; the checkpoint is incomplete") from None
    except Exception as err:  # a torn archive, garbage, or a pickle that is not plain state (refused, not run)
        raise CheckpointError(
            f"checkpoint file '{path}' is damaged or not a plain state file ({short_error(err)}); resume from an "
            "older checkpoint"
        ) from None


def short_error(err: BaseException) -> str:
    """The first line of an error, cut to 120 characters: enough for a one-line message."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."


# ---- writing ---------------------------------------------------------------------------------


class _Tensors:
    """The tensors to write, by unique name; one tensor object gets one name."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.names: dict[int, str] = {}  # id(tensor) -> name
        self.storages: set[tuple[str, int]] = set()  # (device, data_ptr) of the storages written so far

    def add(self, t: torch.Tensor, where: str) -> str:
        if id(t) in self.names:
            return self.names[id(t)]
        if t.layout != torch.strided or t.is_quantized:
            raise TypeError(f"can't store the {t.layout} tensor at '{where}' in a state file; only dense tensors")
        name = where.removeprefix("/") if where else "."  # "state/0/exp_avg"
        if name in self.tensors:  # a string key held a "/": keep the name unique
            name = next(f"{name}#{n}" for n in range(1, len(self.tensors) + 2) if f"{name}#{n}" not in self.tensors)
        stored = t.detach()
        storage = (str(stored.device), stored.untyped_storage().data_ptr())
        if stored.device.type != "cpu":
            stored = stored.to("cpu")  # a fresh tensor: contiguous, storage of its own
        elif storage in self.storages or not stored.is_contiguous():
            stored = stored.clone(memory_format=torch.contiguous_format)  # safetensors refuses shared storage
        self.storages.add(storage)
        self.tensors[name] = stored
        self.names[id(t)] = name  # `t` lives as long as the structure being saved: its id stays unique
        return name


_NOT_SCALAR = object()


def _encode(value: Any, where: str, tensors: _Tensors) -> Any:
    """`value` as JSON, its tensors moved to `tensors` (see `save_state_file`)."""
    scalar = _encode_scalar(value)
    if scalar is not _NOT_SCALAR:
        return scalar
    if isinstance(value, torch.Tensor):
        return {"tensor": tensors.add(value, where)}
    if isinstance(value, list):
        return [_encode(v, f"{where}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, f"{where}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {"dict": [[_encode_key(k, where), _encode(v, f"{where}/{k}", tensors)] for k, v in value.items()]}
    raise TypeError(
        f"can't store a {type(value).__name__} at '{where or '/'}' in a state file; use tensors, dicts, lists, "
        "tuples, str, int, float, bool or None"
    )


def _encode_key(key: Any, where: str) -> Any:
    if isinstance(key, tuple):
        return {"tuple": [_encode_key(k, where) for k in key]}
    scalar = _encode_scalar(key)
    if scalar is _NOT_SCALAR:
        raise TypeError(f"can't store the {type(key).__name__} key {key!r} at '{where or '/'}' in a state file")
    return scalar


def _encode_scalar(value: Any) -> Any:
    """None, a bool, str, int or float as JSON (subclasses such as numpy.float64 as the base type); else _NOT_SCALAR."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"float": repr(float(value))}
    return _NOT_SCALAR


def _crc32(t: torch.Tensor) -> int:
    return zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().data) if t.numel() else 0


# ---- reading ---------------------------------------------------------------------------------


class _Damaged(Exception):
    """Why a state file can't be read (its message is the short reason)."""


def _read(path: str | os.PathLike[str], *, decode: bool) -> Any:
    """Open `path`, check it, and rebuild the structure (decode) or only check every tensor's checksum."""
    from safetensors import SafetensorError, safe_open

    if os.path.getsize(path) == 0:  # FileNotFoundError when missing
        raise _Damaged("empty")
    try:
        # pread, not mmap: the tensors own their memory, so the file may be rotated away while they live
        with safe_open(os.fspath(path), framework="pt", device="cpu", backend="pread") as f:
            metadata = f.metadata() or {}
            if _STRUCTURE_KEY not in metadata:
                raise _Damaged("not a trainformers state file: no 'trainformers_state' metadata")
            if metadata.get(_VERSION_KEY) != FORMAT_VERSION:
                raise _Damaged(f"state format {metadata.get(_VERSION_KEY)!r}, this release reads {FORMAT_VERSION!r}")
            crcs = json.loads(metadata.get(_CRC_KEY, "{}"), parse_constant=_no_constant)
            names = set(f.keys())
            loaded: dict[str, torch.Tensor] = {}

            def tensor(name: Any) -> torch.Tensor:
                if name not in loaded:
                    if not isinstance(name, str) or name not in names:
                        raise _Damaged(f"the structure names a tensor {name!r} the file lacks")
                    loaded[name] = _checked(f.get_tensor(name), name, crcs)
                return loaded[name]

            if not decode:
                for name in names:
                    _checked(f.get_tensor(name), name, crcs)
                return None
            skeleton = json.loads(metadata[_STRUCTURE_KEY], parse_constant=_no_constant)
            return _decode(skeleton, tensor)
    except SafetensorError as err:
        raise _Damaged(short_error(err).removeprefix(_HEADER_PREFIX)) from None
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:  # malformed metadata
        raise _Damaged(f"bad metadata: {short_error(err)}") from None
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise _Damaged(short_error(err)) from None


def _checked(t: torch.Tensor, name: str, crcs: dict[str, int]) -> torch.Tensor:
    if name in crcs and _crc32(t) != crcs[name]:
        raise _Damaged(f"tensor '{name}' fails its checksum")
    return t


def _no_constant(token: str) -> Any:
    raise ValueError(f"non-standard JSON constant {token}")


def _decode(node: Any, tensor: Callable[[Any], torch.Tensor]) -> Any:
    """The value `node` (a JSON skeleton from `_encode`) stands for; `tensor(name)` gives a stored tensor."""
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(n, tensor) for n in node]
    if isinstance(node, dict) and len(node) == 1:
        ((tag, body),) = node.items()
        if tag == "dict" and isinstance(body, list):
            return {_decode(k, tensor): _decode(v, tensor) for k, v in body}
        if tag == "tuple" and isinstance(body, list):
            return tuple(_decode(n, tensor) for n in body)
        if tag == "tensor":
            return tensor(body)
        if tag == "float" and body in ("nan", "inf", "-inf"):
            return float(body)
    raise _Damaged(f"bad metadata: unknown node {json.dumps(node)[:60]}")
