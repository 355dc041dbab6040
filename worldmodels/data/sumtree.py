"""A sum tree on the training device, for sampling rows in proportion to a priority.

Sampling n rows costs O(n log N) and writing back K priorities O(K log N), against O(N) per
batch for `torch.multinomial` over the whole priority vector (which also refuses more than
2^24 categories). Both are a fixed handful of batched tensor ops per tree level: no host sync
on CUDA, no Python loop over rows, only a loop over the (few) levels.

Layout: `levels[0]` holds the leaves (one priority per row); `levels[d + 1][i]` is the sum of
the block `levels[d][b*i : b*(i+1)]`, b = `branching`. Levels are added until one has at most
`top` nodes, and that top level is searched flat instead of being summed up to a single root.
Every level below the top is zero-padded to a multiple of b, so it reshapes to [nodes above, b]
without bounds checks; padding stays zero. b = 2, top = 1 is the textbook binary tree. At small
batches the cost per level is op dispatch and kernel launches, not arithmetic, so the defaults
(b = top = 32: 4 levels at 1M rows, 5 at 2^25) use few, wide levels. Each step works on an
[n, b] block (b <= top), which keeps a 256-row batch under the size at which CPU ops go
multi-threaded: thread wake-ups cost far more than the work on a busy machine. For the same
reason no op in the hot path is `searchsorted` (multi-threaded from 200 queries).

Precision: every node is float64. float32 has a 24-bit significand, so once a sum passes 2^24
times a typical priority, adding one more priority to it rounds (2^24 + 1 == 2^24 in float32):
sums drift from their leaves, and a float32 uniform times the total cannot address single rows
any more, so above ~2^24 rows some rows are over- or under-drawn and rows near the end may be
unreachable. float64 (53 bits) keeps sums exact to ~1e-16 relative for any capacity that fits
in memory, and the uniforms are drawn in float64 too. A parent is always recomputed as the sum
of its children (never updated by adding a delta), so round-off cannot accumulate over
millions of updates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class SumTree:
    """Non-negative priorities for `capacity` rows; `sample` draws rows in proportion to them.

    Rows start at priority 0 (never drawn). Everything lives on `device`; pass a
    `torch.Generator` on the same device for reproducible draws. No method syncs with the host
    on CUDA, so `sample` and `update` can be captured in a CUDA graph.
    """

    def __init__(self, capacity: int, device: torch.device | str = "cpu", branching: int = 32, top: int = 32):
        if capacity <= 0:
            raise ValueError(f"SumTree capacity must be positive, got {capacity}.")
        if branching < 2 or top < 1:
            raise ValueError(f"SumTree needs branching >= 2 and top >= 1, got {branching} and {top}.")
        self.capacity, self.branching, self.top = int(capacity), int(branching), int(top)
        self.device = torch.device(device)
        sizes = [self.capacity]  # real nodes per level, leaves first
        while sizes[-1] > self.top:
            sizes.append(-(-sizes[-1] // self.branching))
        padded = [n * self.branching for n in sizes[1:]] + [sizes[-1]]
        # leaves get one scratch slot at the end for update's discarded duplicate writes
        self._leaves = torch.zeros(padded[0] + 1, dtype=torch.float64, device=self.device)
        self._scratch = torch.tensor(padded[0], device=self.device)
        self.levels: list[Tensor] = [self._leaves[: padded[0]]]
        self.levels += [torch.zeros(n, dtype=torch.float64, device=self.device) for n in padded[1:]]
        # [nodes above, b] views of the block levels, made once (a view per call costs a dispatch)
        self._blocks = [level.view(-1, self.branching) for level in self.levels[:-1]]

    def __len__(self) -> int:
        return self.capacity

    def total(self) -> Tensor:
        """Sum of all priorities: a 0-dim float64 tensor on the device (no host sync)."""
        return self.levels[-1].sum()

    def get(self, idx: Tensor) -> Tensor:
        """Priorities of rows idx [K] -> [K] float64."""
        return self.levels[0][idx]

    # --- writing ---------------------------------------------------------------------------
    def update(self, idx: Tensor, priority: Tensor | float) -> None:
        """Set the priority of rows idx [K] to priority [K] (or a scalar), then fix their ancestors.

        Duplicate indices: the LAST occurrence in idx wins, on every device (a plain
        `leaves[idx] = priority` leaves the winner unspecified, and on CUDA it varies).
        Priorities must be finite and >= 0 and idx in [0, capacity). Both are checked on CPU;
        on CUDA a check would cost a host sync per call, so there they are the caller's job.
        """
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device)
        if idx.dim() != 1:
            raise ValueError(f"SumTree.update: idx must be 1-D, got shape {tuple(idx.shape)}.")
        if idx.numel() == 0:
            return
        priority = torch.as_tensor(priority, dtype=torch.float64, device=self.device).expand(idx.shape)
        # Last write wins: after a stable sort the last entry of each run of equal indices is the
        # last occurrence in idx. Only those write their leaf; the others write a scratch slot
        # past the blocks (never read), so no leaf gets two writes and the result does not
        # depend on the order the scatter runs in.
        rows, order = torch.sort(idx, stable=True)  # [K] ascending, [K]
        if self.device.type == "cpu":
            lo, hi = torch.aminmax(priority)
            if not (int(rows[0]) >= 0 and int(rows[-1]) < self.capacity):
                raise IndexError(f"SumTree.update: indices must lie in [0, {self.capacity}).")
            if not (float(lo) >= 0.0 and float(hi) < float("inf")):
                raise ValueError("SumTree.update: priorities must be finite and >= 0.")
        run_last = F.pad(rows[1:] != rows[:-1], (0, 1), value=True)  # [K] last of its run
        target = torch.where(run_last, rows, self._scratch)  # [K]
        self._leaves.index_copy_(0, target, priority.index_select(0, order))
        # Ancestors, one level at a time; repeated parents are fine (each write carries the same
        # freshly computed sum).
        for blocks, parent in zip(self._blocks, self.levels[1:], strict=True):
            rows = torch.div(rows, self.branching, rounding_mode="floor")  # [K] parent nodes
            parent.index_copy_(0, rows, blocks.index_select(0, rows).sum(1))

    def set_all(self, priority: Tensor) -> None:
        """Replace every priority at once (priority [capacity]); O(capacity), no sort."""
        priority = torch.as_tensor(priority, dtype=torch.float64, device=self.device)
        if priority.shape != (self.capacity,):
            raise ValueError(f"SumTree.set_all: expected shape ({self.capacity},), got {tuple(priority.shape)}.")
        if self.device.type == "cpu" and not bool(((priority >= 0) & (priority < float("inf"))).all()):
            raise ValueError("SumTree.set_all: priorities must be finite and >= 0.")
        self.levels[0][: self.capacity] = priority
        self.rebuild()

    def rebuild(self) -> None:
        """Recompute every inner node from the leaves (the brute-force reference for `update`)."""
        for blocks, parent in zip(self._blocks, self.levels[1:], strict=True):
            parent[: blocks.shape[0]] = blocks.sum(1)

    # --- sampling --------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, stratified: bool = False) -> Tensor:
        """n row indices [n] (int64), drawn with replacement in proportion to priority.

        stratified=True draws one uniform in each of n equal slices of the total mass (as in
        PER): lower variance, and the rows come out in increasing order.

        Never returns a row of priority 0 or an index >= capacity, also where float round-off
        puts a draw at or past the upper edge of a node: each step takes the first child whose
        running sum reaches min(u, node sum), and 0 < u, so a child of mass 0 never qualifies.
        An all-zero tree raises on CPU; on CUDA (where the check would sync) it returns row 0,
        so check total() > 0 first if the tree can be empty.
        """
        if n < 0:
            raise ValueError(f"SumTree.sample: n must be >= 0, got {n}.")
        # Running sums are taken along dim 0 of [nodes, draws] tensors: there CPU and CUDA (its
        # outer-dim scan) both add strictly left to right, so a running sum of non-negative
        # numbers never decreases and stays flat across a child of mass 0. CUDA scans a 1-D or
        # innermost dim in tree order, which promises neither; so the top level is scanned as two
        # identical columns, and a single draw is made as two identical ones.
        cum = self.levels[-1][:, None].expand(-1, 2).cumsum(0)[:, :1]  # [T, 1] over the top level
        total = cum[-1:]  # [1, 1]
        if self.device.type == "cpu" and not float(total) > 0.0:
            raise ValueError("SumTree.sample: every priority is 0 (or one is NaN); nothing to draw.")
        r = torch.rand(1, n, dtype=torch.float64, device=self.device, generator=generator)  # [1, n] in [0, 1)
        if stratified:
            r = r.sub_(torch.arange(1, n + 1, dtype=torch.float64, device=self.device)).div_(-max(n, 1))
        else:
            r = r.neg_().add_(1.0)
        u = r.mul_(total)  # [1, n] in (0, total]: a point of the total mass, never 0
        if n == 1:
            u = u.repeat(1, 2)  # [1, 2]
        # top level: the first node whose running sum reaches u (u <= total: no clamp needed)
        node = (cum < u).sum(0, keepdim=True)  # [1, m]
        u = u.sub_(torch.take(F.pad(cum, (0, 0, 1, 0)), node))  # [1, m] mass left inside that node
        node = node.view(-1)  # [m]
        for blocks in reversed(self._blocks):
            cum = blocks.index_select(0, node).t().cumsum(0)  # [b, m] running sums over the children
            # clamp: round-off in the subtraction above can leave u a hair past this node's own
            # sum; clamped, the first child reaching u is at worst the last child with mass
            u = torch.minimum(u, cum[-1:])  # [1, m] still > 0 (the node has mass)
            child = (cum < u).sum(0, keepdim=True)  # [1, m] in [0, b)
            u = u.sub_(F.pad(cum, (0, 0, 1, 0)).gather(0, child))  # [1, m] minus the exact mass before it: > 0
            node = torch.add(child.view(-1), node, alpha=self.branching)  # [m] that child's index
        return node[:n]

    # --- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Every level as a CPU tensor (plain tensors and ints: loads with weights_only=True).

        Inner nodes are saved too, so a restored tree is bit-identical to the saved one and
        draws the same rows from the same generator state.
        """
        return {
            "capacity": self.capacity,
            "branching": self.branching,
            "top": self.top,
            "levels": [level.cpu().clone() for level in self.levels],
        }

    def load_state_dict(self, state: dict) -> None:
        saved = (int(state["capacity"]), int(state["branching"]), int(state["top"]))
        if saved != (self.capacity, self.branching, self.top):
            raise ValueError(
                f"Checkpointed SumTree has capacity/branching/top {saved}, this one "
                f"{(self.capacity, self.branching, self.top)}; resume with the same config."
            )
        levels = state["levels"]
        if [tuple(t.shape) for t in levels] != [tuple(t.shape) for t in self.levels]:
            raise ValueError("Checkpointed SumTree levels do not match this tree's layout.")
        for mine, level in zip(self.levels, levels, strict=True):
            mine.copy_(level)
