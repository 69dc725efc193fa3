"""What training.gradient_checkpointing saves and costs: peak memory and step time, with and without.

Each setting trains the same optimizer steps in a fresh process (so each peak is its own): plaintune's
configs/default.yaml on the given model and kind, STS Benchmark train pairs, fp32, no mid-run
validation. Settings: gradient checkpointing off/on, each with the default micro-batches
(training.micro_batch_tokens auto: passes of at most 1024 padded tokens on CPU) and with one pass per
batch (null), since micro-batches already bound a pass's activations.

    python bench/gradient_checkpointing.py --model /work/models/all-mpnet-base-v2          # both kinds
    python bench/gradient_checkpointing.py --kinds cross_encoder --steps 10 --batch-size 64

Reports peak RSS (getrusage, the whole process), the training steps' samples/s (plaintune's own
train_samples_per_s) and the final weights' agreement with the run without checkpointing (max |diff|,
0 expected). CPU only. Appends JSON lines to bench/results/gradient_checkpointing.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(args) -> dict:
    """Inside the subprocess: one plaintune run; its numbers on stdout."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    import plaintune

    torch.set_num_threads(args.threads)
    overrides = [
        f"output_dir={args.work}",
        f"run_name={args.name}",
        f"model.name={args.model}",
        f"model.kind={args.kind}",
        f"data.train_path={args.data / 'train.csv'}",
        f"data.dev_path={args.data / 'dev.csv'}",
        "data.test_path=null",
        "data.max_overlap=1.0",
        "training.precision=fp32",
        f"training.batch_size={args.batch_size}",
        "training.epochs=1",
        f"training.max_steps={args.steps}",
        "checkpoint.every_n_steps=0",
        "checkpoint.save_best=false",
        "logging.tensorboard=false",
        "logging.wandb.mode=disabled",
        "seed=42",
        f"training.gradient_checkpointing={str(args.checkpointing).lower()}",
        f"training.micro_batch_tokens={args.micro}",
    ]
    result = plaintune.train(str(ROOT / "configs" / "default.yaml"), *overrides)
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open() if '"eval"' in line]
    return {
        "train_samples_per_s": evals[-1]["train_samples_per_s"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def max_difference(work: Path, first: str, second: str) -> float:
    import torch

    a, b = (torch.load(work / run / "last.pt", weights_only=True)["model_state_dict"] for run in (first, second))
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("/work/models/all-mpnet-base-v2"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb")
    parser.add_argument("--kinds", default="bi_encoder,cross_encoder")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gradient_checkpointing.jsonl")
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--micro", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(args)))
        return
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work, data = Path(tmp), Path(tmp) / "data"
        data.mkdir()
        import pandas as pd

        rows_needed = args.steps * args.batch_size
        pd.read_csv(args.data / "train.csv").head(rows_needed).to_csv(data / "train.csv", index=False)
        pd.read_csv(args.data / "dev.csv").head(64).to_csv(data / "dev.csv", index=False)
        for kind in args.kinds.split(","):
            for micro in ("auto", "null"):
                names = {}
                for checkpointing in (False, True):
                    name = f"{kind}-{micro}-{'gc' if checkpointing else 'plain'}"
                    command = [
                        sys.executable,
                        __file__,
                        "--run",
                        "--name",
                        name,
                        "--work",
                        str(work),
                        "--kind",
                        kind,
                        "--micro",
                        micro,
                        "--model",
                        str(args.model),
                        "--data",
                        str(data),
                        "--steps",
                        str(args.steps),
                        "--batch-size",
                        str(args.batch_size),
                        "--threads",
                        str(args.threads),
                        *(["--checkpointing"] if checkpointing else []),
                    ]
                    started = time.time()
                    process = subprocess.run(command, capture_output=True, text=True, env=env)
                    if process.returncode != 0:
                        raise SystemExit(f"error: {name} failed:\n{process.stderr[-3000:]}")
                    row = {
                        "kind": kind,
                        "micro_batch_tokens": micro,
                        "gradient_checkpointing": checkpointing,
                        **json.loads(process.stdout.strip().splitlines()[-1]),
                        "wall_s": round(time.time() - started, 1),
                        "model": str(args.model),
                        "steps": args.steps,
                        "batch_size": args.batch_size,
                        "cpu": cpu,
                        "threads": args.threads,
                        "time": time.strftime("%Y-%m-%d %H:%M"),
                    }
                    names[checkpointing] = name
                    if checkpointing:
                        row["max_abs_weight_difference"] = max_difference(work, names[False], name)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"\n{cpu}, {args.threads} threads, {args.model.name}, {args.steps} steps of {args.batch_size} pairs, fp32")
    print("| kind | micro-batches | checkpointing | peak RSS MB | train samples/s | weights vs without |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        diff = row.get("max_abs_weight_difference")
        print(
            f"| {row['kind']} | {row['micro_batch_tokens']} | {'on' if row['gradient_checkpointing'] else 'off'} | "
            f"{row['peak_rss_mb']} | {row['train_samples_per_s']:.2f} | {'' if diff is None else f'{diff:.1e}'} |"
        )


if __name__ == "__main__":
    main()
