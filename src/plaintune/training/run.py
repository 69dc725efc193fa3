"""One training run: `train_run` builds the components in dependency order, then hands them to the Trainer:

    1. processes and device           distributed.setup
    2. run directory and resume       resume.open_run: the bundle, checked to belong to this run
    3. data                           load_data: every CSV checked before the model loads
    4. model                          load_model: pretrained, warm start or the bundle's weights
    5. objective and optimization     what logits mean; optimizer, scheduler, gradient scaler
    6. the run directory is written by this process alone (the lock); the Trainer fits

A mistake raises `UserError` with the one-line message the commands print;
nothing here calls sys.exit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from box import Box

from plaintune.commands import CLI, Switches
from plaintune.config.load import dump_yaml, to_plain, with_values
from plaintune.data.batching import eval_loader
from plaintune.inference.report import check_report_folder, write_error_report
from plaintune.model.outputs import model_outputs
from plaintune.names import LAST_FILE, METRICS_FILE, PLOT_FILE, REPORT_DIR, TENSORBOARD_DIR
from plaintune.recipe.metrics import compute_metrics, followed_metric, shown
from plaintune.rundir import ownership
from plaintune.rundir.diskuse import disk_line, drop_resume_bundles
from plaintune.rundir.guard import check_outputs
from plaintune.rundir.layout import (
    RunFiles,
    config_file,
    find_best_dir,
    run_dir_for,
    run_inputs,
    run_outputs,
    start_run_dir,
)
from plaintune.rundir.lock import RunLock
from plaintune.runtime import distributed, memory, precision
from plaintune.training.build import (
    TrainData,
    build_optimization,
    load_data,
    load_model,
    loop_options,
    restore_state,
    wrap_for_training,
)
from plaintune.training.derived import Derived, effective
from plaintune.training.resume import open_run
from plaintune.training.state import build_ema, seed_everything
from plaintune.training.tracking import Tracker, start_wandb, wandb_mode
from plaintune.training.trainer import Batches, Trainer
from plaintune.weights.load import load_weights


@dataclass
class TrainResult:
    """What a training run ended with (on every rank; the metrics are the gathered ones)."""

    run_dir: Path
    metric_name: str
    best_metric: Optional[float]
    best_epoch: Optional[float]  # an int at an epoch end, a fraction for a mid-epoch validation
    history: list  # one dict per validation: epoch, step, the metric, loss
    stopped_early: bool = False
    kind: str = "run"  # "run", "k-fold" or "leaderboard"
    runs: list = field(default_factory=list)  # the runs a k-fold or a leaderboard trained
    scores: dict = field(default_factory=dict)  # out-of-fold scores: each fold's, each member's, each combination's
    ensemble: Optional[dict] = None  # a leaderboard's fitted combination (weights, intercept)


@dataclass(frozen=True)
class RunRequest:
    """How a run starts, as the command line or `train()` asked."""

    resume: Optional[str] = None  # None: a fresh run; '': the run's newest bundle; else a bundle path
    force: bool = False  # resume despite a changed config or data
    overwrite: bool = False  # start over where the run has checkpoints
    trust: bool = False  # unpickle a whole-model checkpoint for model.init_from
    resume_command: Optional[str] = None  # printed after Ctrl-C (k-fold prints its own)
    switches: Switches = CLI  # how the caller wrote resume, overwrite, force, folds (commands.Switches)
    quiet: bool = False  # one of many runs (a k-fold's fold): one summary line, no next: command
    # the config the next: command predicts with (a resumed run's own config.yaml: its data and encoding)
    predict_config: Optional[str] = None


def train_run(cfg: Box, config_name: str, overrides: Sequence[str], request: RunRequest = RunRequest()) -> TrainResult:
    """Train per the validated `cfg` (see the module docstring for the order)."""
    started = time.perf_counter()
    # 1. Processes and device; the environment's settings are checked before anything loads.
    dist_info, device = distributed.setup(cfg.device, timeout_s=cfg.training.ddp_timeout_s)
    is_main = dist_info.is_main
    if device.type == "cpu":
        memory.limit_heap_retention()  # the allocator gives large freed blocks back (runtime/memory.py)
    wandb_mode(cfg.logging.wandb.mode)
    # "{time}" in run_name gives each run (e.g. each sweep trial) its own directory; rank 0 decides.
    # The commands printed for this run (resume, inference) name the directory it got.
    run_name = distributed.rank0_value(cfg.run_name.replace("{time}", time.strftime("%Y%m%d-%H%M%S")))
    if run_name != cfg.run_name:
        overrides = [*overrides, f"run_name={run_name}"]
    cfg = with_values(cfg, {"run_name": run_name})
    # 2. Where the run writes: a directory plaintune made (or will make), held by this process alone
    #    (the lock) before anything is written or read from it; never clobber a previous run by
    #    accident, nor the run's own inputs.
    run_dir = run_dir_for(cfg)
    if is_main:
        ownership.check_owned(run_dir, ownership.RUN, announce=True)
    lock = RunLock(run_dir, cfg.run_name).acquire() if is_main else None
    try:
        return _train_locked(cfg, config_name, overrides, request, dist_info, device, started, run_dir)
    finally:
        if lock is not None:
            lock.release()
        distributed.cleanup()
        memory.release()  # the run's model and optimizer are freed now: the next fold starts lean


def _train_locked(
    cfg: Box,
    config_name: str,
    overrides: Sequence[str],
    request: RunRequest,
    dist_info,
    device,
    started: float,
    run_dir: Path,
) -> TrainResult:
    """train_run's steps 2-6, with the run directory locked."""
    is_main = dist_info.is_main
    chatty = is_main and not request.quiet  # a k-fold's fold says only its summary line
    opened = open_run(
        cfg, request.resume, request.force, request.overwrite, announce=is_main, switches=request.switches
    )
    cfg, bundle = opened.cfg, opened.bundle
    check_outputs(run_outputs(run_dir), run_inputs(cfg, fresh=bundle is None, config_path=config_file(config_name)))
    check_report_folder(run_dir / REPORT_DIR, "run_name")
    saved_precision = ((bundle or {}).get("resolved") or {}).get("training.precision")
    chosen, why = precision.for_training(cfg.training.precision, device, saved_precision)
    if chatty:
        print(f"precision: {chosen} ({why})")
    # 3. Data, then 4. the model; what they decided is carried beside the config (training/derived.py).
    seed_everything(cfg.seed)
    data = load_data(cfg, opened, request.force, dist_info, device, announce=chatty)
    model, objective, load_report = load_model(cfg, opened, data, request.trust, chatty)
    objective.stamp(model.config, data.encoding.record())  # what the output means and its inputs, saved with best/
    training = cfg.training
    derived = Derived(
        chosen, objective, data.encoding, training.batch_size * training.grad_accum_steps * dist_info.world_size
    )
    # 5. Optimization: the schedule needs the number of optimizer steps per epoch.
    steps_per_epoch = -(-len(data.train_loader.batch_sampler) // training.grad_accum_steps)
    optim = build_optimization(cfg, model, steps_per_epoch, device, derived.precision)
    train_model = wrap_for_training(
        model, cfg, dist_info, device, derived, announce=chatty, micro_batch_tokens=data.micro_batch_tokens
    )
    optim.ema = build_ema(model, cfg.training.ema)  # on the model's device, from its current weights

    # 6. Everything loaded: now the run directory gets written (this process holds its lock).
    #    wandb starts first: a backend that cannot start stops the run before anything is touched.
    wandb_sink = tracker = None
    try:
        if is_main:
            wandb_sink = start_wandb(
                run_dir,
                cfg.logging,
                cfg.run_name,
                effective(to_plain(cfg), derived.resolved()),  # what ran: auto as resolved
                (bundle.get("run_ids") or {}).get("wandb") if bundle is not None else None,
            )
            start_run_dir(
                run_dir,
                dump_yaml(cfg),
                clear=request.overwrite and request.resume is None,
                load_report=load_report,
                switches=request.switches,
            )  # marks it as plaintune's first
        state = None
        if bundle is not None:
            state = restore_state(
                bundle, model, optim, cfg, dist_info, steps_per_epoch, len(data.train_loader.batch_sampler)
            )
        tracker = Tracker(
            run_dir,
            cfg.logging,
            followed_metric(cfg.training.metric, cfg.model.num_labels),
            resumed=state,
            wandb=wandb_sink,
            active=is_main,
        )
        files = RunFiles(
            run_dir,
            cfg.checkpoint.keep_last,
            data.tokenizer,
            {"config": to_plain(cfg), "resolved": derived.resolved(), "data_fingerprints": data.fingerprints},
            card=model_card(cfg, derived),
        )
        options = loop_options(
            cfg,
            device,
            dist_info,
            request.resume_command
            or request.switches.resume_call(config_name, overrides, launcher=distributed.launcher(dist_info)),
            derived.precision,
        )
        dev = data.tables["dev"]
        batches = Batches(data.train_loader, data.dev_loader, dev.labels, dev.binary)
        trainer = Trainer(train_model, objective, optim, batches, files, tracker, options, state)
        state = trainer.fit()
        trainer.release_optimizer_state()
        if is_main:
            finish(
                cfg,
                trainer,
                data,
                run_dir,
                started,
                None
                if request.quiet
                else request.switches.predict_call(request.predict_config or config_name, overrides, [cfg.run_name]),
            )
    finally:
        if tracker is not None:
            tracker.close()
        elif wandb_sink is not None:
            wandb_sink.close()
    return TrainResult(
        run_dir,
        options.metric_name,
        state.best_metric,
        state.best_epoch,
        [dict(record) for record in state.history],
        state.stopped_early,
    )


def model_card(cfg: Box, derived: Derived) -> dict:
    """The run's facts that every saved model's README.md states (see modelcard.py)."""
    objective, encoding, training = derived.objective, derived.encoding, cfg.training
    length = f"{training.epochs} epoch{'s' if training.epochs != 1 else ''}" + (
        f" (at most {training.max_steps} optimizer steps)" if training.max_steps else ""
    )
    recipe = (
        f"loss {objective.resolved.get('training.loss', training.loss)}, {training.optimizer.name} lr "
        f"{training.learning_rate:g}, batch {training.batch_size}, {length}, max_length {encoding.max_length}, "
        f"seed {cfg.seed}" + (f", prompt {encoding.prompt!r}" if encoding.prompt else "")
    )
    # absolute: the card travels with the model, away from the directory the run started in
    return {
        "run_name": cfg.run_name,
        "base_model": cfg.model.name,
        "kind": cfg.model.kind,
        "train_path": str(Path(cfg.data.train_path).resolve()),
        "dev_path": str(Path(cfg.data.dev_path).resolve()),
        "recipe": recipe,
        "precision": derived.precision,
        "mapping": objective.describe(),
        "max_length": encoding.max_length,
        "num_labels": cfg.model.num_labels,
        "prompt": encoding.prompt,
    }


def finish(
    cfg: Box, trainer: Trainer, data: TrainData, run_dir: Path, started: float, next_command: Optional[str]
) -> None:
    """Score the best model on test_path (if any) and print where everything is (without a
    `next_command`, one of many runs: one line, the caller prints what comes next)."""
    state, name = trainer.state, trainer.options.metric_name
    if state.best_metric is None and state.history and cfg.checkpoint.save_best:
        print(
            f"warning: no validation gave a finite dev {name} ({len(state.history)} validations: the model "
            "predicts a constant or NaN), so no best/ was kept; train longer, lower training.learning_rate, or "
            f"check data.dev_path (the run's last.pt is in {run_dir})"
        )
    best_dir = find_best_dir(run_dir)
    model = distributed.unwrap_model(trainer.model)
    loaded = False

    def best_predictions(role: str) -> np.ndarray:
        nonlocal loaded
        # the validation that saved best/ in this process already predicted dev with those very weights
        if role == "dev" and trainer.best_dev_predictions is not None:
            return trainer.best_dev_predictions
        if not loaded:  # best/ from disk: saved by this process, or by an earlier one of a resumed run
            load_weights(model, best_dir)
            loaded = True
        loader = eval_loader(data.datasets[role], cfg.training.eval_batch_size, cfg.model.num_labels)
        outputs = model_outputs(model, loader, trainer.device, trainer.options.autocast_dtype)
        return trainer.objective.predictions(outputs)

    if best_dir is not None and cfg.model.num_labels == 1:
        written = write_error_report(
            run_dir / REPORT_DIR, data.tables["dev"], best_predictions("dev"), cfg.data.binary_threshold
        )
        if next_command is not None:  # one of many runs: its report is in its folder, not on the console
            print(written)
    if "test" in data.datasets and best_dir is not None:
        test = data.tables["test"]
        metrics = compute_metrics(
            best_predictions("test"), test.labels, cfg.model.num_labels, test.binary, cfg.data.binary_threshold
        )
        trainer.tracker.log("test", state.global_step, state.epoch, metrics)
        print(f"test of the best model: {shown(metrics)}  ({cfg.data.test_path})")
    trainer.tracker.summary(**{f"best_{name}": state.best_metric, "best_epoch": state.best_epoch})
    trainer.tracker.flush()  # curves.png complete before its size and path are printed
    best = (
        f"best dev {name} {state.best_metric:.4f} at epoch {state.best_epoch:g}"
        if state.best_metric is not None
        else f"no validation gave a finite dev {name}"
    )
    stopped = f" (early stop at epoch {state.history[-1]['epoch']:g})" if state.stopped_early and state.history else ""
    if trainer.steps_done() and state.epoch < cfg.training.epochs:
        stopped += f" (training.max_steps: stopped after {state.global_step} optimizer steps)"
    kept = cfg.checkpoint.keep_last_after_finish
    if not kept:
        drop_resume_bundles(run_dir)
    lines = [
        f"done in {(time.perf_counter() - started) / 60:.1f} min: {best}{stopped}",
        f"  best model:  {best_dir or '(none saved)'}",
        f"  resume file: {run_dir / LAST_FILE}"
        if kept
        else "  resume file: deleted, the run is finished (checkpoint.keep_last_after_finish: false)",
        f"  {disk_line(run_dir)}",
        f"  metrics:     {run_dir / METRICS_FILE}, {run_dir / PLOT_FILE}",
    ]
    if next_command is None:
        print(f"{cfg.run_name}: {lines[0]}; {disk_line(run_dir).replace(f' in {run_dir}', '')}")
        return
    if cfg.logging.tensorboard:
        lines.append(f"  tensorboard: tensorboard --logdir {run_dir / TENSORBOARD_DIR}")
    lines.append(f"next: {next_command}")
    print("\n".join(lines))
