"""Train a model from a YAML config.

python train.py --config NAME [key.path=value ...] [--resume [PATH]] [--force] [--overwrite]
python train.py --config NAME --folds K [--resume]      # K-fold over train+dev, then an ensemble
torchrun --nproc_per_node N train.py --config NAME
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
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. training.epochs=3")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="continue this run's newest checkpoint, or the bundle at PATH",
    )
    parser.add_argument("--force", action="store_true", help="resume even if the config changed what the run is")
    parser.add_argument("--overwrite", action="store_true", help="start over even if the run has checkpoints")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow unpickling whole-model checkpoints for model.init_from (runs code)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help="k-fold: pool train and dev, train K runs <run_name>-fold1..K, report the "
        "out-of-fold metric and the ensemble's inference command",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args, unknown = parser.parse_known_intermixed_args(argv)
    # Sweep agents pass overrides as --key=value; accept those as key=value.
    for item in unknown:
        if item.startswith("--") and "=" in item:
            args.overrides.append(item[2:])
        else:
            parser.error(f"unrecognized argument: {item}")
    if args.resume is not None and args.overwrite:
        parser.error("--resume continues a run and --overwrite starts it over; give one of them")
    # `--resume key=value` means --resume (no path) followed by an override.
    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.append(args.resume)
        args.resume = ""
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        from plaintune import api  # after argument parsing: --help stays instant

        resume = False if args.resume is None else (True if args.resume == "" else args.resume)
        api.train(
            args.config,
            *args.overrides,
            resume=resume,
            overwrite=args.overwrite,
            force=args.force,
            trust_checkpoint=args.trust_checkpoint,
            folds=args.folds,
            overrides_origin="command line",
            switches=CLI,
        )
        return 0

    return run_cli(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
