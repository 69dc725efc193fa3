"""Predict the unlabelled pairs of a config with a saved model and write the submission CSV.

    python inference.py --config NAME --saved_model Y [key.path=value ...]

Y: a checkpoint path (HF directory, .safetensors, .pt/.pth/.bin/.ckpt), a run
name under saved_model/ (its best model), or a file name under saved_model/.
Several Y form an ensemble (predictions averaged, optionally --weights).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # runnable from a clone without install

from plaintune.commands import CLI  # noqa: E402
from plaintune.errors import ArgumentParser, run_cli  # noqa: E402


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog=f"python {Path(__file__).name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="configs/NAME.yaml or a path to a YAML file")
    parser.add_argument(
        "--saved_model",
        "--saved-model",
        required=True,
        dest="saved_model",
        nargs="+",
        help="checkpoint path, run name, or file name under saved_model/; several = an ensemble",
    )
    parser.add_argument("--weights", nargs="+", help="ensemble weights, one per --saved_model")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. inference.round=null")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow unpickling a whole-model checkpoint (runs code from the file)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a submission (or report) plaintune did not write for these models",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args = parser.parse_args(argv)
    # `--saved_model A B key=value`: the greedy list also took the overrides; give them back.
    models = [m for m in args.saved_model if "=" not in m or Path(m).exists()]
    # in the order they were given: a later override of the same key wins
    given = list(argv) if argv is not None else sys.argv[1:]
    taken = [m for m in args.saved_model if m not in models] + args.overrides
    args.overrides = sorted(taken, key=lambda o: given.index(o) if o in given else len(given))
    if not models:
        parser.error("--saved_model needs at least one checkpoint, run name or path")
    args.saved_model = models
    if args.weights is not None:
        args.overrides += [w for w in args.weights if "=" in w]
        try:
            args.weights = [float(w) for w in args.weights if "=" not in w]
        except ValueError:
            parser.error(f"--weights must be numbers, got {args.weights}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        from plaintune import api  # after argument parsing: --help stays instant

        api.predict(
            args.config,
            args.saved_model,
            *args.overrides,
            weights=args.weights,
            trust_checkpoint=args.trust_checkpoint,
            write=True,
            overwrite=args.overwrite,
            overrides_origin="command line",
            switches=CLI,
        )
        return 0

    return run_cli(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
