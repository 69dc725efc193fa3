"""training.precision: auto — what it picks for each kind of hardware, and that a run records and keeps it."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import inference
import train
from conftest import base_config, write_config
from plaintune.runtime import precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)

CPUINFO_SAPPHIRE = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile
processor\t: 1
flags\t\t: fpu vme sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile
"""
CPUINFO_SKYLAKE = """processor\t: 0
flags\t\t: fpu vme sse2 avx2 avx512f avx512bw avx512vl
"""
CPUINFO_ZEN4 = "flags\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"


@pytest.mark.parametrize(
    "text, flags",
    [
        (CPUINFO_SAPPHIRE, ["amx_bf16", "avx512_bf16"]),
        (CPUINFO_SKYLAKE, []),
        (CPUINFO_ZEN4, ["avx512_bf16"]),
        ("", []),
        # a flag name that merely contains the text is not the flag
        ("flags: avx512_bf16x not_amx_bf16\n", []),
    ],
)
def test_cpu_flags_are_read_from_cpuinfo(tmp_path, text, flags):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert precision.cpu_bf16_flags(cpuinfo) == flags


def test_no_cpuinfo_means_no_flags(tmp_path):
    assert precision.cpu_bf16_flags(tmp_path / "absent") == []  # macOS, Windows


@pytest.mark.parametrize(
    "capability, chosen",
    [((9, 0), "bf16"), ((8, 9), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 1), "fp32")],
)
def test_cuda_branches(capability, chosen):
    picked, why = precision.choose(CUDA, cuda_capability=capability)
    assert picked == chosen
    assert f"{capability[0]}.{capability[1]}" in why


@pytest.mark.parametrize(
    "flags, chosen", [(["amx_bf16", "avx512_bf16"], "bf16"), (["avx512_bf16"], "bf16"), ([], "fp32")]
)
def test_cpu_branches(flags, chosen):
    picked, why = precision.choose(CPU, cpu_flags=flags)
    assert picked == chosen
    assert all(flag in why for flag in flags)


def test_other_devices_stay_fp32():
    assert precision.choose(torch.device("mps"))[0] == "fp32"


def test_explicit_precision_is_kept_and_auto_resolves():
    assert precision.resolve("fp16", CPU) == ("fp16", "as configured")
    picked, why = precision.resolve("auto", CPU)
    assert picked == precision.choose(CPU)[0] and why.startswith("auto: ")


def test_a_resumed_auto_run_keeps_the_checkpoints_precision():
    assert precision.for_training("auto", CPU, "fp32")[0] == "fp32"
    assert precision.for_training("auto", CPU, "fp16")[0] == "fp16"
    assert precision.for_training("bf16", CPU, "fp32")[0] == "bf16"
    assert precision.for_training("auto", CPU, None) == precision.resolve("auto", CPU)


def _auto_project(project, tiny_model_dir, **training):
    cfg = base_config(tiny_model_dir)
    del cfg["training"]["precision"]  # the schema default
    cfg["training"].update({"epochs": 1, **training})
    write_config(project, cfg)


@pytest.mark.e2e
@pytest.mark.parametrize("native", [True, False])
def test_auto_is_the_default_and_the_run_says_what_it_chose(project, tiny_model_dir, monkeypatch, capsys, native):
    """End to end, with the CPU's answer forced both ways: the run prints the choice and its reason,
    trains in it (the bundle records the concrete precision beside the config's auto) and inference follows it."""
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda cpuinfo=None: ["avx512_bf16"] if native else [])
    _auto_project(project, tiny_model_dir)
    assert train.main(["--config", "t"]) == 0
    out = capsys.readouterr().out
    expected = "bf16" if native else "fp32"
    assert f"precision: {expected} (auto: this CPU" in out
    bundle = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)
    assert bundle["resolved"]["training.precision"] == expected
    assert bundle["config"]["training"]["precision"] == "auto"  # the config stays what the user wrote
    assert inference.main(["--config", "t", "--saved_model", "t"]) == 0
    assert f"{expected} (auto: this CPU" in capsys.readouterr().out
    assert len(pd.read_csv(project / "output" / "sub.csv")) == 20


@pytest.mark.e2e
def test_resume_with_auto_continues_in_the_checkpoints_precision(project, tiny_model_dir, monkeypatch, capsys):
    """A run that started in fp32 (e.g. saved before auto was the default, or on a machine without bf16)
    continues in fp32 when resumed where auto would pick bf16, with no drift complaint."""
    _auto_project(project, tiny_model_dir, epochs=2)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda cpuinfo=None: [])
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda cpuinfo=None: ["amx_bf16"])
    capsys.readouterr()
    assert train.main(["--config", "t", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "precision: fp32 (auto: kept from the checkpoint" in out
    assert "training.precision" not in out.replace("set training.precision", "")
    bundle = torch.load(project / "saved_model" / "t" / "last.pt", weights_only=True)
    assert bundle["resolved"]["training.precision"] == "fp32"
    assert bundle["scaler_state_dict"] is None


@pytest.mark.e2e
def test_changing_precision_on_resume_is_allowed_with_a_note(project, tiny_model_dir, capsys):
    """Precision is how a run computes, not what it is: moving a run to other hardware must not need --force."""
    assert train.main(["--config", "t", "training.epochs=1"]) == 0
    capsys.readouterr()
    assert train.main(["--config", "t", "--resume", "training.precision=bf16"]) == 0
    out = capsys.readouterr().out
    assert "precision: bf16 (as configured)" in out
    note = next(line for line in out.splitlines() if line.startswith("note: config changes since the checkpoint"))
    assert "training.precision" in note
