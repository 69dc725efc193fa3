"""Compare training recipes on real STS data: dev Pearson and wall time per variant.

Each variant is a list of config overrides on top of configs/default.yaml (MiniLM)
pointed at a data folder in the competition layout. Runs one after the other in
subprocesses and appends one JSON line per run to --out.

    python bench/recipes.py --data ../shared/data/stsb --variants textbook,cross_encoder --seeds 42 43 44
    python bench/recipes.py --list
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMON = [
    "model.kind=cross_encoder",
    "training.batch_size=32",
    "training.learning_rate=2e-5",
    "checkpoint.every_n_steps=0",
    "logging.tensorboard=false",
    "checkpoint.save_best=true",
]

VARIANTS = {
    # MSE on raw 0-5 labels, fresh linear head: the tutorial recipe.
    "textbook": ["training.loss=mse", "model.output_activation=none", "training.bucket_batches=false"],
    "textbook_bucketed": ["training.loss=mse", "model.output_activation=none", "training.bucket_batches=true"],
    # sentence-transformers CrossEncoder's recipe: BCE on label/5 through a sigmoid.
    "cross_encoder": ["training.loss=bce", "model.output_activation=sigmoid", "training.bucket_batches=false"],
    "cross_encoder_bucketed": ["training.loss=bce", "model.output_activation=sigmoid", "training.bucket_batches=true"],
    "sigmoid_mean": [
        "training.loss=bce",
        "model.output_activation=sigmoid",
        "model.head_bias_init=label_mean",
        "training.bucket_batches=false",
    ],
    "sigmoid_mean_head10": [
        "training.loss=bce",
        "model.output_activation=sigmoid",
        "model.head_bias_init=label_mean",
        "training.head_lr_multiplier=10",
        "training.bucket_batches=false",
    ],
    "sigmoid_mse_mean_head10": [
        "training.loss=mse",
        "model.output_activation=sigmoid",
        "model.head_bias_init=label_mean",
        "training.head_lr_multiplier=10",
        "training.bucket_batches=false",
    ],
    "sigmoid_mean_head10_bucketed": [
        "training.loss=bce",
        "model.output_activation=sigmoid",
        "model.head_bias_init=label_mean",
        "training.head_lr_multiplier=10",
        "training.bucket_batches=true",
    ],
    "sigmoid_mse_mean_head10_bucketed": [
        "training.loss=mse",
        "model.output_activation=sigmoid",
        "model.head_bias_init=label_mean",
        "training.head_lr_multiplier=10",
        "training.bucket_batches=true",
    ],
    # SBERT-style: shared encoder, mean pooling, cosine regressed onto label/5.
    "bi_encoder": [
        "model.kind=bi_encoder",
        "training.loss=mse",
        "model.output_activation=none",
        "model.head_bias_init=default",
        "training.bucket_batches=true",
    ],
    # The cross-encoder recipe of the schema defaults at lr 1e-4, with length-bucketed batches
    # (as measured in RESULTS.md; add training.bucket_batches=false for random batches).
    "defaults": ["training.learning_rate=1e-4", "training.bucket_batches=true"],
    "defaults_random": ["training.learning_rate=1e-4", "training.bucket_batches=false"],
    # configs/default.yaml's recipe (the bi-encoder at lr 5e-5) on random batches, and bucketed
    # as default.yaml ships it.
    "default_yaml": [
        "model.kind=bi_encoder",
        "training.loss=mse",
        "training.learning_rate=5e-5",
        "training.bucket_batches=false",
    ],
    "default_yaml_bucketed": [
        "model.kind=bi_encoder",
        "training.loss=mse",
        "training.learning_rate=5e-5",
        "training.bucket_batches=true",
    ],
    # the same with an exponential moving average of the weights validated and saved
    "default_yaml_ema": [
        "model.kind=bi_encoder",
        "training.loss=mse",
        "training.learning_rate=5e-5",
        "training.bucket_batches=true",
        "training.ema=0.99",
    ],
    # the same with the CoSENT ranking loss instead of cosine-MSE
    "default_yaml_cosent": [
        "model.kind=bi_encoder",
        "training.loss=cosent",
        "training.learning_rate=5e-5",
        "training.bucket_batches=true",
    ],
}


def run_variant(name: str, overrides: list[str], data: Path, seed: int, epochs: int, extra: list[str]) -> dict:
    run_name = f"bench_{data.name}_{name}_s{seed}_e{epochs}"
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        "default",
        "--overwrite",
        f"run_name={run_name}",
        f"data.train_path={data / 'train.csv'}",
        f"data.dev_path={data / 'dev.csv'}",
        "data.test_path=null",
        f"data.predict_path={data / 'test.csv'}",
        f"data.submission_template={data / 'sample_submission.csv'}",
        f"seed={seed}",
        f"training.epochs={epochs}",
        *COMMON,
        *overrides,
        *extra,
    ]
    started_unix = time.time()
    started = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    record = {
        "data": data.name,
        "variant": name,
        "seed": seed,
        "epochs": epochs,
        "wall_s": round(wall, 1),
        "returncode": result.returncode,
        "overrides": overrides + extra,
    }
    if result.returncode != 0:
        record["error"] = result.stderr[-500:]
        return record
    state = torch_load(ROOT / "saved_model" / run_name / "last.pt")
    record["dev_pearson_by_epoch"] = [round(h["pearson"], 4) for h in state["train_state"]["history"]]
    record["dev_pearson_best"] = round(max(record["dev_pearson_by_epoch"]), 4)
    # seconds from launch to each validation (process start, model load and training so far)
    metrics = ROOT / "saved_model" / run_name / "metrics.jsonl"
    evals = [json.loads(line) for line in metrics.read_text().splitlines() if '"eval"' in line]
    record["seconds_to_validation"] = [round(e["time"] - started_unix, 1) for e in evals if "time" in e]
    return record


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb")
    parser.add_argument("--variants", default="textbook,cross_encoder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recipes.jsonl")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("extra", nargs="*", help="more overrides for every variant")
    args = parser.parse_args()
    if args.list:
        for name, overrides in VARIANTS.items():
            print(f"{name:32s} {' '.join(overrides)}")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name in args.variants.split(","):
            record = run_variant(name, VARIANTS[name], args.data, seed, args.epochs, args.extra)
            print(json.dumps(record), flush=True)
            with open(args.out, "a") as handle:
                handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
