"""The sum tree's walk and write-back as compiled CPU loops (numba), for `SumTree` on CPU.

On CPU a 256-draw batch is tiny work: the tensor-op version of `SumTree` spends it in ~75 op
dispatches of 5-10 us each. These loops do the same arithmetic in one call each, in the same
order (running sums left to right, the same clamp), so `sample` draws the same rows as the
tensor-op walk on the same tree (tests/test_sumtree.py checks that).

The tree is one flat float64 array; level d occupies flat[offsets[d] : offsets[d] + lengths[d]],
leaves first (level 0), the top level last. Every level below the top is a whole number of
blocks of `b` children.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def sample_rows(flat, offsets, lengths, b, r, stratified, tiny, out):  # pragma: no cover - compiled
    """Rows for the uniforms r [n] in [0, 1) into out [n]; returns the total.

    The point of draw i is (1 - r_i) * total, or with stratified (i + 1 - r_i) / n * total: the
    same float64 arithmetic as SumTree's tensor walk, so both pick the same rows.

    Level by level over all draws, not draw by draw: at 1M rows the lower levels miss the cache
    on nearly every block, and consecutive independent draws let the CPU overlap those misses."""
    levels = offsets.shape[0]
    top_off, top_len = offsets[levels - 1], lengths[levels - 1]
    top_cum = np.empty(top_len)
    running = 0.0
    for j in range(top_len):
        running += flat[top_off + j]
        top_cum[j] = running
    total = running
    if not total > 0.0:
        return total
    n = r.shape[0]
    v = np.empty(n)  # each point's distance to the right edge of its current node
    for i in range(n):
        u_frac = (r[i] - (i + 1.0)) / -max(n, 1) if stratified else -r[i] + 1.0
        u = u_frac * total
        node = 0
        while node < top_len - 1 and top_cum[node] < u:
            node += 1
        out[i] = node
        v[i] = top_cum[node] - u
    touched = 0.0
    for d in range(levels - 2, -1, -1):
        # Touch every cache line of every draw's block first: these loads depend on nothing, so
        # the memory system serves them in parallel; the walk below then reads from cache.
        for i in range(n):
            base = offsets[d] + out[i] * b
            for j in range(0, b, 8):
                touched += flat[base + j]
        for i in range(n):
            node = out[i]
            base = offsets[d] + node * b
            # The node's stored sum is its children's sum added left to right (write_rows and
            # rebuild_all add in that order), so it is the last running sum of the tensor walk.
            node_sum = flat[offsets[d + 1] + node]
            u = min(max(node_sum - v[i], tiny), node_sum)  # torch.clamp(sum - v, tiny, sum)
            running = 0.0
            child = 0
            last_with_mass = 0
            while True:
                mass = flat[base + child]
                running += mass
                if mass > 0.0:
                    last_with_mass = child
                if running >= u and mass > 0.0:
                    break
                if child == b - 1:  # a sum stored by other code may exceed the children's
                    child = last_with_mass
                    running = 0.0
                    for j in range(child + 1):
                        running += flat[base + j]
                    break
                child += 1
            v[i] = running - u
            out[i] = node * b + child
    if touched < 0.0:  # never (priorities are >= 0); keeps the touching loads from being removed
        out[0] = -1
    return total


@njit(cache=True, nogil=True)
def write_rows(flat, offsets, lengths, b, capacity, idx, priority):  # pragma: no cover - compiled
    """Leaves idx [K] <- priority [K] (the last occurrence wins), then their ancestors.

    Returns 0, or 1 for an index out of [0, capacity), 2 for a priority that is negative or not
    finite; nothing is written then."""
    for k in range(idx.shape[0]):
        if idx[k] < 0 or idx[k] >= capacity:
            return 1
        p = priority[k]
        if not (p >= 0.0 and p < np.inf):
            return 2
    for k in range(idx.shape[0]):
        flat[idx[k]] = priority[k]
    # Level by level, each level's blocks touched first (independent loads, served in parallel).
    levels = offsets.shape[0]
    nodes = idx.copy()
    touched = 0.0
    for d in range(levels - 1):
        for k in range(nodes.shape[0]):
            nodes[k] //= b
            base = offsets[d] + nodes[k] * b
            for j in range(0, b, 8):
                touched += flat[base + j]
        for k in range(nodes.shape[0]):
            base = offsets[d] + nodes[k] * b
            running = 0.0
            for j in range(b):
                running += flat[base + j]
            flat[offsets[d + 1] + nodes[k]] = running
    return 0 if touched >= 0.0 else 3


@njit(cache=True, nogil=True)
def rebuild_all(flat, offsets, lengths, b):  # pragma: no cover - compiled
    """Every inner node from the leaves, with the same left-to-right sums as write_rows."""
    for d in range(offsets.shape[0] - 1):
        for node in range(lengths[d] // b):
            base = offsets[d] + node * b
            running = 0.0
            for j in range(b):
                running += flat[base + j]
            flat[offsets[d + 1] + node] = running
