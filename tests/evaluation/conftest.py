import pytest

from eval_fixtures import tiny_encoders, tiny_open_clip


@pytest.fixture(scope="session")
def tiny():
    return tiny_open_clip()


@pytest.fixture
def encoders(tiny):
    return tiny_encoders(*tiny)
