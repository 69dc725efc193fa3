"""Which validations count: the best model, the k best, and when to stop early.

Decided from the followed metric alone (training.metric; NaN or inf never counts), into
the train state, so the decisions survive a resume. The Trainer acts on the
verdict; the files are written by `rundir.RunFiles`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from plaintune.names import EPOCH_MODEL, STEP_MODEL
from plaintune.recipe.metrics import LOWER_IS_BETTER, gain, is_better
from plaintune.training.state import TrainState


@dataclass(frozen=True)
class SelectionRules:
    patience: Optional[int] = None  # early stopping after this many validations without a gain (None: off)
    min_delta: float = 0.0  # a gain must exceed this to count for early stopping
    keep_top_k: int = 0  # also keep the k best validations' models (0: off)


@dataclass(frozen=True)
class Verdict:
    best: bool  # the best validation so far: replace best/
    top_k_changed: bool  # the top-k list changed: write `name` if listed, drop the unlisted
    stop: bool  # early stopping: no gain in `patience` validations


def follow(state: TrainState, metric: str) -> bool:
    """Make `state` follow `metric`. A state that followed another one (a resume with a changed
    training.metric, allowed with --force) has its best re-derived from the validations it holds,
    and the early-stopping count and top-k list restarted. Returns whether anything changed."""
    if state.metric in (None, metric):
        state.metric = metric
        return False
    state.metric, state.best_metric, state.best_epoch, state.best_step = metric, None, None, None
    state.bad_validations, state.top_k = 0, []
    for record in state.history:
        value = record.get(metric)
        if value is not None and is_better(value, state.best_metric, metric):
            state.best_metric, state.best_epoch, state.best_step = value, record["epoch"], record["step"]
    return True


def validation_name(state: TrainState, mid_epoch: bool) -> str:
    """The name a validation's model gets under top/: its epoch at an epoch end, else its step."""
    return STEP_MODEL.name(step=state.global_step) if mid_epoch else EPOCH_MODEL.name(epoch=state.epoch)


def record_validation(
    state: TrainState, metric: float, name: str, rules: SelectionRules, followed: str, epochs_left: bool
) -> Verdict:
    """Update `state` (best, patience count, top-k) for validation `name` scoring `metric` (the value
    of the `followed` metric), and say what that means for best/, top/ and early stopping."""
    best = is_better(metric, state.best_metric, followed)
    # Early stopping counts validations without a gain above min_delta over the best so far.
    significant = best and (
        state.best_metric is None
        or not math.isfinite(state.best_metric)
        or gain(metric, state.best_metric, followed) > rules.min_delta
    )
    if best:
        position = state.history[-1] if state.history else {}
        state.best_metric, state.best_step = metric, state.global_step
        state.best_epoch = position.get("epoch", state.epoch)
    state.bad_validations = 0 if significant else state.bad_validations + 1
    if rules.patience is not None and state.bad_validations >= rules.patience and epochs_left:
        state.stopped_early = True
    top_k_changed = False
    if rules.keep_top_k > 0 and math.isfinite(metric):
        direction = 1.0 if followed in LOWER_IS_BETTER else -1.0  # sort the best first
        ranked = sorted(state.top_k + [[metric, name]], key=lambda item: direction * item[0])[: rules.keep_top_k]
        top_k_changed = ranked != state.top_k
        state.top_k = ranked
    return Verdict(best=best, top_k_changed=top_k_changed, stop=state.stopped_early)
