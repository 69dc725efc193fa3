"""Outputs never land on inputs: every writer states what it will write and what the command reads.

A command names its inputs (config file, data files, checkpoints) as `{key: path}`
and its outputs as paths (a file, or a directory whose tree it replaces); any
input that is an output, or lies inside a replaced tree, stops the command with
one line before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from plaintune import paths
from plaintune.errors import UserError

PathLike = Union[str, Path]


def _resolved(path: PathLike, key: str) -> Path:
    kind, detail = paths.path_kind(Path(path).expanduser())
    if kind == paths.LOOP:
        raise UserError(f"{key}: '{path}' is {detail}; fix the link or give another path")
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as err:  # a loop further down the path
        raise UserError(f"{key}: '{path}' cannot be resolved ({err}); fix the path") from None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_outputs(outputs: Iterable[tuple[str, PathLike, bool]], inputs: Mapping[str, Optional[PathLike]]) -> None:
    """Refuse outputs that are inputs. `outputs` holds (key that chose it, path, is_tree): a file, or
    a directory whose contents get replaced (is_tree). `inputs` maps a key to a path (None: unused)."""
    read = {key: _resolved(path, key) for key, path in inputs.items() if path}
    for out_key, out_path, is_tree in outputs:
        target = _resolved(out_path, out_key)
        for in_key, source in read.items():
            if source == target or (is_tree and _inside(source, target)):
                what = "is" if source == target else "holds"
            elif not is_tree and _inside(target, source):
                what = "lies inside"
            else:
                continue
            raise UserError(
                f"{out_key}: '{out_path}' {what} the input {in_key} ('{inputs[in_key]}'); writing there "
                f"would destroy it: choose another {out_key}"
            )
        if not is_tree and target.is_dir():
            raise UserError(f"{out_key}: '{out_path}' is a directory; give a file path (e.g. output/submission.csv)")
