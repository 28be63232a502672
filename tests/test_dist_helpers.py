"""Single-process behaviour of clipforge.dist (the multi-process paths are in test_dist_losses.py)."""
import pytest
import torch

from clipforge.dist import Collective, all_gather_with_grad, get_rank, get_world_size, is_distributed, \
    ring_shift_with_grad


def test_single_process_defaults():
    assert (get_rank(), get_world_size()) == (0, 1)
    coll = Collective.current()
    assert (coll.rank, coll.world_size, coll.is_distributed) == (0, 1, False)
    assert not is_distributed(None) and not is_distributed(coll)


def test_helpers_are_identity_in_one_process():
    x = torch.randn(3, 4, requires_grad=True)
    assert all_gather_with_grad(x, Collective()) is x
    assert ring_shift_with_grad(x, Collective()) is x


def test_collective_validation():
    with pytest.raises(ValueError, match="rank 3"):
        Collective(rank=3, world_size=2)
    with pytest.raises(RuntimeError, match="init_process_group"):
        Collective(rank=0, world_size=2)


def test_gradients_are_reduced_in_buckets():
    """average_gradients flattens same-dtype gradients into buckets: a few all-reduces, not one per tensor."""
    from clipforge.dist import _buckets
    tensors = [torch.zeros(10), torch.zeros(10), torch.zeros(10, dtype=torch.float64), torch.zeros(100),
               torch.zeros(5)]
    groups = [[t.numel() for t in bucket] for bucket in _buckets(tensors, limit=100)]
    assert groups == [[10, 10], [10], [100], [5]]  # split at the dtype change and at the size limit
