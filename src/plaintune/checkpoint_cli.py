"""`python -m plaintune.checkpoint inspect|convert`: look inside a checkpoint without training.

    inspect PATH [--config NAME]      format, tensors, dtypes, size, key prefixes; with a
                                      config, how the keys map onto that model (the load report)
    convert PATH OUT_DIR --config NAME  load through the common path, write a clean HF directory
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from .errors import run_cli


def _size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{num_bytes} B"
        num_bytes /= 1024
    return ""


def describe(state: dict, fmt: str, path: Path) -> str:
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in state.values())
    params = sum(t.numel() for t in state.values())
    size = sum(t.numel() * t.element_size() for t in state.values())
    prefixes = Counter(k.split(".", 1)[0] for k in state)
    lines = [f"checkpoint: {path}", f"format:     {fmt}", f"tensors:    {len(state)} ({params:,} values, {_size(size)})",
             f"dtypes:     {', '.join(f'{d} x{n}' for d, n in dtypes.most_common())}",
             f"prefixes:   {', '.join(f'{p}. x{n}' for p, n in prefixes.most_common(8))}"]
    shown = list(state.items())[:3] + list(state.items())[-2:] if len(state) > 5 else list(state.items())
    lines += [f"  {name} {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for name, t in shown]
    return "\n".join(lines)


def _model_from_config(name: str, overrides: Sequence[str]):
    from .config import load_config
    from .factory import build_model

    cfg = load_config(name, overrides)
    return cfg, build_model(cfg.model, pretrained=False)


def inspect(path: str, config: Optional[str], overrides: Sequence[str], trust: bool) -> int:
    from .checkpoint import load_into, read_state_dict
    from .errors import UserError

    state, fmt = read_state_dict(path, trust)
    print(describe(state, fmt, Path(path)))
    if config:
        cfg, model = _model_from_config(config, overrides)
        try:
            report = load_into(model, dict(state), path, fmt, cfg.model.key_rules, cfg.model.allow_missing,
                               cfg.model.allow_unexpected)
        except UserError as err:
            print(f"\nmapping onto {cfg.model.name}: does not load\n  {err}")
            return 2
        print(f"\nmapping onto {cfg.model.name}:\n" + report.full_text())
    return 0


def convert(path: str, out_dir: str, config: str, overrides: Sequence[str], trust: bool) -> int:
    from . import atomic
    from .checkpoint import load_weights
    from .factory import build_tokenizer

    cfg, model = _model_from_config(config, overrides)
    report = load_weights(model, path, cfg.model.key_rules, cfg.model.allow_missing, cfg.model.allow_unexpected,
                          trust)
    print(report.summary())
    tokenizer = build_tokenizer(cfg.model)

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    atomic.replace_dir(out_dir, fill)
    print(f"wrote a Hugging Face directory to {out_dir}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plaintune.checkpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="show what a checkpoint holds")
    p_inspect.add_argument("path")
    p_inspect.add_argument("--config", help="also show how it maps onto this config's model")
    p_convert = sub.add_parser("convert", help="write a clean Hugging Face directory")
    p_convert.add_argument("path")
    p_convert.add_argument("out_dir")
    p_convert.add_argument("--config", required=True)
    for p in (p_inspect, p_convert):
        p.add_argument("overrides", nargs="*", help="key.path=value config overrides")
        p.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling a whole model")
        p.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "inspect":
        return run_cli(lambda: inspect(args.path, args.config, args.overrides, args.trust_checkpoint), args.debug)
    return run_cli(lambda: convert(args.path, args.out_dir, args.config, args.overrides, args.trust_checkpoint),
                   args.debug)


if __name__ == "__main__":
    sys.exit(main())
