"""Caption decoding: greedy equals open_clip's greedy path, beam search is exact where it can be checked, sampling is
seeded, lengths are respected, and bad requests fail with one clear message."""
import itertools

import pytest
from references import require
import torch

from clipforge.captioning import GenerationConfig, NotACaptioner, generate, generate_tokens
from clipforge.config import ConfigError, apply_overrides
from clipforge.models.coca import build_model
from clipforge.models.convert import config_to_open_clip, convert_state_dict
from clipforge.models.factory import create_model
from clipforge.models.registry import get_architecture
from caption_helpers import randomize


def _open_clip_generate():
    """open_clip's CoCa with its sampling path usable: open_clip 3.3.0 disables generation when transformers lacks
    BeamSearchScorer (removed in transformers 5), though its top-k path needs only the logits warpers."""
    require("open_clip")
    transformers = require("transformers")
    import open_clip.coca_model as coca_model

    coca_model._has_transformers = True
    coca_model.GENERATION_TYPES.update(top_k=transformers.TopKLogitsWarper, top_p=transformers.TopPLogitsWarper)
    return coca_model


def test_greedy_matches_open_clip_top_k_1():
    coca_model = _open_clip_generate()
    config = get_architecture("tiny-coca")
    cfg = config_to_open_clip(config)
    cfg.pop("custom_text")
    reference = coca_model.CoCa(**cfg).eval()
    with torch.no_grad():  # open_clip 3.3.0 leaves this projection uninitialised (torch.empty)
        reference.text_decoder.text_projection.normal_(std=config.decoder.width ** -0.5)
    reference = randomize(reference, seed=1)
    model = build_model(config).eval()
    model.load_state_dict(convert_state_dict(reference.state_dict(), config))
    images = torch.randn(4, 3, 32, 32)
    theirs = reference.generate(images, generation_type="top_k", top_k=1, seq_len=12, min_seq_len=3)
    ours = generate_tokens(model, images, method="greedy", max_length=12, min_length=3)
    for row, mine in zip(theirs.tolist(), ours):
        assert row[0] == 49406
        body = row[1:]
        end = min((i for i, t in enumerate(body) if t in (49407, 0)), default=len(body))
        assert mine == body[:end]


class _IdTokenizer:
    sot_token_id, eot_token_id = 6, 7

    def decode(self, ids):
        return " ".join(map(str, ids))


def _log_prob(model, image_tokens, ids, end):
    tokens, total = [6], 0.0
    for token in [*ids, end]:
        logits = model.next_token_logits(image_tokens, torch.tensor([tokens]))
        if len(tokens) + 1 == 4:  # the forced end at max_length
            return total
        total += logits.float().log_softmax(-1)[0, token].item()
        tokens.append(token)
    return total


def test_beam_search_finds_the_best_caption_on_a_tiny_vocabulary():
    config = apply_overrides(get_architecture("tiny-coca"), {"text.vocab_size": 8, "decoder.vocab_size": 8})
    model = randomize(build_model(config).eval(), seed=3)
    images = torch.randn(2, 3, 32, 32)
    options = dict(method="beam", num_beams=8, max_length=4, min_length=0, length_penalty=0.0)
    found = generate_tokens(model, images, tokenizer=_IdTokenizer(), **options)
    with torch.no_grad():
        _, image_tokens = model.encode_image_tokens(images)
        for i, ids in enumerate(found):
            scores = {}
            for n in range(3):
                for body in itertools.product(range(1, 7), repeat=n):
                    scores[body] = max(_log_prob(model, image_tokens[i:i + 1], list(body), end) for end in (7, 0))
            best = max(scores.values())
            assert scores[tuple(ids)] == pytest.approx(best, abs=1e-5)


def test_one_beam_is_greedy_and_top_k_1_is_greedy(tiny_coca):
    images = torch.randn(3, 3, 32, 32)
    greedy = generate_tokens(tiny_coca, images, method="greedy", max_length=10)
    assert generate_tokens(tiny_coca, images, method="beam", num_beams=1, max_length=10) == greedy
    assert generate_tokens(tiny_coca, images, method="top_k", top_k=1, max_length=10, seed=0) == greedy
    assert generate_tokens(tiny_coca, images, method="top_p", top_p=1e-6, max_length=10, seed=0) == greedy


def test_sampling_is_seeded(tiny_coca):
    images = torch.randn(3, 3, 32, 32)
    state = torch.get_rng_state()
    for method in ("top_k", "top_p"):
        first = generate_tokens(tiny_coca, images, method=method, seed=1, max_length=12, temperature=2.0)
        assert generate_tokens(tiny_coca, images, method=method, seed=1, max_length=12, temperature=2.0) == first
        assert generate_tokens(tiny_coca, images, method=method, seed=2, max_length=12, temperature=2.0) != first
    assert torch.equal(torch.get_rng_state(), state)  # a private generator


@pytest.mark.parametrize("method", ["greedy", "beam", "top_k", "top_p"])
def test_lengths_are_respected(tiny_coca, method):
    images = torch.randn(2, 3, 32, 32)
    for ids in generate_tokens(tiny_coca, images, method=method, min_length=4, max_length=8, num_beams=3, seed=0):
        assert 3 <= len(ids) <= 6  # start + ids + end within [min_length, max_length]
        assert 49407 not in ids and 49406 != ids[0]


def test_repetition_penalty_reduces_repeats(tiny_coca):
    images = torch.randn(4, 3, 32, 32)
    plain = generate_tokens(tiny_coca, images, method="greedy", max_length=16, min_length=15)
    penalised = generate_tokens(tiny_coca, images, method="greedy", max_length=16, min_length=15,
                                repetition_penalty=50.0)
    repeats = lambda rows: sum(len(r) - len(set(r)) for r in rows)  # noqa: E731
    assert repeats(penalised) < repeats(plain)


def test_captions_from_paths_and_pil_images(tiny_coca, image_files):
    from PIL import Image

    captions = generate(tiny_coca, image_files, method="greedy", max_length=8)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert generate(tiny_coca, [Image.open(image_files[0])], method="greedy", max_length=8) == captions[:1]


def test_model_state_is_restored(tiny_coca):
    tiny_coca.train()
    generate_tokens(tiny_coca, torch.randn(1, 3, 32, 32), method="greedy", max_length=5)
    assert tiny_coca.training


def test_a_clip_model_cannot_caption():
    with pytest.raises(NotACaptioner, match="has no caption decoder; use a CoCa model"):
        generate(create_model("tiny-vit"), torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("options, message", [
    ({"method": "nucleus"}, "unknown generation method 'nucleus'"),
    ({"max_length": 40}, "more than this model reads"),
    ({"min_length": -1}, "min_length must be >= 0"),
    ({"top_p": 0.0}, "top_p must be in"),
    ({"beams": 3}, "options are"),
])
def test_bad_options(tiny_coca, options, message):
    with pytest.raises(ConfigError, match=message):
        generate_tokens(tiny_coca, torch.randn(1, 3, 32, 32), **options)
    assert GenerationConfig().method == "beam"
