"""What a resume needs, as plain data: the train state, RNG streams, and the bundle that holds them.

`make_bundle` writes, `restore_bundle` reads. A bundle from tutorial code (only
model, optimizer, epoch, loss) restores too: what it lacks is rebuilt here,
with one warning, so the loop never sees the difference.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

FORMAT_VERSION = 1


@dataclass
class TrainState:
    """Everything about progress that must survive a restart (all plain data).

    `epoch` counts *completed* epochs and `step_in_epoch` the batches of the current
    epoch already consumed, so a resume skips exactly those.
    """

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # batches of the current epoch already consumed (this rank)
    global_step: int = 0  # optimizer steps taken
    loss: Optional[float] = None  # last logged train loss
    best_metric: Optional[float] = None
    best_epoch: Optional[float] = None  # an int at an epoch end, a fraction for a mid-epoch validation
    best_step: Optional[int] = None
    history: list = field(default_factory=list)  # one dict per validation
    window_loss: float = 0.0  # train-loss sum since the last log line
    window_steps: int = 0
    bad_validations: int = 0  # early stopping: validations without a significant gain
    stopped_early: bool = False
    saved_step: Optional[int] = None  # global step of the bundle in last.pt
    top_k: list = field(default_factory=list)  # [[metric, "epoch-003" | "step-00000120"], ...] kept under top/
    metric: Optional[str] = None  # the metric best/top-k/early stopping follow (training.metric, resolved)

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainState":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


@dataclass
class Optimization:
    """What an optimizer step changes besides the weights, and a bundle therefore keeps."""

    optimizer: torch.optim.Optimizer
    scheduler: object
    scheduler_when: str  # "step": after every optimizer step; "metric": after each validation
    scaler: torch.amp.GradScaler  # enabled for fp16 only; a disabled scaler passes everything through
    ema: Optional[AveragedModel] = None  # training.ema: the moving average validated and saved as best/


def build_ema(model: nn.Module, decay: Optional[float]) -> Optional[AveragedModel]:
    """torch's AveragedModel keeping an exponential moving average of `model`'s weights (and floating-point
    buffers), on the model's device; None when training.ema is off."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=ema_of_floats(decay), use_buffers=True)


def ema_of_floats(decay: float) -> Callable:
    """torch's EMA update for floating-point tensors; any other tensor is copied from the model. torch
    averages an integer buffer too and truncates: BERT's position_ids [0, 1, 2, 3] became [0, 1, 2, 2]
    after a few steps, so validation scored (and chose best/ by) a model unlike the one saved."""
    average = get_ema_multi_avg_fn(decay)

    def update(averaged: list, current: list, steps) -> None:
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            average(averaged, current, steps)
        else:  # torch groups the tensors by dtype: a group is all floats or none
            for kept, now in zip(averaged, current):
                kept.copy_(now)

    return update


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict:
    np_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np_state = states["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def make_bundle(
    model: nn.Module, optim: Optimization, state: TrainState, world_size: int, rank_rng_states: Optional[list] = None
) -> dict:
    """The resume bundle: seed-layout keys first (model, optimizer, epoch, loss), then the rest.

    `model` is the unwrapped model; `rank_rng_states` every rank's RNG states under DDP.
    The caller adds what only it knows (config, logger ids, data fingerprints).
    """
    return {
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optim.optimizer.state_dict(),
        "epoch": state.epoch,
        "loss": state.loss,
        "format_version": FORMAT_VERSION,
        "scheduler_state_dict": optim.scheduler.state_dict(),
        "scaler_state_dict": optim.scaler.state_dict() if optim.scaler.is_enabled() else None,
        "ema_state_dict": optim.ema.state_dict() if optim.ema is not None else None,
        "train_state": asdict(state),
        "rng_states": rng_states(),
        "rank_rng_states": rank_rng_states,
        "world_size": world_size,
    }


def restore_bundle(
    bundle: dict, model: nn.Module, optim: Optimization, steps_per_epoch: int, rank: int = 0, world_size: int = 1
) -> tuple[TrainState, list[str]]:
    """Load optimizer, scheduler, scaler and RNG state from `bundle` (the weights are loaded
    elsewhere, with a report); return the train state and the parts that had to be rebuilt."""
    rebuilt = []
    if bundle.get("optimizer_state_dict") is not None:
        note = load_optimizer_state(optim.optimizer, bundle["optimizer_state_dict"], model)
        if note:
            rebuilt.append(note)
    else:
        rebuilt.append("optimizer (fresh)")
    if "train_state" in bundle:
        state = TrainState.from_dict(bundle["train_state"])
    else:  # tutorial bundles: completed epochs only
        state = TrainState(epoch=int(bundle.get("epoch", 0)), loss=bundle.get("loss"))
        state.global_step = steps_per_epoch * state.epoch
        rebuilt.append(f"progress (assumed {state.epoch} completed epochs, step {state.global_step})")
    if bundle.get("scheduler_state_dict") is not None:
        optim.scheduler.load_state_dict(bundle["scheduler_state_dict"])
    elif optim.scheduler_when == "step":
        with warnings.catch_warnings():  # replaying before any optimizer.step() is intended here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(state.global_step):  # replay the schedule to where the run was
                optim.scheduler.step()
        rebuilt.append("scheduler (replayed)")
    if optim.ema is not None:
        if bundle.get("ema_state_dict"):
            optim.ema.load_state_dict(bundle["ema_state_dict"])
        else:
            rebuilt.append("weight average (training.ema; restarted from the checkpoint's weights)")
    if optim.scaler.is_enabled():
        if bundle.get("scaler_state_dict"):
            optim.scaler.load_state_dict(bundle["scaler_state_dict"])
        else:
            rebuilt.append("gradient scaler (fresh)")
    per_rank = bundle.get("rank_rng_states")
    if per_rank is not None and len(per_rank) == world_size:
        set_rng_states(per_rank[rank])
    elif bundle.get("rng_states") is not None:  # one process, or another number of them: rank 0's
        set_rng_states(bundle["rng_states"])
    else:
        rebuilt.append("RNG states (reseeded)")
    return state, rebuilt


def _offsets(groups: list) -> list[int]:
    starts, total = [], 0
    for group in groups:
        starts.append(total)
        total += len(group["params"])
    return starts


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, model: nn.Module) -> Optional[str]:
    """Load optimizer state; return a note when it had to be adapted or rebuilt.

    Tutorial code builds the optimizer with one group over model.parameters();
    plaintune splits decay / no-decay groups. Moments are then mapped per
    parameter (by position in model.parameters()), hyperparameters come from
    the config.
    """
    saved_groups = saved.get("param_groups", [])
    ours = optimizer.param_groups
    if [len(g["params"]) for g in saved_groups] == [len(g["params"]) for g in ours]:
        optimizer.load_state_dict(saved)
        return None
    model_params = list(model.parameters())
    saved_ids = [i for g in saved_groups for i in g["params"]]
    if len(saved_ids) != len(model_params):
        return "optimizer (fresh: the saved one covers another set of parameters)"
    position = {id(p): n for n, p in enumerate(model_params)}
    saved_state = saved.get("state", {})
    state = {}
    flat = [p for g in ours for p in g["params"]]
    for new_index, param in enumerate(flat):
        old_key = saved_ids[position[id(param)]]
        if old_key in saved_state:
            state[new_index] = saved_state[old_key]
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": list(range(start, start + len(g["params"])))}
        for start, g in zip(_offsets(ours), ours)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return "optimizer (moments mapped onto plaintune's parameter groups)"


def adapt_world_size(state: TrainState, saved: int, current: int, say: Callable[[str], None] = print) -> None:
    """Resume under another number of processes: keep the epoch position in batches consumed.

    Rank r takes batches r, r+W, ... of the epoch's order, so after k steps per
    rank under W_old the first k*W_old batches are done; under W_new that is
    k*W_old/W_new steps per rank (exact when it divides).
    """
    if saved == current:
        return
    done = state.step_in_epoch * saved
    state.step_in_epoch = done // current
    exact = "" if done % current == 0 else f" ({done % current} batches of this epoch will be seen twice)"
    say(
        f"note: resuming a {saved}-process run with {current} process(es); the effective batch size "
        f"changes accordingly{exact}"
    )
