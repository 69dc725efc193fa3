"""What a finished run keeps on disk: checkpoint.keep_last_after_finish, and the size it reports."""
from __future__ import annotations

import inference
import train


def test_a_finished_run_can_drop_its_resume_bundles(project, capsys):
    run = project / "saved_model" / "t"
    assert train.main(["--config", "t", "training.epochs=1", "checkpoint.keep_last=2"]) == 0
    out = capsys.readouterr().out
    assert (run / "last.pt").is_file() and "on disk:" in out and "last.pt" in out  # the default keeps it
    assert train.main(["--config", "t", "training.epochs=2", "checkpoint.keep_last=2",
                       "checkpoint.keep_last_after_finish=false", "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert not (run / "last.pt").exists() and not (run / "checkpoints").exists()
    assert (run / "best" / "model.safetensors").is_file()
    assert "resume file: deleted" in out
    line = next(line for line in out.splitlines() if "on disk:" in line)
    assert "best" in line and "last.pt" not in line
    assert inference.main(["--config", "t", "--saved_model", "t"]) == 0  # best/ is all inference needs
