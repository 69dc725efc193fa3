"""The commands plaintune prints for the user to run next, in the caller's language: train.py and
inference.py command lines, or the plaintune.train / plaintune.predict calls of a notebook. Every
printed resume line and `next:` line is built here."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Switches:
    """train's switches as the caller wrote them, for messages: train.py's flags (`--resume`) or the
    Python API's keywords (`resume=True`). A message names a switch by its field ("--resume: ...",
    "without resume") or says how to turn it on with `on` ("pass --force", "pass force=True")."""

    resume: str
    overwrite: str
    force: str
    folds: str
    turn_on: str  # what follows a switch's name to turn it on: nothing for a flag, "=True" for a keyword
    command_line: bool  # train.py's flags (else the keywords of plaintune.train)

    def on(self, switch: str) -> str:
        """How to turn `switch` ('resume', 'overwrite', 'force') on: `--force`, or `force=True`."""
        return getattr(self, switch) + self.turn_on

    def resume_call(
        self, config_name: str, overrides: Sequence[str], folds: Optional[int] = None, launcher: str = "python"
    ) -> str:
        """What continues a run as the caller started it (printed after Ctrl-C or SIGTERM): train.py's
        command line started by `launcher` (a torchrun line under DDP), or the plaintune.train call
        (`config_name` CONFIG_DICT: the caller's own dict)."""
        if self.command_line:
            return " ".join(
                [
                    launcher,
                    "train.py",
                    "--config",
                    shlex.quote(config_name),
                    *map(shlex.quote, overrides),
                    *(["--folds", str(folds)] if folds is not None else []),
                    "--resume",
                ]
            )
        config = config_name if config_name == CONFIG_DICT else repr(config_name)
        arguments = [config, *map(repr, overrides), *([f"folds={folds}"] if folds is not None else []), "resume=True"]
        return f"plaintune.train({', '.join(arguments)})"

    def predict_call(self, config_name: str, overrides: Sequence[str], saved_models: Sequence[str]) -> str:
        """What predicts with the models a training just made (the `next:` line): inference.py's command
        line, or the plaintune.predict call that writes the submission."""
        if self.command_line:
            return " ".join(
                [
                    "python",
                    "inference.py",
                    "--config",
                    shlex.quote(config_name),
                    "--saved_model",
                    *map(shlex.quote, saved_models),
                    *map(shlex.quote, overrides),
                ]
            )
        config = config_name if config_name == CONFIG_DICT else repr(config_name)
        models = repr(saved_models[0]) if len(saved_models) == 1 else repr(list(saved_models))
        return f"plaintune.predict({', '.join([config, models, *map(repr, overrides), 'write=True'])})"


CLI = Switches(
    resume="--resume", overwrite="--overwrite", force="--force", folds="--folds", turn_on="", command_line=True
)
API = Switches(
    resume="resume", overwrite="overwrite", force="force", folds="folds", turn_on="=True", command_line=False
)
CONFIG_DICT = "<your config dict>"  # how printed commands name a config given as a dict (plaintune.train({...}))
