"""`python -m plaintune.checkpoint inspect|convert`: look inside a checkpoint without training.

    inspect PATH [--config NAME]      format, tensors, dtypes, size, key prefixes; with a
                                      config, how the keys map onto that model (the load report)
    convert PATH OUT_DIR --config NAME [--overwrite]
                                      load through the common path, write a clean HF directory;
                                      an existing non-empty OUT_DIR needs --overwrite, and then only
                                      the model's files in it (config, weights, tokenizer) are replaced

Reading (weights/formats.py) and loading (weights/load.py) are the code training and inference use,
so what inspect reports is what a run would do; this module is only the command.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from plaintune.config.load import load_config
from plaintune.errors import ArgumentParser, UserError, run_cli
from plaintune.model.architecture import read_architecture
from plaintune.model.loading import build_model, build_tokenizer
from plaintune.rundir import atomic
from plaintune.weights import record as saved_record
from plaintune.weights.formats import SHARD_INDEXES, WEIGHT_FILES, read_json_object, read_record, read_state_dict
from plaintune.weights.load import LoadRules, load_into, load_weights


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
    lines = [
        f"checkpoint: {path}",
        f"format:     {fmt}",
        f"tensors:    {len(state)} ({params:,} values, {_size(size)})",
        f"dtypes:     {', '.join(f'{d} x{n}' for d, n in dtypes.most_common())}",
        f"prefixes:   {', '.join(f'{p}. x{n}' for p, n in prefixes.most_common(8))}",
    ]
    shown = list(state.items())[:3] + list(state.items())[-2:] if len(state) > 5 else list(state.items())
    lines += [f"  {name} {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for name, t in shown]
    return "\n".join(lines)


def _model_from_config(name: str, overrides: Sequence[str]):
    cfg = load_config(name, overrides)
    return cfg, build_model(cfg.model, pretrained=False)


def _load_rules(model_cfg) -> LoadRules:
    return LoadRules(
        model_cfg.key_rules, model_cfg.allow_missing, model_cfg.allow_unexpected, model_cfg.allow_nonfinite
    )


def inspect(path: str, config: Optional[str], overrides: Sequence[str], trust: bool) -> int:
    state, fmt = read_state_dict(path, trust)
    print(describe(state, fmt, Path(path)))
    if config:
        cfg, model = _model_from_config(config, overrides)
        try:
            report = load_into(model, dict(state), path, fmt, _load_rules(cfg.model))
        except UserError as err:
            print(f"\nmapping onto {cfg.model.name}: does not load\n  {err}")
            return 2
        print(f"\nmapping onto {cfg.model.name}:\n" + report.full_text())
    return 0


def _weight_files(folder: Path) -> set[str]:
    """The weight files of a HF directory: single files, shard indexes and the shards they name.
    A leftover from an earlier model would shadow the new weights (an index wins over
    model.safetensors), so --overwrite replaces all of them."""
    names = set(WEIGHT_FILES) | set(SHARD_INDEXES)
    for index in SHARD_INDEXES:
        if (folder / index).is_file():
            try:
                weight_map = read_json_object(folder / index).get("weight_map")
            except UserError:
                continue  # a damaged index names nothing; it is removed itself
            if isinstance(weight_map, dict):
                names |= {v for v in weight_map.values() if isinstance(v, str) and "/" not in v and v not in ("", "..")}
    return names


def check_out_dir(src: str, out: Path, overwrite: bool) -> None:
    """Refuse an OUT_DIR where writing would clobber something: a file (always), the checkpoint
    itself or a folder inside it, or a non-empty folder (a data folder, a run directory ...)
    unless --overwrite. Checked before any model loads."""
    if out.exists() and not out.is_dir():
        raise UserError(
            f"convert: OUT_DIR '{out}' is a file; give a directory (new or empty) to write the Hugging Face model into"
        )
    source, target = Path(src).resolve(), out.resolve()
    if (target == source or source in target.parents) and not overwrite:
        where = "is the checkpoint itself" if target == source else "is inside the checkpoint"
        raise UserError(
            f"convert: OUT_DIR '{out}' {where} '{src}'; choose another directory, or pass --overwrite "
            "to write the model's files into it"
        )
    if out.is_dir() and not overwrite:
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
            raise UserError(
                f"convert: OUT_DIR '{out}' exists and is not empty ({shown}); choose a new directory, "
                "or pass --overwrite to replace only the model's files in it (config.json, weights, "
                "tokenizer files)"
            )


def convert(
    path: str, out_dir: str, config: str, overrides: Sequence[str], trust: bool, overwrite: bool = False
) -> int:
    out = Path(out_dir)
    check_out_dir(path, out, overwrite)
    cfg, model = _model_from_config(config, overrides)
    report = load_weights(model, path, _load_rules(cfg.model), trust)
    print(report.summary())
    # A plaintune checkpoint keeps its output mapping in the converted directory; without it the
    # result would read as a foreign model and predict raw logits.
    record = read_record(Path(path))
    if record is not None:
        saved_record.attach(model.config, record)
        print(f"output mapping kept: {record['activation']} (recorded by plaintune)")
    tokenizer = build_tokenizer(cfg.model, read_architecture(model))  # asked for the inputs this model takes

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    # Written file by file into OUT_DIR (each one atomically): other files there stay as they are.
    stale = {name for name in _weight_files(out) if (out / name).is_file()} if out.is_dir() else set()
    written = atomic.write_into_dir(out, fill, remove=stale)
    print(f"wrote a Hugging Face directory to {out_dir} ({', '.join(written)})")
    removed = sorted(stale - set(written))
    if removed:
        print(f"removed the earlier weight files it replaces: {', '.join(removed)}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(
        prog="python -m plaintune.checkpoint", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="show what a checkpoint holds")
    p_inspect.add_argument("path")
    p_inspect.add_argument("--config", help="also show how it maps onto this config's model")
    p_convert = sub.add_parser("convert", help="write a clean Hugging Face directory")
    p_convert.add_argument("path")
    p_convert.add_argument("out_dir")
    p_convert.add_argument("--config", required=True)
    p_convert.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an existing non-empty OUT_DIR, replacing only the model's files",
    )
    for p in (p_inspect, p_convert):
        p.add_argument("overrides", nargs="*", help="key.path=value config overrides")
        p.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling a whole model")
        p.add_argument("--debug", action="store_true")
    args, unknown = parser.parse_known_args(argv)
    # Overrides may come anywhere, also after --config (argparse stops collecting them at an option).
    for item in unknown:
        if "=" in item and not item.startswith("-"):
            args.overrides.append(item)
        else:
            parser.error(f"unrecognized argument: {item}")
    if args.command == "inspect":
        return run_cli(lambda: inspect(args.path, args.config, args.overrides, args.trust_checkpoint), args.debug)
    return run_cli(
        lambda: convert(args.path, args.out_dir, args.config, args.overrides, args.trust_checkpoint, args.overwrite),
        args.debug,
    )


if __name__ == "__main__":
    sys.exit(main())
