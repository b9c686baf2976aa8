"""`enable_jit_checkpoint`: a SIGTERM (a preemptible machine being reclaimed) ends training cleanly.

The signal only raises a flag; the loop checks it after each optimizer step and then saves a
checkpoint (atomic, as every checkpoint is) and stops, so the run resumes exactly from there.
Unlike transformers, there is no grace period before the flag is raised and no checkpoint taken in
the middle of a step: a checkpoint interrupted by a SIGKILL is never mistaken for a complete one.
The launcher must signal every process, as SLURM and Kubernetes do.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

logger = logging.getLogger(__name__)


class SigtermCheckpoint:
    """A context in which SIGTERM requests a checkpoint and a stop (when `enabled`); the previous handler is restored after."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> SigtermCheckpoint:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def stop_if_requested(self, control: Any) -> None:
        """After a step: on a SIGTERM, ask for a checkpoint now and the end of training."""
        if self.requested:
            logger.warning("SIGTERM received: saving a checkpoint after this step and stopping (enable_jit_checkpoint)")
            control.should_save = True
            control.should_training_stop = True
