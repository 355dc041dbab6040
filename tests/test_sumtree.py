"""SumTree: sampled frequencies, zero-priority rows, duplicate writes, totals, edge draws,
checkpoints and a capacity past 2^24, on every available device."""

from __future__ import annotations

import io

import pytest
import torch
from scipy.stats import chisquare

from worldmodels.data.sumtree import SumTree

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (branching, top): a deep binary tree, an odd branching, the default
LAYOUTS = [(2, 1), (3, 2), (32, 32)]


def gen(device: str, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-13) -> bool:
    """Equal up to float64 round-off of differently ordered sums."""
    a, b = a.cpu(), b.cpu()
    return a.shape == b.shape and bool(((a - b).abs() <= rtol * b.abs()).all())


def tree_with(priority: torch.Tensor, device: str, branching: int = 32, top: int = 32) -> SumTree:
    tree = SumTree(priority.shape[0], device, branching, top)
    tree.set_all(priority.to(device))
    return tree


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stratified", [False, True])
def test_frequencies_match_priorities(device, layout, stratified):
    priority = torch.tensor([0.0, 1.0, 2.0, 0.5, 0.0, 5.0, 6.0, 7.0, 3.0, 0.0], dtype=torch.float64)
    tree = tree_with(priority, device, *layout)
    draws = 200_000
    idx = tree.sample(draws, gen(device), stratified=stratified)
    assert idx.dtype == torch.long and idx.shape == (draws,) and idx.device.type == device
    counts = torch.bincount(idx.cpu(), minlength=10).double()
    assert counts.shape == (10,)  # nothing at or past capacity
    assert counts[priority == 0].sum() == 0
    expected = priority / priority.sum()
    assert (counts / draws - expected).abs().max() < 0.01
    positive = priority > 0
    assert chisquare(counts[positive], expected[positive] * draws).pvalue > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_zero_priority_rows_never_drawn(device):
    g = torch.Generator().manual_seed(1)
    n = 1000
    # zeros in runs (whole blocks, block tails, the end of the tree) and a wide dynamic range
    priority = torch.rand(n, generator=g, dtype=torch.float64) ** 8 * 10.0 ** torch.randint(-12, 12, (n,), generator=g)
    priority[torch.rand(n, generator=g) < 0.5] = 0.0
    priority[64:160] = 0.0
    priority[-37:] = 0.0
    for layout in LAYOUTS:
        tree = tree_with(priority, device, *layout)
        for stratified in (False, True):
            idx = tree.sample(50_000, gen(device, 2), stratified=stratified).cpu()
            assert int(idx.min()) >= 0 and int(idx.max()) < n
            assert bool((priority[idx] > 0).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_draws_at_the_edges_of_the_mass(device, layout, monkeypatch):
    """u = total (r = 0) and u just above 0 (r -> 1): round-off there must not reach a zero row,
    the padding or an index >= capacity. Rows 0-2 and the tail are zero; the sums are inexact."""
    priority = torch.zeros(53, dtype=torch.float64)
    priority[3:45] = torch.tensor([0.1, 0.7, 1e-17, 0.3] * 10 + [0.2, 1e-300])
    priority[20:30] = 0.0
    tree = tree_with(priority, device, *layout)
    real_rand = torch.rand
    # r = 0 gives u = total: the last row whose running sum reaches it is 43 (row 44 adds 1e-300,
    # below the round-off of that sum, so it is never reached; it is not a zero row either way)
    for r, expected in ((0.0, 43), (1.0 - 2.0**-53, 3)):
        monkeypatch.setattr(
            torch, "rand", lambda *shape, r=r, **kw: torch.full(shape, r, dtype=kw["dtype"], device=kw["device"])
        )
        for stratified in (False, True):
            idx = tree.sample(1 if stratified else 4, stratified=stratified).cpu()
            assert idx.tolist() == [expected] * len(idx), (r, stratified)
        monkeypatch.setattr(torch, "rand", real_rand)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_updates_match_a_brute_force_rebuild(device, layout):
    capacity = 1000  # not a power of two nor a multiple of the branching
    g = torch.Generator().manual_seed(3)
    tree = SumTree(capacity, device, *layout)
    reference = [0.0] * capacity
    for _ in range(20):
        k = int(torch.randint(1, 300, (1,), generator=g))
        idx = torch.randint(0, 60, (k,), generator=g) * int(torch.randint(1, 17, (1,), generator=g))  # many repeats
        value = torch.rand(k, generator=g, dtype=torch.float64) * (torch.rand(k, generator=g) < 0.8)
        for i, v in zip(idx.tolist(), value.tolist(), strict=True):
            reference[i] = v  # last write wins
        tree.update(idx.to(device), value.to(device))
    leaves = torch.tensor(reference, dtype=torch.float64)
    assert torch.equal(tree.get(torch.arange(capacity, device=device)).cpu(), leaves)
    fresh = tree_with(leaves, device, *layout)
    for mine, rebuilt in zip(tree.levels, fresh.levels, strict=True):
        assert close(mine, rebuilt)
    assert close(tree.total(), leaves.sum())


@pytest.mark.parametrize("device", DEVICES)
def test_total_is_the_float64_sum_of_the_leaves(device):
    g = torch.Generator().manual_seed(4)
    priority = torch.rand(12_345, generator=g, dtype=torch.float64) * 1e3
    tree = tree_with(priority, device)
    assert tree.total().dtype == torch.float64 and tree.total().dim() == 0
    assert close(tree.total(), priority.sum(), rtol=1e-14)
    integers = torch.randint(0, 1000, (12_345,), generator=g).double()  # exact in float64: equal sums
    tree.update(torch.arange(12_345, device=device), integers.to(device))
    assert float(tree.total()) == float(integers.sum())


@pytest.mark.parametrize("device", DEVICES)
def test_reproducible_with_a_generator(device):
    tree = tree_with(torch.rand(5000, generator=torch.Generator().manual_seed(5)), device)
    a, b = tree.sample(512, gen(device, 7)), tree.sample(512, gen(device, 7))
    assert torch.equal(a, b)
    assert not torch.equal(a, tree.sample(512, gen(device, 8)))


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_round_trip(device):
    tree = SumTree(777, device, branching=8, top=4)
    g = torch.Generator().manual_seed(6)
    tree.update(torch.randint(0, 777, (500,), generator=g).to(device), torch.rand(500, generator=g).to(device))
    buffer = io.BytesIO()
    torch.save(tree.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = SumTree(777, device, branching=8, top=4)
    restored.load_state_dict(state)
    assert torch.equal(restored.total(), tree.total())
    assert torch.equal(restored.sample(4096, gen(device, 9)), tree.sample(4096, gen(device, 9)))
    assert torch.equal(
        restored.sample(100, gen(device, 9), stratified=True), tree.sample(100, gen(device, 9), stratified=True)
    )
    with pytest.raises(ValueError, match="same config"):
        SumTree(778, device, branching=8, top=4).load_state_dict(state)
    adopted = SumTree(777, device)  # another layout: the checkpoint's is adopted
    adopted.load_state_dict(state)
    assert (adopted.branching, adopted.top) == (8, 4)
    assert torch.equal(adopted.sample(4096, gen(device, 9)), tree.sample(4096, gen(device, 9)))


@pytest.mark.parametrize("device", DEVICES)
def test_capacity_one_and_small_trees(device):
    tree = SumTree(1, device)
    tree.update(torch.tensor([0, 0], device=device), torch.tensor([3.0, 2.0], device=device))
    assert len(tree) == 1 and float(tree.total()) == 2.0
    assert tree.sample(10, gen(device)).tolist() == [0] * 10
    assert tree.sample(0, gen(device)).shape == (0,)
    for capacity in (2, 31, 32, 33, 1025):
        tree = tree_with(torch.arange(capacity, dtype=torch.float64), device)  # row 0 has priority 0
        idx = tree.sample(2000, gen(device)).cpu()
        assert int(idx.min()) >= 1 and int(idx.max()) < capacity


def test_bad_inputs_raise_on_cpu():
    tree = SumTree(10)
    with pytest.raises(ValueError, match="nothing to draw"):
        tree.sample(4)
    with pytest.raises(IndexError):
        tree.update(torch.tensor([10]), torch.tensor([1.0]))
    with pytest.raises(IndexError):
        tree.update(torch.tensor([-1]), torch.tensor([1.0]))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            tree.update(torch.tensor([0, 1]), torch.tensor([1.0, bad]))
    with pytest.raises(ValueError):
        tree.update(torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2))
    with pytest.raises(ValueError):
        SumTree(0)
    assert float(tree.total()) == 0.0  # nothing was written by the failed calls


@pytest.mark.parametrize("device", DEVICES)
def test_no_host_sync(device):
    """sample and update never wait on the device (so they can run ahead and be graph-captured)."""
    tree = tree_with(torch.rand(10_000, generator=torch.Generator().manual_seed(10)), device)
    newp = torch.rand(256, device=device, dtype=torch.float64)
    g = gen(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        for stratified in (False, True):
            idx = tree.sample(256, g, stratified=stratified)
            tree.update(idx, newp)
        total = tree.total()
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert idx.shape == (256,) and float(total) > 0


@pytest.mark.parametrize("device", DEVICES)
def test_capacity_past_2_pow_24(device):
    """2^25 rows: float64 sums stay exact where float32 ones would not, and the last rows are
    reachable (a float32 uniform over 2^25 rows could not address them one by one)."""
    n = 2**25
    tree = SumTree(n, device)
    tree.set_all(torch.ones(1, dtype=torch.float64, device=device).expand(n))  # no n-row temporaries
    assert float(tree.total()) == 2.0**25
    tree.update(torch.tensor([n - 1, 5], device=device), torch.tensor([3.0, 1.0], device=device))
    assert float(tree.total()) == 2.0**25 + 2.0  # 2^25 + 2 is not a float32
    # the last row holds half the mass; rows 0 .. n-2 the other half (row n-2: 2, the rest: 1)
    tree.update(torch.tensor([n - 1, n - 2], device=device), torch.tensor([2.0**25, 2.0], device=device))
    assert float(tree.total()) == 2.0**26
    idx = tree.sample(10_000, gen(device))
    assert int(idx.max()) < n
    assert abs(float((idx == n - 1).double().mean()) - 0.5) < 0.02  # 4 sigma
    # stratified: 2^13 slices of 2^13 mass each; slice k < 2^12 must land in rows [2^13 k, 2^13 (k+1))
    idx = tree.sample(2**13, gen(device), stratified=True).cpu()
    assert torch.equal(idx[2**12 :], torch.full((2**12,), n - 1))
    assert torch.equal(idx[: 2**12] // 2**13, torch.arange(2**12))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compiled_cpu_walk_draws_the_rows_of_the_tensor_walk(layout):
    """On CPU the tree runs compiled loops; they must do the tensor ops' arithmetic in the same
    order: on identical levels both walks pick identical rows (zero rows, tiny and huge
    priorities included), and write-backs leave identical leaves and sums equal to round-off."""
    g = torch.Generator().manual_seed(11)
    capacity = 5000
    priority = torch.rand(capacity, generator=g, dtype=torch.float64)
    priority[torch.rand(capacity, generator=g) < 0.3] = 0.0
    priority[::97] = 1e-300
    priority[::89] = 1e6
    compiled = SumTree(capacity, "cpu", *layout, kernel="compiled")
    tensor = SumTree(capacity, "cpu", *layout, kernel="tensor")
    for step in range(30):
        if step:
            idx = torch.randint(0, capacity, (256,), generator=g)
            value = torch.rand(256, generator=g, dtype=torch.float64) * (torch.rand(256, generator=g) < 0.9)
            compiled.update(idx, value)
            tensor.update(idx, value)
            assert torch.equal(compiled.levels[0], tensor.levels[0])
            for mine, theirs in zip(compiled.levels, tensor.levels, strict=True):
                assert close(mine, theirs)
        else:
            compiled.set_all(priority)
            tensor.set_all(priority)
        for mine, theirs in zip(compiled.levels, tensor.levels, strict=True):
            theirs.copy_(mine)  # identical levels: any difference in the draws is the walk's
        for stratified in (False, True):
            a = compiled.sample(1024, gen("cpu", step), stratified=stratified)
            b = tensor.sample(1024, gen("cpu", step), stratified=stratified)
            assert torch.equal(a, b), (step, stratified)


def test_compiled_kernel_is_cpu_only_and_named():
    with pytest.raises(ValueError, match="kernel must be"):
        SumTree(10, kernel="numba")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU only"):
            SumTree(10, "cuda", kernel="compiled")
    assert SumTree(10).kernel == "compiled" and SumTree(10, kernel="tensor").kernel == "tensor"
