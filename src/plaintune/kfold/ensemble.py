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

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from box import Box

from plaintune.rundir import atomic
from plaintune.data import tables as data
from plaintune.rundir import layout as rundir
from plaintune.rundir.names import ENSEMBLE_FILE, LAST_FILE, fold_run_name, member_run_name
from plaintune.data.batching import TrainBatchSampler, micro_batch_budget, train_loader
from plaintune.config.load import apply_overrides, overridden_keys, to_plain
from plaintune.data.tokenized import PairEncoding, make_dataset
from plaintune.errors import UserError
from plaintune.inference.outputs import AUTOCAST, postprocess
from plaintune.training.metrics import score
from plaintune.model.loading import build_model, build_model_config, build_tokenizer
from plaintune.model.precision import resolve as resolve_precision
from plaintune.schema import LEAVES, SHARED
from plaintune.config.validation import Origins, validate

FORMAT = "plaintune-ensemble"
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
        raise UserError("ensemble: no member's out-of-fold predictions correlate positively with the labels; "
                        "the members learned nothing (check each member's out-of-fold score above)")
    return weights, mean_y - float(mean_p @ weights)


def apply(predictions: np.ndarray, weights: Sequence[float], intercept: float) -> np.ndarray:
    return predictions @ np.asarray(weights, dtype=np.float64) + intercept


MAX_WEIGHT = 1e6  # members predict on the label scale; a fit never needs a weight near this


def check_weights(weights: Sequence[float], intercept: float, method: str, where: str) -> None:
    """A combination inference can apply: finite, not all zero (every prediction would be the
    intercept), non-negative unless `method` is lstsq (which may invert a member by design)."""
    values = np.asarray(weights, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)) or not np.isfinite(intercept):
        problem = "its weights or intercept are not finite numbers"
    elif np.abs(values).max() > MAX_WEIGHT or abs(intercept) > MAX_WEIGHT * 10:
        problem = (f"a weight or the intercept is beyond any fit of scores (|weight| > {MAX_WEIGHT:g}): the file was "
                   "edited or damaged; fit it again (python train.py --config ... --resume)")
    elif not np.any(values != 0):
        problem = "all its weights are zero (every prediction would be the intercept)"
    elif method != "lstsq" and np.any(values < 0):
        problem = f"it has negative weights, which only combine: lstsq may fit (this is {method})"
    else:
        return
    raise UserError(f"{where}: {problem}")


def submission_values(predictions: np.ndarray, weights: Sequence[float], intercept: float,
                      clip: Optional[Sequence[float]], decimals: Optional[int]) -> np.ndarray:
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


def cross_fitted(predictions: np.ndarray, labels: np.ndarray, parts: Sequence[np.ndarray], method: str,
                 clip: Optional[Sequence[float]] = None, decimals: Optional[int] = None) -> np.ndarray:
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

    requested: str            # ensemble.combine
    applied: str              # requested, or what beat it out of fold (another method, BEST_MEMBER)
    scores: dict              # cross-fitted Pearson of every candidate (None: could not be fitted)
    reason: str


def choose(predictions: np.ndarray, labels: np.ndarray, parts: Sequence[np.ndarray], requested: str,
           clip: Optional[Sequence[float]] = None, decimals: Optional[int] = None) -> Choice:
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
        raise UserError("ensemble: no combination of the members gives a finite out-of-fold Pearson; the members "
                        "learned nothing (check each member's out-of-fold score above)")
    best_value, best_method = ranked[-1]
    own, single = scores[requested], scores[BEST_MEMBER]
    if own is not None and (single is None or own >= single):
        return Choice(requested, requested, scores, f"ensemble.combine {requested} scores {own:.4f} out of fold "
                      f"(cross-fitted), not below the best single member")
    why = "could not be fitted" if own is None else f"scores {own:.4f}"
    return Choice(requested, best_method, scores, f"ensemble.combine {requested} {why} out of fold (cross-fitted), "
                  f"below the best single member ({single:.4f}); applying {best_method} ({best_value:.4f}) instead"
                  if single is not None else f"ensemble.combine {requested} {why} out of fold (cross-fitted); "
                  f"applying {best_method} ({best_value:.4f}) instead")


# ------------------------------------------------------------------- members

def member_configs(cfg: Box, source: str) -> dict[str, Box]:
    """Each member's config: this one with the member's overrides and run name `<run_name>-<member>`,
    validated now, so a bad override stops the pipeline before anything trains."""
    if cfg.model.num_labels != 1:
        raise UserError(f"{source}: ensemble.members needs a regression task (model.num_labels: 1); the fitted "
                        "combination is a weighted sum of scores")
    if not cfg.checkpoint.save_best:
        raise UserError(f"{source}: ensemble.members needs checkpoint.save_best: true (the members' best models "
                        "predict the out-of-fold pairs and the submission)")
    members = {}
    for name, overrides in cfg.ensemble.members.items():
        plain = to_plain(cfg)
        plain["ensemble"]["members"] = {}
        plain["run_name"] = member_run_name(cfg.run_name, name)
        where = f"{source}: ensemble.members.{name}"
        whole = sorted({key for key in overridden_keys(overrides) if SHARED in LEAVES[key].role})
        if whole:
            fold_runs = fold_run_name(member_run_name(cfg.run_name, name), "*")
            raise UserError(f"{where}: a member may not set {', '.join(whole)}: every member is fitted on the same "
                            "pooled pairs and folds, predicted the same way and kept under "
                            f"{cfg.output_dir}/{fold_runs}; set it for the whole config")
        # a problem is blamed on the member's override that set the key, else on the config file
        origins = Origins(source)
        members[name] = validate(apply_overrides(plain, overrides, origins, where), source=source, purpose="train",
                                 origins=origins)
        member = members[name]
        if member.model.num_labels != 1:
            raise UserError(f"{where}: model.num_labels {member.model.num_labels}; a fitted ensemble combines "
                            "regression scores (num_labels: 1)")
    return members


def measure_speed(cfg: Box, table: data.PairTable, device: torch.device, rows: int = 256,
                  warmup_batches: int = 2) -> float:
    """Training pairs per second of this member's recipe on this machine: whole optimizer steps
    (forward, backward, AdamW's update) on real batches; the first `warmup_batches` are not timed
    (allocator and kernel warm-up), and the speed is the median over the timed batches, so one slow
    batch (another process, a page fault) does not skew the estimate the way a single total did."""
    prepared = build_model_config(cfg.model)
    tokenizer = build_tokenizer(cfg.model, prepared.architecture)
    picked = np.random.default_rng(cfg.seed).permutation(len(table))[:rows]
    encoding = PairEncoding(cfg.model.kind, cfg.model.max_length, prepared.architecture.token_type_ids,
                            cfg.model.prompt or "")
    dataset = make_dataset(table.take(picked), tokenizer, encoding)
    model = build_model(cfg.model, prepared=prepared).to(device).train()
    budget, overhead = micro_batch_budget(cfg.training.micro_batch_tokens, device)
    batch_size = max(1, min(cfg.training.batch_size, len(picked) // (warmup_batches + 3)))
    loader = train_loader(dataset, TrainBatchSampler(dataset.lengths, batch_size, cfg.seed,
                                                      bucket=cfg.training.bucket_batches),
                          1, micro_batch_tokens=budget, pass_overhead=overhead)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-12)  # the update's cost, not its effect
    optimizer.speed_probe = True  # so global step hooks (profilers, the crash tests) can tell it from training
    dtype = AUTOCAST[resolve_precision(cfg.training.precision, device)[0]]
    per_pair = []
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


# ------------------------------------------------------------------- the spec file

@dataclass
class Member:
    name: str
    runs: list[str]
    weight: float


def write_spec(path: Path, members: list[Member], intercept: float, choice: Choice, scores: dict,
               symmetric: bool, clip: Optional[Sequence[float]], decimals: Optional[int]) -> None:
    """`symmetric`: the inference.symmetric the out-of-fold predictions were made with, which the
    submission must use too (the weights were fitted on those predictions). `clip`/`decimals`: the
    inference.clip and inference.round the cross-fitted scores were computed with."""
    check_weights([m.weight for m in members], intercept, choice.applied, f"ensemble ({choice.applied})")
    spec = {"format": FORMAT, "version": 1, "combine": choice.requested, "applied": choice.applied,
            "why": choice.reason, "intercept": intercept,
            "members": [{"name": m.name, "runs": m.runs, "weight": m.weight} for m in members],
            "inference_symmetric": symmetric, "scored_with": {"clip": clip, "round": decimals},
            "out_of_fold": scores}
    atomic.write_text(path, json.dumps(atomic.json_safe(spec), indent=2))


@dataclass
class Fitted:
    """A fitted ensemble as inference runs it: every fold model, its share of its member's weight."""

    runs: list[str]
    weights: list[float]
    intercept: float
    symmetric: bool   # the inference.symmetric its out-of-fold predictions were made with


def read_spec(directory: Path) -> Optional[tuple[list[Member], float, bool]]:
    """(members, intercept, inference.symmetric of the fit) of an ensemble directory; None if
    `directory` holds no ensemble.json. A fit recorded before the key existed was made in one order."""
    path = directory / ENSEMBLE_FILE
    if not path.is_file():
        return None
    problem = None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        numbers = [m["weight"] for m in spec["members"]] + [spec["intercept"]]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
            raise TypeError("weights and the intercept are JSON numbers")  # not "1" or true
        if not all(isinstance(r, str) for m in spec["members"] for r in m["runs"]):
            raise TypeError("runs are names")
        members = [Member(str(m["name"]), list(m["runs"]), float(m["weight"])) for m in spec["members"]]
        intercept = float(spec["intercept"])
        symmetric = spec.get("inference_symmetric", False)
        if not isinstance(symmetric, bool):
            raise TypeError("inference_symmetric")
        method = spec.get("applied", spec.get("combine"))
        if spec.get("format") != FORMAT or not members or not all(m.runs for m in members):
            problem = "not a plaintune ensemble"
        else:
            check_weights([m.weight for m in members], intercept, method, "weights")
    except (OSError, ValueError, KeyError, TypeError):
        problem = "unreadable or damaged"
    except UserError as err:
        problem = f"damaged ({err})"
    if problem:
        raise UserError(f"--saved_model: '{path}' is {problem}; rerun python train.py --config <its config> "
                        "--resume to fit it again")
    return members, intercept, symmetric


def member_run_dir(root: Path, run: str, spec_path: Path) -> Path:
    """A member run of an ensemble: a folder directly inside the ensemble's output_dir (`root`),
    never elsewhere (an absolute path, ../, a symlink that leads out)."""
    relative = Path(run)
    inside = not relative.is_absolute() and ".." not in relative.parts and run.strip() not in ("", ".")
    target = root / relative
    if inside:
        try:
            inside = target.resolve().is_relative_to(root.resolve())
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
    if not inside:
        raise UserError(f"--saved_model: '{spec_path}' names member run '{run}', which is not a folder inside the "
                        f"ensemble's output_dir '{root}'; an ensemble loads only runs beside it: fit it again with "
                        "python train.py --config <its config> --resume")
    return target


def expand(saved_models: Sequence[str], saved_root: Path) -> Optional[Fitted]:
    """`--saved_model DIR` naming one ensemble directory -> (the fold runs, their weights, the intercept):
    each member's weight is shared by its fold models, whose predictions are averaged."""
    if len(saved_models) != 1:
        return None
    for candidate in (Path(saved_models[0]).expanduser(), saved_root / saved_models[0]):
        if candidate.is_dir():
            spec = read_spec(candidate)
            if spec is not None:
                members, intercept, symmetric = spec
                members = [m for m in members if m.weight != 0]  # a dropped member need not run
                spec_path = candidate / ENSEMBLE_FILE
                runs = [str(member_run_dir(candidate.parent, run, spec_path)) for m in members for run in m.runs]
                for run in runs:  # the fit used each fold's best model: another one (last.pt) is not that member
                    if rundir.find_best_dir(Path(run)) is None:
                        raise UserError(f"--saved_model {saved_models[0]}: member run '{run}' has no complete best/ "
                                        "(its best model, which the ensemble was fitted on); finish it with "
                                        "python train.py --config <its config> --resume, or restore best/")
                weights = [m.weight / len(m.runs) for m in members for _ in m.runs]
                return Fitted(runs, weights, intercept, symmetric)
    return None


def check_ensemble_dir(directory: Path) -> None:
    """The ensemble directory holds ensemble.json alone; it may not be (or become) a training run."""
    if directory.is_dir() and (rundir.find_best_dir(directory) is not None or (directory / LAST_FILE).exists()):
        raise UserError(f"ensemble: '{directory}' is a training run's directory; give the ensemble another "
                        "run_name")
