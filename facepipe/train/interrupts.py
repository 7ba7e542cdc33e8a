"""Ctrl+C / SIGTERM (Dagster run termination) become "save, then stop" instead of lost work.

While training, SIGINT and SIGTERM only set a flag; the loop checks it after each optimizer
step, writes a checkpoint and stops. Afterwards the signal is handed to whatever handler was
installed before (Python's KeyboardInterrupt, Dagster's interrupt error, or the default
"terminate"), so the surrounding program reacts exactly as it would have without us.
A second signal while the first is pending stops at once (KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving; raised when the previous handler was
    'ignore' or returned without raising, so the caller still learns the run did not finish."""


class StopRequest:
    """The flag the loop polls; remembers which signal arrived and the handlers to restore."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous_handlers: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "none"


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install the flag-setting handlers for the duration of the block, then restore the old ones.

    Signal handlers can only be installed from the main thread; elsewhere the block runs
    without them (an interrupt then arrives as an exception, which the loop also checkpoints).
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def set_flag(signum: int, _frame: Any) -> None:
        if request.requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name} while saving: stopping now")
        request.signum = signum

    for signum in HANDLED_SIGNALS:
        request.previous_handlers[signum] = signal.getsignal(signum)
        signal.signal(signum, set_flag)
    try:
        yield request
    finally:
        for signum, handler in request.previous_handlers.items():
            # None means the handler was installed outside Python; the default is the safe stand-in.
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def forward_to_previous_handler(request: StopRequest, message: str) -> None:
    """Deliver the intercepted signal to the handler that was installed before training.

    Call after stop_on_signals has exited (handlers restored). Never returns normally.
    """
    signum = request.signum
    previous = request.previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, None)  # e.g. raises KeyboardInterrupt or Dagster's interrupt error
    elif previous in (signal.SIG_DFL, None):
        if signum == signal.SIGINT:
            raise KeyboardInterrupt(message)
        # The default action of SIGTERM is to end the process; the checkpoint is already durable.
        signal.raise_signal(signum)
    raise TrainingInterrupted(message)
