"""Peak memory and time of bi-encoder optimizer steps as the batch is cut into more passes.

One fixed batch of random token ids (every pair the same length, no padding), cut into PASSES
equal passes whose gradients accumulate, then a fused AdamW step, as plaintune's micro-batches
do; the rest of a run (data, validation, saving) is left out. Each setting runs in a fresh
process so that its peak RSS (VmHWM) is its own.

    python bench/pass_budget.py --model /work/models/all-mpnet-base-v2 --pairs 32 --tokens 32 --passes 2 8

Prints one line per setting: tokens per pass (both sides), peak RSS, seconds per step (median of
the steps after the first, which allocates AdamW's state).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def peak_mb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM"))


def one_setting(args) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel

    torch.set_num_threads(args.threads)
    model = AutoModel.from_pretrained(args.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    ids = torch.randint(1000, 20000, (args.pairs, args.tokens), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    per = args.pairs // args.run
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        for part in range(args.run):
            rows = slice(part * per, (part + 1) * per)
            first = model(input_ids=ids[rows], attention_mask=mask[rows]).last_hidden_state.mean(1)
            second = model(input_ids=ids[rows].flip(1), attention_mask=mask[rows]).last_hidden_state.mean(1)
            loss = ((F.cosine_similarity(first, second) - 0.5) ** 2).mean() / args.run
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return {
        "passes": args.run,
        "tokens_per_pass": 2 * per * args.tokens,
        "peak_rss_mb": peak_mb(),
        "s_per_step": round(statistics.median(times[1:]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sentence")
    parser.add_argument("--passes", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(one_setting(args)))
        return
    for passes in args.passes:
        command = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--pairs",
            str(args.pairs),
            "--tokens",
            str(args.tokens),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--run",
            str(passes),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TRANSFORMERS_VERBOSITY": "error"}
        print(subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout.strip())


if __name__ == "__main__":
    main()
