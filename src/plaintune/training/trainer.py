"""The Trainer: the loop (forward, loss, backward, clip, step) and validation on the whole dev set.

Everything the loop does reads top to bottom in `train_epoch`. What a resume
needs is in `train_state`, which validations count in `selection`, and the
files in `rundir`; the trainer only calls them.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from plaintune.errors import Interrupted, UserError
from plaintune.model.objective import Objective
from plaintune.model.outputs import model_outputs
from plaintune.recipe.metrics import LOWER_IS_BETTER, compute_metrics, shown
from plaintune.rundir.layout import RunFiles
from plaintune.runtime import distributed, memory
from plaintune.runtime.distributed import DistInfo
from plaintune.training.selection import SelectionRules, follow, record_validation, validation_name
from plaintune.training.state import Optimization, TrainState, make_bundle, rng_states
from plaintune.training.stopping import StopRequest, divergence_message, weights_finite
from plaintune.training.tracking import Throughput, Tracker


@dataclass(frozen=True)
class LoopOptions:
    """How the loop runs: flat values the run builder reads from the config, and where it runs."""

    epochs: int
    max_steps: int = 0  # stop after this many optimizer steps, even mid-epoch (0: epochs decide)
    grad_accum_steps: int = 1
    max_grad_norm: Optional[float] = 1.0
    log_every_n_steps: int = 10
    save_every_n_steps: int = 0  # mid-epoch last.pt every this many optimizer steps (0: off)
    eval_every_n_steps: int = 0  # mid-epoch validation every this many optimizer steps (0: off)
    save_best: bool = True
    selection: SelectionRules = SelectionRules()
    autocast_dtype: Optional[torch.dtype] = None
    metric_name: str = "pearson"  # what best/, top-k, early stopping and plateau follow (metrics.METRICS)
    binary_threshold: float = 3.0  # prediction >= this counts as 1 for F1 against the binary column
    resume_command: str = ""  # printed after Ctrl-C / SIGTERM
    device: torch.device = torch.device("cpu")
    dist: DistInfo = DistInfo()


@dataclass
class Batches:
    train_loader: object  # this rank's training batches, each a list of micro-batches
    dev_loader: object  # this rank's share of the dev batches (under DDP maybe none)
    dev_labels: np.ndarray  # every dev label, in dataset order
    dev_binary: Optional[np.ndarray] = None  # the dev file's 0/1 column, if it has one (for F1)


class Trainer:
    """Trains `model` on `train_loader`, validates on all of the dev set, keeps best and last.

    Components arrive built (see `run.train`); `state` is a restored TrainState on resume.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        optim: Optimization,
        batches: Batches,
        files: RunFiles,
        tracker: Tracker,
        options: LoopOptions,
        state: Optional[TrainState] = None,
    ):
        self.model = model
        self.objective = objective
        self.optim = optim
        self.train_loader = batches.train_loader
        self.sampler = batches.train_loader.batch_sampler
        self.dev_loader = batches.dev_loader
        self.batches = batches
        self.files = files
        self.tracker = tracker
        self.options = options
        self.device = options.device
        self.dist = options.dist
        self.state = state or TrainState()
        followed_before = self.state.metric
        if follow(self.state, options.metric_name) and self.dist.is_main:
            best = self.state.best_metric
            print(
                f"note: now following dev {options.metric_name} instead of {followed_before}: its best so far is "
                f"{'none' if best is None else f'{best:.4f} at epoch {self.state.best_epoch}'}; best/ keeps the "
                f"model {followed_before} chose until a validation beats that"
            )
        self.stop = StopRequest(distributed_run=self.dist.enabled)
        self._finite_through = self.state.global_step  # last optimizer step with the train loss seen finite
        self._window_loss = torch.tensor(self.state.window_loss, dtype=torch.float64, device=self.device)
        self._train_speed: Optional[float] = None
        # best/'s dev predictions, when best/ was saved in this process (the final report reuses them;
        # None: it predicts dev from best/)
        self.best_dev_predictions: Optional[np.ndarray] = None

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainState:
        """Train the remaining epochs.

        SIGINT (Ctrl-C) or SIGTERM finishes the current step, saves last.pt and raises
        `Interrupted` (exit 130 / 143); a second signal aborts at once without saving.
        """
        with self.stop.caught():
            while self.state.epoch < self.options.epochs and not self.state.stopped_early and not self.steps_done():
                self.train_epoch()
                if self.stop.agreed or self.state.stopped_early:
                    break
                if self.steps_done() and self.state.step_in_epoch < len(self.sampler):
                    break  # training.max_steps ended the run mid-epoch; train_epoch validated and saved
                self.state.epoch += 1
                self.state.step_in_epoch = 0
                self.validate_and_select(mid_epoch=False)
                self.save_last()
            self.stop.agree()  # a signal that came during the last validation or save
        if self.stop.agreed:
            self.save_last()
            try:
                self.tracker.flush()  # curves.png shows every validation the resumed run will not repeat
            finally:  # a drawing that fails is reported after this, never instead of it: last.pt is saved
                if self.dist.is_main:
                    print(
                        f"\ninterrupted ({self.stop.name}): resumable checkpoint saved to "
                        f"{self.files.last_path}\nresume with: {self.options.resume_command}",
                        file=sys.stderr,
                    )
            raise Interrupted(self.stop.agreed)
        return self.state

    def release_optimizer_state(self) -> None:
        """Free what only further optimizer steps need, once training is over and last.pt holds it:
        the optimizer's moments (Adam: twice the weights; every step already drops the gradients).
        Where the end of training reads best/ back (a best saved by an earlier process of a resumed
        run, or data.test_path to score), it does so without raising the run's peak memory
        (bench/RESULTS.md)."""
        self.optim.optimizer.state.clear()
        memory.release()

    def steps_done(self) -> bool:
        """Whether training.max_steps optimizer steps are taken (never, without it)."""
        return bool(self.options.max_steps) and self.state.global_step >= self.options.max_steps

    def train_epoch(self) -> None:
        """One pass over this rank's batches, resuming at `state.step_in_epoch` (always an
        optimizer-step boundary). Every `grad_accum_steps` batches make one optimizer step;
        the epoch's last, shorter group still steps. A batch arrives as length-sorted micro-batches."""
        state, optim, options = self.state, self.optim, self.options
        self.sampler.set_epoch(state.epoch, start=state.step_in_epoch)
        batches, accum = len(self.sampler), options.grad_accum_steps
        self.model.train()
        speed = Throughput(self.dist.world_size)
        shown = batches
        if options.max_steps:  # the bar counts the batches that will run: training.max_steps may end the epoch
            shown = min(batches, state.step_in_epoch + (options.max_steps - state.global_step) * accum)
        with self._progress_bar(shown) as bar:
            for batch in self.train_loader:
                group_start = state.step_in_epoch - state.step_in_epoch % accum
                group_size = min(accum, batches - group_start)
                steps_now = state.step_in_epoch + 1 == group_start + group_size
                batch_size = sum(part["labels"].shape[0] for part in batch)
                for n, part in enumerate(batch):
                    labels = part.pop("labels").to(self.device, non_blocking=True)
                    part.pop("index")
                    inputs = {k: v.to(self.device, non_blocking=True) for k, v in part.items()}
                    # Each part's mean loss is weighted by its share of the batch and by 1/group_size:
                    # the summed gradient is then the mean over the accumulation group's pairs.
                    weight = labels.shape[0] / batch_size / group_size
                    with self._gradient_sync(steps_now and n == len(batch) - 1):
                        with self._autocast():
                            logits = self.model(**inputs).logits
                        loss = self.objective.loss(logits, labels)
                        optim.scaler.scale(loss * weight).backward()
                    self._window_loss += loss.detach().to(torch.float64) * weight  # no host sync
                state.step_in_epoch += 1
                speed.add(batch_size)
                bar.update(1)
                if not steps_now:
                    continue

                # Clip and step (the fp16 scaler unscales first and skips steps with inf gradients).
                optim.scaler.unscale_(optim.optimizer)
                if options.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), options.max_grad_norm)
                optim.scaler.step(optim.optimizer)
                optim.scaler.update()
                if optim.scheduler_when == "step":
                    optim.scheduler.step()
                optim.optimizer.zero_grad(set_to_none=True)
                if optim.ema is not None:
                    optim.ema.update_parameters(distributed.unwrap_model(self.model))
                state.global_step += 1
                state.window_steps += 1

                logs_now = state.global_step % options.log_every_n_steps == 0
                if logs_now:
                    self.log_train(speed.window(), batches)
                    bar.set_postfix(loss=f"{state.loss:.4f}", lr=f"{self._lr():.2e}")
                epoch_ends = state.step_in_epoch >= batches  # the epoch-end validation and save follow
                # training.max_steps reached mid-epoch: validate and save as an epoch end would
                last_step = self.steps_done() and not epoch_ends
                validates_now = (_due(options.eval_every_n_steps, state.global_step) or last_step) and not epoch_ends
                if validates_now:
                    # before a stop request is honoured: a validation that is due belongs to this step,
                    # and the resumed run, which starts after it, would never make up for it
                    started = time.perf_counter()
                    self.validate_and_select(mid_epoch=True, batches=batches)
                    speed.exclude(time.perf_counter() - started)  # samples/s is the training's alone
                saves_now = (last_step or _due(options.save_every_n_steps, state.global_step)) and not epoch_ends
                if state.stopped_early or saves_now:
                    self.save_last()
                # Under DDP, agreeing to stop costs a host sync: only at steps that sync anyway.
                sync_point = logs_now or validates_now or saves_now or epoch_ends
                if state.stopped_early or self.steps_done() or self.stop.poll(sync_point):
                    break
        self.state.window_loss = float(self._window_loss)
        self._train_speed = speed.overall()

    # ------------------------------------------------------------ validation
    def validate_and_select(self, mid_epoch: bool, batches: int = 1) -> None:
        """Validate, log, then keep best/ and top/ and decide early stopping (selection.record_validation)."""
        state = self.state
        self.ensure_finite(check_weights=True)  # a diverged model must not become best/
        started = time.perf_counter()
        metrics, predictions = self.validate()
        followed = self.options.metric_name
        metric = metrics[followed]
        position = round(state.epoch + state.step_in_epoch / batches, 4) if mid_epoch else state.epoch
        state.history.append({"epoch": position, "step": state.global_step, **metrics})
        self.tracker.log(
            "eval",
            state.global_step,
            position,
            {**metrics, "eval_s": time.perf_counter() - started, "train_samples_per_s": self._train_speed},
        )
        name = validation_name(state, mid_epoch)
        verdict = record_validation(
            state,
            metric,
            name,
            self.options.selection,
            followed,
            epochs_left=not self.steps_done() and (mid_epoch or state.epoch < self.options.epochs),
        )
        model, meta = self._evaluated_model(), self._model_meta()
        if verdict.best and self.options.save_best:
            self._on_main(lambda: self.files.save_best(model, meta))
            self.best_dev_predictions = predictions
        if verdict.top_k_changed:
            self._on_main(lambda: self.files.update_top_k(state.top_k, name, model, meta))
        if self.optim.scheduler_when == "metric":  # plateau, in the metric's direction (optim.build_scheduler)
            worst = math.inf if followed in LOWER_IS_BETTER else -math.inf
            self.optim.scheduler.step(metric if math.isfinite(metric) else worst)
        if self.dist.is_main:
            mark = "  (best)" if verdict.best else ""
            where = f"epoch {position:g}/{self.options.epochs}  step {state.global_step}"
            tqdm.write(f"{where}  dev {shown(metrics)}{mark}")
            if verdict.stop:
                rules = self.options.selection
                tqdm.write(
                    f"early stopping: no gain above {rules.min_delta:g} in {state.bad_validations} "
                    f"validations (patience {rules.patience})"
                )

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], np.ndarray]:
        """Every metric (metrics.compute_metrics) and the loss over the whole dev set, computed once
        over all predictions; and those predictions, every dev row in order.

        Under DDP each rank predicts its share of the dev batches (maybe none) through the
        model inside the DDP wrapper, whose forwards need no other rank; the shares are
        then gathered, row indices with values, into the whole set on every rank.
        """
        loader, labels = self.dev_loader, self.batches.dev_labels
        ema = getattr(self.optim, "ema", None)
        model = ema.module if ema is not None else distributed.without_ddp(self.model)
        outputs = model_outputs(model, loader, self.device, self.options.autocast_dtype)
        rows = np.fromiter((i for batch in loader.batch_sampler for i in batch), dtype=np.int64)
        logits = distributed.gather_rows(rows, outputs[rows], len(labels))
        dev_loss = float(self.objective.dev_loss(torch.from_numpy(logits), torch.from_numpy(labels)))
        predictions = self.objective.predictions(logits)
        metrics = compute_metrics(
            predictions, labels, self.objective.num_labels, self.batches.dev_binary, self.options.binary_threshold
        )
        # Best and early stopping are decided from these on every rank: take rank 0's, so the
        # ranks cannot decide differently (and then wait for each other in different places).
        return distributed.rank0_value({**metrics, "loss": dev_loss}), predictions

    # --------------------------------------------------------------- logging
    def log_train(self, samples_per_s: float, batches: int) -> None:
        state = self.state
        self.ensure_finite()
        state.loss = float(self._window_loss) / state.window_steps  # a host sync: only every log step
        self._window_loss.zero_()
        position = round(state.epoch + state.step_in_epoch / max(batches, 1), 4)  # as validations count it
        self.tracker.log(
            "train", state.global_step, position, {"loss": state.loss, "lr": self._lr(), "samples_per_s": samples_per_s}
        )
        state.window_loss, state.window_steps = 0.0, 0

    def _lr(self) -> float:
        return float(self.optim.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------ divergence
    def ensure_finite(self, check_weights: bool = False) -> None:
        """Stop the run with a UserError once training diverged, before anything more is saved.

        Called at log steps and before every save, not after each step: reading a device
        value is a host sync. The window loss sums every loss since the last check, so a
        NaN or inf anywhere in it shows. `check_weights` (before saves) also catches an
        inf gradient that made the weights NaN in the step just taken. Under fp16 a
        GradScaler skips inf-gradient steps by design; only the loss (and weights) count.
        Every rank learns whether any rank diverged, so all stop at the same point.
        """
        loss_bad = not bool(torch.isfinite(self._window_loss))
        weights_bad = check_weights and not weights_finite(self.model)
        code = distributed.max_over_ranks(2 if loss_bad else 1 if weights_bad else 0)
        if code:
            fp16 = self.optim.scaler.is_enabled() or self.options.autocast_dtype == torch.float16
            raise UserError(
                divergence_message(
                    "training loss" if code == 2 else "model weights",
                    self.state,
                    self._finite_through,
                    self._lr(),
                    fp16,
                    clipping=self.options.max_grad_norm is not None,
                )
            )
        self._finite_through = self.state.global_step

    # ----------------------------------------------------------------- saving
    def save_last(self) -> None:
        """Write last.pt atomically (rank 0); every rank waits until it is on disk."""
        self.ensure_finite(check_weights=True)
        self.state.window_loss = float(self._window_loss)
        # Under DDP each rank's RNG stream is its own (dropout over other batches); all go
        # into the bundle, so a resume with as many processes continues each of them.
        rank_rngs = distributed.all_gather_objects(rng_states()) if self.dist.enabled else None
        if self.dist.is_main:
            previous, self.state.saved_step = self.state.saved_step, self.state.global_step
            bundle = make_bundle(
                distributed.unwrap_model(self.model), self.optim, self.state, self.dist.world_size, rank_rngs
            )
            self.files.save_last({**bundle, "run_ids": self.tracker.run_ids}, previous)
        distributed.barrier()

    def _evaluated_model(self) -> nn.Module:
        """What validation scores and best/ and top/ keep: the weight average with training.ema."""
        return self.optim.ema.module if self.optim.ema is not None else distributed.unwrap_model(self.model)

    def _model_meta(self) -> dict:
        state, last = self.state, self.state.history[-1] if self.state.history else {}
        return {
            "epoch": last.get("epoch", state.epoch),
            "global_step": state.global_step,
            "metric": self.options.metric_name,
            "value": last.get(self.options.metric_name),
            "metrics": {k: v for k, v in last.items() if k not in ("epoch", "step")},
        }

    def _on_main(self, write) -> None:
        """Write on rank 0; every rank waits until it is done."""
        if self.dist.is_main:
            write()
        distributed.barrier()

    # ------------------------------------------------------- loop machinery
    def _autocast(self):
        if self.options.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.options.autocast_dtype)

    def _gradient_sync(self, sync: bool):
        """DDP all-reduces gradients only in the backward that ends in an optimizer step."""
        return nullcontext() if sync or not self.dist.enabled else self.model.no_sync()

    def _progress_bar(self, batches: int):
        return tqdm(
            total=batches,
            initial=self.state.step_in_epoch,
            desc=f"epoch {self.state.epoch + 1}/{self.options.epochs}",
            disable=not self.dist.is_main,
            dynamic_ncols=True,
            leave=False,
        )


def _due(every: int, step: int) -> bool:
    return bool(every) and step % every == 0
