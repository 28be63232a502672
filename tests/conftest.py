import os
import random

import numpy as np
import pytest
import torch

# Tests never touch the network: every download path is exercised on files the tests create.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread per test process: the suite runs under xdist (-n 2) on 2 cores, and more threads than cores make
# OpenMP's spin-waiting slow every step down by an order of magnitude.
torch.set_num_threads(1)
# The fused CPU inference kernels are always exercised (the default "auto" uses them only where they measure faster,
# which would leave them untested on some machines); tests/layers/test_fused.py checks the auto choice itself.
os.environ.setdefault("CLIPFORGE_FUSED", "1")


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
