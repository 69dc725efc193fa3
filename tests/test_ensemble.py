"""The fitted ensemble: fitting on out-of-fold predictions, and the one-command leaderboard pipeline
(k-fold per member, fit, ensemble.json, inference, resume after a kill)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import inference
import train
from conftest import DEMO, base_config, write_config
from plaintune import api, names
from plaintune.errors import UserError
from plaintune.inference import ensemble as ensemble_file
from plaintune.kfold import ensemble, folds

HELPER = Path(__file__).parent / "crashing_train.py"


# ------------------------------------------------------------------ fitting, on synthetic members


def synthetic(seed: int = 0, n: int = 4000):
    """Three members: two informative, one anti-correlated; the labels are a known combination."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(2.5, 1.0, n), rng.normal(0.0, 2.0, n)
    labels = 0.6 * a + 0.25 * b + 0.4 + rng.normal(0, 0.05, n)
    bad = -labels + rng.normal(0, 0.1, n)
    return np.stack([a, b, bad], axis=1), labels


@pytest.mark.e2e
def test_nnls_recovers_a_known_combination_and_never_inverts_a_member():
    predictions, labels = synthetic()
    weights, intercept = ensemble.fit(predictions[:, :2], labels, "nnls")
    assert weights == pytest.approx([0.6, 0.25], abs=0.01) and intercept == pytest.approx(0.4, abs=0.03)
    weights, _ = ensemble.fit(predictions, labels, "nnls")
    assert weights[2] == 0.0  # the anti-correlated member is dropped, not given a negative weight
    assert weights[:2] == pytest.approx([0.6, 0.25], abs=0.01)


@pytest.mark.e2e
def test_lstsq_may_use_any_sign_and_mean_is_the_plain_average():
    predictions, labels = synthetic(1)
    weights, _ = ensemble.fit(predictions[:, :2], labels, "lstsq")
    assert weights == pytest.approx([0.6, 0.25], abs=0.01)
    assert ensemble.fit(predictions, labels, "lstsq")[0][2] < 0  # it may invert a member
    weights, intercept = ensemble.fit(predictions, labels, "mean")
    assert list(weights) == pytest.approx([1 / 3] * 3) and intercept == 0.0


@pytest.mark.e2e
def test_cross_fitted_predictions_never_use_their_own_part():
    predictions, labels = synthetic(2, n=300)
    parts = folds.split_folds(300, 5, 7)
    out = ensemble.cross_fitted(predictions, labels, parts, "nnls")
    for held_out in parts:  # refit by hand without the part: the same values
        rest = np.setdiff1d(np.arange(300), held_out)
        weights, intercept = ensemble.fit(predictions[rest], labels[rest], "nnls")
        assert out[held_out] == pytest.approx(predictions[held_out] @ weights + intercept)


@pytest.mark.e2e
def test_members_that_learned_nothing_are_an_error_not_a_silent_average():
    predictions, labels = synthetic(3)
    with pytest.raises(UserError, match="correlate positively"):
        ensemble.fit(-predictions[:, :2], labels, "nnls")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{", "unreadable or damaged"),
        ("[]", "unreadable or damaged"),
        ('{"format": "x", "intercept": 0, "members": []}', "not a plaintune"),
        (
            '{"format": "plaintune-ensemble", "intercept": NaN, "members": '
            '[{"name": "a", "runs": ["r"], "weight": 1}]}',
            "not finite",
        ),
    ],
)
def test_a_damaged_ensemble_file_is_one_clear_error(tmp_path, text, problem):
    (tmp_path / "ensemble.json").write_text(text)
    with pytest.raises(UserError, match=problem):
        ensemble_file.read_spec(tmp_path)


# ------------------------------------------------------------------ the pipeline, on the tiny model

MEMBERS = {
    "bi": ["model.kind=bi_encoder", "training.epochs=1"],
    "cross": ["model.kind=cross_encoder", "training.loss=bce", "model.output_activation=sigmoid", "training.epochs=1"],
}


def leaderboard_project(project, tiny_model_dir, members=MEMBERS, **sections):
    cfg = base_config(tiny_model_dir)
    cfg["run_name"] = "lb"
    cfg["ensemble"] = {"folds": 2, "members": members}
    cfg.update(sections)
    write_config(project, cfg, "lb")


@pytest.mark.e2e
def test_one_command_trains_fits_and_inference_applies_the_fit(project, tiny_model_dir, capsys):
    leaderboard_project(project, tiny_model_dir)
    assert train.main(["--config", "lb"]) == 0
    out = capsys.readouterr().out
    assert "leaderboard: 2 member(s) x 2 folds on 72 pooled" in out and "pairs/s measured" in out
    assert "next: python inference.py --config lb --saved_model lb" in out
    spec = json.loads((project / "saved_model" / "lb" / "ensemble.json").read_text())
    assert [m["name"] for m in spec["members"]] == ["bi", "cross"]
    assert spec["members"][0]["runs"] == ["lb-bi-fold1", "lb-bi-fold2"]
    assert all(m["weight"] >= 0 for m in spec["members"])
    assert {
        "member bi",
        "member cross",
        "ensemble nnls (cross-fitted)",
        "ensemble mean (cross-fitted)",
        "ensemble lstsq (cross-fitted)",
    } <= set(spec["out_of_fold"])
    for member in ("bi", "cross"):  # each member is an ordinary k-fold of ordinary runs
        assert (project / "saved_model" / f"lb-{member}-fold2" / "best").is_dir()

    assert inference.main(["--config", "lb", "--saved_model", "lb", "inference.round=null", "inference.clip=null"]) == 0
    written = pd.read_csv(project / "output" / "sub.csv")["target"].to_numpy()
    # by hand: each member is the mean of its fold models, then the fitted weights and intercept
    frame = lambda names: api.predict("configs/lb.yaml", names)["target"].to_numpy()  # noqa: E731
    by_hand = spec["intercept"] + sum(m["weight"] * frame(m["runs"]) for m in spec["members"])
    assert written == pytest.approx(by_hand, abs=1e-5)


@pytest.mark.e2e
def test_a_killed_pipeline_resumes_without_retraining_finished_members(project, tiny_model_dir, capsys):
    """SIGKILL in the second member's first fold (72 pooled pairs, 2 folds, batch 8: 5 steps per fold),
    then --resume: the first member's folds are reused as they are, the rest completes."""
    leaderboard_project(project, tiny_model_dir, checkpoint={"every_n_steps": 2})
    env = {**os.environ, "KILL_PLAN": "step:14", "PYTHONHASHSEED": "0"}
    killed = subprocess.run(
        [sys.executable, str(HELPER), "--config", "lb"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    first_member = sorted((project / "saved_model").glob("lb-bi-fold*/last.pt"))
    stamps = {path: path.stat().st_mtime_ns for path in first_member}
    assert len(stamps) == 2 and not (project / "saved_model" / "lb" / "ensemble.json").exists()

    assert train.main(["--config", "lb"]) == 2  # an existing pipeline is never started over silently
    assert "--resume" in capsys.readouterr().err
    assert train.main(["--config", "lb", "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier") == 2  # the first member's two folds
    # the time budget counts only the work left: the first member is done, the second has 2 folds to go
    assert "bi: its 2 folds are done" in out and "2 folds, " in out.split("bi: its 2 folds are done")[1]
    assert "resuming from" in out  # the killed fold continues from its checkpoint
    assert {path: path.stat().st_mtime_ns for path in first_member} == stamps
    assert (project / "saved_model" / "lb" / "ensemble.json").is_file()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "members, problem",
    [
        ({"bi": ["training.epochs=0"]}, "ensemble.members.bi"),
        ({"bi": ["run_name=other"]}, "may not set run_name"),
        ({"bad name!": ["training.epochs=1"]}, "member name"),
        ({"bi": "training.epochs=1"}, "list of key.path=value"),
    ],
)
def test_bad_members_stop_before_anything_trains(project, tiny_model_dir, capsys, members, problem):
    leaderboard_project(project, tiny_model_dir, members=members)
    assert train.main(["--config", "lb"]) == 2
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1
    assert not (project / "saved_model").exists()


@pytest.mark.e2e
def test_a_time_run_name_is_refused_before_anything_is_written_or_measured(project, tiny_model_dir, capsys):
    """A leaderboard resumes by its members' fold names, so run_name must be fixed: refused as a k-fold
    refuses it, naming run_name, before the pipeline's directory exists or a member's speed is measured."""
    leaderboard_project(project, tiny_model_dir, members={"bi": ["model.kind=bi_encoder", "training.epochs=1"]})
    assert train.main(["--config", "lb", "run_name=lb-{time}"]) == 2
    captured = capsys.readouterr()
    assert "run_name contains {time}" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "measured" not in captured.out and not (project / "saved_model").exists()


@pytest.mark.e2e
def test_folds_flag_with_members_is_refused(project, tiny_model_dir, capsys):
    leaderboard_project(project, tiny_model_dir)
    assert train.main(["--config", "lb", "--folds", "3"]) == 2
    assert "ensemble.folds" in capsys.readouterr().err


@pytest.mark.e2e
def test_weights_flag_with_a_fitted_ensemble_is_refused(project, tiny_model_dir, capsys):
    leaderboard_project(project, tiny_model_dir, members={"bi": ["model.kind=bi_encoder", "training.epochs=1"]})
    assert train.main(["--config", "lb"]) == 0
    assert inference.main(["--config", "lb", "--saved_model", "lb", "--weights", "1"]) == 2
    assert "fitted ensemble" in capsys.readouterr().err


def test_repeated_pairs_stay_in_one_fold_and_a_split_without_repeats_is_unchanged():
    order = np.random.default_rng([3, 7919]).permutation(50)
    plain = folds.split_folds(50, 4, 3, keys=list(range(50)))
    assert [list(p) for p in plain] == [sorted(p) for p in np.array_split(order, 4)]  # as before grouping
    keys = [i % 20 for i in range(50)]  # every pair 2-3 times
    parts = folds.split_folds(50, 4, 3, keys=keys)
    assert sorted(np.concatenate(parts)) == list(range(50))
    where = {position: k for k, part in enumerate(parts) for position in part}
    for key in set(keys):
        assert len({where[i] for i in range(50) if keys[i] == key}) == 1
    assert all(8 <= len(part) <= 18 for part in parts)


# ------------------------------------------------------------------ what a new user tried (review findings)


@pytest.mark.e2e
def test_inference_may_not_write_over_an_ensemble(project, tiny_model_dir, capsys):
    leaderboard_project(project, tiny_model_dir, members={"bi": ["model.kind=bi_encoder", "training.epochs=1"]})
    assert train.main(["--config", "lb"]) == 0
    spec = project / "saved_model" / "lb" / "ensemble.json"
    before = spec.read_bytes()
    assert inference.main(["--config", "lb", "--saved_model", "lb", f"inference.output_path={spec}"]) == 2
    assert spec.read_bytes() == before
    # nor may a plain training run start in the ensemble's directory
    assert train.main(["--config", "t", "run_name=lb"]) == 2
    assert "fitted ensemble" in capsys.readouterr().err


def undeclared(directory: Path, layout: dict) -> list[str]:
    """What `directory` holds that its layout (rundir/names.py) does not declare: ownership would not
    know such a file's temporaries as plaintune's."""
    return sorted(name for name in os.listdir(directory) if not names.is_one_of(name, layout["."]))


@pytest.mark.e2e
def test_the_python_api_runs_the_pipeline_too(project, tiny_model_dir):
    leaderboard_project(project, tiny_model_dir, members={"bi": ["model.kind=bi_encoder", "training.epochs=1"]})
    result = api.train("configs/lb.yaml")
    assert result.kind == "leaderboard" and result.run_dir.resolve() == project / "saved_model" / "lb"
    assert set(result.ensemble["weights"]) == {"bi"} and (result.run_dir / "ensemble.json").is_file()
    assert result.runs == ["lb-bi-fold1", "lb-bi-fold2"]
    spec = json.loads((result.run_dir / "ensemble.json").read_text())
    assert result.best_metric == result.scores[f"ensemble {spec['applied']} (cross-fitted)"]
    # every name the pipeline wrote is one ownership knows
    assert undeclared(result.run_dir, names.ENSEMBLE_LAYOUT) == []
    assert undeclared(result.run_dir.with_name("lb-bi-folds"), names.FOLDS_LAYOUT) == []
    assert all(undeclared(result.run_dir.with_name(run), names.RUN_LAYOUT) == [] for run in result.runs)


@pytest.mark.e2e
def test_the_python_api_runs_a_k_fold(project):
    result = api.train("t", "training.epochs=1", folds=2)
    assert result.kind == "k-fold" and result.runs == ["t-fold1", "t-fold2"]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert undeclared(result.run_dir, names.FOLDS_LAYOUT) == []
    assert result.best_metric == pytest.approx(summary["out_of_fold_pearson"])
    assert [result.scores[f"fold {k}"] for k in (1, 2)] == pytest.approx([f["pearson"] for f in summary["folds"]])


@pytest.mark.e2e
@pytest.mark.parametrize(
    "override, problem",
    [
        ("data.train_path=data/dev.csv", "data.train_path"),
        ("ensemble.folds=3", "ensemble.folds"),
        ("model.num_labels=3", "num_labels"),
        ("inference.symmetric=true", "inference.symmetric"),
        ("inference.precision=bf16", "inference.precision"),
    ],
)
def test_a_member_may_not_change_what_members_share(project, tiny_model_dir, capsys, override, problem):
    leaderboard_project(project, tiny_model_dir, members={"bi": ["model.kind=bi_encoder", override]})
    assert train.main(["--config", "lb"]) == 2
    err = capsys.readouterr().err
    assert problem in err and "ensemble.members.bi" in err
    assert not (project / "saved_model").exists()


@pytest.mark.e2e
def test_resume_after_a_recipe_change_trains_finished_folds_on(project, tiny_model_dir, capsys):
    """A finished fold is reused only while its recipe holds: more epochs continue its run and predict again."""
    members = {"bi": ["model.kind=bi_encoder", "training.epochs=1"]}
    leaderboard_project(project, tiny_model_dir, members=members)
    assert train.main(["--config", "lb"]) == 0
    leaderboard_project(project, tiny_model_dir, members={"bi": ["model.kind=bi_encoder", "training.epochs=2"]})
    capsys.readouterr()
    assert train.main(["--config", "lb", "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("the config changed since (training.epochs)") == 2
    bundle = __import__("torch").load(project / "saved_model" / "lb-bi-fold1" / "last.pt", weights_only=True)
    assert bundle["epoch"] == 2
    # a fold whose run was deleted is trained again rather than named in the fit
    import shutil

    shutil.rmtree(project / "saved_model" / "lb-bi-fold2")
    assert train.main(["--config", "lb", "--resume"]) == 0
    assert "has no best/ any more" in capsys.readouterr().out
    assert (project / "saved_model" / "lb-bi-fold2" / "best").is_dir()


@pytest.mark.e2e
def test_overwrite_removes_the_old_fit_first(project, tiny_model_dir, monkeypatch):
    leaderboard_project(project, tiny_model_dir, members={"bi": ["model.kind=bi_encoder", "training.epochs=1"]})
    assert train.main(["--config", "lb"]) == 0
    spec = project / "saved_model" / "lb" / "ensemble.json"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(folds, "train_run", killed)
    assert train.main(["--config", "lb", "--overwrite"]) != 0  # killed in its first fold
    assert not spec.exists()  # never the old weights over the new members


@pytest.mark.e2e
def test_cosent_needs_pairs_to_rank_and_its_dev_loss_is_chunked(project):
    assert train.main(["--config", "t", "training.loss=cosent", "training.batch_size=1"]) == 2
    from plaintune.model.objective import Objective

    objective = Objective(1, "cosent", "cosine", kind="bi_encoder")
    import torch

    logits, labels = torch.rand(1000, 1), torch.rand(1000) * 5
    chunks = [objective.loss(logits[i : i + 64], labels[i : i + 64]) for i in range(0, 1000, 64)]
    assert float(objective.dev_loss(logits, labels)) == pytest.approx(float(torch.stack(chunks).mean()))


def test_grouped_folds_are_balanced_and_never_empty():
    keys = [i // 3 for i in range(99)] + list(range(1000, 1010))  # 33 triples and 10 singles
    for seed in range(20):
        parts = folds.split_folds(len(keys), 5, seed, keys=keys)
        sizes = sorted(len(p) for p in parts)
        assert sizes[0] > 0 and sizes[-1] - sizes[0] <= 3, sizes


@pytest.mark.e2e
def test_out_of_fold_predictions_are_made_as_inference_will_make_them(project, tiny_model_dir, capsys):
    """inference.symmetric averages a cross-encoder's two orders at inference, so the out-of-fold
    predictions the ensemble is fitted on are made that way too; switching it re-predicts the folds."""
    cfg = base_config(tiny_model_dir)
    cfg["run_name"] = "k"
    cfg["model"]["kind"] = "cross_encoder"
    write_config(project, cfg, "k")
    assert train.main(["--config", "k", "--folds", "2"]) == 0
    folder = project / "saved_model" / "k-folds"
    plain = json.loads((folder / "fold1_predictions.json").read_text())["predictions"]
    capsys.readouterr()
    runs = (project / "saved_model").glob("k-fold[0-9]/**/*")
    stamps = {path: path.stat().st_mtime_ns for path in runs if path.is_file()}
    assert train.main(["--config", "k", "--folds", "2", "--resume", "inference.symmetric=true"]) == 0
    out = capsys.readouterr().out
    # a prediction-only change predicts again and trains nothing (no run file is touched)
    assert out.count("the config changed since (inference.symmetric): predicting again") == 2
    assert "pairs to train on" not in out
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    symmetric = json.loads((folder / "fold1_predictions.json").read_text())["predictions"]
    held_out = [f"data.predict_path={folder / 'fold1_dev.csv'}"]
    by_hand = lambda *extra: api.predict("configs/k.yaml", "k-fold1", *held_out, *extra)["target"]  # noqa: E731
    assert plain == pytest.approx(by_hand().tolist(), abs=1e-5)
    assert symmetric == pytest.approx(by_hand("inference.symmetric=true").tolist(), abs=1e-5)
    assert not np.allclose(plain, symmetric)


@pytest.mark.e2e
def test_a_bi_encoder_fold_is_not_predicted_again_when_symmetric_changes(project, tiny_model_dir, capsys):
    leaderboard_project(project, tiny_model_dir, members={"bi": ["model.kind=bi_encoder", "training.epochs=1"]})
    assert train.main(["--config", "lb"]) == 0
    spec = json.loads((project / "saved_model" / "lb" / "ensemble.json").read_text())
    assert spec["inference_symmetric"] is False
    capsys.readouterr()
    assert train.main(["--config", "lb", "--resume", "inference.symmetric=true"]) == 0
    assert capsys.readouterr().out.count("done earlier (lb-bi-fold") == 2  # its cosine is symmetric already
    assert json.loads((project / "saved_model" / "lb" / "ensemble.json").read_text())["inference_symmetric"] is True
    # the submission predicts as the fit's out-of-fold predictions were made, or says how to refit
    assert inference.main(["--config", "lb", "--saved_model", "lb"]) == 2
    err = capsys.readouterr().err
    assert "inference.symmetric=true" in err and "--resume" in err
    assert inference.main(["--config", "lb", "--saved_model", "lb", "inference.symmetric=true"]) == 0


def test_later_overrides_win_wherever_they_stand_on_the_command_line():
    args = inference.parse_args(
        ["--config", "c", "inference.symmetric=false", "--saved_model", "m", "inference.symmetric=true"]
    )
    assert args.saved_model == ["m"] and args.overrides == ["inference.symmetric=false", "inference.symmetric=true"]
    args = inference.parse_args(["--saved_model", "m", "a.b=1", "--config", "c", "a.b=2"])
    assert args.overrides == ["a.b=1", "a.b=2"]


# ------------------------------------------------------------------ honesty: scored as inference applies it


def honesty_members(seed: int = 5, n: int = 600, folds_count: int = 5):
    """A good member, a useless one (noise, plus an offset that changes from fold model to fold model:
    what a collapsed regression head gives), and an anti-correlated one."""
    rng = np.random.default_rng(seed)
    labels = np.clip(rng.normal(2.6, 1.4, n), 0, 5)
    parts = folds.split_folds(n, folds_count, seed)
    good = labels * 0.5 + 1.2 + rng.normal(0, 0.9, n)
    useless = rng.normal(0, 0.002, n)
    for k, part in enumerate(parts):
        useless[part] += 0.01 * k
    anti = 5 - labels + rng.normal(0, 1.5, n)
    return np.stack([good, useless, anti], axis=1), labels, parts


def pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def direct_cross_fitted(predictions, labels, parts, method, clip, decimals):
    """The same score computed without ensemble.py: scipy's nnls on centred columns, numpy's lstsq,
    the plain mean, the best member by Pearson; then inference's combine and the submission's clip/round."""
    from scipy.optimize import nnls as scipy_nnls

    from plaintune.inference.predicting import combine
    from plaintune.inference.submission import postprocess

    out = np.full(len(labels), np.nan)
    for held in parts:
        rest = np.setdiff1d(np.arange(len(labels)), held)
        x, y = predictions[rest], labels[rest]
        if method == "mean":
            w, b = np.full(x.shape[1], 1 / x.shape[1]), 0.0
        elif method == "best_member":
            w, b = np.eye(x.shape[1])[int(np.argmax([pearson(x[:, k], y) for k in range(x.shape[1])]))], 0.0
        else:
            xc, yc = x - x.mean(axis=0), y - y.mean()
            w = scipy_nnls(xc, yc)[0] if method == "nnls" else np.linalg.lstsq(xc, yc, rcond=None)[0]
            b = y.mean() - x.mean(axis=0) @ w
        members = [predictions[held][:, k] for k in range(predictions.shape[1])]
        out[held] = postprocess(combine(members, list(w), 1, float(b)), clip, decimals)
    return out


@pytest.mark.parametrize("method", ["nnls", "lstsq", "mean", "best_member"])
@pytest.mark.parametrize("clip, decimals", [([0.0, 5.0], 1), (None, None), ([1.0, 4.0], 0)])
def test_the_cross_fitted_score_is_what_inference_would_write(method, clip, decimals):
    predictions, labels, parts = honesty_members()
    ours = ensemble.cross_fitted(predictions, labels, parts, method, clip, decimals)
    direct = direct_cross_fitted(predictions, labels, parts, method, clip, decimals)
    assert ours == pytest.approx(direct, abs=1e-9)
    if clip is not None:
        assert ours.min() >= clip[0] and ours.max() <= clip[1]


def test_a_combination_below_the_best_member_is_not_applied_silently():
    """nnls gives the useless member's fold-to-fold offsets a large weight: cross-fitted, it scores
    below the good member alone, so the good member (or a better non-negative combination) is applied."""
    predictions, labels, parts = honesty_members()
    choice = ensemble.choose(predictions, labels, parts, "nnls", [0.0, 5.0], 1)
    best_single = choice.scores["best_member"]
    assert best_single == pytest.approx(
        pearson(direct_cross_fitted(predictions, labels, parts, "best_member", [0.0, 5.0], 1), labels)
    )
    assert choice.scores["nnls"] < best_single  # the case the issue reported
    assert choice.applied in ("best_member", "mean") and choice.scores[choice.applied] >= best_single
    assert "below the best single member" in choice.reason and "nnls" in choice.reason
    weights, intercept = ensemble.fit_candidate(predictions, labels, choice.applied)
    ensemble_file.check_weights(weights, intercept, choice.applied, "test")
    assert list(weights) == [1.0, 0.0, 0.0] or choice.applied == "mean"
    # a combination that does beat the best member is kept as requested
    good = np.stack([predictions[:, 0], labels + np.random.default_rng(1).normal(0, 1.0, len(labels))], axis=1)
    kept = ensemble.choose(good, labels, parts, "nnls", [0.0, 5.0], 1)
    assert kept.applied == "nnls" and kept.scores["nnls"] >= kept.scores["best_member"]


@pytest.mark.e2e
def test_the_pipeline_records_what_it_applied_and_why(project, tiny_model_dir, capsys):
    leaderboard_project(
        project,
        tiny_model_dir,
        members={
            "bi": ["model.kind=bi_encoder", "training.epochs=1"],
            "useless": ["model.kind=bi_encoder", "training.epochs=1", "training.learning_rate=1e-9"],
        },
    )
    assert train.main(["--config", "lb"]) == 0
    out = capsys.readouterr().out
    spec = json.loads((project / "saved_model" / "lb" / "ensemble.json").read_text())
    assert spec["combine"] == "nnls" and spec["applied"] in ("nnls", "lstsq", "mean", "best_member")
    applied = spec["out_of_fold"][f"ensemble {spec['applied']} (cross-fitted)"]
    assert applied >= spec["out_of_fold"]["ensemble best_member (cross-fitted)"]
    assert spec["why"] and spec["scored_with"] == {"clip": [0.0, 5.0], "round": 1}
    if spec["applied"] != "nnls":
        assert "warning: ensemble.combine nnls" in out


@pytest.mark.parametrize(
    "weights, problem",
    [([0, 0], "all its weights are zero"), ([1, -0.5], "negative weights"), ([1, None], "unreadable or damaged")],
)
def test_loaded_weights_are_checked(tmp_path, weights, problem):
    spec = {
        "format": "plaintune-ensemble",
        "combine": "nnls",
        "intercept": 0.0,
        "members": [{"name": f"m{k}", "runs": [f"r{k}"], "weight": w} for k, w in enumerate(weights)],
    }
    (tmp_path / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match=problem):
        ensemble_file.read_spec(tmp_path)


@pytest.mark.parametrize("run", ["../outside", "/abs/run", "escape", "a/../../b", ""])
def test_member_runs_must_lie_inside_the_output_dir(tmp_path, run):
    root = tmp_path / "saved_model"
    (root / "ens").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "escape").symlink_to(tmp_path / "elsewhere")
    spec = {
        "format": "plaintune-ensemble",
        "combine": "nnls",
        "intercept": 0.0,
        "members": [{"name": "m", "runs": [run], "weight": 1.0}],
    }
    (root / "ens" / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="not a folder inside the ensemble's output_dir"):
        ensemble_file.expand(["ens"], root)


def test_a_member_fold_without_best_is_an_error_not_its_last_pt(tmp_path):
    root = tmp_path / "saved_model"
    (root / "ens").mkdir(parents=True)
    (root / "m-fold1").mkdir()
    (root / "m-fold1" / "last.pt").write_bytes(b"x")
    spec = {
        "format": "plaintune-ensemble",
        "combine": "nnls",
        "intercept": 0.0,
        "members": [{"name": "m", "runs": ["m-fold1"], "weight": 1.0}],
    }
    (root / "ens" / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="has no complete best/"):
        ensemble_file.expand(["ens"], root)


def test_the_time_budget_counts_the_work_left_and_max_steps(tiny_model_dir):
    from plaintune.config.load import with_values
    from plaintune.config.validation import validate

    cfg = validate(base_config(tiny_model_dir))
    cfg = with_values(cfg, {"training.epochs": 2, "training.batch_size": 10})
    whole = ensemble.estimate_seconds(cfg, 100, 5, speed=10.0)
    assert ensemble.estimate_seconds(cfg, 100, 5, speed=10.0, folds_left=2) == pytest.approx(whole * 2 / 5)
    # 80 pairs x 2 epochs to train per fold, and 20 held-out pairs validated each epoch at a third of the cost
    assert whole == pytest.approx(5 * (160 + 2 * 20 / 3) / 10.0)
    capped = with_values(cfg, {"training.max_steps": 3})
    assert ensemble.estimate_seconds(capped, 100, 5, speed=10.0) == pytest.approx(5 * (30 + 2 * 20 / 3) / 10.0)


def test_the_measured_speed_is_a_median_of_whole_steps(tiny_model_dir, monkeypatch):
    """One slow batch (another process on the machine) does not move the median much."""
    from plaintune.config.validation import validate
    from plaintune.data import tables as data_mod

    cfg = validate(base_config(tiny_model_dir))
    table = data_mod.read_pairs(str(DEMO / "train.csv"), "data.train_path", cfg.data.columns)
    steps = []
    real_step = torch.optim.AdamW.step

    def counted(self, *args, **kwargs):
        steps.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    speed = ensemble.measure_speed(cfg, table, torch.device("cpu"), rows=64)
    assert speed > 0 and len(steps) >= 5  # the optimizer's update is part of what is timed
