"""A fitted ensemble as a file (`<output_dir>/<run_name>/ensemble.json`): written by the leaderboard
pipeline (kfold/leaderboard.py fits it), read and applied by inference (`--saved_model <run_name>`
averages each member's fold models and applies the weights and intercept)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from plaintune.errors import UserError
from plaintune.names import ENSEMBLE_FILE, LAST_FILE
from plaintune.rundir import atomic
from plaintune.rundir import layout as rundir

FORMAT = "plaintune-ensemble"


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
        problem = (
            f"a weight or the intercept is beyond any fit of scores (|weight| > {MAX_WEIGHT:g}): the file was "
            "edited or damaged; fit it again (python train.py --config ... --resume)"
        )
    elif not np.any(values != 0):
        problem = "all its weights are zero (every prediction would be the intercept)"
    elif method != "lstsq" and np.any(values < 0):
        problem = f"it has negative weights, which only combine: lstsq may fit (this is {method})"
    else:
        return
    raise UserError(f"{where}: {problem}")


@dataclass
class Member:
    name: str
    runs: list[str]
    weight: float


def write_spec(
    path: Path,
    members: list[Member],
    intercept: float,
    choice,
    scores: dict,
    symmetric: bool,
    clip: Optional[Sequence[float]],
    decimals: Optional[int],
) -> None:
    """`choice`: the fit's Choice (kfold/ensemble.py: requested, applied, reason). `symmetric`: the
    inference.symmetric the out-of-fold predictions were made with, which the submission must use too
    (the weights were fitted on those predictions). `clip`/`decimals`: the inference.clip and
    inference.round the cross-fitted scores were computed with."""
    check_weights([m.weight for m in members], intercept, choice.applied, f"ensemble ({choice.applied})")
    spec = {
        "format": FORMAT,
        "version": 1,
        "combine": choice.requested,
        "applied": choice.applied,
        "why": choice.reason,
        "intercept": intercept,
        "members": [{"name": m.name, "runs": m.runs, "weight": m.weight} for m in members],
        "inference_symmetric": symmetric,
        "scored_with": {"clip": clip, "round": decimals},
        "out_of_fold": scores,
    }
    atomic.write_text(path, json.dumps(atomic.json_safe(spec), indent=2))


@dataclass
class Fitted:
    """A fitted ensemble as inference runs it: every fold model, its share of its member's weight."""

    runs: list[str]
    weights: list[float]
    intercept: float
    symmetric: bool  # the inference.symmetric its out-of-fold predictions were made with


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
        raise UserError(
            f"--saved_model: '{path}' is {problem}; rerun python train.py --config <its config> "
            "--resume to fit it again"
        )
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
        raise UserError(
            f"--saved_model: '{spec_path}' names member run '{run}', which is not a folder inside the "
            f"ensemble's output_dir '{root}'; an ensemble loads only runs beside it: fit it again with "
            "python train.py --config <its config> --resume"
        )
    return target


def expand(saved_models: Sequence[str], saved_root: Path) -> Optional[Fitted]:
    """`--saved_model DIR` naming one ensemble directory -> (the fold runs, their weights, the intercept):
    each member's weight is shared by its fold models, whose predictions are averaged. An ensemble
    named among other models is refused: it applies its own weights, and mixes with nothing."""
    if len(saved_models) != 1:
        for name in saved_models:
            if any((c / ENSEMBLE_FILE).is_file() for c in (Path(name).expanduser(), saved_root / name)):
                raise UserError(
                    f"--saved_model: '{name}' is a fitted ensemble (it applies its own weights to its members); "
                    f"give it alone (--saved_model {name}), or list single models to average"
                )
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
                        raise UserError(
                            f"--saved_model {saved_models[0]}: member run '{run}' has no complete best/ "
                            "(its best model, which the ensemble was fitted on); finish it with "
                            "python train.py --config <its config> --resume, or restore best/"
                        )
                weights = [m.weight / len(m.runs) for m in members for _ in m.runs]
                return Fitted(runs, weights, intercept, symmetric)
    return None


def check_ensemble_dir(directory: Path) -> None:
    """The ensemble directory holds ensemble.json alone; it may not be (or become) a training run."""
    if directory.is_dir() and (rundir.find_best_dir(directory) is not None or (directory / LAST_FILE).exists()):
        raise UserError(f"ensemble: '{directory}' is a training run's directory; give the ensemble another run_name")
