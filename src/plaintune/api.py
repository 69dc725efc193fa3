"""The public entry point: `plaintune.train` and `plaintune.predict`.

train.py and inference.py parse their arguments and call these two functions, as a notebook does;
each config kind goes through the same door: a single run, a k-fold (`folds=K`) and a leaderboard
pipeline (a config with `ensemble.members`), each ending in one `TrainResult`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import pandas as pd
from box import Box

from plaintune.commands import API, CONFIG_DICT, Switches
from plaintune.config.load import apply_overrides, load_config, overridden_keys, resolve_config_path, to_plain
from plaintune.config.schema import LEAVES, lookup
from plaintune.config.validation import Origins, validate
from plaintune.errors import UserError
from plaintune.inference.predicting import predict_submission
from plaintune.kfold.folds import folds_folder, run_folds
from plaintune.kfold.leaderboard import run_leaderboard
from plaintune.names import CONFIG_FILE
from plaintune.recipe.metrics import followed_metric, score
from plaintune.rundir import layout as rundir
from plaintune.rundir import ownership
from plaintune.training.run import RunRequest, TrainResult, train_run

ConfigLike = Union[str, Path, dict]
PYTHON_CALL = "overrides given to plaintune"


def load(
    config: ConfigLike, overrides: Sequence[str], purpose: str, origin: str = PYTHON_CALL
) -> tuple[Box, str, Optional[Path]]:
    """(validated config, the name the printed commands use, the config file if any); each problem is
    blamed on the file's line or on `origin` for a key an override set."""
    if not isinstance(config, (str, Path, dict)):
        raise UserError(f"config: expected a config name, a YAML path or a dict, got {type(config).__name__}")
    wrong = [o for o in overrides if not isinstance(o, str)]
    if wrong:
        raise UserError(
            f"overrides: each is one 'key.path=value' string, given as its own argument "
            f"(train('default', 'training.epochs=1')); got {wrong[0]!r}"
        )
    if isinstance(config, dict):
        origins = Origins("config dict")
        return (
            validate(
                apply_overrides(config, overrides, origins, origin),
                source="config dict",
                purpose=purpose,
                origins=origins,
            ),
            CONFIG_DICT,
            None,
        )
    name = str(config)
    return load_config(name, overrides, purpose=purpose, origin=origin), name, resolve_config_path(name)


def _resume_argument(resume: object) -> Optional[str]:
    if resume is False or resume is None:
        return None
    if resume is True:
        return ""
    if isinstance(resume, (str, Path)) and str(resume):
        return str(resume)
    raise UserError(f"resume: expected True, False or the path of a resume bundle, got {resume!r}")


def as_started(located: Box, overrides: Sequence[str], origin: str, resume_switch: str = "--resume") -> Optional[Box]:
    """The config a resumed run continues with: its recorded config.yaml with only the overrides given
    now on top (the resume then checks those as always), or None when the run has no config.yaml or no
    bundle to continue (the resume says why). Where the config given now reads otherwise, a note says the run
    keeps its own value."""
    run_dir = rundir.run_dir_for(located)
    recorded = run_dir / CONFIG_FILE
    marker = ownership.read_marker(run_dir) if run_dir.is_dir() else None
    if marker is None or marker["kind"] != ownership.RUN:
        return None  # not a run of plaintune's: the resume refuses it
    if not rundir.RunFiles(run_dir).resume_candidates():
        return None  # nothing to continue: the resume itself says why
    if recorded.exists() and not recorded.is_file():
        raise UserError(
            f"{resume_switch}: the run's own config {recorded} is not a file; restore it, or remove it to "
            "resume with the config given now (the checkpoint checks that it describes the same run)"
        )
    if not recorded.is_file():
        print(
            f"note: {recorded} is missing; resuming with the config given now (the checkpoint checks that "
            "it describes the same run)"
        )
        return None
    try:
        cfg = load_config(str(recorded), overrides, purpose="train", origin=origin)
    except UserError as err:
        if not str(err).startswith(str(recorded)):
            raise  # an override given now: its own message says where
        raise UserError(
            f"{resume_switch}: the run's own config {err}; restore the file, or delete it to resume with the "
            "config given now (the checkpoint checks that it describes the same run)"
        ) from None
    given = set(overridden_keys(overrides))
    now, then = to_plain(located), to_plain(cfg)
    differ = [key for key in LEAVES if key not in given and lookup(now, key, None) != lookup(then, key, None)]
    print(f"resuming {recorded.parent}/ as it was started ({recorded})")
    if differ:
        shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
        print(
            f"note: the config given now reads otherwise in {shown}; the run keeps its own values (give "
            "key=value to change one: the resume checks it)"
        )
    return cfg


def train(
    config: ConfigLike,
    *overrides: str,
    resume: Union[bool, str, Path] = False,
    overwrite: bool = False,
    force: bool = False,
    trust_checkpoint: bool = False,
    folds: Optional[int] = None,
    overrides_origin: str = PYTHON_CALL,
    switches: Switches = API,
) -> TrainResult:
    """Train as `python train.py --config CONFIG OVERRIDES...` does.

    `config`: a name under configs/, a YAML path, or a dict of config keys. `resume`: True continues
    the run's newest checkpoint, a path continues that bundle. `folds=K` trains a K-fold over train
    and dev pooled; a config with `ensemble.members` runs the leaderboard pipeline. Every kind returns
    a `TrainResult`: a k-fold's and a leaderboard's `best_metric` is the out-of-fold score (for a
    leaderboard, that of the combination inference applies), `runs` lists the runs trained.
    `overrides_origin` names where the overrides came from in error messages (the scripts say
    "command line"), `switches` how messages name resume, overwrite, force and folds (the keywords
    here, `resume=True`; train.py passes commands.CLI: `--resume`)."""
    started_config = None
    if resume is True and folds is None:
        # a resume continues the run as it was started (its config.yaml), not as the config reads now
        located, name, _ = load(config, overrides, "locate", overrides_origin)
        cfg = (
            as_started(located, overrides, overrides_origin, switches.resume) if not located.ensemble.members else None
        )
        if cfg is None:
            cfg, name, _ = load(config, overrides, "train", overrides_origin)
        else:  # inference then reads what the run was trained on: its own config.yaml
            started_config = str(rundir.run_dir_for(cfg) / CONFIG_FILE)
    else:
        cfg, name, _ = load(config, overrides, "train", overrides_origin)
    for flag, value in (("overwrite", overwrite), ("force", force), ("trust_checkpoint", trust_checkpoint)):
        if not isinstance(value, bool):
            raise UserError(f"{flag}: expected True or False; got {type(value).__name__} {value!r}")
    if overwrite and resume is not False and resume is not None:
        raise UserError(f"{switches.resume} continues a run and {switches.overwrite} starts it over; give one of them")
    request = RunRequest(
        _resume_argument(resume), force, overwrite, trust_checkpoint, switches=switches, predict_config=started_config
    )
    if folds is not None and (not isinstance(folds, int) or isinstance(folds, bool)):
        raise UserError(f"folds: expected a whole number of folds (e.g. 5), got {folds!r}")
    if folds is not None and cfg.ensemble.members:
        raise UserError(
            f"{switches.folds}: this config has ensemble.members, which trains every member as a "
            f"k-fold of ensemble.folds folds; drop {switches.folds} (set ensemble.folds=K to change K)"
        )
    if folds is not None:
        result = run_folds(cfg, name, list(overrides), folds, request)
        metric = followed_metric("auto", cfg.model.num_labels)
        overall = score(result.out_of_fold, result.pooled.labels, cfg.model.num_labels)
        per_fold = {
            f"fold {k}": score(result.out_of_fold[part], result.pooled.labels[part], cfg.model.num_labels)
            for k, part in enumerate(result.parts, start=1)
        }
        folder = folds_folder(cfg)
        return TrainResult(
            folder,
            metric,
            overall,
            None,
            [],
            kind="k-fold",
            runs=list(result.runs),
            scores={f"out-of-fold {metric}": overall, **per_fold},
        )
    if cfg.ensemble.members:
        summary = run_leaderboard(cfg, name, list(overrides), request)
        return TrainResult(
            rundir.run_dir_for(cfg),
            "pearson",
            summary["score"],
            None,
            [],
            kind="leaderboard",
            runs=list(summary["runs"]),
            scores=dict(summary["out_of_fold"]),
            ensemble={k: v for k, v in summary.items() if k not in ("out_of_fold", "score")},
        )
    return train_run(cfg, name, list(overrides), request)


def predict(
    config: ConfigLike,
    saved_model: Union[str, Path, Sequence[Union[str, Path]]],
    *overrides: str,
    output_path: Optional[Union[str, Path]] = None,
    weights: Optional[Sequence[float]] = None,
    trust_checkpoint: bool = False,
    write: Optional[bool] = None,
    overwrite: bool = False,
    overrides_origin: str = PYTHON_CALL,
    switches: Switches = API,
) -> pd.DataFrame:
    """Predict data.predict_path with a saved model, a fitted ensemble's directory, or a list of models.

    Returns the id column and `target`, the predictions before rounding and clipping. The submission
    (rounded and clipped as inference.py writes it) is written to `output_path` when one is given, or
    to inference.output_path with `write=True` (what inference.py does; null: output/<run>.csv). A file
    there that plaintune did not write for these models is replaced only with `overwrite=True`."""
    if output_path is not None:
        overrides = (*overrides, f"inference.output_path={output_path}")
    cfg, _, config_path = load(config, overrides, "inference", overrides_origin)
    models = [saved_model] if isinstance(saved_model, (str, Path)) else saved_model
    if not isinstance(models, (list, tuple)) or not models or not all(isinstance(m, (str, Path)) for m in models):
        raise UserError(
            f"saved_model: expected a run name or checkpoint path, or a non-empty list of them; got {saved_model!r}"
        )
    if weights is not None and (
        not isinstance(weights, (list, tuple))
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
    ):
        raise UserError(f"weights: expected a list of numbers, one per saved model; got {weights!r}")
    return predict_submission(
        cfg,
        [str(m) for m in models],
        list(weights) if weights is not None else None,
        trust=trust_checkpoint,
        config_path=config_path,
        write=output_path is not None if write is None else write,
        overwrite=overwrite,
        switches=switches,
    )
