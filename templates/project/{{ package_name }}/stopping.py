"""Stopping cleanly on SIGTERM or Ctrl-C (SIGINT), to resume later.

Schedulers take machines back with SIGTERM (spot instances, SLURM preemption,
Kubernetes evictions) and send SIGKILL after a grace period. While
``signals_recorded()`` is in force, both signals are only recorded; the training
loop reads ``received()`` when it reads the losses (every --log_every steps, where
the ranks agree anyway), finishes that step, writes a resumable checkpoint and
raises ``Stopped``. The process then exits 143 for SIGTERM and 130 for Ctrl-C, as
a shell reports a process that such a signal ended.

A launcher that started the training processes itself passes the signals on to
them (``signals_forwarded``) and waits: kill the launcher, and the whole job stops.
Recording never escalates: to end a run at once, use kill -9.
"""

import os
import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received = 0  # the first stop signal this process received, or 0


class Stopped(Exception):  # noqa: N818 (not an error: the run did as asked)
    """Training stopped on a signal, after writing its checkpoint."""

    def __init__(self, signal_number: int, message: str = ""):
        super().__init__(message)
        self.exit_code = 128 + signal_number


def stopped_at(number: int, where: str, checkpoint) -> str:
    """What a run stopped by signal ``number`` says: where, and how to go on."""
    return (
        f"stopped by {signal.Signals(number).name} {where}; the checkpoint is "
        f"{checkpoint}: continue with --resume"
    )


def received() -> int:
    """The number of the first stop signal received, or 0."""
    return _received


def _record(number, frame) -> None:
    global _received
    _received = _received or number


@contextmanager
def _handled(handler):
    # Signal handlers belong to the main thread; Ray runs trials in other threads
    # and stops them itself.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def signals_recorded():
    """Record SIGTERM and SIGINT instead of ending the process, inside the block."""
    return _handled(_record)


def signals_forwarded(pids: list[int]):
    """Pass SIGTERM and SIGINT on to the processes ``pids``, inside the block."""

    def forward(number, frame):
        _record(number, frame)
        for pid in pids:
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass  # already gone

    return _handled(forward)
