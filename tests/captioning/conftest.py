"""Fixtures for captioning tests: a tiny CoCa with random weights and a few image files."""
import pytest
from PIL import Image

from caption_helpers import randomize

from clipforge.models.factory import create_model


@pytest.fixture
def tiny_coca():
    return randomize(create_model("tiny-coca"))


@pytest.fixture
def image_files(tmp_path):
    paths = []
    for i, colour in enumerate(("red", "blue", "green")):
        path = tmp_path / f"image{i}.png"
        Image.new("RGB", (40, 30), colour).save(path)
        paths.append(path)
    return paths
