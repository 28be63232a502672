import pytest
import torch

from eval_fixtures import tiny_encoders, tiny_open_clip


@pytest.fixture(autouse=True)
def _one_thread():
    # The tiny models here gain nothing from intra-op threads, and on shared busy cores OpenMP's spin-waiting
    # makes them ~100x slower; restore the session's setting afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny():
    return tiny_open_clip()


@pytest.fixture
def encoders(tiny):
    return tiny_encoders(*tiny)
