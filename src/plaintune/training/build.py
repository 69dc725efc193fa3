"""The components a training run is built from, each from the config by one builder function.

`run.train_run` calls these in dependency order: data, model (with its objective),
optimization, the training wrapper, and on resume the restored train state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from box import Box

from plaintune import paths
from plaintune.data import checks as datacheck
from plaintune.data.batching import TrainBatchSampler, eval_loader, micro_batch_budget, train_loader
from plaintune.data.tables import describe_files, read_tables, with_swapped_pairs
from plaintune.data.tokenized import PairEncoding, check_prompt_fits, make_dataset
from plaintune.model.architecture import enable_gradient_checkpointing
from plaintune.model.hub import KOREAN_MODELS, OTHER_LANGUAGE, model_advice
from plaintune.model.loading import (
    ModelConfig,
    adopt_pad_token_id,
    apply_freeze,
    build_model,
    build_model_config,
    build_tokenizer,
    check_tokenizer_fits,
    init_head_bias,
)
from plaintune.model.objective import head_is_fresh, resolve_objective
from plaintune.recipe.metrics import LOWER_IS_BETTER, followed_metric
from plaintune.recipe.optim import BATCH_LOSSES, build_optimizer, build_scheduler, canonical_loss
from plaintune.runtime.precision import AUTOCAST
from plaintune.training.resume import OpenedRun, check_same_data
from plaintune.training.selection import SelectionRules
from plaintune.training.state import Optimization, adapt_world_size, restore_bundle
from plaintune.training.trainer import LoopOptions
from plaintune.weights import record as saved_record
from plaintune.weights.formats import read_record
from plaintune.weights.load import LoadRules, load_into, load_weights


@dataclass
class TrainData:
    tables: dict  # role -> PairTable (train, dev, maybe test)
    datasets: dict  # role -> tokenized dataset
    tokenizer: object
    train_loader: torch.utils.data.DataLoader
    dev_loader: torch.utils.data.DataLoader
    fingerprints: dict  # data files' hashes, kept in last.pt to refuse a resume on other data
    model_config: ModelConfig  # the model's config and architecture, which decided the encoding
    encoding: PairEncoding  # how the pairs were tokenized for this model (recorded with best/)
    micro_batch_tokens: Optional[int] = None  # padded tokens per training pass (None: one pass per batch)


def load_data(
    cfg: Box, opened: OpenedRun, force: bool, dist_info, device: torch.device, announce: bool = True
) -> TrainData:
    """Check every CSV before the model loads, then tokenize once and build the loaders."""
    tables = read_tables(cfg)
    if dist_info.is_main and announce:
        print("\n".join(describe_files(cfg, tables)))
    datacheck.check_followed_metric(tables["dev"], "data.dev_path", cfg)
    for role in ("dev", "test"):
        if role in tables and tables[role].binary_problem and dist_info.is_main:
            print(f"note: data.{role}_path: no F1/accuracy scores: '{tables[role].path}' {tables[role].binary_problem}")
    datacheck.check_overlap(tables["train"], tables["dev"], cfg.data.max_overlap, announce=dist_info.is_main)
    fingerprints = datacheck.data_fingerprints(tables)
    if opened.bundle is not None:
        check_same_data(opened.bundle, fingerprints, force, dist_info.is_main, opened.switches)
    # What the model takes decides how the pairs are tokenized (model/architecture.py).
    # A model that cannot be loaded is met with advice that fits the data's language.
    train = tables["train"]
    korean = datacheck.hangul_share(train.sentence_1 + train.sentence_2) > 0.5
    model_config = build_model_config(cfg.model, advice=model_advice(korean, cfg.model.name))
    tokenizer = build_tokenizer(cfg.model, model_config.architecture, advice=model_config.advice)
    check_tokenizer_fits(model_config.architecture, tokenizer, cfg.model)
    adopt_pad_token_id(model_config.config, tokenizer)
    if cfg.model.max_length is not None:  # best/'s tokenizer then truncates as training did, for any reader
        tokenizer.model_max_length = cfg.model.max_length
    borrowed = getattr(tokenizer, "plaintune_borrowed_pad", None)
    if dist_info.is_main and borrowed is not None:
        print(
            f"note: model.name: the tokenizer has no padding token; padding with its end-of-sequence token {borrowed!r}"
        )
    if dist_info.is_main:
        remedy = KOREAN_MODELS if korean else OTHER_LANGUAGE
        datacheck.warn_poor_coverage(tokenizer, tables["train"], cfg.model.name, remedy)
    if cfg.data.augment.swap:
        tables["train"] = with_swapped_pairs(tables["train"])
    encoding = PairEncoding(
        cfg.model.kind, cfg.model.max_length, model_config.architecture.token_type_ids, cfg.model.prompt or ""
    )
    check_prompt_fits(tokenizer, encoding)
    datasets = {role: make_dataset(t, tokenizer, encoding) for role, t in tables.items()}
    num_labels, training, pin = cfg.model.num_labels, cfg.training, device.type == "cuda"
    sampler = TrainBatchSampler(
        datasets["train"].lengths,
        training.batch_size,
        cfg.seed,
        bucket=training.bucket_batches,
        pool=training.bucket_pool,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    budget, overhead = micro_batch_budget(training.micro_batch_tokens, device)
    if canonical_loss(training.loss) in BATCH_LOSSES:
        budget = None  # the loss couples every pair of the batch
    return TrainData(
        tables,
        datasets,
        tokenizer,
        train_loader(datasets["train"], sampler, num_labels, training.num_workers, pin, budget, overhead),
        eval_loader(
            datasets["dev"],
            training.eval_batch_size,
            num_labels,
            training.num_workers,
            pin,
            dist_info.rank,
            dist_info.world_size,
        ),
        fingerprints,
        model_config,
        encoding,
        budget,
    )


def load_model(cfg: Box, opened: OpenedRun, data: TrainData, trust: bool, announce: bool):
    """(model, objective, load report text or None): pretrained (or from scratch), then a warm start or
    the bundle's weights, then freezing. The objective follows where the head came from (it holds what
    the config's auto resolved to: the run records that beside its config, training/derived.py)."""
    bundle, load_report = opened.bundle, None
    model = build_model(
        cfg.model, pretrained=(not cfg.model.from_scratch) and bundle is None, prepared=data.model_config
    )
    record = saved_record.of_config(model.config, f"model.name '{cfg.model.name}'")
    fresh_keys = None if cfg.model.from_scratch else getattr(model, "plaintune_fresh_keys", set())
    if cfg.model.init_from and bundle is None:
        paths.require(
            cfg.model.init_from,
            "model.init_from",
            (paths.FILE, paths.DIR),
            fix="give a checkpoint file or directory (model.init_from=path)",
        )
        rules = LoadRules(
            cfg.model.key_rules, cfg.model.allow_missing, cfg.model.allow_unexpected, cfg.model.allow_nonfinite
        )
        report = load_weights(model, cfg.model.init_from, rules, trust)
        record = read_record(Path(cfg.model.init_from))
        fresh_keys = set(report.missing) | set(report.reshaped)
        if announce:
            print(f"init_from: {report.summary()}")
            load_report = report.full_text()  # written with the run's other files (step 6)
    if bundle is not None:
        report = load_into(
            model,
            bundle["model_state_dict"],
            str(opened.bundle_path),
            bundle.get("_format", "bundle"),
            LoadRules(cfg.model.key_rules, allow_nonfinite=cfg.model.allow_nonfinite),
        )
        if report.rules and announce:
            print(f"resume: {report.summary()}")
    trainable, frozen = apply_freeze(model, cfg.model.freeze, cfg.model.unfreeze, cfg.model.freeze_word_embeddings)
    if announce:
        print(f"model: {trainable:,} trainable parameters, {frozen:,} frozen")
    objective = opened.objective
    if objective is None:
        objective = resolve_objective(
            cfg, record, head_is_fresh(model, fresh_keys), record_wins=False, announce=announce
        )
        if (
            cfg.model.head_bias_init == "label_mean"
            and objective.regression
            and cfg.model.kind == "cross_encoder"
            and not cfg.model.init_from
        ):
            init_head_bias(model, objective.initial_bias(float(data.tables["train"].labels.mean())))
    return model, objective, load_report


def build_optimization(
    cfg: Box, model: torch.nn.Module, steps_per_epoch: int, device: torch.device, precision: str
) -> Optimization:
    training = cfg.training
    optimizer = build_optimizer(
        training.optimizer, model, training.learning_rate, training.head_lr_multiplier, training.layer_lr_decay
    )
    maximize = followed_metric(training.metric, cfg.model.num_labels) not in LOWER_IS_BETTER
    scheduler, scheduler_when = build_scheduler(
        training.scheduler, optimizer, steps_per_epoch, training.epochs, maximize, training.max_steps
    )
    # fp16 needs loss scaling; for every other precision the scaler passes everything through.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return Optimization(optimizer, scheduler, scheduler_when, scaler)


def wrap_for_training(
    model: torch.nn.Module,
    cfg: Box,
    dist_info,
    device: torch.device,
    derived,
    announce: bool = True,
    micro_batch_tokens: Optional[int] = None,
) -> torch.nn.Module:
    """Gradient checkpointing, the device, then torch.compile and DDP as configured; the unwrapped model
    is what is saved."""
    if cfg.training.gradient_checkpointing:
        how = enable_gradient_checkpointing(model)
        if dist_info.is_main and announce:
            print(f"gradient checkpointing: {how}")
    model.to(device)
    if cfg.training.compile:
        model = torch.compile(model)
    if dist_info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if dist_info.is_main and announce:
        training = cfg.training
        passes = f"; passes of at most {micro_batch_tokens} padded tokens" if micro_batch_tokens else ""
        print(
            f"effective batch size {derived.effective_batch} = batch_size {training.batch_size} x grad_accum_steps "
            f"{training.grad_accum_steps} x {dist_info.world_size} process(es) on {device}{passes}"
        )
    return model


def restore_state(
    bundle: dict, model: torch.nn.Module, optim: Optimization, cfg: Box, dist_info, steps_per_epoch: int, batches: int
):
    """The bundle's train state, optimizer, scheduler, scaler and RNG streams; says where the run continues."""
    state, rebuilt = restore_bundle(bundle, model, optim, steps_per_epoch, dist_info.rank, dist_info.world_size)
    say = print if dist_info.is_main else (lambda _: None)
    if rebuilt:
        say(f"warning: the checkpoint lacks parts of a plaintune bundle; rebuilt: {', '.join(rebuilt)}")
    adapt_world_size(state, bundle.get("world_size", 1), dist_info.world_size, say)
    saved_lr = ((bundle.get("config") or {}).get("training") or {}).get("learning_rate")
    if isinstance(saved_lr, (int, float)) and saved_lr > 0 and saved_lr != cfg.training.learning_rate:
        rescale_learning_rate(optim, cfg.training.learning_rate / saved_lr)
        say(
            f"note: training.learning_rate {cfg.training.learning_rate:g} instead of the checkpoint's {saved_lr:g}: "
            "the schedule continues from where it was, scaled to the new rate"
        )
    epochs, max_steps = cfg.training.epochs, cfg.training.max_steps
    if state.epoch >= epochs or state.stopped_early or (max_steps and state.global_step >= max_steps):
        where = "nothing left to train" + (
            " (it stopped early)"
            if state.stopped_early
            else f" (training.max_steps {max_steps} reached)"
            if state.epoch < epochs
            else ""
        )
    elif state.step_in_epoch >= batches:
        where = f"the validation that ends epoch {state.epoch + 1}/{epochs}"
    else:
        where = f"epoch {state.epoch + 1}/{epochs} at batch {state.step_in_epoch + 1} of {batches}"
    say(f"resuming: {state.epoch} epoch(s) done, optimizer step {state.global_step}; continuing with {where}")
    return state


def rescale_learning_rate(optim: Optimization, ratio: float) -> None:
    """Scale the restored optimizer's and scheduler's rates (a resume with another learning_rate,
    e.g. 10x lower after a diverged loss): the optimizer state holds the old ones."""
    for group in optim.optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    if hasattr(optim.scheduler, "base_lrs"):
        optim.scheduler.base_lrs = [rate * ratio for rate in optim.scheduler.base_lrs]
    if hasattr(optim.scheduler, "min_lrs"):  # plateau: its floor scales too
        optim.scheduler.min_lrs = [rate * ratio for rate in optim.scheduler.min_lrs]


def loop_options(cfg: Box, device: torch.device, dist_info, resume_command: str, precision: str) -> LoopOptions:
    training = cfg.training
    selection = SelectionRules(
        patience=training.early_stopping.patience,
        min_delta=training.early_stopping.min_delta,
        keep_top_k=cfg.checkpoint.keep_top_k,
    )
    return LoopOptions(
        epochs=training.epochs,
        max_steps=training.max_steps or 0,
        grad_accum_steps=training.grad_accum_steps,
        max_grad_norm=training.max_grad_norm,
        log_every_n_steps=training.log_every_n_steps,
        save_every_n_steps=cfg.checkpoint.every_n_steps,
        eval_every_n_steps=training.eval_every_n_steps or 0,
        save_best=cfg.checkpoint.save_best,
        selection=selection,
        autocast_dtype=AUTOCAST[precision],
        metric_name=followed_metric(training.metric, cfg.model.num_labels),
        binary_threshold=cfg.data.binary_threshold,
        resume_command=resume_command,
        device=device,
        dist=dist_info,
    )
