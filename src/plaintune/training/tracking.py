"""Metric sinks behind one small interface: metrics.jsonl, TensorBoard, wandb, and the curves plot.

The trainer calls `tracker.log(kind, step, epoch, metrics)`; each sink writes
it its own way. Optional packages are imported where used, with an install hint.
Only rank 0 creates a tracker with sinks under DDP.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

from plaintune.errors import UserError
from plaintune.names import METRICS_FILE, PLOT_FILE, TENSORBOARD_DIR
from plaintune.rundir import atomic


class JsonlSink:
    """One JSON object per line: {"kind": "train"|"eval", "step", "epoch", "time", ...metrics}
    ("time": Unix seconds when the line was written, for time-to-quality curves)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS_FILE

    def truncate_after(self, step: int, validations: list) -> None:
        """On resume from a bundle at optimizer step `step`, drop the lines the resumed run will
        write again, so no step appears twice: train lines past `step`, and validations other
        than those the bundle's history holds (`validations`: its (step, epoch) pairs)."""
        if not self.path.is_file():
            return
        kept_evals = {(int(s), float(e)) for s, e in validations}
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
            if record.get("step", 0) > step:
                continue
            if record.get("kind") == "eval" and (record.get("step"), float(record.get("epoch", 0))) not in kept_evals:
                continue
            kept.append(line)
        atomic.write_text(self.path, "".join(f"{line}\n" for line in kept))

    def log(self, kind: str, step: int, epoch: float, metrics: dict) -> None:
        record = {
            "kind": kind,
            "step": step,
            "epoch": epoch,
            "time": round(time.time(), 3),
            **atomic.json_safe(metrics),
        }
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def close(self) -> None:
        pass


class TensorBoardSink:
    def __init__(self, run_dir: Path, resume_step: Optional[int]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "logging.tensorboard: the tensorboard package is not installed; pip install "
                "tensorboard, or set logging.tensorboard=false"
            ) from None
        self.logdir = run_dir / TENSORBOARD_DIR
        # purge_step drops events past the resume point, so a resumed curve has no doubled segment.
        self.writer = SummaryWriter(str(self.logdir), purge_step=resume_step)

    def log(self, kind: str, step: int, epoch: float, metrics: dict) -> None:
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{kind}/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


WANDB_ENV_MODES = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
    "shared": "shared",
}


def wandb_mode(requested: str) -> str:
    """The mode wandb runs in. auto follows the ecosystem's conventions: WANDB_MODE when set, else
    online when an API key is configured, else offline (files only, no network needed)."""
    env = os.environ.get("WANDB_MODE", "").strip()
    if "WANDB_MODE" in os.environ and os.environ["WANDB_MODE"] not in WANDB_ENV_MODES:
        # wandb reads WANDB_MODE itself and rejects '' and 'OFFLINE'; what plaintune accepts, wandb must too.
        if env.lower() in WANDB_ENV_MODES:
            os.environ["WANDB_MODE"] = env.lower()
        elif not env:
            del os.environ["WANDB_MODE"]
    if env and env.lower() not in WANDB_ENV_MODES:
        # wandb itself would fail on it later with a validation traceback, whatever the config says.
        raise UserError(
            f"WANDB_MODE={env!r} is not a wandb mode; set it to online, offline or disabled, or unset it "
            "(logging.wandb.mode in the config also chooses)"
        )
    if requested != "auto":
        return requested
    if env:
        return WANDB_ENV_MODES[env.lower()]
    return "online" if wandb_has_credentials() else "offline"


def wandb_has_credentials() -> bool:
    """Whether wandb finds credentials for its server, by wandb's own lookup (WANDB_API_KEY, an
    identity token file, its settings files, .netrc under the host of WANDB_BASE_URL, so a self-hosted
    server counts), without prompting and without the network. Its log lines are not the user's."""
    try:
        import wandb
    except ImportError:
        return False  # WandbSink names the missing package
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            return bool(wandb.login(prompt=False, verify=False, host=os.environ.get("WANDB_BASE_URL") or None))
    except Exception as err:  # noqa: BLE001 - e.g. a key of the wrong format (AuthenticationError)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"logging.wandb: wandb's credentials are unusable ({first}); fix them with wandb login "
            "--relogin, or set logging.wandb.mode=offline or disabled"
        ) from None
    finally:
        # login keeps the credentials it found for the session, and would answer the next question
        # (another WANDB_BASE_URL, a notebook's next run) from them; wandb.init looks them up again.
        if wandb.run is None:
            wandb.teardown()


def wandb_settings(spec: dict, run_name: str, run_dir: Path) -> dict:
    """wandb.init arguments: the config's values, else wandb's environment variables, else defaults."""
    env = os.environ.get
    return {
        "project": spec.get("project") or env("WANDB_PROJECT") or "plaintune",
        "entity": spec.get("entity") or env("WANDB_ENTITY") or None,
        "name": spec.get("name") or env("WANDB_NAME") or run_name,
        "group": spec.get("group") or env("WANDB_RUN_GROUP") or None,
        "tags": list(spec.get("tags") or []),
        "dir": env("WANDB_DIR") or str(run_dir),
    }


class WandbSink:
    def __init__(
        self, run_dir: Path, spec: dict, run_name: str, config: dict, run_id: Optional[str], mode: Optional[str] = None
    ):
        try:
            import wandb
        except ImportError:
            raise UserError(
                "logging.wandb.mode: the wandb package is not installed; pip install wandb, or set "
                "logging.wandb.mode=disabled"
            ) from None
        self.mode = mode or wandb_mode(spec["mode"])
        settings = wandb_settings(spec, run_name, run_dir)
        try:
            Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                **settings,
                config=config,
                mode=self.mode,
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(console="off", silent=True),
            )
        except Exception as err:  # noqa: BLE001 - wandb raises many kinds (network, auth, validation)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(
                f"logging.wandb: wandb could not start in {self.mode} mode ({first}); check your wandb "
                "login, network and WANDB_* variables, or set logging.wandb.mode=offline (upload later "
                "with wandb sync) or disabled"
            ) from None
        self.run_id = self.run.id
        self.files_dir = Path(settings["dir"]) / "wandb"  # where wandb keeps its run folders

    def log(self, kind: str, step: int, epoch: float, metrics: dict) -> None:
        data = {f"{kind}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        data["epoch"] = epoch
        self.run.log(data, step=step)

    def set_summary(self, **values: Any) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def close(self) -> None:
        import wandb

        url = getattr(self.run, "url", None) if self.mode != "offline" else None  # offline: wandb warns
        self.run.finish()
        # wandb's background service keeps the settings (WANDB_DIR, ...) it started with; a later run
        # in this process (a notebook, k-fold) must start from the environment as it is then.
        wandb.teardown()
        drop_symlinks(self.files_dir)
        print(self.end_line(url))

    def end_line(self, url: Optional[str]) -> str:
        """wandb's whole report, one line: where the run is, or how to upload every part of it (a
        resumed run writes one offline folder per session, all of the same run id)."""
        if self.mode != "offline":
            return f"wandb: {url or self.run_id}"
        parts = sorted(self.files_dir.glob(f"offline-run-*-{self.run_id}"))
        return f"wandb: offline run {self.run_id}; upload it with: wandb sync {' '.join(map(str, parts))}"


def drop_symlinks(folder: Path) -> None:
    """Remove the convenience links wandb makes (latest-run, debug.log): a run directory holds plain
    files only, so it copies to and from Drive and other mounts that have no links."""
    for path in [*folder.glob("*"), *folder.glob("*/logs/*"), *folder.glob("*/files/*")] if folder.is_dir() else []:
        if path.is_symlink():
            path.unlink(missing_ok=True)


def start_wandb(
    run_dir: Path, logging_spec: dict, run_name: str, config: dict, run_id: Optional[str]
) -> Optional[WandbSink]:
    """The wandb sink, or None when wandb is disabled (by the config or WANDB_MODE). Started before a
    run touches its directory, so a backend that cannot start costs nothing."""
    mode = wandb_mode(logging_spec["wandb"]["mode"])
    if mode == "disabled":
        return None
    return WandbSink(run_dir, logging_spec["wandb"], run_name, config, run_id, mode)


def curves_hint(records: list[dict]) -> Optional[str]:
    """What the plot says when its validation panel is a single dot (a one-epoch run)."""
    if sum(r.get("kind") == "eval" for r in records) == 1:
        return "one validation so far: set training.eval_every_n_steps to validate within an epoch"
    return None


def plot_curves(records: list[dict], path: Path, metric: str) -> None:
    """PNG of train loss, validation loss, validation metric and lr against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = ((axes[0], "loss", "loss"), (axes[1], metric, f"validation {metric}"), (axes[2], "lr", "learning rate"))
    for axis, key, title in panels:
        if key == "loss":
            axis.plot(
                [r["step"] for r in train if r.get("loss") is not None],
                [r["loss"] for r in train if r.get("loss") is not None],
                label="train",
            )
            axis.plot(
                [r["step"] for r in evals if r.get("loss") is not None],
                [r["loss"] for r in evals if r.get("loss") is not None],
                "o-",
                label="validation",
            )
            axis.legend()
        else:
            source = evals if key == metric else train
            points = [(r["step"], r[key]) for r in source if r.get(key) is not None]
            if points:
                axis.plot(*zip(*points), "o-" if key == metric else "-")
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    hint = curves_hint(records)
    if hint:
        fig.suptitle(hint, fontsize=9)
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)


# curves.png is redrawn after a validation only when the last drawing is this old (a drawing costs 0.3-0.4 s:
# a small run validating every few seconds would spend a large part of its time drawing). What is not drawn
# then is drawn when the run finishes or stops on a signal (Tracker.flush); a run that fails or is killed
# leaves at most this much of it undrawn (metrics.jsonl has every line).
PLOT_MIN_INTERVAL_S = 30.0


class Tracker:
    """Fans metrics out to the enabled sinks; a no-op on non-zero ranks."""

    def __init__(
        self,
        run_dir: Path,
        logging_spec: dict,
        metric: str,
        resumed=None,
        wandb: Optional[WandbSink] = None,
        active: bool = True,
    ):
        """`resumed`: the TrainState a resumed run continues from (None: a fresh run);
        `wandb`: a sink the caller started (start_wandb) before anything was written."""
        self.metric = metric
        self.sinks: list = []
        self.jsonl: Optional[JsonlSink] = None
        self.wandb: Optional[WandbSink] = wandb
        self.run_dir = run_dir
        self._drawn_at = time.monotonic()  # as if just drawn: a run's first validation within 30 s waits too
        self._plot_pending = False
        if not active:
            return
        self.jsonl = JsonlSink(run_dir)
        if resumed is not None:
            self.jsonl.truncate_after(resumed.global_step, [(r["step"], r["epoch"]) for r in resumed.history])
            # the process before may have ended before drawing its last validations (a crash, a kill):
            # drawn at the latest when this run finishes, even one with nothing left to train
            self._plot_pending = bool(resumed.history)
        elif self.jsonl.path.exists():
            self.jsonl.path.unlink()  # a fresh run starts a fresh history
        self.sinks.append(self.jsonl)
        if logging_spec["tensorboard"]:
            # events from the step after the bundle's on are written again by the resumed run
            self.sinks.append(TensorBoardSink(run_dir, resumed.global_step + 1 if resumed is not None else None))
        if self.wandb is not None:
            self.sinks.append(self.wandb)

    @property
    def run_ids(self) -> dict:
        return {"wandb": self.wandb.run_id} if self.wandb else {}

    def log(self, kind: str, step: int, epoch: float, metrics: dict) -> None:
        for sink in self.sinks:
            sink.log(kind, step, epoch, metrics)
        if kind == "eval" and self.jsonl is not None:
            self._plot_pending = True
            if time.monotonic() - self._drawn_at >= PLOT_MIN_INTERVAL_S:
                self.flush()

    def flush(self) -> None:
        """Draw curves.png now if a validation since the last drawing is not in it."""
        if self._plot_pending and self.jsonl is not None:
            plot_curves(self.jsonl.records(), self.run_dir / PLOT_FILE, self.metric)
            self._drawn_at, self._plot_pending = time.monotonic(), False

    def summary(self, **values: Any) -> None:
        if self.wandb:
            self.wandb.set_summary(**values)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


class Throughput:
    """Train samples per second (all ranks), over the last log window and over the epoch."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.start = self.window_start = time.perf_counter()
        self.samples = self.window_samples = 0

    def add(self, samples: int) -> None:
        self.samples += samples
        self.window_samples += samples

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` of other work (a validation) out of both rates."""
        self.start += seconds
        self.window_start += seconds

    def window(self) -> float:
        now = time.perf_counter()
        rate = self.window_samples * self.world_size / max(now - self.window_start, 1e-9)
        self.window_start, self.window_samples = now, 0
        return rate

    def overall(self) -> float:
        return self.samples * self.world_size / max(time.perf_counter() - self.start, 1e-9)
