"""K-fold training: `python train.py --config X --folds K`.

Train and dev are pooled and cut into K parts from the seed; fold i trains on
the other parts and validates on part i. Every fold is an ordinary run named
`<run_name>-fold<i>` (its own checkpoints, logs and best/), reading CSVs that
are written once under `<output_dir>/<run_name>-folds/`, so a fold resumes like
any run. When a fold ends, its best model predicts its held-out part; the
out-of-fold Pearson over all pooled pairs is the honest score of the recipe,
and the K best models together are an ensemble for inference.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from box import Box

from plaintune.commands import CLI, Switches
from plaintune.config.load import to_plain, with_values
from plaintune.config.schema import LEARNED, LEAVES, PREDICTION, assign, keys_with, lookup
from plaintune.data import checks as datacheck
from plaintune.data import tables as data
from plaintune.errors import UserError
from plaintune.inference.predicting import inference_encoding, load_model_for_inference, member_outputs
from plaintune.model.objective import objective_for
from plaintune.names import (
    FOLD_PREDICTIONS,
    FOLDS_SUMMARY,
    SPLIT_FILE,
    fold_file,
    fold_predictions_file,
    fold_run_name,
    folds_folder_name,
)
from plaintune.recipe.metrics import followed_metric, score
from plaintune.rundir import atomic, ownership
from plaintune.rundir import layout as rundir
from plaintune.rundir.layout import RunFiles
from plaintune.rundir.lock import RunLock
from plaintune.runtime import distributed
from plaintune.training.resume import check_drift
from plaintune.training.run import RunRequest, train_run


def split_folds(n: int, folds: int, seed: int, keys: Optional[Sequence] = None) -> list[np.ndarray]:
    """Positions 0..n-1 shuffled by the seed and cut into `folds` near-equal parts.

    Positions with equal `keys` (the same sentence pair twice in the data) go to the same part:
    a pair trained on in one fold and held out in another would score memory, not the model."""
    order = np.random.default_rng([seed, 7919]).permutation(n)
    groups: dict = {}
    for position in order:
        groups.setdefault(keys[position] if keys is not None else position, []).append(position)
    if len(groups) == n:  # no repeats: the plain cut (k-folds made before grouping existed are unchanged)
        return [np.sort(part) for part in np.array_split(order, folds)]
    parts: list[list[int]] = [[] for _ in range(folds)]
    for members in sorted(groups.values(), key=len, reverse=True):  # largest groups first (stable: shuffled)
        min(parts, key=len).extend(members)  # into the smallest part: near-equal sizes, none empty
    return [np.sort(np.asarray(part, dtype=int)) for part in parts]


def _write_part(table: data.PairTable, positions: np.ndarray, path: Path, columns: Box) -> None:
    part = table.take(positions)
    frame = pd.DataFrame(
        {
            columns.id: part.ids,
            columns.sentence_1: part.sentence_1,
            columns.sentence_2: part.sentence_2,
            columns.label: part.labels,
        }
    )
    atomic.write_with(path, lambda tmp: frame.to_csv(tmp, index=False, encoding="utf-8"))


def _read_predictions(path: Path, rows: int, switches: Switches = CLI) -> np.ndarray:
    """A finished fold's out-of-fold predictions, checked."""
    try:
        values = np.asarray(json.loads(path.read_text(encoding="utf-8"))["predictions"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        values = None
    if values is None or values.shape != (rows,):
        raise UserError(
            f"k-fold resume: '{path}' is damaged (not the {rows} predictions of that fold); delete it "
            f"and rerun with {switches.on('resume')} to predict that fold again"
        )
    return values


def _fold_config(cfg: Box, fold: int, folder: Path) -> tuple[Box, list[str]]:
    """The fold's config and the overrides that make it (so each fold's saved config says what it is)."""
    values = {
        "run_name": fold_run_name(cfg.run_name, fold),
        "data.train_path": str(folder / fold_file(fold, "train")),
        "data.dev_path": str(folder / fold_file(fold, "dev")),
        "data.encoding": "utf-8",
        # the honest score of a k-fold is out-of-fold; a test file may be part of the pool
        "data.test_path": None,
    }
    return with_values(cfg, values), [
        f"{dotted}={'null' if value is None else value}" for dotted, value in values.items()
    ]


def _out_of_fold(fold_cfg: Box, table: data.PairTable, device: torch.device) -> np.ndarray:
    """The fold's best model on its held-out pairs (regression scores or class ids)."""
    source = rundir.resolve_saved_model(fold_cfg.run_name, rundir.runs_root(fold_cfg))
    model, tokenizer, _ = load_model_for_inference(fold_cfg, source)
    model.to(device)
    objective = objective_for(model, fold_cfg, source, announce=False)
    encoding = inference_encoding(fold_cfg, model, objective, source, announce=False)
    outputs = member_outputs(
        model, tokenizer, objective, table, encoding, fold_cfg, device, fold_cfg.inference.symmetric
    )
    return outputs if outputs.ndim == 1 else outputs.argmax(axis=-1)


def _recipe(cfg: Box) -> dict:
    """What a fold's model and its out-of-fold predictions depend on: the keys the schema says shape
    what is learned or predicted (IDENTITY, RECIPE, PREDICTION), as nested dicts."""
    recipe: dict = {}
    for key in keys_with(LEARNED):
        assign(recipe, key, to_plain(lookup(cfg, key)))
    # recorded as applied: a bi-encoder predicts once either way
    assign(recipe, "inference.symmetric", predicts_symmetric(cfg))
    return recipe


def predicts_symmetric(cfg: Box) -> bool:
    return bool(cfg.inference.symmetric) and cfg.model.kind != "bi_encoder"


def _stale_reason(done_file: Path, fold_cfg: Box) -> tuple[Optional[str], bool]:
    """(why a finished fold's predictions no longer stand for this config (None: they do), whether
    predicting again is enough): its run is gone, or the recipe changed since (e.g. more epochs: the
    run continues, then predicts again; inference.symmetric: it only predicts again)."""
    if rundir.find_best_dir(rundir.run_dir_for(fold_cfg)) is None:
        return f"its run {rundir.run_dir_for(fold_cfg)} has no best/ any more", False
    try:
        saved = json.loads(done_file.read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError):
        return None, False  # _read_predictions names the damage
    if not isinstance(saved, dict):
        return "its predictions record no recipe", False
    identity, other = check_drift(saved, _recipe(fold_cfg), among=LEARNED)
    changed = identity + other
    if not changed:
        return None, False
    return f"the config changed since ({', '.join(changed)})", all(PREDICTION in LEAVES[key].role for key in changed)


def split_identity(cfg: Box, pooled: data.PairTable, folds: int) -> dict:
    """What the folds' files and runs depend on: the cut (K, seed, pooled rows) and the recipe."""
    digest = hashlib.sha256(
        json.dumps([pooled.ids, pooled.sentence_1, pooled.sentence_2, pooled.labels.tolist()]).encode()
    ).hexdigest()
    return {
        "folds": folds,
        "seed": cfg.seed,
        "pooled_rows": len(pooled),
        "pooled_sha256": digest,
        "config": to_plain(cfg),
    }


def check_same_split(
    folder: Path, identity: dict, resume: bool, force: bool, overwrite: bool, switches: Switches = CLI
) -> None:
    """Before any fold file is written: a k-fold that exists is continued only as the same k-fold.
    Its runs were trained on its files and its predictions scored on its held-out parts."""

    keep_or_clear = (
        f"continue it with {switches.on('resume')}, start over with {switches.on('overwrite')}, or "
        "choose another run_name"
    )
    saved_file = folder / SPLIT_FILE
    if overwrite or not saved_file.is_file():
        if saved_file.parent.is_dir() and not overwrite and not resume and any(folder.glob(FOLD_PREDICTIONS.glob)):
            raise UserError(f"k-fold: {folder}/ holds a k-fold already; {keep_or_clear}")
        return
    try:
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(
            f"k-fold: '{saved_file}' is unreadable or damaged; start over with {switches.on('overwrite')}"
        ) from None
    trained = any(folder.glob(FOLD_PREDICTIONS.glob)) or any(
        RunFiles(folder.with_name(fold_run_name(identity["config"]["run_name"], k))).resume_candidates()
        for k in range(1, int(saved.get("folds", 0) or 0) + 1)
    )
    if not trained:
        return  # cut but never trained (e.g. stopped by a data check): nothing to protect
    if not resume:
        raise UserError(f"k-fold: {folder}/ holds a k-fold already; {keep_or_clear}")
    changed = [
        f"{key} {saved.get(key)} -> {identity[key]}"
        for key in ("folds", "seed", "pooled_rows")
        if saved.get(key) != identity[key]
    ]
    if not changed and saved.get("pooled_sha256") != identity["pooled_sha256"]:
        changed.append("the train/dev data")
    identity_keys, _ = check_drift(saved.get("config"), identity["config"])
    if changed or (identity_keys and not force):
        what = ", ".join(changed + identity_keys)
        raise UserError(
            f"k-fold resume: the saved k-fold differs in {what}; its runs and out-of-fold predictions "
            f"belong to the old one: restore those values, or start over with {switches.on('overwrite')}"
        )


def folds_folder(cfg: Box) -> Path:
    """`<output_dir>/<run_name>-folds/`: the split and every fold's CSVs and predictions."""
    return rundir.run_dir_for(cfg).with_name(folds_folder_name(cfg.run_name))


def check_fold_dirs_owned(cfg: Box, folds: int) -> None:
    """Read-only, before anything is written or trained: the k-fold's folder and every fold's run
    directory are plaintune's or free (ownership.check_owned, the same error each run gives). A user's
    folder named like fold K stops the k-fold here, not after folds 1..K-1 have trained."""
    ownership.check_owned(folds_folder(cfg), ownership.FOLDS)
    for fold in range(1, folds + 1):
        # each fold's train_run checks its directory again under its lock, and notes an adoption then
        ownership.check_owned(
            rundir.run_dir_for(cfg).with_name(fold_run_name(cfg.run_name, fold)), ownership.RUN, announce=False
        )


def check_fold_count(pooled_rows: int, folds: int, key: str) -> None:
    """Each fold needs at least two held-out pairs (a Pearson of one pair is undefined)."""
    if pooled_rows < 2 * folds:
        raise UserError(
            f"{key}: {pooled_rows} pooled train+dev pairs are too few for {folds} folds; set {key} to "
            f"at most {pooled_rows // 2}"
        )


def check_fixed_run_name(run_name: str, key: str) -> None:
    """A k-fold's runs are found again by name (resume, the ensemble): no {time} in run_name."""
    if "{time}" in run_name:
        raise UserError(f"{key}: run_name contains {{time}}; give the folds a fixed run_name so they can resume")


def cut_folds(
    cfg: Box, folds: int, request: RunRequest, key: Optional[str] = None
) -> tuple[data.PairTable, list[np.ndarray], Path]:
    """Check that k-fold can run, pool train and dev, cut them, and write each fold's CSVs
    under `<run_name>-folds/` (refused if they would change an existing k-fold's). The caller
    holds the folder's lock. `key`: what set the number of folds (by default the caller's folds switch,
    --folds or folds; ensemble.folds for a leaderboard member)."""
    key = key or request.switches.folds
    if folds < 2:
        raise UserError(f"{key}: {folds} folds; k-fold needs at least 2 (e.g. {key}=5)")
    if request.resume:
        raise UserError(f"{request.switches.resume} takes no path with k-fold; each fold resumes from its own run")
    if not cfg.checkpoint.save_best:
        raise UserError(
            f"{key}: checkpoint.save_best is false; each fold's best model is needed for its "
            "out-of-fold predictions and the ensemble"
        )
    check_fixed_run_name(cfg.run_name, key)
    tables = data.read_tables(cfg)  # the user's own files: their overlap is checked before any fold file exists
    print("\n".join(data.describe_files(cfg, tables)))
    datacheck.check_overlap(tables["train"], tables["dev"], cfg.data.max_overlap)
    pooled = data.pool(tables["train"], tables["dev"])
    check_fold_count(len(pooled), folds, key)
    folder = folds_folder(cfg)
    parts = split_folds(
        len(pooled), folds, cfg.seed, [datacheck.pair_key(a, b) for a, b in zip(pooled.sentence_1, pooled.sentence_2)]
    )
    if any(len(part) == 0 for part in parts):
        raise UserError(
            f"{key}: {folds} folds leave a fold empty: the pooled data has too few distinct pairs; lower {key}"
        )
    check_same_split(
        folder,
        split_identity(cfg, pooled, folds),
        request.resume is not None,
        request.force,
        request.overwrite,
        request.switches,
    )
    ownership.claim(folder, ownership.FOLDS)  # the marker before the first file
    atomic.write_text(folder / SPLIT_FILE, json.dumps(split_identity(cfg, pooled, folds), indent=2))
    for fold, held_out in enumerate(parts, start=1):
        trained_on = np.sort(np.concatenate([p for k, p in enumerate(parts, start=1) if k != fold]))
        _write_part(pooled, trained_on, folder / fold_file(fold, "train"), cfg.data.columns)
        _write_part(pooled, held_out, folder / fold_file(fold, "dev"), cfg.data.columns)
    return pooled, parts, folder


@dataclass
class FoldsResult:
    pooled: data.PairTable  # train and dev pooled, in that order
    parts: list[np.ndarray]  # the held-out positions of each fold
    out_of_fold: np.ndarray  # each pooled pair's prediction by the fold that held it out
    runs: list[str]  # the folds' run names


def run_folds(
    cfg: Box,
    config_name: str,
    overrides: Sequence[str],
    folds: int,
    request: RunRequest = RunRequest(),
    announce_next: bool = True,
    key: Optional[str] = None,
) -> FoldsResult:
    """Train `folds` runs and report the out-of-fold metric; see the module docstring. `key`: what set
    the number of folds, named in errors (by default the caller's folds switch, --folds or folds;
    ensemble.folds for a leaderboard member).

    The k-fold's folder is locked before its first file is written: of two k-folds started at once
    on one run_name, the one that loses the lock has written nothing."""
    key = key or request.switches.folds
    dist_info, device = distributed.setup(cfg.device)
    if dist_info.enabled:
        raise UserError(f"{key}: run k-fold in one process (python train.py ...), not under torchrun")
    check_fold_dirs_owned(cfg, folds)
    lock = RunLock(folds_folder(cfg), cfg.run_name).acquire()
    try:
        return _run_folds_locked(cfg, config_name, overrides, folds, request, announce_next, key, device)
    finally:
        lock.release()


def _run_folds_locked(
    cfg: Box,
    config_name: str,
    overrides: Sequence[str],
    folds: int,
    request: RunRequest,
    announce_next: bool,
    key: str,
    device: torch.device,
) -> FoldsResult:
    pooled, parts, folder = cut_folds(cfg, folds, request, key)
    name = followed_metric("auto", cfg.model.num_labels)
    resume_cmd = request.resume_command or request.switches.resume_call(config_name, overrides, folds)
    resuming = request.resume is not None and not request.overwrite
    out_of_fold = np.full(len(pooled), np.nan)
    summary = []
    for fold, held_out in enumerate(parts, start=1):
        fold_cfg, fold_overrides = _fold_config(cfg, fold, folder)
        done_file = folder / fold_predictions_file(fold)
        stale, predict_only = _stale_reason(done_file, fold_cfg) if resuming and done_file.is_file() else (None, False)
        if resuming and done_file.is_file() and stale is None:
            predictions = _read_predictions(done_file, len(held_out), request.switches)
            print(f"fold {fold}/{folds}: done earlier ({fold_cfg.run_name})")
        else:
            if stale:
                print(
                    f"fold {fold}/{folds}: done earlier, but {stale}: "
                    f"{'predicting again' if predict_only else 'training it on and predicting again'}"
                )
            fold_dir = rundir.run_dir_for(fold_cfg)
            if (
                resuming
                and not stale
                and not RunFiles(fold_dir).resume_candidates()
                and rundir.find_best_dir(fold_dir) is not None
            ):
                # it finished and dropped its last.pt (checkpoint.keep_last_after_finish: false) before
                # its predictions were written: its best/ predicts, nothing trains again
                print(f"fold {fold}/{folds}: trained earlier ({fold_cfg.run_name}); predicting its held-out pairs")
                predict_only = True
            if not predict_only:
                started = bool(RunFiles(rundir.run_dir_for(fold_cfg)).resume_candidates())
                print(
                    f"fold {fold}/{folds}: {fold_cfg.run_name}, {len(pooled) - len(held_out)} pairs to train on, "
                    f"{len(held_out)} held out"
                )
                fold_request = replace(
                    request, resume="" if resuming and started else None, resume_command=resume_cmd, quiet=True
                )
                train_run(fold_cfg, config_name, [*overrides, *fold_overrides], fold_request)
            predictions = _out_of_fold(fold_cfg, pooled.take(held_out), device)
            atomic.write_text(
                done_file,
                json.dumps(
                    {"run": fold_cfg.run_name, "config": _recipe(fold_cfg), "predictions": predictions.tolist()}
                ),
            )
        out_of_fold[held_out] = predictions
        fold_metric = score(predictions, pooled.labels[held_out], cfg.model.num_labels)
        summary.append({"fold": fold, "run": fold_cfg.run_name, "pairs": int(len(held_out)), name: fold_metric})
        print(f"fold {fold}/{folds}: held-out {name} {fold_metric:.4f}")

    overall = score(out_of_fold, pooled.labels, cfg.model.num_labels)
    runs = [fold_run_name(cfg.run_name, k) for k in range(1, folds + 1)]
    atomic.write_text(folder / FOLDS_SUMMARY, json.dumps({"folds": summary, f"out_of_fold_{name}": overall}, indent=2))
    print(
        f"k-fold done: out-of-fold {name} {overall:.4f} over {len(pooled)} pairs "
        f"(per fold: {', '.join(f'{s[name]:.4f}' for s in summary)}); summary in {folder / FOLDS_SUMMARY}"
    )
    if announce_next:
        print(f"next: {request.switches.predict_call(config_name, overrides, runs)}")
    return FoldsResult(pooled, parts, out_of_fold, runs)
