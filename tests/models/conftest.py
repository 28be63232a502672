"""Fixtures for model tests."""
import pytest

from model_helpers import randomize_


@pytest.fixture
def randomize():
    return randomize_
