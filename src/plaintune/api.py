"""The Python API, for notebooks: the same runs as the commands, returning results instead of exit codes.

    import plaintune
    result = plaintune.train("default", "training.epochs=1", "output_dir=/content/drive/MyDrive/runs")
    frame = plaintune.predict("default", result.run_dir.name, "output_dir=/content/drive/MyDrive/runs")

A mistake raises `plaintune.UserError` with the one-line message the command
would print; nothing here calls sys.exit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import pandas as pd

from .config import apply_overrides, load_config, resolve_config_path
from .recipe import TrainResult, run_inference, run_training
from .validation import validate

ConfigLike = Union[str, Path, dict]


def _config(config: ConfigLike, overrides: Sequence[str], purpose: str):
    """(validated config, the name the printed commands use, the config file if any)."""
    if isinstance(config, dict):
        return validate(apply_overrides(config, overrides), source="config dict", purpose=purpose), "CONFIG", None
    name = str(config)
    return load_config(name, overrides, purpose=purpose), name, resolve_config_path(name)


def train(config: ConfigLike, *overrides: str, resume: Union[bool, str] = False, overwrite: bool = False,
          force: bool = False, trust_checkpoint: bool = False) -> TrainResult:
    """Train as `python train.py --config CONFIG OVERRIDES...` does.

    `config`: a name under configs/, a YAML path, or a dict of config keys. `resume`: True
    continues the run's newest checkpoint, a path continues that bundle.
    """
    cfg, name, _ = _config(config, overrides, "train")
    resume_arg = None if resume is False else ("" if resume is True else str(resume))
    return run_training(cfg, name, list(overrides), resume=resume_arg, force=force, overwrite=overwrite,
                        trust=trust_checkpoint)


def predict(config: ConfigLike, saved_model: Union[str, Path, Sequence[Union[str, Path]]], *overrides: str,
            output_path: Optional[Union[str, Path]] = None, weights: Optional[Sequence[float]] = None,
            trust_checkpoint: bool = False) -> pd.DataFrame:
    """Predict data.predict_path with a saved model (or an ensemble: a list of them).

    Returns the id column and `target`, the predictions before rounding and clipping. With
    `output_path`, also writes the submission there (rounded and clipped as inference.py does).
    """
    if output_path is not None:
        overrides = (*overrides, f"inference.output_path={output_path}")
    cfg, _, config_path = _config(config, overrides, "inference")
    models = [str(saved_model)] if isinstance(saved_model, (str, Path)) else [str(m) for m in saved_model]
    return run_inference(cfg, models, list(weights) if weights is not None else None, trust=trust_checkpoint,
                         config_path=config_path, write=output_path is not None)
