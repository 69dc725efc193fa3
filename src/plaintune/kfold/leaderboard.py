"""One command to a leaderboard submission: train every member of `ensemble.members` as a k-fold,
fit their combination on the out-of-fold predictions, save it (see ensemble.py).

    python train.py --config leaderboard            # prints the time budget, trains, fits
    python train.py --config leaderboard --resume   # after a kill: finished folds are not retrained
    python inference.py --config leaderboard --saved_model leaderboard
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
from box import Box

from plaintune.commands import CONFIG_DICT
from plaintune.config.load import resolve_config_path
from plaintune.data import tables as data
from plaintune.errors import UserError
from plaintune.inference.ensemble import Member, check_ensemble_dir, write_spec
from plaintune.inference.submission import postprocess
from plaintune.kfold.ensemble import choose, estimate_seconds, fit_candidate, measure_speed, member_configs
from plaintune.kfold.folds import (
    FoldsResult,
    check_fixed_run_name,
    check_fold_count,
    check_fold_dirs_owned,
    folds_folder,
    run_folds,
)
from plaintune.names import ENSEMBLE_FILE, fold_predictions_file, fold_run_name, member_run_name
from plaintune.recipe.metrics import score
from plaintune.rundir import layout as rundir
from plaintune.rundir import ownership
from plaintune.rundir.lock import RunLock
from plaintune.runtime import distributed
from plaintune.training.run import RunRequest


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def announce_budget(members: dict[str, Box], folds: int, device) -> None:
    """The plan and its time, from each member's speed measured on real batches here; a resumed
    pipeline counts only the folds that have no out-of-fold predictions yet."""
    tables = data.read_tables(next(iter(members.values())))
    pooled = data.pool(tables["train"], tables["dev"])
    total, lines = 0.0, []
    print(
        "leaderboard: measuring each member's training speed on a few batches to estimate the time "
        "(ensemble.estimate_time=false skips it)",
        flush=True,
    )
    for name, cfg in members.items():
        left = sum(not (folds_folder(cfg) / fold_predictions_file(k)).is_file() for k in range(1, folds + 1))
        if left == 0:
            lines.append(f"  {name}: its {folds} folds are done")
            continue
        print(f"  measuring {name} ({cfg.model.kind}) ...", flush=True)
        speed = measure_speed(cfg, pooled, device)
        seconds = estimate_seconds(cfg, len(pooled), folds, speed, folds_left=left)
        todo = f"{left} of {folds} folds left" if left < folds else f"{folds} folds"
        if not math.isfinite(seconds):
            lines.append(
                f"  {name}: {cfg.model.kind}, {cfg.training.epochs} epoch(s) x {todo} "
                "(too few pairs to measure its speed)"
            )
            continue
        total += seconds
        lines.append(
            f"  {name}: {cfg.model.kind}, {cfg.training.epochs} epoch(s) x {todo}, "
            f"{speed:.0f} pairs/s measured -> about {_minutes(seconds)}"
        )
    print(
        f"leaderboard: {len(members)} member(s) x {folds} folds on {len(pooled)} pooled train+dev pairs, "
        f"about {_minutes(total)} left on {device} (estimated from the measured speeds; another load on this "
        "machine makes it longer):"
    )
    print("\n".join(lines))


def run_leaderboard(cfg: Box, config_name: str, overrides: Sequence[str], request: RunRequest = RunRequest()) -> dict:
    """Train the members, fit and save the ensemble; returns what ensemble.json records, and in
    "score" the cross-fitted out-of-fold Pearson of the combination inference applies.

    The ensemble's directory, and every member's k-fold folder and fold runs, are checked to be
    plaintune's (or free) before anything is written; the ensemble's directory is locked then:
    of two pipelines started at once on one run_name, the one that loses the lock writes nothing."""
    source = str(resolve_config_path(config_name)) if config_name != CONFIG_DICT else "config dict"
    members = member_configs(cfg, source)
    # checked before anything is written or measured (the members' k-folds check them again)
    check_fixed_run_name(cfg.run_name, "ensemble.folds")
    tables = data.read_tables(next(iter(members.values())))
    check_fold_count(len(data.pool(tables["train"], tables["dev"])), cfg.ensemble.folds, "ensemble.folds")
    ensemble_dir = rundir.run_dir_for(cfg)
    ownership.check_owned(ensemble_dir, ownership.ENSEMBLE)
    check_ensemble_dir(ensemble_dir)
    for member_cfg in members.values():  # every member's folds, before the first one trains
        check_fold_dirs_owned(member_cfg, cfg.ensemble.folds)
    lock = RunLock(ensemble_dir, cfg.run_name).acquire()
    try:
        return _run_locked(cfg, config_name, overrides, request, members, ensemble_dir)
    finally:
        lock.release()


def _run_locked(
    cfg: Box,
    config_name: str,
    overrides: Sequence[str],
    request: RunRequest,
    members: dict[str, Box],
    ensemble_dir: Path,
) -> dict:
    started = time.perf_counter()
    folds = cfg.ensemble.folds
    ownership.claim(ensemble_dir, ownership.ENSEMBLE)
    if request.overwrite and (ensemble_dir / ENSEMBLE_FILE).is_file():
        # starting over: the old fit belongs to the old members and must not outlive them
        (ensemble_dir / ENSEMBLE_FILE).unlink()
    device = distributed.resolve_device(cfg.device)  # the members refuse torchrun (folds.run_folds)
    if cfg.ensemble.estimate_time:
        announce_budget(members, folds, device)
    else:
        print(f"leaderboard: {len(members)} member(s) x {folds} folds (time not estimated: ensemble.estimate_time)")

    request = replace(request, resume_command=request.switches.resume_call(config_name, overrides))
    results: dict[str, FoldsResult] = {}
    for n, (name, member_cfg) in enumerate(members.items(), start=1):
        print(
            f"member {n}/{len(members)}: {name} ({member_cfg.model.kind}), "
            f"runs {fold_run_name(member_cfg.run_name, 1)}..{folds}"
        )
        results[name] = run_folds(
            member_cfg,
            config_name,
            [*overrides, *_member_overrides(cfg, name)],
            folds,
            request,
            announce_next=False,
            key="ensemble.folds",
        )

    first = next(iter(results.values()))
    labels, parts = first.pooled.labels, first.parts
    for name, result in results.items():  # member_configs keeps the data shared; this is the proof
        if result.pooled.ids != first.pooled.ids or not np.array_equal(result.pooled.labels, labels):
            raise UserError(
                f"ensemble: member '{name}' was trained on other pooled pairs than the first member; "
                "every member must read the same data"
            )
    matrix = np.stack([r.out_of_fold for r in results.values()], axis=1)
    clip, decimals = cfg.inference.clip, cfg.inference.round
    # Every candidate is scored cross-fitted, exactly as inference will apply it (weights fitted without
    # the part scored, the intercept, inference.clip and inference.round): which one wins is measured.
    choice = choose(matrix, labels, parts, cfg.ensemble.combine, clip, decimals)
    scores = {
        f"member {name}": score(postprocess(r.out_of_fold, clip, decimals), labels, 1) for name, r in results.items()
    }
    scores.update({f"ensemble {method} (cross-fitted)": value for method, value in choice.scores.items()})
    weights, intercept = fit_candidate(matrix, labels, choice.applied)
    ensemble = [Member(name, r.runs, float(w)) for (name, r), w in zip(results.items(), weights)]
    write_spec(
        ensemble_dir / ENSEMBLE_FILE,
        ensemble,
        float(intercept),
        choice,
        scores,
        bool(cfg.inference.symmetric),
        clip,
        decimals,
    )

    if choice.applied != choice.requested:
        print(f"warning: {choice.reason}")
    print(
        f"ensemble ({choice.applied}): "
        + ", ".join(f"{m.name} x {m.weight:.3f}" for m in ensemble)
        + f" + {intercept:.3f}"
    )
    print(
        "out-of-fold Pearson over all pooled pairs (clipped and rounded as the submission): "
        + ", ".join(f"{what} {value:.4f}" for what, value in scores.items() if value is not None)
    )
    print(f"leaderboard done in {_minutes(time.perf_counter() - started)}; ensemble in {ensemble_dir / ENSEMBLE_FILE}")
    print(f"next: {request.switches.predict_call(config_name, overrides, [cfg.run_name])}")
    return {
        "weights": dict(zip(results, map(float, weights))),
        "intercept": float(intercept),
        "out_of_fold": scores,
        "runs": [run for result in results.values() for run in result.runs],
        "combine": choice.requested,
        "applied": choice.applied,
        "score": choice.scores[choice.applied],
    }


def _member_overrides(cfg: Box, name: str) -> list[str]:
    """The command-line form of a member's config (for the resume commands its folds print)."""
    return [*cfg.ensemble.members[name], f"run_name={member_run_name(cfg.run_name, name)}", "ensemble.members={}"]
