"""Stopping on request: Ctrl-C (SIGINT) or SIGTERM ends training at a step boundary, on every rank.

The first signal only sets a flag; the loop checks it after each optimizer step,
saves last.pt and raises `Interrupted`. A second signal aborts at once (last.pt
stays as it was). Colab, SLURM and Kubernetes send SIGTERM before they kill.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

from . import distributed
from .errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self):
        self.received = 0   # the signal this process received (0: none)
        self.agreed = 0     # the signal every rank agreed to stop on (0: none)

    @contextmanager
    def caught(self):
        """Route STOP_SIGNALS here while training; restore the previous handlers after."""
        previous = {}
        if threading.current_thread() is threading.main_thread():  # Python's rule for signal handlers
            previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum, frame) -> None:
        if self.received:  # a second signal: stop now
            raise Interrupted(signum)
        self.received = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step and saving a resumable checkpoint "
              "(interrupt again to abort without saving)", file=sys.stderr)

    def agree(self) -> int:
        """The stop signal of any rank, on every rank (0: none); remembered in `agreed`.

        A signal may reach one process only (a Ctrl-C in one rank's terminal, a kill by
        pid); if that rank alone stopped, the others would wait for it in the next
        gradient all-reduce. One process: no communication, no host sync.
        """
        self.agreed = self.agreed or distributed.max_over_ranks(self.received)
        return self.agreed

    @property
    def name(self) -> str:
        return signal.Signals(self.agreed).name
