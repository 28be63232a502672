"""What a run folder may contain and when: nothing before every input is checked, one record per step in the log,
a changed config refused on resume unless asked, a finished run reported as complete, a damaged checkpoint
replaced by the previous one."""
import json
import logging

import pytest
import torch

from clipforge.config import ConfigError, apply_overrides
import os

from clipforge.cpu import auto_threads, busy_cores, set_threads
from clipforge.training.config import TrainConfig
from clipforge.training.loop import train
from clipforge.training.logging import read_records


def _tiny(tmp_path, **over):
    base = {"workdir": str(tmp_path / "run"), "model.name": "tiny-vit", "data.kind": "synthetic",
            "data.num_samples": 48, "data.batch_size": 8, "schedule.steps": 6, "schedule.warmup_steps": 2,
            "checkpoint.every_steps": 3, "log.every_steps": 1, "log.progress": False, "optim.lr": 1e-3,
            "checkpoint.export_model": False, "threads": 1}
    base.update(over)
    return apply_overrides(TrainConfig(), base)


def _steps(workdir):
    return [r["step"] for r in read_records(workdir / "metrics.jsonl") if "loss" in r]


class _Stop(Exception):
    pass


def _crash(model, step):
    raise _Stop


@pytest.mark.parametrize("over, needle", [
    ({"data.kind": "csv", "data.train": "{tsv}"}, "no column 'filepath'"),
    ({"eval.datasets": ("wds:/nonexistent/val.tar",)}, "do not exist"),
])
def test_bad_inputs_leave_the_run_folder_empty(tmp_path, over, needle):
    (tmp_path / "t.tsv").write_text("path\tcaption\nx.png\thello\n")
    over = {k: (v.format(tsv=tmp_path / "t.tsv") if isinstance(v, str) else v) for k, v in over.items()}
    with pytest.raises((ValueError, FileNotFoundError), match=needle):
        train(_tiny(tmp_path, **over))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("over, needle", [
    ({"optim.accum_steps": 0}, "optim.accum_steps must be >= 1"),
    ({"optim.lr": -1.0}, "optim.lr must be positive"),
    ({"schedule.warmup_steps": 10}, "schedule.warmup_steps=10 must be in"),
    ({"optim.precision": "fp8"}, "optim.precision: unknown precision 'fp8'"),
    ({"optim.precision": "fp16"}, "cannot train"),
    ({"threads": 0}, "threads must be"),
])
def test_config_values_are_checked_with_their_key(tmp_path, over, needle):
    with pytest.raises(ConfigError, match=needle):
        train(_tiny(tmp_path, **over))


def test_resume_logs_every_step_once_and_says_so(tmp_path, caplog):
    """A crash after step 5 (checkpoint at 3): steps 4 and 5 were logged, are dropped on resume, logged again."""
    with pytest.raises(_Stop):
        train(_tiny(tmp_path, **{"eval.every_steps": 5}), evaluate=_crash)
    assert _steps(tmp_path / "run") == [1, 2, 3, 4, 5]
    with caplog.at_level(logging.WARNING, logger="clipforge"):
        result = train(_tiny(tmp_path))
    assert result.steps == 6 and _steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]
    assert any("resuming from step 3" in r.getMessage() for r in caplog.records)
    notes = [r["note"] for r in read_records(tmp_path / "run" / "metrics.jsonl") if "note" in r]
    assert notes == ["resuming from step 3 with changed eval.every_steps"]


def test_a_changed_config_is_refused_on_resume_unless_asked(tmp_path):
    train(_tiny(tmp_path), stop_at_step=3)
    saved = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"optim.lr changed; resuming from step_00000003.pt"):
        train(_tiny(tmp_path, **{"optim.lr": 5e-3}))
    assert (tmp_path / "run" / "config.json").read_text() == saved  # nothing rewritten
    assert _steps(tmp_path / "run") == [1, 2, 3]
    longer = train(_tiny(tmp_path, **{"schedule.steps": 7}))  # the number of steps may change
    assert longer.steps == 7
    forced = train(_tiny(tmp_path, **{"schedule.steps": 8, "optim.lr": 5e-3,
                                      "checkpoint.allow_config_change": True}))
    assert forced.steps == 8
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optim"]["lr"] == 5e-3
    notes = [r["note"] for r in read_records(tmp_path / "run" / "metrics.jsonl") if "note" in r]
    assert notes[-1] == "resuming from step 7 with changed checkpoint.allow_config_change, optim.lr, schedule.steps"


def test_a_finished_run_reports_complete(tmp_path):
    first = train(_tiny(tmp_path), evaluate=lambda model, step: {"val/acc1": 0.5})
    assert first.steps == 6 and not first.already_complete
    again = train(_tiny(tmp_path))
    assert again.already_complete and again.steps == 6
    assert again.final_loss == pytest.approx(first.final_loss) and again.metrics == {"val/acc1": 0.5}
    assert _steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    train(_tiny(tmp_path, **{"checkpoint.keep_last": 2}))
    latest = tmp_path / "run" / "checkpoints" / "step_00000006.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="clipforge"):
        result = train(_tiny(tmp_path, **{"checkpoint.keep_last": 2}))
    assert result.steps == 6 and not result.already_complete  # steps 4..6 trained again from step 3
    assert any("step_00000006.pt cannot be read" in r.getMessage() for r in caplog.records)
    assert torch.load(latest, weights_only=True)["run_state"]["step"] == 6


def test_threads_are_set_and_chosen_safely(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr("clipforge.cpu.busy_cores", lambda: 64.0)
        assert auto_threads() == 1  # every core busy: one thread, not a spin-waiting pool
        monkeypatch.setattr("clipforge.cpu.busy_cores", lambda: 0.0)
        assert auto_threads() == before
        monkeypatch.undo()
        assert 0.0 <= busy_cores() <= os.cpu_count() + 0.5  # measured from /proc/stat
        with pytest.raises(ValueError, match="threads must be >= 1"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_skipped_data_is_reported_at_the_end_of_the_run(tmp_path):
    """Skips were reported only at epoch boundaries: a run ending mid-epoch said nothing. Missing files are named
    as missing, not as corrupt."""
    from PIL import Image
    (tmp_path / "img").mkdir()
    rows = ["filepath\ttitle"]
    for i in range(16):
        if i != 3:
            Image.new("RGB", (32, 32), (i * 10, 0, 0)).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png\tpicture {i}")
    rows.append("img/0.png\t")  # dropped once when the table is read; the missing file is met every epoch
    (tmp_path / "t.tsv").write_text("\n".join(rows) + "\n")
    train(_tiny(tmp_path, **{"data.kind": "csv", "data.train": str(tmp_path / "t.tsv"), "data.num_samples": None,
                             "schedule.steps": 4, "schedule.warmup_steps": 0}))  # two epochs
    warnings = [r["warning"] for r in read_records(tmp_path / "run" / "metrics.jsonl") if "warning" in r]
    assert any("data skipped over the run: 2 missing image files, 1 samples without an image or caption" in w
               for w in warnings), warnings


def test_starting_fresh_over_an_earlier_run_is_refused(tmp_path):
    """checkpoint.resume=null in a folder with checkpoints: pruning would keep the old run's higher steps."""
    train(_tiny(tmp_path))
    with pytest.raises(ConfigError, match="holds checkpoints of an earlier run"):
        train(_tiny(tmp_path, **{"checkpoint.resume": None, "schedule.steps": 4}))
    assert _steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]


def test_a_failing_final_evaluation_loses_no_training(tmp_path):
    with pytest.raises(_Stop):
        train(_tiny(tmp_path, **{"checkpoint.every_steps": 0}), evaluate=_crash)
    assert (tmp_path / "run" / "checkpoints" / "step_00000006.pt").is_file()
    again = train(_tiny(tmp_path, **{"checkpoint.every_steps": 0}))
    assert again.already_complete and again.steps == 6
