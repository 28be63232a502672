"""The tiny model every service test serves, saved once per session as a model folder."""
import pytest

from clipforge.models.factory import create_model, save_pretrained


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_model") / "tiny"
    save_pretrained(create_model("tiny-vit"), folder)
    return str(folder)
