"""Length buckets: run a batch of sequences in a few groups, each cut to the longest prefix its members need.

A causal text tower that pools one token per sequence (CLIP's end-of-text token) never lets a position after that
token influence the result, so sample ``i`` needs only its first ``needed[i]`` positions. Captions are short (web
alt-text: ~16 of 77 tokens on average), yet one long caption makes a batch's longest need the whole context:
grouping samples by need computes a fraction of the padded batch, with the same result for each sample.
"""
from __future__ import annotations

# Cost of one more group, in positions (sample x position pairs): its fixed costs (one more pass through the
# tower's layers, smaller matrix products). On a CPU one position of a base-size text tower costs about a
# millisecond of training step, one more group a few.
GROUP_COST = 16
MAX_GROUPS = 4


def length_buckets(needed: list[int], max_groups: int = MAX_GROUPS,
                   group_cost: int = GROUP_COST) -> list[tuple[list[int], int]]:
    """``[(sample indices, length), ...]``: every sample in one group, whose length is its members' longest need;
    groups in increasing length, members in their batch order.

    Minimises ``sum(len(members) * length) + group_cost * groups`` over at most ``max_groups`` groups, exactly: a
    best split only ever groups samples whose needs are neighbours in sorted order, so a dynamic programme over the
    distinct needs (at most the context length) finds it.
    """
    if not needed:
        return []
    lengths = sorted(set(needed))
    count = {n: 0 for n in lengths}
    for n in needed:
        count[n] += 1
    # upto[j]: samples whose need is among the first j distinct lengths
    upto = [0]
    for n in lengths:
        upto.append(upto[-1] + count[n])
    m, inf = len(lengths), float("inf")
    # best[g][k]: cheapest cover of the first k distinct lengths by g groups; cut[g][k]: where its last group starts
    best = [[inf] * (m + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (m + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0
    for g in range(1, max_groups + 1):
        for k in range(1, m + 1):
            for j in range(k):
                cost = best[g - 1][j] + (upto[k] - upto[j]) * lengths[k - 1] + group_cost
                if cost < best[g][k]:
                    best[g][k], cut[g][k] = cost, j
    groups = min(range(1, max_groups + 1), key=lambda g: (best[g][m], g))
    bounds, k = [], m
    for g in range(groups, 0, -1):
        bounds.append((cut[g][k], k))
        k = cut[g][k]
    out = []
    for j, k in reversed(bounds):
        low, high = lengths[j], lengths[k - 1]
        out.append(([i for i, n in enumerate(needed) if low <= n <= high], high))
    return out
