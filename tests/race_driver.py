"""One side of a start race (tests/test_ownership.py): run `train.main` on the same run_name as a
twin process, released at the same instant by a file barrier, for several rounds.

    python race_driver.py PROJECT MODE SEED ROUNDS OUT_JSON

MODE: single | kfold | leaderboard. The run stops (holding its lock a moment) right after its
first write: config.yaml for a single run, the split and fold files for a k-fold, the marker for
a leaderboard; so a round costs no training. Each round's exit status and stderr go to OUT_JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

HOLD_S = 1.5  # the winner keeps its lock this long after its first write: the twin arrives meanwhile


class Stopped(Exception):
    """The run reached its first write and stopped there (the winner of a round)."""


def hold_then_stop(*_args, **_kwargs):
    time.sleep(HOLD_S)
    raise Stopped


def barrier(folder: Path, round_no: int, seed: str) -> None:
    """Both twins wait here until both have arrived, then go at once (polling every millisecond)."""
    (folder / f"ready-{round_no}-{seed}").touch()
    while len(list(folder.glob(f"ready-{round_no}-*"))) < 2:
        time.sleep(0.001)


def main() -> None:
    project, mode, seed, rounds, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
    os.chdir(project)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import train
    from plaintune.kfold import folds, leaderboard
    from plaintune.training import run

    if mode == "single":
        original = run.start_run_dir

        def start_then_stop(*args, **kwargs):
            original(*args, **kwargs)
            hold_then_stop()

        run.start_run_dir = start_then_stop
    elif mode == "kfold":
        folds.train_run = hold_then_stop  # after cut_folds wrote the split and every fold's files
    else:
        leaderboard.announce_budget = hold_then_stop  # after the ensemble directory was claimed
    results = []
    for round_no in range(rounds):
        args = ["--config", "t" if mode != "leaderboard" else "lb", f"run_name={mode}{round_no}", f"seed={seed}"]
        if mode == "kfold":
            args += ["--folds", "2"]
        barrier(Path(project) / "barrier", round_no, seed)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = train.main(args)
            except Stopped:
                code = "stopped"
        results.append({"round": round_no, "seed": int(seed), "code": code, "stderr": stderr.getvalue()})
    out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
