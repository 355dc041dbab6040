"""A sum tree on the training device, for sampling rows in proportion to a priority.

Sampling n rows costs O(n log N) and writing back K priorities O(K log N), against O(N) per
batch for `torch.multinomial` over the whole priority vector (which also refuses more than
2^24 categories). Both are a fixed handful of batched tensor ops per tree level: no host sync
on CUDA, no Python loop over rows, only a loop over the (few) levels.

Layout: `levels[0]` holds the leaves (one priority per row); `levels[d + 1][i]` is the sum of
the block `levels[d][b*i : b*(i+1)]`, b = `branching`. Levels are added until one has at most
`top` nodes, and that top level is searched flat instead of being summed up to a single root.
Every level below the top is zero-padded to a multiple of b, so it reshapes to [nodes above, b]
without bounds checks; padding stays zero. b = 2, top = 1 is the textbook binary tree.

At replay-sized batches a level costs a dozen op dispatches / kernel launches, not arithmetic,
so few, wide levels pay: the default b = top = 32 gives 4 levels at 1M rows, 5 at 2^25. Wider
does not pay: each step scans an [n, b] block sequentially (see `sample`), a chain of b dependent
adds per draw that a GPU runs b loads deep (a top of 8192 made a CUDA-graph batch 5x slower),
and on CPU a 256-draw batch with b = 32 stays under the size at which ops go multi-threaded,
where waking threads costs more than the work (for the same reason no op in the hot path is
`searchsorted`, which goes multi-threaded from 200 queries).

On CPU (`kernel="compiled"`, the default there) the walk and the write-back run as compiled
loops (sumtree_cpu.py, numba) over the same layout and with the same arithmetic, so on the same
levels they draw the same rows as the tensor ops; a 256-row batch then costs tens of
microseconds instead of ~75 op dispatches. `kernel="tensor"` keeps the tensor ops on CPU.

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

import numpy as np
import torch
from torch import Tensor


class SumTree:
    """Non-negative priorities for `capacity` rows; `sample` draws rows in proportion to them.

    Rows start at priority 0 (never drawn). Everything lives on `device`; pass a
    `torch.Generator` on the same device for reproducible draws. No method syncs with the host
    on CUDA, so `sample` and `update` can run ahead of the host and be captured in a CUDA graph.
    """

    def __init__(self, capacity: int, device: torch.device | str = "cpu", branching: int = 32, top: int = 32,
                 kernel: str = "auto"):
        if capacity <= 0:
            raise ValueError(f"SumTree capacity must be positive, got {capacity}.")
        if kernel not in ("auto", "compiled", "tensor"):
            raise ValueError(f"SumTree kernel must be 'auto', 'compiled' or 'tensor', got {kernel!r}.")
        self.device = torch.device(device)
        if kernel == "compiled" and self.device.type != "cpu":
            raise ValueError("SumTree kernel='compiled' runs on CPU only; use 'auto' or 'tensor' on CUDA.")
        # On CPU the walk and the write-back run as compiled loops (sumtree_cpu.py): the same
        # arithmetic without ~75 op dispatches per batch. On CUDA, batched tensor ops.
        self.kernel = "compiled" if kernel == "auto" and self.device.type == "cpu" else kernel
        self._build(int(capacity), branching, top)

    def _build(self, capacity: int, branching: int, top: int) -> None:
        if branching < 2 or top < 1:
            raise ValueError(f"SumTree needs branching >= 2 and top >= 1, got {branching} and {top}.")
        self.capacity, self.branching, self.top = capacity, int(branching), int(top)
        sizes = [capacity]  # real nodes per level, leaves first
        while sizes[-1] > self.top:
            sizes.append(-(-sizes[-1] // self.branching))
        padded = [n * self.branching for n in sizes[1:]] + [sizes[-1]]
        # One flat float64 buffer: the leaves, one scratch slot (for the duplicate writes update
        # discards), then each level above. The levels are views into it.
        lengths = [padded[0] + 1] + padded[1:]
        offsets = [sum(lengths[:d]) for d in range(len(lengths))]
        self._flat = torch.zeros(sum(lengths), dtype=torch.float64, device=self.device)
        self._leaves = self._flat[: lengths[0]]
        self.levels: list[Tensor] = [self._flat[o : o + n] for o, n in zip(offsets, padded, strict=True)]
        # [nodes above, b] views of the block levels, made once (a view per call costs a dispatch)
        self._blocks = [level.view(-1, self.branching) for level in self.levels[:-1]]
        self._scratch = torch.tensor(padded[0], device=self.device)
        self._end = torch.tensor([-1], device=self.device)  # equals no row index
        self._tiny = torch.tensor(torch.finfo(torch.float64).tiny, device=self.device)  # > 0 even with FTZ
        if self.kernel == "compiled":
            from worldmodels.data import sumtree_cpu

            self._cpu = sumtree_cpu
            self._np_flat = self._flat.numpy()  # shares memory with the tensor
            self._np_offsets = np.asarray(offsets, dtype=np.int64)
            self._np_lengths = np.asarray(padded, dtype=np.int64)
            self._tiny_float = float(self._tiny)

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
        if self.kernel == "compiled":  # float32 or float64 priorities, widened inside the loop
            priority = torch.as_tensor(priority, device=self.device)
            if priority.dtype not in (torch.float32, torch.float64):
                priority = priority.double()
            error = self._cpu.write_rows(self._np_flat, self._np_offsets, self._np_lengths, self.branching,
                                         self.capacity, idx.contiguous().numpy(),
                                         priority.expand(idx.shape).contiguous().numpy())
            if error == 1:
                raise IndexError(f"SumTree.update: indices must lie in [0, {self.capacity}).")
            if error == 2:
                raise ValueError("SumTree.update: priorities must be finite and >= 0.")
            return
        priority = torch.as_tensor(priority, dtype=torch.float64, device=self.device).expand(idx.shape)
        rows, order = torch.sort(idx, stable=True)  # [K] ascending, [K]
        if self.device.type == "cpu":
            lo, hi = torch.aminmax(priority)
            if not (int(rows[0]) >= 0 and int(rows[-1]) < self.capacity):
                raise IndexError(f"SumTree.update: indices must lie in [0, {self.capacity}).")
            if not (float(lo) >= 0.0 and float(hi) < float("inf")):
                raise ValueError("SumTree.update: priorities must be finite and >= 0.")
        # Last write wins: after the stable sort, the last entry of each run of equal indices is
        # that index's last occurrence in idx. Only it writes the leaf; the others write the
        # scratch slot (never read), so no leaf gets two writes and the result does not depend
        # on the order the scatter runs in.
        last_of_run = rows != torch.cat((rows[1:], self._end))  # [K]
        self._leaves.index_copy_(0, torch.where(last_of_run, rows, self._scratch), priority.index_select(0, order))
        # Ancestors, one level at a time. Repeated parents are fine: every write to a parent
        # carries the same freshly computed sum.
        for blocks, parent in zip(self._blocks, self.levels[1:], strict=True):
            rows = torch.div(rows, self.branching, rounding_mode="floor")  # [K] parent nodes
            parent.index_copy_(0, rows, blocks.index_select(0, rows).sum(1))

    def set_all(self, priority: Tensor) -> None:
        """Replace every priority at once (priority [capacity]); O(capacity), no sort."""
        priority = torch.as_tensor(priority, dtype=torch.float64, device=self.device)
        if priority.shape != (self.capacity,):
            raise ValueError(f"SumTree.set_all: expected shape ({self.capacity},), got {tuple(priority.shape)}.")
        if self.device.type == "cpu":
            lo, hi = torch.aminmax(priority)
            if not (float(lo) >= 0.0 and float(hi) < float("inf")):
                raise ValueError("SumTree.set_all: priorities must be finite and >= 0.")
        self.levels[0][: self.capacity] = priority
        self.rebuild()

    def rebuild(self) -> None:
        """Recompute every inner node from the leaves (the brute-force reference for `update`)."""
        if self.kernel == "compiled":
            self._cpu.rebuild_all(self._np_flat, self._np_offsets, self._np_lengths, self.branching)
            return
        for blocks, parent in zip(self._blocks, self.levels[1:], strict=True):
            parent[: blocks.shape[0]] = blocks.sum(1)

    # --- sampling --------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, stratified: bool = False) -> Tensor:
        """n row indices [n] (int64), drawn with replacement in proportion to priority.

        Each draw is one uniform point u of the total mass, followed down the tree. With
        stratified=True the n points fall one in each of n equal slices of the mass (as in PER):
        lower variance, and the rows come out in order.

        Never returns a row of priority 0 or an index >= capacity, float round-off included:
        each step takes the first child whose running sum reaches u, with 0 < u <= (the node's
        running sum) enforced at every level, so a child of mass 0 never qualifies. An all-zero
        tree raises on CPU; on CUDA (where the check would sync) it returns row 0, so check
        total() > 0 first if the tree can be empty.
        """
        if n < 0:
            raise ValueError(f"SumTree.sample: n must be >= 0, got {n}.")
        # Running sums are taken along dim 0 of [nodes, draws] tensors: there CPU and CUDA (its
        # outer-dim scan) both add strictly left to right, so a running sum of non-negative
        # numbers never decreases and stays flat across a child of mass 0. CUDA scans a 1-D or
        # innermost dim in tree order, which promises neither; so the top level is scanned as two
        # identical columns, and a single draw is made as two identical ones.
        r = torch.rand(1, n, dtype=torch.float64, device=self.device, generator=generator)  # [1, n] in [0, 1)
        if self.kernel == "compiled":
            rows = np.empty(n, dtype=np.int64)
            total = self._cpu.sample_rows(self._np_flat, self._np_offsets, self._np_lengths, self.branching,
                                          r.numpy()[0], stratified, self._tiny_float, rows)
            if not total > 0.0:
                raise ValueError("SumTree.sample: every priority is 0 (or one is NaN); nothing to draw.")
            return torch.from_numpy(rows)
        if stratified:
            r = r.sub_(torch.arange(1, n + 1, dtype=torch.float64, device=self.device)).div_(-max(n, 1))
        else:
            r = r.neg_().add_(1.0)
        cum = self.levels[-1][:, None].expand(-1, 2).cumsum(0)[:, :1]  # [T, 1] over the top level
        total = cum[-1:]  # [1, 1]
        if self.device.type == "cpu" and not float(total) > 0.0:
            raise ValueError("SumTree.sample: every priority is 0 (or one is NaN); nothing to draw.")
        u = r.mul_(total)  # [1, n] in (0, total]: the point, from the left edge of the mass
        if n == 1:
            u = u.repeat(1, 2)  # [1, 2]
        node = (cum < u).sum(0, keepdim=True)  # [1, m] first top node whose running sum reaches u
        # Carried down: v, the point's distance to the RIGHT edge of the chosen node, in
        # [0, node mass). The next level turns it back into a distance from the left edge with
        # its own running sum, so no exclusive prefix (a padded copy per level) is needed.
        v = torch.take(cum, node).sub_(u)  # [1, m]
        node = node.view(-1)  # [m]
        for blocks in reversed(self._blocks):
            cum = blocks.index_select(0, node).t().cumsum(0)  # [b, m] running sums over the children
            # Round-off (this node's mass is re-added here, in another order) can put sum - v at
            # or below 0, or past the sum: clamped into [tiny, sum], the first child reaching u
            # is at worst the first or the last child with mass. (An all-zero node gives u = 0:
            # child 0, which keeps the index in range.)
            u = torch.clamp(cum[-1:] - v, self._tiny, cum[-1:])  # [1, m]
            child = (cum < u).sum(0, keepdim=True)  # [1, m] in [0, b)
            v = cum.gather(0, child).sub_(u)  # [1, m] >= 0
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
        """Restore a saved tree of the same capacity; its layout (branching, top) is adopted."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"Checkpointed SumTree has capacity {state['capacity']}, this one {self.capacity}; "
                "resume with the same config."
            )
        if (int(state["branching"]), int(state["top"])) != (self.branching, self.top):
            self._build(self.capacity, int(state["branching"]), int(state["top"]))
        levels = state["levels"]
        if [tuple(t.shape) for t in levels] != [tuple(t.shape) for t in self.levels]:
            raise ValueError("Checkpointed SumTree levels do not match its own layout.")
        for mine, level in zip(self.levels, levels, strict=True):
            mine.copy_(level)
