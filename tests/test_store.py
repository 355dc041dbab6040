"""TransitionStore, Batch and the samplers, checked against simple reference models."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from worldmodels.data.samplers import MixtureSampler, SamplerConfig, Sources, UniformSampler, make_sampler, split_counts
from worldmodels.data.store import CORE_FIELDS, Batch, TransitionStore
from worldmodels.progress import Progress

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SETTINGS = settings(max_examples=30, deadline=None)
OBS_DIM, ACT_DIM = 3, 2
ONLINE = Progress("online", 0, 1, 0, 0, 10)  # the online phase, where the priority sampler draws by priority


def rows(start: int, n: int, **extras: torch.Tensor) -> dict[str, torch.Tensor]:
    """n transitions whose every value encodes the global row number start..start+n-1."""
    ids = torch.arange(start, start + n, dtype=torch.float32)
    return {
        "obs": ids[:, None].repeat(1, OBS_DIM),
        "act": -ids[:, None].repeat(1, ACT_DIM),
        "rew": ids * 10,
        "next_obs": ids[:, None].repeat(1, OBS_DIM) + 0.5,
        "terminal": (ids % 3 == 0).float(),
        "truncated": (ids % 5 == 0).float(),
    } | extras


def gen(device: str, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# --- TransitionStore ---------------------------------------------------------------------------
@SETTINGS
@given(capacity=st.integers(1, 12), adds=st.lists(st.integers(1, 30), min_size=1, max_size=8))
def test_ring_matches_reference_model(capacity, adds):
    store = TransitionStore(capacity, OBS_DIM, ACT_DIM)
    ring: list[int | None] = [None] * capacity  # reference: global row id held by each slot
    cursor, size, total = 0, 0, 0
    for n in adds:
        written = store.add(**rows(total, n))
        kept = list(range(total, total + n))[-capacity:]  # more than capacity at once: the last ones
        slots = [(cursor + i) % capacity for i in range(len(kept))]
        for slot, row in zip(slots, kept, strict=True):
            ring[slot] = row
        cursor = (cursor + len(kept)) % capacity
        size = min(size + len(kept), capacity)
        total += n
        assert written.tolist() == slots
        assert (store.size, store.cursor, len(store)) == (size, cursor, size)
    # raw slots
    for slot, row in enumerate(ring):
        expected = 0.0 if row is None else float(row)
        assert store.data["obs"][slot, 0].item() == expected
    # valid(): exactly the last min(total, capacity) rows, oldest first, every field consistent
    last = list(range(max(0, total - capacity), total))
    valid = store.valid()
    ref = rows(last[0], len(last))
    for name in CORE_FIELDS:
        assert torch.equal(valid[name], ref[name]), name


@SETTINGS
@given(capacity=st.integers(2, 10), first=st.integers(1, 10), second=st.integers(1, 25))
def test_extras_default_to_zero_even_over_old_rows(capacity, first, second):
    store = TransitionStore(capacity, OBS_DIM, ACT_DIM, extras={"priority": (), "vec": (2,)})
    store.add(**rows(0, first, priority=torch.full((first,), 7.0), vec=torch.ones(first, 2)))
    store.add(**rows(first, second))  # no extras: written rows must be zero, not stale
    valid = store.valid()
    ids = valid["obs"][:, 0]
    from_first = ids < first
    assert torch.all(valid["priority"][from_first] == 7.0)
    assert torch.all(valid["vec"][from_first] == 1.0)
    assert torch.all(valid["priority"][~from_first] == 0.0)
    assert torch.all(valid["vec"][~from_first] == 0.0)
    assert valid["vec"].shape == (store.size, 2)
    assert set(store.extra_names) == {"priority", "vec"}


def test_add_rejects_missing_and_unknown_fields():
    store = TransitionStore(4, OBS_DIM, ACT_DIM)
    fields = rows(0, 2)
    del fields["truncated"]
    with pytest.raises(KeyError, match="truncated"):
        store.add(**fields)
    with pytest.raises(KeyError, match="bogus"):
        store.add(**rows(0, 2), bogus=torch.zeros(2))
    with pytest.raises(ValueError):
        TransitionStore(0, OBS_DIM, ACT_DIM)
    with pytest.raises(RuntimeError):
        store.sample_indices(3)


@SETTINGS
@given(capacity=st.integers(1, 10), adds=st.lists(st.integers(1, 15), min_size=0, max_size=5),
       more=st.integers(1, 15), device=st.sampled_from(DEVICES))
def test_state_dict_round_trip(capacity, adds, more, device):
    store = TransitionStore(capacity, OBS_DIM, ACT_DIM, extras={"priority": ()})
    total = 0
    for n in adds:
        store.add(**rows(total, n, priority=torch.arange(n, dtype=torch.float32) + 1))
        total += n
    state = store.state_dict()
    assert all(v.device.type == "cpu" for v in state["data"].values())
    clone = TransitionStore(capacity, OBS_DIM, ACT_DIM, device=device, extras={"priority": ()})
    clone.load_state_dict(state)
    assert (clone.size, clone.cursor) == (store.size, store.cursor)
    for name, value in store.valid().items():
        assert torch.equal(clone.valid()[name].cpu(), value), name
    # both continue identically (the cursor really was restored)
    store.add(**rows(total, more))
    clone.add(**rows(total, more))
    for name, value in store.data.items():
        assert torch.equal(clone.data[name].cpu(), value), name
    with pytest.raises(ValueError, match="capacity"):
        TransitionStore(capacity + 1, OBS_DIM, ACT_DIM).load_state_dict(state)


@pytest.mark.parametrize("device", DEVICES)
def test_everything_lives_on_the_store_device(device):
    store = TransitionStore(8, OBS_DIM, ACT_DIM, device=device, extras={"priority": ()})
    written = store.add(**rows(0, 5, priority=torch.ones(5)))  # host inputs are moved over
    assert written.device.type == device
    assert all(t.device.type == device for t in store.data.values())
    assert all(t.device.type == device for t in store.valid().values())
    assert store.sample_indices(4, gen(device)).device.type == device
    mixture = MixtureSampler({"a": UniformSampler(store), "b": UniformSampler(store)}, {"a": 1, "b": 1})
    for sampler in (UniformSampler(store), mixture):
        batch = sampler.sample(6, gen(device))
        assert all(t.device.type == device for t in batch.as_dict().values())
    online = TransitionStore(4, OBS_DIM, ACT_DIM, device=device, extras={"priority": ()}, source="online")
    for kind in ("symmetric", "priority"):
        batch = make_sampler(SamplerConfig(kind=kind), Sources(store, online)).sample(6, ONLINE, gen(device))
        assert all(t.device.type == device for t in [*batch.as_dict().values(), batch.source, batch.index])
    fresh = TransitionStore.from_tensors(rows(0, 3), device=device)
    assert fresh.capacity == 3 and len(fresh) == 3
    assert all(t.device.type == device for t in fresh.data.values())


# --- samplers ----------------------------------------------------------------------------------
@SETTINGS
@given(capacity=st.integers(1, 20), n=st.integers(1, 40), batch=st.integers(1, 64),
       seed=st.integers(0, 2**31))
def test_uniform_sampler_draws_only_valid_rows(capacity, n, batch, seed):
    store = TransitionStore(capacity, OBS_DIM, ACT_DIM)
    store.add(**rows(1, n))  # ids 1..n; unused slots hold zeros
    valid_ids = set(store.valid()["obs"][:, 0].tolist())
    sampler = UniformSampler(store)
    b = sampler.sample(batch, gen("cpu", seed))
    assert len(b) == batch and len(sampler) == min(n, capacity)
    assert set(b.obs[:, 0].tolist()) <= valid_ids
    # rows stay whole: every field of a sampled transition belongs to the same row
    assert torch.equal(b.rew, b.obs[:, 0] * 10) and torch.equal(b.act[:, 0], -b.obs[:, 0])
    # with many draws every valid row shows up
    many = sampler.sample(60 * len(store), gen("cpu", seed)).obs[:, 0]
    assert set(many.tolist()) == valid_ids


@SETTINGS
@given(batch=st.integers(0, 500), shares=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=6).filter(
    lambda s: sum(s) > 0))
def test_split_counts_exact_and_fair(batch, shares):
    counts = split_counts(batch, shares)
    assert sum(counts) == batch
    total = sum(shares)
    exact = [batch * s / total for s in shares]
    for count, share, x in zip(counts, shares, exact, strict=True):
        assert abs(count - x) < 1.0
        if share == 0:
            assert count == 0
    # largest remainder: a source rounded up never has a smaller fractional part than one rounded down
    up = [x - int(x) for c, x in zip(counts, exact, strict=True) if c > int(x)]
    down = [x - int(x) for c, x in zip(counts, exact, strict=True) if c == int(x)]
    if up and down:
        assert min(up) >= max(down) - 1e-9, (counts, exact)


def marked_store(source: int, n: int) -> TransitionStore:
    """A store whose rows all carry `source` in obs[:, 0] (n may be 0: an empty source)."""
    store = TransitionStore(max(n, 1), OBS_DIM, ACT_DIM)
    if n:
        fields = rows(0, n)
        fields["obs"][:, 0] = source
        store.add(**fields)
    return store


@SETTINGS
@given(sources=st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(0, 6)), min_size=1, max_size=5),
       batch=st.integers(1, 300), seed=st.integers(0, 1000))
def test_mixture_counts_are_exact(sources, batch, seed):
    stores = {f"s{i}": marked_store(i, n) for i, (_, n) in enumerate(sources)}
    shares = {f"s{i}": share for i, (share, _) in enumerate(sources)}
    if sum(shares.values()) <= 0:
        with pytest.raises(ValueError):
            MixtureSampler({k: UniformSampler(s) for k, s in stores.items()}, shares)
        return
    mixture = MixtureSampler({k: UniformSampler(s) for k, s in stores.items()}, shares)
    active = [k for k in stores if shares[k] > 0 and len(stores[k]) > 0]
    assert len(mixture) == sum(len(stores[k]) for k in stores if shares[k] > 0)
    if not active:
        with pytest.raises(RuntimeError, match="empty"):
            mixture.sample(batch, gen("cpu", seed))
        return
    b = mixture.sample(batch, gen("cpu", seed))
    assert len(b) == batch
    got = {f"s{int(i)}": int(c) for i, c in zip(*b.obs[:, 0].unique(return_counts=True), strict=True)}
    total = sum(shares[k] for k in active)
    for k in stores:
        if k in active:  # empty or zero-share sources hand their share to the active ones
            assert abs(got.get(k, 0) - batch * shares[k] / total) < 1.0, (k, got)
        else:
            assert k not in got
    # exactly the counts the sampler promises, every batch
    assert got == {k: c for k, c in zip(active, split_counts(batch, [shares[k] for k in active]),
                                        strict=True) if c > 0}


def test_mixture_rejects_bad_shares():
    a = UniformSampler(marked_store(0, 3))
    with pytest.raises(ValueError):
        MixtureSampler({"a": a}, {"b": 1.0})
    with pytest.raises(ValueError):
        MixtureSampler({"a": a, "b": a}, {"a": 1.0, "b": -0.5})


def priority_sampler(priorities: torch.Tensor):
    """The `priority` batch sampler over an offline store holding one row per priority."""
    n = len(priorities)
    store = TransitionStore.from_tensors(rows(0, n))
    sampler = make_sampler(SamplerConfig(kind="priority"), Sources(store, TransitionStore(1, OBS_DIM, ACT_DIM,
                                                                                           source="online")))
    sampler.tree.update(torch.arange(n), priorities)
    return sampler


@SETTINGS
@given(priorities=st.lists(st.sampled_from([0.0, 0.0, 0.1, 1.0, 5.0]), min_size=1, max_size=20).filter(
    lambda p: sum(p) > 0), seed=st.integers(0, 1000))
def test_priority_sampler_never_draws_zero_priority(priorities, seed):
    p = torch.tensor(priorities)
    batch = priority_sampler(p).sample(500, ONLINE, gen("cpu", seed))
    assert torch.all(p[batch.index] > 0)
    assert torch.equal(batch.obs[:, 0].long(), batch.index)  # the rows are the ones the tree chose


def test_priority_frequencies_follow_priorities():
    priorities = torch.tensor([1.0, 0.0, 2.0, 4.0, 0.5, 0.0, 8.5])
    draws = 5000
    ids = priority_sampler(priorities).sample(draws, ONLINE, gen("cpu", 123)).index
    counts = torch.bincount(ids, minlength=len(priorities)).double()
    positive = priorities > 0
    assert counts[~positive].sum() == 0
    expected = draws * priorities[positive].double() / priorities.sum()
    stat, pvalue = chisquare(counts[positive].numpy(), expected.numpy())
    assert pvalue > 1e-3, (counts, expected)


# --- Batch --------------------------------------------------------------------------------------
def test_batch_cat_keeps_order_and_extras():
    a_store = TransitionStore(4, OBS_DIM, ACT_DIM, extras={"priority": ()})
    b_store = TransitionStore(4, OBS_DIM, ACT_DIM, extras={"priority": ()}, source="online")
    a_store.add(**rows(0, 3, priority=torch.tensor([1.0, 2.0, 3.0])))
    b_store.add(**rows(10, 2, priority=torch.tensor([4.0, 5.0])))
    a, b = a_store.gather(torch.arange(3)), b_store.gather(torch.tensor([1, 0]))
    cat = Batch.cat([a, b])
    assert len(cat) == 5
    assert cat.obs[:, 0].tolist() == [0, 1, 2, 11, 10]
    ref = rows(0, 3)
    for name in CORE_FIELDS:
        assert torch.equal(getattr(cat, name)[:3], ref[name]), name
    assert set(cat.extras) == {"priority"}
    assert cat.source.tolist() == [0, 0, 0, 1, 1] and cat.index.tolist() == [0, 1, 2, 1, 0]
    assert cat.extras["priority"].tolist() == [1.0, 2.0, 3.0, 5.0, 4.0]
    assert set(cat.as_dict()) == set(CORE_FIELDS) | {"priority"}
