"""Why training stops before its last epoch: a request (a signal), or a diverged model.

Ctrl-C (SIGINT) or SIGTERM: the first signal only sets a flag; the loop checks
it after each optimizer step, saves last.pt and raises `Interrupted`. A second
signal aborts at once (last.pt stays as it was). Colab, SLURM and Kubernetes
send SIGTERM before they kill.

Under torchrun the ranks must stop at the same step, so they agree on it, and
agreeing is a collective whose result the host reads (a sync that stalls a GPU's
queue). They agree only where the loop syncs anyway: at log steps
(training.log_every_n_steps), validations, saves and the end of an epoch; a
signal is then honoured up to log_every_n_steps steps after it came. One process
needs no agreement and stops after the step in which the signal came.

Divergence: a non-finite training loss or weights stops the run with one line
saying where, what was kept, and the likely causes (`divergence_message`).
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

import torch
from torch import nn

from plaintune.errors import Interrupted
from plaintune.names import LAST_FILE
from plaintune.runtime import distributed

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self, distributed_run: bool = False):
        self.received = 0  # the signal this process received (0: none)
        self.agreed = 0  # the signal every rank agreed to stop on (0: none)
        self.distributed_run = distributed_run

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
        print(
            f"\n{signal.Signals(signum).name}: finishing this step and saving a resumable checkpoint "
            "(interrupt again to abort without saving)",
            file=sys.stderr,
        )

    def agree(self) -> int:
        """The stop signal of any rank, on every rank (0: none); remembered in `agreed`.

        A signal may reach one process only (a Ctrl-C in one rank's terminal, a kill by
        pid); if that rank alone stopped, the others would wait for it in the next
        gradient all-reduce. One process: no communication, no host sync.
        """
        self.agreed = self.agreed or distributed.max_over_ranks(self.received)
        return self.agreed

    def poll(self, sync_point: bool) -> int:
        """The agreed stop signal after an optimizer step (0: go on).

        Under DDP the ranks agree only at a `sync_point`, a step at which every rank
        reads device values anyway (see the module's docstring); between those every
        rank goes on, so all stop at the same step. One process: every step, for free.
        """
        if sync_point or not self.distributed_run:
            return self.agree()
        return self.agreed

    @property
    def name(self) -> str:
        return signal.Signals(self.agreed).name


def weights_finite(model: nn.Module) -> bool:
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def divergence_message(what: str, state, finite_through: int, lr: float, fp16: bool, clipping: bool) -> str:
    """One line: what became non-finite and when, what the files on disk keep, the likely causes."""
    step, since = state.global_step, finite_through
    when = (
        f"at optimizer step {step}"
        if step - since <= 1
        else f"between optimizer steps {since} (last seen finite) and {step}"
    )
    kept = (
        f"{LAST_FILE} keeps step {state.saved_step}" if state.saved_step is not None else f"no {LAST_FILE} was written"
    )
    if state.best_step is not None:
        kept += f", best/ step {state.best_step}"
    causes = [f"training.learning_rate too high (the rate at this step: {lr:.2e}; try 10x lower)"]
    if fp16:
        causes.append("training.precision fp16 overflowing (use bf16 or fp32)")
    if not clipping:
        causes.append("no gradient clipping (set training.max_grad_norm, e.g. 1.0)")
    return (
        f"the {what} became non-finite (NaN/inf) {when}; training stopped and saved nothing after "
        f"that ({kept}). Likely causes: {'; '.join(causes)}"
    )
