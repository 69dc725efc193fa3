"""A fitted ensemble over k-fold members: `python train.py --config leaderboard`.

The config's `ensemble.members` names the members, each this config with its own
overrides (e.g. a bi-encoder and a cross-encoder of the same base model). Each
member is trained as an ordinary k-fold (`folds.run_folds`: resumable, one run per
fold), which gives every pooled train+dev pair one out-of-fold prediction per
member, made by a model that never saw it. On those predictions the combination is
fitted (`ensemble.combine`: non-negative least squares with an intercept by
default) and saved as `<output_dir>/<run_name>/ensemble.json`; `inference.py
--saved_model <run_name>` averages each member's fold models and applies it.

Nothing here looks at the test split: every choice is made on out-of-fold data.
The ensemble's own score is cross-fitted (weights fitted without the fold they
are scored on), so it is as honest as the members'.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from box import Box

from plaintune.config.load import apply_overrides, overridden_keys, to_plain
from plaintune.config.schema import LEAVES, SHARED
from plaintune.config.validation import Origins, validate
from plaintune.data import tables as data
from plaintune.data.batching import TrainBatchSampler, micro_batch_budget, train_loader
from plaintune.data.tokenized import PairEncoding, make_dataset
from plaintune.errors import UserError
from plaintune.inference.ensemble import apply
from plaintune.inference.submission import postprocess
from plaintune.model.loading import build_model, build_model_config, build_tokenizer
from plaintune.names import fold_run_name, member_run_name
from plaintune.recipe.metrics import score
from plaintune.runtime.precision import AUTOCAST
from plaintune.runtime.precision import resolve as resolve_precision

COMBINES = ("nnls", "lstsq", "mean")


# ------------------------------------------------------------------- fitting


def fit(predictions: np.ndarray, labels: np.ndarray, method: str) -> tuple[np.ndarray, float]:
    """(weights, intercept) so that `predictions @ weights + intercept` approximates `labels`.

    nnls: least squares with weights >= 0 (a member can be dropped, never inverted); lstsq: any
    weights; mean: equal weights, no intercept (the plain average). predictions: (pairs, members)."""
    members = predictions.shape[1]
    if method == "mean":
        return np.full(members, 1.0 / members), 0.0
    mean_p, mean_y = predictions.mean(axis=0), float(labels.mean())
    centred, target = predictions - mean_p, labels - mean_y
    if method == "nnls":
        # scipy.optimize costs about a second to import: only a fit that uses it pays for it,
        # not every training or inference process that imports this module
        from scipy.optimize import nnls

        weights, _ = nnls(centred, target)
    elif method == "lstsq":
        weights = np.linalg.lstsq(centred, target, rcond=None)[0]
    else:
        raise ValueError(f"unknown combine method {method!r}")
    if method == "nnls" and not np.any(weights > 0):
        raise UserError(
            "ensemble: no member's out-of-fold predictions correlate positively with the labels; "
            "the members learned nothing (check each member's out-of-fold score above)"
        )
    return weights, mean_y - float(mean_p @ weights)


def submission_values(
    predictions: np.ndarray,
    weights: Sequence[float],
    intercept: float,
    clip: Optional[Sequence[float]],
    decimals: Optional[int],
) -> np.ndarray:
    """What inference writes for these member predictions: the weighted sum plus the intercept
    (predicting.combine), then the submission's clipping and rounding (evaluate.postprocess)."""
    return postprocess(apply(predictions, weights, intercept), clip, decimals)


BEST_MEMBER = "best_member"  # a candidate beside COMBINES: the single member with the best out-of-fold score


def fit_candidate(predictions: np.ndarray, labels: np.ndarray, method: str) -> tuple[np.ndarray, float]:
    """(weights, intercept) of `method`: one of COMBINES, or BEST_MEMBER (weight 1 on the member whose
    predictions score best against `labels`, intercept 0: that member's own predictions)."""
    if method != BEST_MEMBER:
        return fit(predictions, labels, method)
    scores = [score(predictions[:, k], labels, 1) for k in range(predictions.shape[1])]
    finite = [s if np.isfinite(s) else -np.inf for s in scores]
    weights = np.zeros(predictions.shape[1])
    weights[int(np.argmax(finite))] = 1.0
    return weights, 0.0


def cross_fitted(
    predictions: np.ndarray,
    labels: np.ndarray,
    parts: Sequence[np.ndarray],
    method: str,
    clip: Optional[Sequence[float]] = None,
    decimals: Optional[int] = None,
) -> np.ndarray:
    """Each part's submission values (as inference makes them: `submission_values`) from a
    combination fitted on the other parts, the same way the final one is fitted: an honest score."""
    out = np.full(len(labels), np.nan)
    for held_out in parts:
        rest = np.setdiff1d(np.arange(len(labels)), held_out)
        weights, intercept = fit_candidate(predictions[rest], labels[rest], method)
        out[held_out] = submission_values(predictions[held_out], weights, intercept, clip, decimals)
    return out


@dataclass
class Choice:
    """Which combination the ensemble applies, and why (recorded in ensemble.json)."""

    requested: str  # ensemble.combine
    applied: str  # requested, or what beat it out of fold (another method, BEST_MEMBER)
    scores: dict  # cross-fitted Pearson of every candidate (None: could not be fitted)
    reason: str


def choose(
    predictions: np.ndarray,
    labels: np.ndarray,
    parts: Sequence[np.ndarray],
    requested: str,
    clip: Optional[Sequence[float]] = None,
    decimals: Optional[int] = None,
) -> Choice:
    """Score every candidate cross-fitted (COMBINES and the best single member) as inference would
    apply it, and pick `requested` unless the best member scores higher out of fold: then the
    best-scoring candidate is applied instead (never a combination that does worse than one member;
    lstsq, which may invert a member, only when it was requested)."""
    scores: dict = {}
    for method in (*COMBINES, BEST_MEMBER):
        try:
            value = score(cross_fitted(predictions, labels, parts, method, clip, decimals), labels, 1)
        except UserError:  # e.g. nnls with no positively correlated member on some part
            value = None
        scores[method] = float(value) if value is not None and np.isfinite(value) else None
    # lstsq may invert a member; it replaces a requested non-negative combination never, only the user picks it
    eligible = {method for method in scores if method != "lstsq" or requested == "lstsq"}
    ranked = sorted((value, method) for method, value in scores.items() if value is not None and method in eligible)
    if not ranked:
        raise UserError(
            "ensemble: no combination of the members gives a finite out-of-fold Pearson; the members "
            "learned nothing (check each member's out-of-fold score above)"
        )
    best_value, best_method = ranked[-1]
    own, single = scores[requested], scores[BEST_MEMBER]
    if own is not None and (single is None or own >= single):
        return Choice(
            requested,
            requested,
            scores,
            f"ensemble.combine {requested} scores {own:.4f} out of fold "
            f"(cross-fitted), not below the best single member",
        )
    why = "could not be fitted" if own is None else f"scores {own:.4f}"
    return Choice(
        requested,
        best_method,
        scores,
        f"ensemble.combine {requested} {why} out of fold (cross-fitted), "
        f"below the best single member ({single:.4f}); applying {best_method} ({best_value:.4f}) instead"
        if single is not None
        else f"ensemble.combine {requested} {why} out of fold (cross-fitted); "
        f"applying {best_method} ({best_value:.4f}) instead",
    )


# ------------------------------------------------------------------- members


def member_configs(cfg: Box, source: str) -> dict[str, Box]:
    """Each member's config: this one with the member's overrides and run name `<run_name>-<member>`,
    validated now, so a bad override stops the pipeline before anything trains."""
    if cfg.model.num_labels != 1:
        raise UserError(
            f"{source}: ensemble.members needs a regression task (model.num_labels: 1); the fitted "
            "combination is a weighted sum of scores"
        )
    if not cfg.checkpoint.save_best:
        raise UserError(
            f"{source}: ensemble.members needs checkpoint.save_best: true (the members' best models "
            "predict the out-of-fold pairs and the submission)"
        )
    members = {}
    for name, overrides in cfg.ensemble.members.items():
        plain = to_plain(cfg)
        plain["ensemble"]["members"] = {}
        plain["run_name"] = member_run_name(cfg.run_name, name)
        where = f"{source}: ensemble.members.{name}"
        whole = sorted({key for key in overridden_keys(overrides) if SHARED in LEAVES[key].role})
        if whole:
            fold_runs = fold_run_name(member_run_name(cfg.run_name, name), "*")
            raise UserError(
                f"{where}: a member may not set {', '.join(whole)}: every member is fitted on the same "
                "pooled pairs and folds, predicted the same way and kept under "
                f"{cfg.output_dir}/{fold_runs}; set it for the whole config"
            )
        # a problem is blamed on the member's override that set the key, else on the config file
        origins = Origins(source)
        members[name] = validate(
            apply_overrides(plain, overrides, origins, where), source=source, purpose="train", origins=origins
        )
        member = members[name]
        if member.model.num_labels != 1:
            raise UserError(
                f"{where}: model.num_labels {member.model.num_labels}; a fitted ensemble combines "
                "regression scores (num_labels: 1)"
            )
    return members


def measure_speed(
    cfg: Box,
    table: data.PairTable,
    device: torch.device,
    rows: int = 256,
    warmup_batches: int = 2,
    budget_s: float = 8.0,
) -> float:
    """Training pairs per second of this member's recipe on this machine: whole optimizer steps
    (forward, backward, AdamW's update) on real batches; the first `warmup_batches` are not timed
    (allocator and kernel warm-up), and the speed is the median over the timed batches, so one slow
    batch (another process, a page fault) does not skew the estimate the way a single total did.
    Timing stops after `budget_s` seconds of timed batches (at least three): a base-size model on a
    CPU would otherwise spend half a minute per member on an estimate."""
    prepared = build_model_config(cfg.model)
    tokenizer = build_tokenizer(cfg.model, prepared.architecture)
    picked = np.random.default_rng(cfg.seed).permutation(len(table))[:rows]
    encoding = PairEncoding(
        cfg.model.kind, cfg.model.max_length, prepared.architecture.token_type_ids, cfg.model.prompt or ""
    )
    dataset = make_dataset(table.take(picked), tokenizer, encoding)
    model = build_model(cfg.model, prepared=prepared).to(device).train()
    budget, overhead = micro_batch_budget(cfg.training.micro_batch_tokens, device)
    batch_size = max(1, min(cfg.training.batch_size, len(picked) // (warmup_batches + 3)))
    loader = train_loader(
        dataset,
        TrainBatchSampler(dataset.lengths, batch_size, cfg.seed, bucket=cfg.training.bucket_batches),
        1,
        micro_batch_tokens=budget,
        pass_overhead=overhead,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-12)  # the update's cost, not its effect
    optimizer.speed_probe = True  # so global step hooks (profilers, the crash tests) can tell it from training
    dtype = AUTOCAST[resolve_precision(cfg.training.precision, device)[0]]
    per_pair, timed = [], 0.0
    for n, batch in enumerate(loader):
        started, pairs = time.perf_counter(), 0
        for part in batch:
            inputs = {k: v.to(device) for k, v in part.items() if k not in ("labels", "index")}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(**inputs).logits
            logits.float().square().mean().backward()
            pairs += part["labels"].shape[0]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if n >= warmup_batches and pairs:
            per_pair.append((time.perf_counter() - started) / pairs)
            timed += time.perf_counter() - started
            if timed >= budget_s and len(per_pair) >= 3:
                break
    del model, optimizer
    return 1.0 / float(np.median(per_pair)) if per_pair else float("nan")


def estimate_seconds(cfg: Box, pooled_rows: int, folds: int, speed: float, folds_left: Optional[int] = None) -> float:
    """A member's k-fold, or the `folds_left` of its folds not finished yet: each fold trains on (K-1)/K
    of the pool for its epochs (or training.max_steps steps, if fewer) and validates its part every
    epoch (a forward pass, about a third of a training step's work per pair)."""
    held_out = pooled_rows / folds
    trained = (pooled_rows - held_out) * cfg.training.epochs
    if cfg.training.max_steps is not None:
        trained = min(trained, cfg.training.max_steps * cfg.training.batch_size * cfg.training.grad_accum_steps)
    per_fold = (trained + cfg.training.epochs * held_out / 3) / speed
    return (folds if folds_left is None else folds_left) * per_fold
