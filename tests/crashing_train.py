"""Run train.py's main under a fault plan, for crash tests (a test helper, not part of plaintune).

KILL_PLAN=step:N      SIGKILL right after the N-th optimizer step of this process
KILL_PLAN=validate:N  SIGKILL inside the N-th validation (between the last step and the epoch-end save)
KILL_PLAN=save:N      the N-th torch.save writes half its bytes, then SIGKILL (a crash mid-save)
KILL_PLAN=sigint:N    send ourselves SIGINT (Ctrl-C) after the N-th optimizer step
KILL_PLAN=sigterm:N   send ourselves SIGTERM (what Colab/SLURM/Kubernetes send) after the N-th optimizer step
KILL_RANK=R           under torchrun, carry out the plan in rank R only (default: every process)
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

import train  # noqa: E402
from plaintune.training.trainer import Trainer  # noqa: E402

mode, _, count = os.environ.get("KILL_PLAN", "").partition(":")
target = int(count or 0)
if os.environ.get("KILL_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
    mode = ""  # another rank carries out the plan
AFTER_STEP = {"step": signal.SIGKILL, "sigint": signal.SIGINT, "sigterm": signal.SIGTERM}
calls = {"n": 0}


def tick() -> bool:
    calls["n"] += 1
    return calls["n"] == target


if mode in AFTER_STEP:

    def after_step(optimizer, args, kwargs):
        if getattr(optimizer, "speed_probe", False):
            return  # the leaderboard's time-budget probe, not training
        if tick():
            os.kill(os.getpid(), AFTER_STEP[mode])

    register_optimizer_step_post_hook(after_step)
elif mode == "validate":
    real_validate = Trainer.validate

    def validate(self):
        if tick():
            os.kill(os.getpid(), signal.SIGKILL)
        return real_validate(self)

    Trainer.validate = validate
elif mode == "save":
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if tick():
            size = os.path.getsize(f)
            with open(f, "r+b") as handle:
                handle.truncate(size // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save

sys.exit(train.main(sys.argv[1:]))
