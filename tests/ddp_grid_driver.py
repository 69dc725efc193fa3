"""Run many training cases in one torchrun launch (a test helper, not part of plaintune).

    torchrun --nproc_per_node N tests/ddp_grid_driver.py PLAN.json OUT_DIR

PLAN.json is a list of cases, each {"name": ..., "args": [train.py arguments], "inject": {...}}.
Every process runs every case in order through `train.main` and writes, per rank,
OUT_DIR/rank-R.json: {case name: exit status}. Launching torchrun and importing
torch and transformers cost seconds; a case on the tiny model costs about as much,
so one launch per world size keeps a grid of cases cheap.

The process group is made once, by the first case (with its training.ddp_timeout_s),
and kept: torch cannot re-create a default group over torchrun's store within one
process, so `distributed.cleanup` (run_training's last step) waits for the end of
the launch.

inject (optional, carried out on `rank` only):
    {"rank": R, "signal": "SIGTERM", "step": N}  raise the signal after the N-th optimizer step
    {"rank": R, "nan_from_step": N}              the training loss is NaN from optimizer step N on

A case may also name "snapshot": a path (from the launch's directory) that rank 0 copies to,
after the case, "copy_from" (e.g. last.pt as a stop left it, before a --resume case rewrites it).

After the cases, each rank gathers rows with a genuine NaN (`gather_rows`) and
writes what it got to OUT_DIR/gather-R.json.
"""

import json
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

import train  # noqa: E402
from plaintune.model.objective import Objective  # noqa: E402
from plaintune.runtime import distributed  # noqa: E402

RANK = int(os.environ["RANK"])


@contextmanager
def injected(inject: dict):
    """Set up a case's fault on its rank; undo it afterwards."""
    if not inject or inject["rank"] != RANK:
        yield
        return
    if "signal" in inject:
        steps = {"n": 0}

        def after_step(optimizer, args, kwargs):
            steps["n"] += 1
            if steps["n"] == inject["step"]:
                signal.raise_signal(signal.Signals[inject["signal"]])

        handle = register_optimizer_step_post_hook(after_step)
        try:
            yield
        finally:
            handle.remove()
    else:
        # The trainer calls scaler.update() once per optimizer step (also for a skipped fp16 step).
        taken = {"n": 0}
        real_update, real_loss = torch.amp.GradScaler.update, Objective.loss

        def update(self, *args, **kwargs):
            taken["n"] += 1
            return real_update(self, *args, **kwargs)

        def loss(self, logits, labels):
            value = real_loss(self, logits, labels)
            # training batches only (validation runs without gradients); this batch belongs to the next step
            return (
                value * float("nan") if torch.is_grad_enabled() and taken["n"] + 1 >= inject["nan_from_step"] else value
            )

        torch.amp.GradScaler.update, Objective.loss = update, loss
        try:
            yield
        finally:
            torch.amp.GradScaler.update, Objective.loss = real_update, real_loss


def gather_check(out: Path) -> None:
    """Rank r predicted rows r, r + W, ...; row 1 (rank 1's) is a genuine NaN."""
    world, total = dist.get_world_size(), 7
    rows = np.arange(RANK, total, world)
    values = np.where(rows == 1, np.nan, rows * 10.0).astype(np.float32)
    merged = distributed.gather_rows(rows, values, total)
    (out / f"gather-{RANK}.json").write_text(json.dumps([None if np.isnan(v) else float(v) for v in merged]))


def main() -> int:
    plan, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    real_cleanup, distributed.cleanup = distributed.cleanup, lambda: None
    codes = {}
    try:
        for case in plan:
            with injected(case.get("inject")):
                codes[case["name"]] = train.main(case["args"])
            if "snapshot" in case and RANK == 0:
                shutil.copyfile(case["copy_from"], case["snapshot"])
            (out / f"rank-{RANK}.json").write_text(json.dumps(codes))
            if codes[case["name"]] == 1:  # a crash or a timeout: the ranks may be out of step now
                return 1
        gather_check(out)
    finally:
        real_cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
