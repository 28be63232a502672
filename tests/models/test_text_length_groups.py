"""The text tower skips the positions after each caption's pooled token by running the batch in length groups:
the same features and gradients as the padded batch, and as open_clip; off where it must be."""
import itertools
import random

import pytest
from references import require
import torch

from clipforge.config import apply_overrides
from clipforge.layers.length_buckets import length_buckets
from clipforge.layers.pool import text_pool_index
from clipforge.models.clip import CLIP
from clipforge.models.convert import config_to_open_clip, convert_state_dict
from clipforge.models.registry import get_architecture
from model_helpers import randomize_


def _cost(groups, group_cost):
    return sum(len(rows) * length for rows, length in groups) + group_cost * len(groups)


def _brute_force(needed, max_groups, group_cost):
    """The cheapest split into groups of neighbours in sorted order, by trying every set of cuts."""
    lengths = sorted(set(needed))
    best = float("inf")
    for groups in range(1, min(max_groups, len(lengths)) + 1):
        for cuts in itertools.combinations(range(1, len(lengths)), groups - 1):
            bounds = list(zip((0, *cuts), (*cuts, len(lengths))))
            split = [([i for i, n in enumerate(needed) if lengths[a] <= n <= lengths[b - 1]], lengths[b - 1])
                     for a, b in bounds]
            best = min(best, _cost(split, group_cost))
    return best


@pytest.mark.parametrize("seed", range(30))
def test_length_buckets_cover_every_sample_once_at_least_its_need_at_least_cost(seed):
    rng = random.Random(seed)
    needed = [rng.choice([rng.randint(1, 20), rng.randint(1, 77), 77]) for _ in range(rng.randint(1, 40))]
    max_groups, group_cost = rng.randint(1, 4), rng.choice([0, 16, 128])
    groups = length_buckets(needed, max_groups=max_groups, group_cost=group_cost)
    members = [i for rows, _ in groups for i in rows]
    assert sorted(members) == list(range(len(needed)))
    assert 1 <= len(groups) <= max_groups
    assert all(needed[i] <= length for rows, length in groups for i in rows)
    assert all(max(needed[i] for i in rows) == length for rows, length in groups)  # no group longer than needed
    assert [length for _, length in groups] == sorted({length for _, length in groups})
    assert all(rows == sorted(rows) for rows, _ in groups)
    assert _cost(groups, group_cost) == _brute_force(needed, max_groups, group_cost)


def test_length_buckets_edge_cases():
    assert length_buckets([]) == []
    assert length_buckets([77] * 5) == [([0, 1, 2, 3, 4], 77)]
    assert length_buckets([3]) == [([0], 3)]
    assert length_buckets([5, 60], max_groups=1) == [([0, 1], 60)]


def _tokens(batch, context, vocab, seed=0, full=True):
    """Captions of varied length: random ids, end-of-text (the largest id) last, zero padding; one fills the context
    when ``full`` (a long caption, truncated)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, context, dtype=torch.long)
    for i in range(batch):
        n = context if full and i == batch // 2 else int(torch.randint(2, context, (1,), generator=gen))
        tokens[i, :n] = torch.randint(1, vocab - 1, (n,), generator=gen)
        tokens[i, n - 1] = vocab - 1
    return tokens


def _text_tower(overrides=None, seed=0):
    config = apply_overrides(get_architecture("tiny-vit"), overrides or {})
    torch.manual_seed(seed)
    return randomize_(CLIP(config)).text


def _features_and_grads(text, tokens, groups):
    text.length_groups = groups
    text.zero_grad()
    features = text(tokens)
    (features * torch.linspace(-1, 1, features.shape[-1])).square().sum().backward()
    return features.detach(), {n: p.grad.clone() for n, p in text.named_parameters() if p.grad is not None}


def _assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()) + 1e-12)


@pytest.mark.parametrize("overrides", [{}, {"text.pool": "eos", "text.eos_id": 999}, {"text.pool": "first"},
                                       {"text.layer_scale_init": 0.5}])
def test_groups_give_the_padded_batch_features_and_gradients(overrides):
    text = _text_tower(overrides)
    tokens = _tokens(12, text.config.context_length, text.config.vocab_size)
    if overrides.get("text.pool") == "eos":
        tokens[tokens == text.config.vocab_size - 1] = 999
    needed = text_pool_index(tokens, text.config.pool, text.config.eos_id) + 1
    groups = length_buckets(needed.tolist(), group_cost=0)
    assert len(groups) > 1 or overrides.get("text.pool") == "first"  # the grouped path runs
    padded, padded_grads = _features_and_grads(text, tokens, 0)
    for max_groups in (1, 4):
        grouped, grads = _features_and_grads(text, tokens, max_groups)
        _assert_close(grouped, padded)
        assert sorted(grads) == sorted(padded_grads)
        for name in grads:
            _assert_close(grads[name], padded_grads[name])


def test_groups_with_gradient_checkpointing_and_in_inference():
    text = _text_tower()
    tokens = _tokens(10, text.config.context_length, text.config.vocab_size, seed=3)
    padded, padded_grads = _features_and_grads(text, tokens, 0)
    text.set_grad_checkpointing(True)
    grouped, grads = _features_and_grads(text, tokens, 4)
    _assert_close(grouped, padded)
    for name in grads:
        _assert_close(grads[name], padded_grads[name])
    with torch.inference_mode():  # the fused CPU inference path, per group
        text.length_groups = 4
        _assert_close(text(tokens), padded)


def _calls_seen_by_hook(module, text, tokens):
    shapes = []
    handle = module.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    try:
        text(tokens)
    finally:
        handle.remove()
    return shapes


def test_groups_are_off_where_they_must_be():
    text = _text_tower()
    context = text.config.context_length
    tokens = _tokens(8, context, text.config.vocab_size)
    assert text._length_groups(text_pool_index(tokens, "argmax"), context) is not None  # grouped without hooks
    # a forward hook anywhere inside the tower sees the whole padded batch, in one call
    width = text.config.width
    for module, shape in [(text.transformer.blocks[0], (8, context, width)), (text.transformer.blocks[0].attn.qkv,
                                                                              (8, context, width)),
                          (text.token_embedding, (8, context))]:
        assert _calls_seen_by_hook(module, text, tokens) == [shape]
    # a bidirectional tower (or one pooling the last position) needs every position
    for overrides in ({"text.pool": "last", "text.causal_mask": False}, {"text.pool": "last"}):
        other = _text_tower(overrides)
        assert other._length_groups(torch.tensor([1, 2, 3]), context) is None
    # tracing keeps one static graph: the traced tower gives the padded features on other lengths too
    with torch.no_grad():
        traced = torch.jit.trace(text, (tokens,), check_trace=False)
        other = _tokens(8, context, text.config.vocab_size, seed=5, full=False)
        text.length_groups = 0
        _assert_close(traced(other), text(other))
    text.length_groups = 4
    assert text._length_groups(torch.tensor([2, 3, 15]), context) is not None
    # off the CPU (reading the lengths would wait for the device), with autograd or without
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            assert text._length_groups(torch.tensor([2, 3, 15], device="meta"), context) is None


@pytest.mark.parametrize("strict", [False, True])
def test_exported_graph_keeps_every_position(strict):
    """torch.export (the path of ONNX's dynamo exporter) records the padded computation: one graph for all lengths."""
    text = _text_tower().eval()
    context = text.config.context_length
    program = torch.export.export(text, (_tokens(8, context, text.config.vocab_size),), strict=strict)
    other = _tokens(8, context, text.config.vocab_size, seed=5, full=False)
    with torch.no_grad():
        text.length_groups = 0
        padded = text(other)
        _assert_close(program.module()(other), padded)


def test_open_clip_parity_on_captions_of_every_length():
    open_clip = require("open_clip")
    config = get_architecture("tiny-vit")
    reference = randomize_(open_clip.model.CLIP(**config_to_open_clip(config)).eval())
    with torch.device("meta"):
        model = CLIP(config).eval()
    model.load_state_dict(convert_state_dict(reference.state_dict(), config), assign=True)
    tokens = _tokens(16, config.text.context_length, config.text.vocab_size, seed=7)
    with torch.no_grad():
        ours, theirs = model.encode_text(tokens), reference.encode_text(tokens)
    assert (ours - theirs).abs().max().item() <= 1e-5
