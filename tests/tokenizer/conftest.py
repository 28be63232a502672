import pytest
from references import require

from tokenizer_corpus import make_corpus


@pytest.fixture(scope="session")
def corpus():
    return make_corpus()


@pytest.fixture(scope="session")
def reference():
    open_clip_tokenizer = require("open_clip.tokenizer")
    return open_clip_tokenizer.SimpleTokenizer()


@pytest.fixture(scope="session")
def clip_tokenizer():
    from clipforge.tokenizer import ClipTokenizer

    return ClipTokenizer()
