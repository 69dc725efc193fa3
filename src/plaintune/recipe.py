"""Training and inference recipes: build the components from a config, in dependency order, and run.

`train.py` and `inference.py` parse arguments and call `run_training` /
`run_inference`; everything user-facing about a run happens here.
"""
from __future__ import annotations

import fnmatch
import json
import math
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from box import Box

from . import atomic, config as config_mod, data, datacheck, distributed, formats, rundir
from .batching import PASS_OVERHEAD_TOKENS_CPU, BucketBatchSampler
from .guard import check_outputs
from .runlock import RunLock
from .errors import UserError
from .model import build_model, build_tokenizer
from .objective import CONFIG_ATTRIBUTE, Objective, choose_activation, choose_loss, parse_record
from .evaluate import metric_name, postprocess, predict, score, write_submission
from .optim import build_optimizer, build_scheduler
from .tracking import Tracker, start_wandb, wandb_mode
from .rundir import LAST_FILE, RunFiles, read_newest_bundle
from .selection import SelectionRules
from .trainer import DevSet, LoopOptions, Trainer
from .train_state import Optimization, adapt_world_size, restore_bundle, seed_everything
from .weights import LoadRules, load_into, load_weights

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# micro_batch_tokens: auto on CPU. Cuts random batches' padding as well as any larger budget
# (bench/RESULTS.md) while keeping MiniLM's activations to about 0.3 GB.
AUTO_MICRO_BATCH_TOKENS_CPU = 1024

# Keys that define what a run *is*: changing them on resume makes it another run.
IDENTITY_KEYS = ("seed", "model.name", "model.kind", "model.num_labels", "model.max_length", "model.from_scratch",
                 "model.output_activation", "model.head_bias_init", "training.head_lr_multiplier",
                 "training.layer_lr_decay",
                 "model.config_overrides", "data.train_path", "data.dev_path", "data.columns",
                 "training.batch_size", "training.learning_rate", "training.loss", "training.optimizer",
                 "training.scheduler", "training.bucket_batches", "training.bucket_pool", "training.precision",
                 "training.grad_accum_steps")


def runs_root(cfg: Box) -> Path:
    """output_dir: where runs live (relative to the working directory; a Drive folder on Colab)."""
    return Path(cfg.output_dir).expanduser()


def run_dir_for(cfg: Box) -> Path:
    return runs_root(cfg) / cfg.run_name


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_drift(saved: Optional[dict], current: dict) -> tuple[list[str], list[str]]:
    """(identity keys that differ, other keys that differ) between a checkpoint's config and now."""
    if not saved:
        return [], []
    identity = [k for k in IDENTITY_KEYS if _lookup(saved, k) != _lookup(current, k)]

    def leaves(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict) and key not in ("optimizer", "scheduler", "config_overrides", "columns"):
                out.update(leaves(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    old, new = leaves(saved), leaves(current)
    other = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in identity
             and not any(k.startswith(i + ".") for i in identity)]
    return identity, other


def check_vocabulary(model: torch.nn.Module, tokenizer, cfg: Box) -> None:
    """A tokenizer with more ids than the model's embedding rows crashes mid-epoch (index error)."""
    rows = getattr(model.config, "vocab_size", None)
    if isinstance(rows, int) and rows < len(tokenizer):
        key = "model.config_overrides.vocab_size" if "vocab_size" in cfg.model.config_overrides else "model.name"
        raise UserError(f"{key}: the model has {rows} token embeddings but its tokenizer has {len(tokenizer)} tokens; "
                        "ids beyond the table would crash: use the model's own vocabulary size or tokenizer")


def run_outputs(run_dir: Path) -> list[tuple[str, Path, bool]]:
    """What a training run writes in its directory: (chosen by, path, whole tree)."""
    trees = [("run_name", run_dir / name, True) for name in ("best", "best.old", "checkpoints", "top", "tensorboard")]
    files = [("run_name", run_dir / name, False)
             for name in (LAST_FILE, "metrics.jsonl", "curves.png", "load_report.txt", "config.yaml")]
    return trees + files


def _config_file(config_name: str) -> Optional[Path]:
    """The YAML file behind --config, or None for a config given as a dict (the Python API)."""
    try:
        return config_mod.resolve_config_path(config_name)
    except UserError:
        return None


def check_not_in_a_run(target: Path, key: str) -> None:
    """A file written into a run directory could replace its checkpoints or logs (last.pt, metrics.jsonl)."""
    for folder in Path(target).expanduser().resolve().parents:
        if (folder / LAST_FILE).is_file() or (folder / "best").is_dir() and (folder / "config.yaml").is_file() \
                or (folder / "split.json").is_file():  # a k-fold's folder: its fold data and predictions
            raise UserError(f"{key}: '{target}' lies inside the run directory '{folder}', whose files are "
                            f"checkpoints and logs: choose another {key} (e.g. output/submission.csv)")


def run_inputs(cfg: Box, fresh: bool, config_path: Optional[Path] = None) -> dict:
    """What a training run reads. A resumed run takes its weights from the bundle, not model.name/init_from."""
    inputs = {f"data.{role}_path": cfg.data.get(f"{role}_path") for role in ("train", "dev", "test")}
    inputs["--config"] = config_path
    if fresh:
        inputs["model.init_from"] = cfg.model.init_from
        local = Path(cfg.model.name).expanduser()
        inputs["model.name"] = str(local) if not cfg.model.name.startswith("pkg:") and local.exists() else None
    return inputs


def check_same_data(bundle: dict, fingerprints: dict, force: bool, announce: bool) -> None:
    """--resume on data that changed since the checkpoint is another run: refused unless --force."""
    changes = datacheck.changed_files(bundle.get("data_fingerprints"), fingerprints)
    if changes and not force:
        raise UserError(f"--resume: the data changed since the checkpoint: {'; '.join(changes)}; restore it, or pass "
                        "--force to continue on the new data (batch order and epoch length then differ)")
    if changes and announce:
        print(f"warning: resuming on changed data (--force): {'; '.join(changes)}")


def apply_freeze(model: torch.nn.Module, freeze: Sequence[str], unfreeze: Sequence[str]) -> tuple[int, int]:
    """Set requires_grad by globs; return (trainable, frozen) parameter counts."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in list(freeze) + list(unfreeze):
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            key = "model.freeze" if pattern in freeze else "model.unfreeze"
            raise UserError(f"{key}: '{pattern}' matches no parameter (e.g. {names[0]}, {names[-1]})")
    for name, param in model.named_parameters():
        frozen = any(fnmatch.fnmatchcase(name, p) for p in freeze)
        if any(fnmatch.fnmatchcase(name, p) for p in unfreeze):
            frozen = False
        param.requires_grad_(not frozen)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def clear_run(run_dir: Path) -> None:
    """--overwrite: remove a previous run's checkpoints and logs (only the files plaintune writes)."""
    for name in (LAST_FILE, "metrics.jsonl", "curves.png", "load_report.txt"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("best", "best.old", "checkpoints", "top", "tensorboard"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def read_bundle(path: Path) -> dict:
    """A resume bundle (or a plain state dict) read with weights_only=True."""
    obj = formats.load_torch_file(path, trust=False)
    if not isinstance(obj, dict):
        raise UserError(f"--resume: '{path}' holds a {type(obj).__name__}, not a training bundle")
    if "model_state_dict" not in obj:
        state, fmt = formats.find_state_dict(obj, path)
        obj = {"model_state_dict": state, "_format": fmt}
    return obj


def find_resume_bundle(resume: str, saver: RunFiles) -> tuple[Path, dict]:
    """`--resume PATH` reads that bundle; `--resume` the run's newest readable one."""
    if resume:
        path = Path(resume)
        if path.is_dir():
            if not (path / LAST_FILE).is_file():
                raise UserError(f"--resume: directory '{resume}' holds no {LAST_FILE}; give a resume bundle (a run "
                                f"directory or its {LAST_FILE}); to start from a model's weights use model.init_from")
            path = path / LAST_FILE
        if not path.is_file():
            raise UserError(f"--resume: checkpoint '{resume}' does not exist")
        return path, read_bundle(path)
    candidates = saver.resume_candidates()
    if not candidates:
        raise UserError(f"--resume: no checkpoint in {saver.run_dir}/ to resume (no {LAST_FILE}); "
                        "start the run without --resume")
    return read_newest_bundle(candidates, read_bundle)


def read_tables(cfg: Box) -> dict:
    """Read and check every labelled CSV the run needs, before any model loads."""
    columns, enc = cfg.data.columns, cfg.data.encoding
    label_range = cfg.data.label_range if cfg.model.num_labels == 1 else None
    tables = {}
    for role in ("train", "dev", "test"):
        path = cfg.data.get(f"{role}_path")
        if not path:
            continue
        key = f"data.{role}_path"
        tables[role] = data.read_pairs(path, key, columns, enc, labelled=True, label_range=label_range)
        if cfg.model.num_labels > 1:
            data.check_class_labels(tables[role], key, cfg.model.num_labels, columns.label)
    return tables


def record_from_bundle(bundle: object) -> Optional[dict]:
    """The output record of a plaintune resume bundle (from the run config inside it); None otherwise."""
    config = bundle.get("config") if isinstance(bundle, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        return None
    model = config["model"]
    kind = model.get("kind", "cross_encoder")
    activation = "cosine" if kind == "bi_encoder" else model.get("output_activation")
    if activation not in ("none", "sigmoid", "cosine"):
        return None
    label_range = (config.get("data") or {}).get("label_range") or [0.0, 1.0]
    return {"activation": activation, "low": float(label_range[0]), "high": float(label_range[1]), "kind": kind}


def checkpoint_record(source: Path) -> Optional[dict]:
    """How plaintune mapped this checkpoint's output, if plaintune wrote it: config.json's record for a
    directory, the run config for a resume bundle; None for a checkpoint made anywhere else."""
    source = Path(source)
    if source.is_dir():
        config_file = source / "config.json"
        try:
            meta = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # reading the weights reports a damaged or missing config.json
        return parse_record(meta.get(CONFIG_ATTRIBUTE), str(config_file)) if isinstance(meta, dict) else None
    if not source.is_file():
        return None
    if source.name in formats.WEIGHT_FILES and (source.parent / "config.json").is_file():
        return checkpoint_record(source.parent)  # best/model.safetensors: the directory's record
    if source.suffix == ".safetensors":
        return None
    try:  # memory-mapped: only the small config entry is read
        bundle = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable or pickled files are reported by the weight loader
        return None
    return record_from_bundle(bundle)


def head_is_fresh(model: torch.nn.Module, fresh_keys: Optional[set]) -> bool:
    """Whether any tensor outside the base model (the task head) starts untrained.
    `fresh_keys` None means every tensor is fresh (a model built from scratch)."""
    if fresh_keys is None:
        return True
    prefix = (getattr(model, "base_model_prefix", "") or "") + "."
    return any(name in fresh_keys for name in model.state_dict() if not name.startswith(prefix))


def resolve_objective(cfg: Box, record: Optional[dict], head_fresh: bool, record_wins: bool,
                      announce: bool = True) -> tuple[Objective, Box]:
    """The Objective for this run or checkpoint, and a copy of `cfg` holding the resolved mapping and
    loss (so config.yaml and the resume bundle say what was used); prints one line saying why."""
    num_labels = cfg.model.num_labels
    if record is not None and record.get("kind", "cross_encoder") != cfg.model.kind:
        record = None  # a record of another model kind says nothing about this model's head
    if cfg.model.kind == "bi_encoder":
        activation, why, kind = "cosine", "the bi-encoder's cosine, scaled to the label range", "bi_encoder"
    elif num_labels > 1:
        activation, why, kind = "none", "classification: the class with the highest logit", "cross_encoder"
    else:
        activation, why = choose_activation(cfg.model.output_activation, record, head_fresh,
                                            cfg.data.label_range is not None, record_wins)
        kind = "cross_encoder"
        if activation == "sigmoid" and cfg.data.label_range is None and record is None:
            raise UserError("model.output_activation: sigmoid maps the head to data.label_range, which is null; "
                            "set data.label_range (e.g. [0.0, 5.0])")
        cfg = config_mod.with_values(cfg, {"model.output_activation": activation})
    from_record = record is not None and activation == record.get("activation") and not head_fresh
    label_range = (record["low"], record["high"]) if from_record else cfg.data.label_range
    if record_wins:  # inference: the loss is never used
        loss = "crossentropy" if num_labels > 1 else "mse"
    else:
        loss = choose_loss(cfg.training.loss, activation, num_labels)
        cfg = config_mod.with_values(cfg, {"training.loss": loss})
    if announce and num_labels == 1:
        print(f"output mapping: {activation} ({why})")
    return Objective(num_labels, loss, activation, label_range, kind=kind), cfg


def init_head_bias(model: torch.nn.Module, value: float) -> bool:
    """Set the bias of a freshly initialised head's output layer (the last 1-element bias outside
    the base model). A head that came trained with the weights is left alone. Returns whether set."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    biases = [(n, p) for n, p in model.named_parameters()
              if not n.startswith(prefix) and n.endswith("bias") and p.shape == (1,)]
    fresh = getattr(model, "plaintune_fresh_keys", None)  # None: built from scratch, all fresh
    if not biases or (fresh is not None and biases[-1][0] not in fresh):
        return False
    with torch.no_grad():
        biases[-1][1].fill_(value)
    return True


@dataclass
class TrainResult:
    """What a training run ended with (on every rank; the metrics are the gathered ones)."""

    run_dir: Path
    metric_name: str
    best_metric: Optional[float]
    best_epoch: Optional[int]
    history: list  # one dict per validation: epoch, step, the metric, loss
    stopped_early: bool = False


def run_training(cfg: Box, config_name: str, overrides: Sequence[str], resume: Optional[str] = None,
                 force: bool = False, overwrite: bool = False, trust: bool = False,
                 resume_command: Optional[str] = None) -> TrainResult:
    """Train per `cfg`. `resume`: None (fresh run), '' (this run's last.pt) or a bundle path."""
    started = time.perf_counter()
    # 1. Processes and device; the environment's settings are checked before anything loads.
    dist_info, device = distributed.setup(cfg.device, timeout_s=cfg.training.ddp_timeout_s)
    wandb_mode(cfg.logging.wandb.mode)
    # "{time}" in run_name gives each run (e.g. each sweep trial) its own directory; rank 0 decides.
    cfg = config_mod.with_values(cfg, {"run_name": distributed.broadcast_object(
        cfg.run_name.replace("{time}", time.strftime("%Y%m%d-%H%M%S")))})
    run_dir = run_dir_for(cfg)
    plain_cfg = config_mod.to_plain(cfg)
    resume_cmd = resume_command or " ".join(["python", "train.py", "--config", shlex.quote(config_name),
                           *map(shlex.quote, overrides), "--resume"])

    # 2. Where the run writes; never clobber a previous run by accident.
    saver = RunFiles(run_dir, cfg.checkpoint.keep_last)
    bundle = None
    if resume is not None:
        bundle_path, bundle = find_resume_bundle(resume, saver)
        # The head continues as it was trained: plaintune's recorded mapping, raw for a foreign bundle.
        objective, cfg = resolve_objective(cfg, record_from_bundle(bundle), head_fresh=False, record_wins=False,
                                           announce=dist_info.is_main)
        plain_cfg = config_mod.to_plain(cfg)
        identity, other = check_drift(bundle.get("config"), plain_cfg)
        if identity and not force:
            raise UserError(f"--resume: the config differs from the checkpoint's in {', '.join(identity)}, which "
                            "makes it a different run; restore those values, or pass --force to continue anyway")
        if dist_info.is_main:
            if identity:
                print(f"warning: resuming despite changed {', '.join(identity)} (--force)")
            if other:
                print(f"note: config changes since the checkpoint: {', '.join(other)}")
            print(f"resuming from {bundle_path}")
    elif saver.resume_candidates() and not overwrite:
        raise UserError(f"run_name: '{cfg.run_name}' already has a checkpoint in {run_dir}/; continue it with "
                        f"--resume, start over with --overwrite, or choose another run_name=...")
    check_outputs(run_outputs(run_dir),
                  run_inputs(cfg, fresh=bundle is None, config_path=_config_file(config_name)))

    # 3. Data: check every CSV before the model loads, then tokenize once.
    seed_everything(cfg.seed)
    tables = read_tables(cfg)
    datacheck.check_dev_scores(tables["dev"], "data.dev_path", cfg.model.num_labels)
    datacheck.check_overlap(tables["train"], tables["dev"], cfg.data.max_overlap, announce=dist_info.is_main)
    fingerprints = datacheck.data_fingerprints(tables)
    if bundle is not None:
        check_same_data(bundle, fingerprints, force, dist_info.is_main)
    tokenizer = build_tokenizer(cfg.model)
    if dist_info.is_main:
        datacheck.warn_poor_coverage(tokenizer, tables["train"], cfg.model.name)
    if cfg.data.augment.swap:
        tables["train"] = data.with_swapped_pairs(tables["train"])
    datasets = {role: data.make_dataset(t, tokenizer, cfg.model.max_length, cfg.model.kind)
                for role, t in tables.items()}
    num_labels = cfg.model.num_labels
    pin = device.type == "cuda"
    sampler = BucketBatchSampler(datasets["train"].lengths, cfg.training.batch_size, cfg.seed,
                                 bucket=cfg.training.bucket_batches, pool=cfg.training.bucket_pool,
                                 rank=dist_info.rank, world_size=dist_info.world_size)
    # Cutting batches to save padding pays on CPU; a GPU pass has a large fixed cost relative to
    # its tokens' work, so there a pass is priced at a full budget: batches are cut only to fit it.
    budget = cfg.training.micro_batch_tokens
    if budget == "auto":
        budget = AUTO_MICRO_BATCH_TOKENS_CPU if device.type == "cpu" else None
    overhead = PASS_OVERHEAD_TOKENS_CPU if device.type == "cpu" else (budget or 0)
    train_loader = data.train_loader(datasets["train"], sampler, num_labels, cfg.training.num_workers, pin,
                                     budget, overhead)
    dev_loader = data.eval_loader(datasets["dev"], cfg.training.eval_batch_size, num_labels,
                                  cfg.training.num_workers, pin, dist_info.rank, dist_info.world_size)

    # 4. Model: pretrained (or from scratch), then an optional warm start, then freezing.
    load_report = None
    model = build_model(cfg.model, pretrained=(not cfg.model.from_scratch) and bundle is None)
    # What the head's output means follows where the head came from (see resolve_objective).
    record = parse_record(getattr(model.config, CONFIG_ATTRIBUTE, None), f"model.name '{cfg.model.name}'")
    fresh_keys = None if cfg.model.from_scratch else getattr(model, "plaintune_fresh_keys", set())
    if cfg.model.init_from and bundle is None:
        rules = LoadRules(cfg.model.key_rules, cfg.model.allow_missing, cfg.model.allow_unexpected,
                          cfg.model.allow_nonfinite)
        report = load_weights(model, cfg.model.init_from, rules, trust)
        record = checkpoint_record(Path(cfg.model.init_from))
        fresh_keys = set(report.missing) | set(report.reshaped)
        if dist_info.is_main:
            print(f"init_from: {report.summary()}")
            load_report = report.full_text()  # written with the run's other files (step 6)
    if bundle is not None:
        report = load_into(model, bundle["model_state_dict"], str(bundle_path), bundle.get("_format", "bundle"),
                           LoadRules(cfg.model.key_rules, allow_nonfinite=cfg.model.allow_nonfinite))
        if report.rules and dist_info.is_main:
            print(f"resume: {report.summary()}")
    check_vocabulary(distributed.unwrap_model(model), tokenizer, cfg)
    trainable, frozen = apply_freeze(model, cfg.model.freeze, cfg.model.unfreeze)
    if dist_info.is_main:
        print(f"model: {trainable:,} trainable parameters, {frozen:,} frozen")
    model.to(device)
    train_model = model
    if cfg.training.compile:
        train_model = torch.compile(train_model)
    if dist_info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    if dist_info.is_main:
        effective = cfg.training.batch_size * cfg.training.grad_accum_steps * dist_info.world_size
        print(f"effective batch size {effective} = batch_size {cfg.training.batch_size} x grad_accum_steps "
              f"{cfg.training.grad_accum_steps} x {dist_info.world_size} process(es) on {device}")

    # 5. Objective (loss + what logits mean), optimizer, scheduler (the schedule needs the number of steps).
    if bundle is None:
        objective, cfg = resolve_objective(cfg, record, head_is_fresh(model, fresh_keys), record_wins=False,
                                           announce=dist_info.is_main)
        plain_cfg = config_mod.to_plain(cfg)
    setattr(model.config, CONFIG_ATTRIBUTE, objective.describe())  # saved with best/ for inference
    if bundle is None and cfg.model.head_bias_init == "label_mean" and objective.regression \
            and cfg.model.kind == "cross_encoder" and not cfg.model.init_from:
        init_head_bias(model, objective.initial_bias(float(tables["train"].labels.mean())))
    optimizer = build_optimizer(cfg.training.optimizer, model, cfg.training.learning_rate,
                                cfg.training.head_lr_multiplier, cfg.training.layer_lr_decay)
    accum = cfg.training.grad_accum_steps
    steps_per_epoch = -(-len(sampler) // accum)
    scheduler, scheduler_when = build_scheduler(cfg.training.scheduler, optimizer, steps_per_epoch,
                                                cfg.training.epochs)
    autocast_dtype = AUTOCAST[cfg.training.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.training.precision == "fp16")
    optim = Optimization(optimizer, scheduler, scheduler_when, scaler)

    # 6. Everything loaded: now the run directory gets written, by this process alone (the lock).
    #    wandb starts first: a backend that cannot start stops the run before anything is touched.
    #    Then the trainer, its resume state, then the metric sinks (rank 0 only) from that state.
    lock = RunLock(run_dir, cfg.run_name).acquire() if dist_info.is_main else None
    wandb_sink = tracker = None
    try:
        if dist_info.is_main:
            wandb_sink = start_wandb(run_dir, cfg.logging, cfg.run_name, plain_cfg,
                                     (bundle.get("run_ids") or {}).get("wandb") if bundle is not None else None)
            saver.remove_stale_temporaries()
            if overwrite and resume is None:
                clear_run(run_dir)
            atomic.write_text(run_dir / "config.yaml", config_mod.dump_yaml(cfg))
            if load_report is not None:
                atomic.write_text(run_dir / "load_report.txt", load_report)
        selection = SelectionRules(patience=cfg.training.early_stopping.patience,
                                   min_delta=cfg.training.early_stopping.min_delta,
                                   keep_top_k=cfg.checkpoint.keep_top_k)
        options = LoopOptions(epochs=cfg.training.epochs, grad_accum_steps=accum,
                              max_grad_norm=cfg.training.max_grad_norm,
                              log_every_n_steps=cfg.training.log_every_n_steps,
                              save_every_n_steps=cfg.checkpoint.every_n_steps,
                              eval_every_n_steps=cfg.training.eval_every_n_steps or 0,
                              save_best=cfg.checkpoint.save_best, selection=selection,
                              autocast_dtype=autocast_dtype, metric_name=metric_name(num_labels),
                              resume_command=resume_cmd, device=device, dist=dist_info)
        state = None
        if bundle is not None:
            state, rebuilt = restore_bundle(bundle, model, optim, steps_per_epoch, dist_info.rank,
                                            dist_info.world_size)
            say = print if dist_info.is_main else (lambda _: None)
            if rebuilt:
                say(f"warning: the checkpoint lacks parts of a plaintune bundle; rebuilt: {', '.join(rebuilt)}")
            adapt_world_size(state, bundle.get("world_size", 1), dist_info.world_size, say)
            where = (f"epoch {state.epoch + 1}/{cfg.training.epochs} at batch {state.step_in_epoch + 1} of "
                     f"{len(sampler)}" if state.epoch < cfg.training.epochs else "no epochs left to train")
            say(f"resuming: {state.epoch} epoch(s) done, optimizer step {state.global_step}; continuing with "
                f"{where}")
        tracker = Tracker(run_dir, cfg.logging, metric_name(num_labels), resumed=state, wandb=wandb_sink,
                          active=dist_info.is_main)
        files = RunFiles(run_dir, cfg.checkpoint.keep_last, tokenizer,
                         {"config": plain_cfg, "data_fingerprints": fingerprints})
        trainer = Trainer(train_model, objective, optim, train_loader, DevSet(dev_loader, tables["dev"].labels),
                          files, tracker, options, state)

        trainer.fit()
        if dist_info.is_main:
            inference_cmd = " ".join(["python", "inference.py", "--config", shlex.quote(config_name), "--saved_model",
                                      shlex.quote(cfg.run_name), *map(shlex.quote, overrides)])
            _finish(cfg, trainer, datasets, tables, device, autocast_dtype, run_dir, inference_cmd, started)
    finally:
        if tracker is not None:
            tracker.close()
        elif wandb_sink is not None:
            wandb_sink.close()
        if lock is not None:
            lock.release()
        distributed.cleanup()
    state = trainer.state
    return TrainResult(run_dir=run_dir, metric_name=trainer.options.metric_name, best_metric=state.best_metric,
                       best_epoch=state.best_epoch, history=[dict(record) for record in state.history],
                       stopped_early=state.stopped_early)


def _finish(cfg: Box, trainer: Trainer, datasets: dict, tables: dict, device: torch.device,
            autocast_dtype, run_dir: Path, inference_cmd: str, started: float) -> None:
    """Score the best model on test_path (if any) and print where everything is."""
    state = trainer.state
    name = trainer.options.metric_name
    if state.best_metric is None and state.history and cfg.checkpoint.save_best:
        print(f"warning: no validation gave a finite dev {name} ({len(state.history)} validations: the model "
              "predicts a constant or NaN), so no best/ was kept; train longer, lower training.learning_rate, or "
              f"check data.dev_path (the run's last.pt is in {run_dir})")
    best_dir = rundir.find_best_dir(run_dir)
    if "test" in datasets and best_dir is not None:
        model = distributed.unwrap_model(trainer.model)
        load_weights(model, best_dir)
        loader = data.eval_loader(datasets["test"], cfg.training.eval_batch_size, cfg.model.num_labels)
        predictions = trainer.objective.predictions(predict(model, loader, device, autocast_dtype))
        test_metric = score(predictions, tables["test"].labels, cfg.model.num_labels)
        trainer.tracker.log("test", state.global_step, state.epoch, {name: test_metric})
        print(f"test {name} of the best model: {test_metric:.4f}  ({cfg.data.test_path})")
    trainer.tracker.summary(**{f"best_{name}": state.best_metric, "best_epoch": state.best_epoch})
    minutes = (time.perf_counter() - started) / 60
    best = f"{state.best_metric:.4f}" if state.best_metric is not None else "n/a"
    stopped = f" (early stop after epoch {state.epoch})" if state.stopped_early else ""
    lines = [f"done in {minutes:.1f} min: best dev {name} {best} at epoch {state.best_epoch}{stopped}",
             f"  best model:  {best_dir or '(none saved)'}",
             f"  resume file: {run_dir / LAST_FILE}",
             f"  metrics:     {run_dir / 'metrics.jsonl'}, {run_dir / 'curves.png'}"]
    if cfg.logging.tensorboard:
        lines.append(f"  tensorboard: tensorboard --logdir {run_dir / 'tensorboard'}")
    lines.append(f"next: {inference_cmd}")
    print("\n".join(lines))


# ------------------------------------------------------------------ inference

def _has_tokenizer(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                 "vocab.txt", "spiece.model"))


def load_model_for_inference(cfg: Box, source: Path, trust: bool = False):
    """(model, tokenizer, report) for a checkpoint: the architecture from the checkpoint's own
    config.json when it has one, else from model.name; weights through the common load path."""
    spec = dict(cfg.model)
    if source.is_dir() and (source / "config.json").is_file():
        spec["name"] = str(source)
        saved = json.loads((source / "config.json").read_text(encoding="utf-8")).get(CONFIG_ATTRIBUTE) or {}
        spec["kind"] = saved.get("kind", spec["kind"])  # the checkpoint knows what it is
    else:
        record = checkpoint_record(source)  # a plaintune resume bundle also knows its model kind
        if record is not None:
            spec["kind"] = record.get("kind", spec["kind"])
    model = build_model(spec, pretrained=False)

    rules = LoadRules(cfg.model.key_rules, allow_missing=(), allow_unexpected=cfg.model.allow_unexpected,
                      allow_nonfinite=cfg.model.allow_nonfinite)
    report = load_weights(
        model, source, rules, trust=trust, strict_hint="inference needs every tensor of the model; is it a checkpoint of another "
        f"model or task? (this config: model.name={cfg.model.name}, model.num_labels={cfg.model.num_labels})")
    tokenizer = build_tokenizer({"name": str(source)} if _has_tokenizer(source) else cfg.model)
    check_vocabulary(model, tokenizer, cfg)
    return model.eval(), tokenizer, report


def objective_for(model: torch.nn.Module, cfg: Box, source: Optional[Path] = None) -> Objective:
    """How to read this checkpoint's outputs: as plaintune recorded them, whatever the config says;
    for a checkpoint plaintune did not write, raw unless the config sets model.output_activation."""
    record = checkpoint_record(source) if source is not None and not source.is_dir() else None
    # A file's record is its own (or its HF directory's); model.config came from model.name then,
    # and model.name's record says nothing about someone else's weights.
    if source is None or source.is_dir():
        where = f"{source / 'config.json'}" if source is not None else "the checkpoint's config.json"
        record = parse_record(getattr(model.config, CONFIG_ATTRIBUTE, None), where)
    if record is not None:  # the model was built as the checkpoint's kind
        cfg = config_mod.with_values(cfg, {"model.kind": record.get("kind", "cross_encoder")})
    return resolve_objective(cfg, record, head_fresh=False, record_wins=True)[0]


def member_outputs(model, tokenizer, objective: Objective, table: data.PairTable, cfg: Box, device: torch.device,
                   symmetric: bool) -> np.ndarray:
    """One model's outputs in a form that averages: scores (regression) or class probabilities.

    With `symmetric`, also predicts every pair as (sentence_2, sentence_1) and averages the two.
    """
    autocast_dtype = AUTOCAST[inference_precision(cfg)]
    runs = []
    for swap in ((False, True) if symmetric else (False,)):
        dataset = data.make_dataset(table, tokenizer, cfg.model.max_length, objective.kind, swap=swap)
        logits = predict(model, data.eval_loader(dataset, cfg.training.eval_batch_size, objective.num_labels),
                         device, autocast_dtype)
        runs.append(objective.predictions(logits) if objective.regression else softmax(logits))
    return np.mean(runs, axis=0)


def inference_precision(cfg: Box) -> str:
    """inference.precision, or training.precision when it is null."""
    return cfg.inference.precision or cfg.training.precision


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def run_inference(cfg: Box, saved_models: Sequence[str], weights: Optional[Sequence[float]] = None,
                  trust: bool = False, config_path: Optional[Path] = None, write: bool = True) -> pd.DataFrame:
    """Predict data.predict_path with one model or a (weighted) ensemble; with `write`, also write the
    submission to inference.output_path. Returns the id column and `target`: the predictions before
    rounding and clipping (class ids for classification).

    Every input is checked before any model loads; each member goes through the
    common load path. With labels in data.test_path, each member's and the
    ensemble's metric are printed.
    """
    columns, num_labels = cfg.data.columns, cfg.model.num_labels
    if weights is not None and len(weights) != len(saved_models):
        raise UserError(f"--weights: {len(weights)} weights for {len(saved_models)} models; give one per model")
    if weights is not None and not all(math.isfinite(w) for w in [*weights, sum(weights)]):
        raise UserError(f"--weights: {' '.join(map(str, weights))} are not all finite numbers; give weights such as 1 2")
    if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
        raise UserError("--weights: weights must be >= 0 and not all zero")
    if weights is not None:  # normalised first: huge weights would overflow inside the average
        total = math.fsum(weights)
        weights = [w / total for w in weights]
    table = data.read_pairs(cfg.data.predict_path, "data.predict_path", columns, cfg.data.encoding,
                            labelled=False, unique_ids=True)
    if write:
        template = data.read_csv_checked(cfg.data.submission_template, "data.submission_template",
                                         cfg.data.encoding)
        data.require_columns(template, f"data.submission_template: '{cfg.data.submission_template}'",
                             {"id": columns.id})
    test = None
    if cfg.data.test_path:
        test = data.read_pairs(cfg.data.test_path, "data.test_path", columns, cfg.data.encoding, labelled=True,
                               label_range=cfg.data.label_range if num_labels == 1 else None)
    sources = [rundir.resolve_saved_model(name, runs_root(cfg)) for name in saved_models]
    inputs = {"data.predict_path": cfg.data.predict_path, "data.submission_template": cfg.data.submission_template,
              "data.test_path": cfg.data.test_path, "data.train_path": cfg.data.train_path,
              "data.dev_path": cfg.data.dev_path, "--config": config_path}
    inputs.update({f"--saved_model {name}": source for name, source in zip(saved_models, sources)})
    if write:
        check_outputs([("inference.output_path", Path(cfg.inference.output_path), False)], inputs)
        check_not_in_a_run(Path(cfg.inference.output_path), "inference.output_path")
    _, device = distributed.setup(cfg.device)
    symmetric = cfg.inference.symmetric
    name = metric_name(num_labels)

    predicted, tested = [], []
    loading = predicting = 0.0
    for source in sources:
        started = time.perf_counter()
        model, tokenizer, report = load_model_for_inference(cfg, source, trust)
        print(f"checkpoint: {report.summary()}")
        model.to(device)
        objective = objective_for(model, cfg, source)
        loading += time.perf_counter() - started
        started = time.perf_counter()
        predicted.append(member_outputs(model, tokenizer, objective, table, cfg, device, symmetric))
        predicting += time.perf_counter() - started  # tokenizing and predicting, not loading
        if test is not None:
            tested.append(member_outputs(model, tokenizer, objective, test, cfg, device, symmetric))
        del model

    def combine(outputs: list[np.ndarray]) -> np.ndarray:
        mixed = np.average(np.stack(outputs), axis=0, weights=weights)
        return mixed if num_labels == 1 else mixed.argmax(axis=-1)

    values = combine(predicted)
    bad = ~np.isfinite(values) if num_labels == 1 else np.zeros(len(values), dtype=bool)
    if bad.any():  # checked before clipping, which would turn inf into a plausible score
        first = table.ids[int(np.flatnonzero(bad)[0])]
        raise UserError(f"--saved_model {' '.join(saved_models)}: {int(bad.sum())} of {len(values)} predictions are not "
                        f"finite (first id '{first}'); the model's outputs overflow or it diverged: try "
                        f"inference.precision=fp32, or check the checkpoint with python -m plaintune.checkpoint inspect")
    print(f"predicted {len(values)} pairs with {len(sources)} model(s){' (symmetric)' if symmetric else ''} "
          f"in {predicting:.1f} s ({len(values) * len(sources) / max(predicting, 1e-9):.1f} pairs/s per model, "
          f"{inference_precision(cfg)}; loading took {loading:.1f} s)")
    result = pd.DataFrame({columns.id: table.ids, columns.target: values})
    if write:
        written = postprocess(values, cfg.inference.clip, cfg.inference.round) if num_labels == 1 else values
        write_submission(cfg.data.submission_template, table.ids, written, cfg.inference.output_path,
                         columns.id, columns.target, cfg.data.encoding, integer=num_labels > 1)
        print(f"wrote {len(values)} predictions to {cfg.inference.output_path}")

    if test is not None:
        if len(sources) > 1:
            for source, outputs in zip(saved_models, tested):
                member = outputs if num_labels == 1 else outputs.argmax(axis=-1)
                print(f"  member {source}: test {name} {score(member, test.labels, num_labels):.4f}")
        label = "ensemble " if len(sources) > 1 else ""
        print(f"{label}test {name}: {score(combine(tested), test.labels, num_labels):.4f}  "
              f"({cfg.data.test_path}, {len(test)} pairs)")
    return result
