"""The Trainer: one readable loop — forward, loss, backward, clip, step — plus validate, save, resume.

State that a resumed run needs lives in `TrainState` and goes into `last.pt`
whole; `epoch` always counts *completed* epochs and `step_in_epoch` the batches
of the current epoch already consumed, so a resume skips exactly those.
"""
from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .distributed import DistInfo
from .errors import Interrupted, UserError
from .objective import Objective
from .evaluate import is_better, predict, score
from .saver import LAST_FILE, CheckpointSaver
from .tracking import Tracker

FORMAT_VERSION = 1
# What Ctrl-C sends, and what Colab, SLURM and Kubernetes send before they kill a process.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class TrainState:
    """Everything about progress that must survive a restart (all plain data)."""

    epoch: int = 0                 # completed epochs
    step_in_epoch: int = 0         # batches of the current epoch already consumed (this rank)
    global_step: int = 0           # optimizer steps taken
    loss: Optional[float] = None   # last logged train loss
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    best_step: Optional[int] = None
    history: list = field(default_factory=list)   # one dict per validation
    window_loss: float = 0.0       # train-loss sum since the last log line
    window_steps: int = 0
    bad_epochs: int = 0            # early stopping: evaluations without improvement
    stopped_early: bool = False
    saved_step: Optional[int] = None   # global step of the bundle in last.pt
    top_k: list = field(default_factory=list)  # [[metric, epoch], ...] kept under top/


def rng_states() -> dict:
    np_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np_state = states["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _offsets(groups: list) -> list[int]:
    starts, total = [], 0
    for group in groups:
        starts.append(total)
        total += len(group["params"])
    return starts


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class LoopOptions:
    """How the loop runs: flat values the recipe reads from the config."""

    epochs: int
    grad_accum_steps: int = 1
    max_grad_norm: Optional[float] = 1.0
    log_every_n_steps: int = 10
    every_n_steps: int = 0            # mid-epoch last.pt every this many optimizer steps (0: off)
    save_best: bool = True
    autocast_dtype: Optional[torch.dtype] = None
    patience: Optional[int] = None    # early stopping
    min_delta: float = 0.0
    metric_name: str = "pearson"
    resume_command: str = ""          # printed after Ctrl-C / SIGTERM


class Trainer:
    """Trains `model` on `train_loader`, validates on all of `dev_loader`, keeps best and last.

    Components arrive built (see `recipe.run_training`); the trainer owns the
    loop and the checkpoint files, nothing else.
    """

    def __init__(self, *, model: nn.Module, tokenizer, objective: Objective, optimizer: torch.optim.Optimizer,
                 scheduler, scheduler_when: str, train_loader, dev_loader, dev_labels: np.ndarray,
                 device: torch.device, saver: CheckpointSaver, tracker: Optional[Tracker], config: dict,
                 options: LoopOptions, scaler: Optional[torch.amp.GradScaler] = None,
                 dist_info: DistInfo = DistInfo()):
        self.model = model
        self.tokenizer = tokenizer
        self.objective = objective
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_when = scheduler_when  # "step" or "metric"
        self.scaler = scaler
        self.train_loader = train_loader
        self.sampler = train_loader.batch_sampler
        self.dev_loader = dev_loader
        self.dev_labels = dev_labels
        self.device = device
        self.saver = saver
        self.run_dir = saver.run_dir
        self.tracker = tracker
        self.config = config
        self.dist = dist_info
        self.options = options
        # the loop reads these often; short names keep it readable
        self.epochs = options.epochs
        self.grad_accum_steps = options.grad_accum_steps
        self.max_grad_norm = options.max_grad_norm
        self.log_every_n_steps = options.log_every_n_steps
        self.every_n_steps = options.every_n_steps
        self.autocast_dtype = options.autocast_dtype
        self.metric_name = options.metric_name
        self.state = TrainState()
        self.bundle_extra: dict = {}  # more plain data for last.pt (e.g. data fingerprints), set by the recipe
        self._received_signal = 0     # set by the signal handler, on this rank only
        self._stop_signal = 0         # the signal every rank agreed to stop on (0: none)
        self._finite_through = 0      # the last optimizer step at which the train loss was seen finite
        self._window_loss: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainState:
        """Train the remaining epochs.

        SIGINT (Ctrl-C) or SIGTERM finishes the current step, saves last.pt and raises
        `Interrupted` (exit 130 / 143); a second signal aborts at once without saving.
        """
        self._finite_through = self.state.global_step  # a resumed run starts from a finite bundle
        previous = self._install_signal_handlers()
        try:
            while self.state.epoch < self.epochs and not self.state.stopped_early:
                self.train_one_epoch()
                if self._stop_signal:
                    break
                self.end_of_epoch()
            # A signal that came during the last validation or save: agree on it here too.
            self._stop_signal = self._agree_on_stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if self._stop_signal:
            self.save_last()
            if self.dist.is_main:
                print(f"\ninterrupted ({signal.Signals(self._stop_signal).name}): resumable checkpoint saved to "
                      f"{self.run_dir / LAST_FILE}\nresume with: {self.options.resume_command}", file=sys.stderr)
            raise Interrupted(self._stop_signal)
        return self.state

    def _install_signal_handlers(self) -> dict:
        """Route STOP_SIGNALS to `_request_stop`; return the handlers they replace (for fit to restore)."""
        if threading.current_thread() is not threading.main_thread():
            return {}  # Python installs signal handlers from the main thread only
        return {signum: signal.signal(signum, self._request_stop) for signum in STOP_SIGNALS}

    def _request_stop(self, signum, frame) -> None:
        if self._received_signal:  # a second signal: stop now, last.pt stays as it was
            raise Interrupted(signum)
        self._received_signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step and saving a resumable checkpoint "
              "(interrupt again to abort without saving)", file=sys.stderr)

    def _agree_on_stop(self) -> int:
        """The stop signal of any rank, on every rank (0: none).

        A signal may reach one process only (a Ctrl-C in one rank's terminal, a kill by
        pid); if that rank alone stopped, the others would wait for it in the next
        gradient all-reduce. One process: no communication, no host sync.
        """
        return distributed.max_over_ranks(self._received_signal)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.objective.loss(logits, labels)

    def train_one_epoch(self) -> None:
        """One pass over this rank's batches, resuming at `state.step_in_epoch` (always an
        optimizer-step boundary). With gradient accumulation every `grad_accum_steps` batches
        make one optimizer step; the epoch's last, shorter group still steps."""
        state = self.state
        self.sampler.set_epoch(state.epoch, start=state.step_in_epoch)
        batches = len(self.sampler)
        accum = self.grad_accum_steps
        self.model.train()
        bar = tqdm(total=batches, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}/{self.epochs}",
                   disable=not self.dist.is_main, dynamic_ncols=True, leave=False)
        # The window's loss sum stays on the device (float64, so a resumed run adds exactly as an
        # uninterrupted one); reading it is a host sync, done only when logging or saving.
        self._window_loss = torch.tensor(state.window_loss, dtype=torch.float64, device=self.device)
        window_start, window_samples = time.perf_counter(), 0
        epoch_start, epoch_samples = time.perf_counter(), 0
        try:
            for batch in self.train_loader:
                group_start = state.step_in_epoch - state.step_in_epoch % accum
                group_size = min(accum, batches - group_start)
                steps_now = state.step_in_epoch + 1 == group_start + group_size
                samples = self._accumulate(batch, group_size, steps_now)
                state.step_in_epoch += 1
                window_samples += samples
                epoch_samples += samples
                bar.update(1)
                if not steps_now:
                    continue

                self._optimizer_step()
                state.global_step += 1
                state.window_steps += 1

                if state.global_step % self.log_every_n_steps == 0:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    samples_per_s = window_samples * self.dist.world_size / elapsed
                    self._log_train(samples_per_s=samples_per_s)
                    bar.set_postfix(loss=f"{state.loss:.4f}", lr=f"{self._lr():.2e}", samples_s=f"{samples_per_s:.1f}")
                    window_start, window_samples = time.perf_counter(), 0
                self._stop_signal = self._agree_on_stop()
                if self._stop_signal:
                    break
                last_group = state.step_in_epoch >= batches
                if self.every_n_steps and state.global_step % self.every_n_steps == 0 and not last_group:
                    self.save_last()  # the epoch-end save follows anyway after the last group
        finally:
            bar.close()  # also when stopping on an error: its message then starts a clean line
        self._fold_window()
        self._epoch_speed = epoch_samples * self.dist.world_size / max(time.perf_counter() - epoch_start, 1e-9)

    def _optimizer_step(self) -> None:
        """Clip, step (through the fp16 scaler, which skips steps with inf gradients), schedule, zero."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler_when == "step":
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _accumulate(self, parts: list[dict], group_size: int, steps_now: bool) -> int:
        """Forward and backward one batch, given as one or more micro-batches; returns its size.

        Each part's mean loss is weighted by its share of the batch, so the summed
        gradient is the batch mean's (the losses offered are per-pair means), and by
        1/group_size, so an accumulation group's gradient is the mean over its batches.
        """
        total = sum(part["labels"].shape[0] for part in parts)
        for n, part in enumerate(parts):
            labels = part.pop("labels").to(self.device, non_blocking=True)
            part.pop("index")
            inputs = {k: v.to(self.device, non_blocking=True) for k, v in part.items()}
            weight = labels.shape[0] / total / group_size
            # DDP: all-reduce gradients only in the backward that ends in an optimizer step.
            last = steps_now and n == len(parts) - 1
            with nullcontext() if last or not self.dist.enabled else self.model.no_sync():
                with self._autocast():
                    logits = self.model(**inputs).logits
                loss = self.compute_loss(logits, labels)
                scaled = loss * weight
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            self._window_loss += loss.detach().to(torch.float64) * weight
        return total

    def _fold_window(self) -> None:
        """Move the on-device window loss sum into the (plain-data) train state."""
        if self._window_loss is not None:
            self.state.window_loss = float(self._window_loss)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _log_train(self, samples_per_s: Optional[float] = None) -> None:
        state = self.state
        if state.window_steps == 0:
            return
        self.ensure_finite()
        state.loss = float(self._window_loss) / state.window_steps
        self._window_loss.zero_()
        metrics = {"loss": state.loss, "lr": self._lr()}
        if samples_per_s is not None:
            metrics["samples_per_s"] = samples_per_s
        self.tracker.log("train", state.global_step, state.epoch, metrics)
        state.window_loss, state.window_steps = 0.0, 0

    def ensure_finite(self, check_weights: bool = False) -> None:
        """Stop the run with a UserError once training diverged, before anything more is saved.

        Called at log steps and before every save, not after each step: reading a device
        value is a host sync. The window loss sums every loss since the last check, so a
        NaN or inf anywhere in it shows. `check_weights` (before saves) also catches an
        inf gradient that made the weights NaN in the step just taken. Under fp16 a
        GradScaler skips inf-gradient steps by design; only the loss (and weights) count.
        Every rank learns whether any rank diverged, so all stop at the same point.
        """
        loss_bad = self._window_loss is not None and not bool(torch.isfinite(self._window_loss))
        weights_bad = check_weights and not self._weights_finite()
        code = distributed.max_over_ranks(2 if loss_bad else 1 if weights_bad else 0)
        if code:
            raise UserError(self._divergence_message("training loss" if code == 2 else "model weights"))
        self._finite_through = self.state.global_step

    def _weights_finite(self) -> bool:
        flags = [torch.isfinite(p).all() for p in self.model.parameters()]
        return bool(torch.stack(flags).all()) if flags else True

    def _divergence_message(self, what: str) -> str:
        step, since = self.state.global_step, self._finite_through
        when = f"at optimizer step {step}" if step - since <= 1 else \
            f"between optimizer steps {since} (last seen finite) and {step}"
        kept = f"{LAST_FILE} keeps step {self.state.saved_step}" if self.state.saved_step is not None \
            else f"no {LAST_FILE} was written"
        if self.state.best_step is not None:
            kept += f", best/ step {self.state.best_step}"
        causes = [f"training.learning_rate too high (the rate at this step: {self._lr():.2e}; try 10x lower)"]
        if self.scaler is not None or self.autocast_dtype == torch.float16:
            causes.append("training.precision fp16 overflowing (use bf16 or fp32)")
        if self.max_grad_norm is None:
            causes.append("no gradient clipping (set training.max_grad_norm, e.g. 1.0)")
        return (f"the {what} became non-finite (NaN/inf) {when}; training stopped and saved nothing after "
                f"that ({kept}). Likely causes: {'; '.join(causes)}")

    def end_of_epoch(self) -> None:
        """Validate, update best, save last, step a metric-driven scheduler."""
        state = self.state
        self.ensure_finite(check_weights=True)  # a diverged model must not become best/
        state.epoch += 1
        state.step_in_epoch = 0
        eval_start = time.perf_counter()
        metric, dev_loss = self.validate()
        eval_seconds = time.perf_counter() - eval_start
        improved = is_better(metric, state.best_metric)
        # Early stopping counts validations without a gain above min_delta over the best so far.
        significant = improved and (state.best_metric is None or metric - state.best_metric > self.options.min_delta)
        record = {"epoch": state.epoch, "step": state.global_step, self.metric_name: metric, "loss": dev_loss}
        state.history.append(record)
        self.tracker.log("eval", state.global_step, state.epoch,
                         {self.metric_name: metric, "loss": dev_loss, "eval_s": eval_seconds,
                          "train_samples_per_s": getattr(self, "_epoch_speed", None)})
        if improved:
            state.best_metric, state.best_epoch, state.best_step = metric, state.epoch, state.global_step
            if self.options.save_best:
                self.save_best()
        state.bad_epochs = 0 if significant else state.bad_epochs + 1
        if self.options.patience is not None and state.bad_epochs >= self.options.patience and state.epoch < self.epochs:
            state.stopped_early = True
        self.update_top_k(metric)
        if self.scheduler_when == "metric":
            self.scheduler.step(metric if math.isfinite(metric) else -math.inf)
        if self.dist.is_main:
            mark = "  (best)" if improved else ""
            tqdm.write(f"epoch {state.epoch}/{self.epochs}  step {state.global_step}  "
                       f"dev {self.metric_name} {metric:.4f}  dev loss {dev_loss:.4f}{mark}")
            if state.stopped_early:
                tqdm.write(f"early stopping: no gain above {self.options.min_delta:g} in {state.bad_epochs} validations "
                           f"(patience {self.options.patience})")
        self.save_last()

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Metric and loss over the whole dev set, computed once over all predictions.

        Under DDP each rank predicts its share of the dev batches (maybe none) through the
        model inside the DDP wrapper, whose forwards need no other rank; the shares are
        then gathered, row indices with values, into the whole set on every rank.
        """
        outputs = predict(distributed.without_ddp(self.model), self.dev_loader, self.device, self.autocast_dtype)
        rows = np.fromiter((i for batch in self.dev_loader.batch_sampler for i in batch), dtype=np.int64)
        logits = distributed.gather_rows(rows, outputs[rows], len(self.dev_labels))
        dev_loss = float(self.objective.loss(torch.from_numpy(logits), torch.from_numpy(self.dev_labels)))
        predictions = self.objective.predictions(logits)
        metric = score(predictions, self.dev_labels, self.objective.num_labels)
        # Best and early stopping are decided from these on every rank: take rank 0's, so the
        # ranks cannot decide differently (and then wait for each other in different places).
        return distributed.broadcast_object((metric, dev_loss))

    # ----------------------------------------------------------- checkpoints
    def bundle(self, rank_rng_states: Optional[list] = None) -> dict:
        """The resume bundle: seed-layout keys first, then everything else a resume needs.

        `rank_rng_states`: every rank's RNG states (under DDP; see save_last).
        """
        state = self.state
        return {
            "model_state_dict": distributed.unwrap_model(self.model).state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "epoch": state.epoch,
            "loss": state.loss,
            "format_version": FORMAT_VERSION,
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict() if self.scaler is not None else None,
            "train_state": asdict(state),
            "rng_states": rng_states(),
            "rank_rng_states": rank_rng_states,
            "world_size": self.dist.world_size,
            "run_ids": self.tracker.run_ids,
            "config": self.config,
            **self.bundle_extra,
        }

    def save_last(self) -> None:
        """Write last.pt atomically (rank 0); every rank waits until it is on disk."""
        self.ensure_finite(check_weights=True)
        self._fold_window()
        # Under DDP each rank's RNG stream is its own (dropout over other batches); all go
        # into the bundle, so a resume with as many processes continues each of them.
        rank_rngs = distributed.all_gather_objects(rng_states()) if self.dist.enabled else None
        if self.dist.is_main:
            previous = self.state.saved_step
            self.state.saved_step = self.state.global_step
            self.saver.save_last(self.bundle(rank_rngs), previous)
        distributed.barrier()

    def _model_meta(self) -> dict:
        return {"epoch": self.state.epoch, "global_step": self.state.global_step, "metric": self.metric_name,
                "value": self.state.history[-1][self.metric_name] if self.state.history else None}

    def save_best(self) -> None:
        """Replace best/ with a Hugging Face directory of the current weights (rank 0)."""
        if self.dist.is_main:
            self.saver.save_best(distributed.unwrap_model(self.model), self.tokenizer, self._model_meta())
        distributed.barrier()

    def update_top_k(self, metric: float) -> None:
        """Keep the k best epochs under top/ (rank 0); a NaN or inf metric never enters."""
        if self.dist.is_main and self.saver.keep_top_k > 0 and math.isfinite(metric):
            self.state.top_k = self.saver.update_top_k(self.state.top_k, metric, self.state.epoch,
                                                       distributed.unwrap_model(self.model), self.tokenizer,
                                                       self._model_meta())
        distributed.barrier()

    def _load_optimizer_state(self, saved: dict) -> Optional[str]:
        """Load optimizer state; return a note when it had to be adapted or rebuilt.

        Tutorial code builds the optimizer with one group over model.parameters();
        plaintune splits decay / no-decay groups. Moments are then mapped per
        parameter (by position in model.parameters()), hyperparameters come from
        the config.
        """
        saved_groups = saved.get("param_groups", [])
        ours = self.optimizer.param_groups
        if [len(g["params"]) for g in saved_groups] == [len(g["params"]) for g in ours]:
            self.optimizer.load_state_dict(saved)
            return None
        model_params = list(distributed.unwrap_model(self.model).parameters())
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
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": list(range(start, start + len(g["params"])))}
                  for start, g in zip(_offsets(ours), ours)]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        return "optimizer (moments mapped onto plaintune's parameter groups)"

    def restore(self, bundle: dict, warn: Callable[[str], None] = print) -> None:
        """Continue from a bundle. Parts a seed-style bundle lacks are rebuilt, with one warning."""
        rebuilt = []
        if bundle.get("optimizer_state_dict") is not None:
            note = self._load_optimizer_state(bundle["optimizer_state_dict"])
            if note:
                rebuilt.append(note)
        else:
            rebuilt.append("optimizer (fresh)")
        if "train_state" in bundle:
            known = {f.name for f in fields(TrainState)}
            self.state = TrainState(**{k: v for k, v in bundle["train_state"].items() if k in known})
        else:
            self.state = TrainState(epoch=int(bundle.get("epoch", 0)), loss=bundle.get("loss"))
            steps = len(self.sampler) * self.state.epoch
            self.state.global_step = steps
            rebuilt.append(f"progress (assumed {self.state.epoch} completed epochs, step {steps})")
        if bundle.get("scheduler_state_dict") is not None:
            self.scheduler.load_state_dict(bundle["scheduler_state_dict"])
        elif self.scheduler_when == "step":
            with warnings.catch_warnings():  # replaying before any optimizer.step() is intended here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(self.state.global_step):  # replay the schedule to where the run was
                    self.scheduler.step()
            rebuilt.append("scheduler (replayed)")
        if self.scaler is not None:
            if bundle.get("scaler_state_dict"):
                self.scaler.load_state_dict(bundle["scaler_state_dict"])
            else:
                rebuilt.append("gradient scaler (fresh)")
        per_rank = bundle.get("rank_rng_states")
        if per_rank is not None and len(per_rank) == self.dist.world_size:
            set_rng_states(per_rank[self.dist.rank])
        elif bundle.get("rng_states") is not None:  # one process, or another number of them: rank 0's
            set_rng_states(bundle["rng_states"])
        else:
            rebuilt.append("RNG states (reseeded)")
        if rebuilt and self.dist.is_main:
            warn(f"warning: the checkpoint lacks parts of a plaintune bundle; rebuilt: {', '.join(rebuilt)}")
