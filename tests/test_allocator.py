"""``clipforge.allocator.keep_freed_memory``: after it, a large block freed stays mapped (the next step's buffers
need no new page faults); without it glibc gives it back. Each case in its own process (the setting is
process-wide). The trainer applies it on CPU runs unless the config turns it off."""
import os
import platform
import subprocess
import sys

import pytest
import torch

PROBE = """
import sys, torch
from clipforge.allocator import keep_freed_memory, release_freed_memory
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
applied = keep_freed_memory() if sys.argv[1] != "default" else False
if sys.argv[1] == "released":
    release_freed_memory()
block = torch.empty(256 << 20, dtype=torch.uint8)
block.fill_(1)
peak = rss_mib()
del block
print(applied, peak - rss_mib())
"""


def _probe(mode):
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    applied, returned = done.stdout.split()
    return applied == "True", int(returned)


GLIBC = pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc",
                           reason="glibc's malloc only (elsewhere keep_freed_memory does nothing and says so)")


@GLIBC
def test_freed_block_stays_mapped_only_when_kept():
    applied, returned = _probe("keep")
    assert applied and returned < 16  # MiB given back after freeing 256 MiB
    applied, returned = _probe("default")
    assert not applied and returned > 200
    applied, returned = _probe("released")  # after a run: glibc gives freed blocks back again
    assert applied and returned > 200


@GLIBC
def test_a_training_run_leaves_malloc_as_it_found_it(tmp_path):
    """train() keeps freed memory during the run only: afterwards a freed block is given back again (the run in a
    subprocess, so this test process's malloc is untouched)."""
    code = """
import sys, torch
from clipforge.training.config import ScheduleConfig, TrainConfig
from clipforge.training.data.config import DataConfig
from clipforge.training.loop import train
train(TrainConfig(workdir=sys.argv[1], data=DataConfig(kind="synthetic", num_samples=8, batch_size=4),
                  schedule=ScheduleConfig(steps=1, warmup_steps=0)))
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
block = torch.empty(256 << 20, dtype=torch.uint8)
block.fill_(1)
peak = rss_mib()
del block
print(peak - rss_mib())
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CLIPFORGE_PROGRESS": "off"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 200


def test_trainer_applies_it_on_cpu_unless_turned_off(tmp_path, monkeypatch):
    from clipforge.training import loop
    from clipforge.training.config import TrainConfig
    from clipforge.training.data.config import DataConfig

    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append(1) or True)

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(loop, "build_model", stop)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU run even on a GPU host
    for keep, expected in ((True, 1), (False, 0)):
        calls.clear()
        with pytest.raises(Stop):
            loop._set_up(TrainConfig(workdir=str(tmp_path / str(keep)), keep_freed_memory=keep,
                                       data=DataConfig(kind="synthetic", num_samples=8)), evaluate=None)
        assert len(calls) == expected
