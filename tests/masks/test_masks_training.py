"""SR-STE gradients, learned Gumbel top-k masks, and the GaP schedule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from rlprune.errors import ConfigError
from rlprune.masks import GapSchedule, GumbelTopKMask, kofn_mask, srste
from rlprune.masks.learned import successive_softmax


@pytest.mark.parametrize("decay", [0.0, 2e-4, 0.5])
def test_srste_gradient(decay: float) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 8, generator=gen, requires_grad=True)
    mask = torch.rand(6, 8, generator=gen) > 0.5
    g = torch.randn(6, 8, generator=gen)
    out = srste(w, mask, decay)
    assert torch.equal(out, w.detach() * mask)
    out.backward(g)
    assert torch.allclose(w.grad[mask], g[mask])  # kept: plain gradient
    assert torch.allclose(w.grad[~mask], g[~mask] + decay * w.detach()[~mask])  # pruned: decayed


def naive_successive_softmax(logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """k softmaxes, the i-th over the items not in chosen[:, :i], summed."""
    total = torch.zeros_like(logits)
    excluded = torch.zeros(logits.shape, dtype=torch.bool)
    for i in range(chosen.shape[1]):
        total = total + logits.masked_fill(excluded, float("-inf")).softmax(-1)
        excluded = excluded.scatter(-1, chosen[:, i : i + 1], True)
    return total


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**16), st.floats(0.1, 30.0))
def test_successive_softmax_equals_k_softmaxes(n: int, seed: int, spread: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(3, n, generator=gen, dtype=torch.float64) * spread).requires_grad_()
    keep = int(torch.randint(1, n, (1,), generator=gen))
    chosen = torch.stack([torch.randperm(n, generator=gen)[:keep] for _ in range(3)])
    weights = torch.randn(3, n, generator=gen, dtype=torch.float64)
    fast = successive_softmax(logits, chosen)
    slow = naive_successive_softmax(logits, chosen)
    assert torch.allclose(fast, slow, atol=1e-9)
    (g_fast,) = torch.autograd.grad((fast * weights).sum(), logits)
    (g_slow,) = torch.autograd.grad((slow * weights).sum(), logits)
    assert torch.allclose(g_fast, g_slow, atol=1e-9)


def test_k1_samples_follow_softmax_of_the_logits() -> None:
    torch.manual_seed(0)
    groups, draws = 2000, 10  # every group has the same logits: one forward gives 2000 samples
    layer = GumbelTopKMask((groups, 5), keep=1, granularity="weight", scale=1.0)
    logits = torch.tensor([0.0, 0.5, 1.0, -1.0, 2.0])
    with torch.no_grad():
        layer.logits.copy_(logits.expand(groups, 5))
    hits = torch.zeros(5)
    for _ in range(draws):
        mask = layer().detach()
        assert (mask.sum(1) == 1).all()
        hits += mask.sum(0)
    expected = logits.softmax(-1) * groups * draws
    assert chisquare(hits.numpy(), expected.numpy()).pvalue > 1e-3


@pytest.mark.parametrize(
    ("shape", "granularity", "keep"),
    [
        ((6, 10), "weight", 4),
        ((6, 5, 3, 3), "kernel", 2),
        ((6, 5, 3), "filter", 3),
        ((6, 4, 3, 3), "weight", 7),
    ],
)
def test_masks_have_k_per_group_and_start_at_the_magnitude_mask(
    shape: tuple[int, ...], granularity: str, keep: int
) -> None:
    torch.manual_seed(1)
    weight = torch.randn(shape)
    layer = GumbelTopKMask(shape, keep, granularity, weight=weight)
    assert layer.scale == (0.1 if len(shape) == 2 else 0.01)
    train = layer()
    assert train.shape == shape and set(train.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(kofn_mask(train, keep, granularity).float(), train)  # exactly k units per group
    train.sum().backward()
    assert layer.logits.grad is not None and layer.logits.grad.abs().sum() > 0
    layer.eval()
    assert torch.equal(layer().bool(), kofn_mask(weight.abs(), keep, granularity))
    assert torch.equal(layer.hard_mask(), layer().bool())


def test_anneal_is_linear_from_5_to_half() -> None:
    layer = GumbelTopKMask((4, 4), 2, "weight")
    assert layer.temperature == 5.0
    layer.anneal(0.5)
    assert layer.temperature == pytest.approx(2.75)
    layer.anneal(1.0)
    assert layer.temperature == pytest.approx(0.5)


def test_confidence_and_diversity() -> None:
    layer = GumbelTopKMask((8, 6), 2, "weight")
    assert layer.confidence() == pytest.approx(0.0, abs=1e-6)  # uniform logits
    assert layer.entropy().item() == pytest.approx(math.log(6))
    assert layer.diversity() == 0.0  # every group keeps the first two
    with torch.no_grad():  # peaked: softmax(D) is one-hot in every group
        layer.logits.fill_(-1000.0)
        layer.logits[:, 3] = 1000.0
    assert layer.confidence() == pytest.approx(1.0)
    assert layer.diversity() == 0.0
    with torch.no_grad():  # k = 2 items certain: by the definition, 1 - log 2 / log 6
        layer.logits[:, 4] = 1000.0
    assert layer.confidence() == pytest.approx(1 - math.log(2) / math.log(6))
    with torch.no_grad():  # every group keeps a different pair: 8 distinct sets of C(6,2) = 15
        layer.logits.fill_(0.0)
        for g, pair in enumerate([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (4, 5), (0, 5)]):
            layer.logits[g, list(pair)] = 1.0
    assert layer.diversity() == pytest.approx(1.0)
    with torch.no_grad():  # two sets, half and half: entropy log 2 over log 8
        layer.logits.fill_(0.0)
        layer.logits[:4, :2] = 1.0
        layer.logits[4:, 2:4] = 1.0
    assert layer.diversity() == pytest.approx(math.log(2) / math.log(8))


def test_learned_mask_errors_name_the_layer() -> None:
    with pytest.raises(ConfigError, match=r"'fc'.*k=7 > n=6"):
        GumbelTopKMask((4, 6), 7, "weight", name="fc")


def test_gap_schedule() -> None:
    names = [f"l{i}" for i in range(7)]
    gap = GapSchedule(names, partitions=3, epochs_per_step=2)
    assert gap.partitions == [["l0", "l1", "l2"], ["l3", "l4"], ["l5", "l6"]]
    assert gap.rounds_epochs() == 6
    seen = [gap.dense_layers(e) for e in range(8)]
    assert seen[0] == seen[1] == {"l0", "l1", "l2"}
    assert seen[2] == seen[3] == {"l3", "l4"}
    assert seen[4] == seen[5] == {"l5", "l6"}
    assert seen[6] == seen[0]  # the next round starts again
    with pytest.raises(ConfigError, match="partitions"):
        GapSchedule(names, partitions=8, epochs_per_step=1)
    with pytest.raises(ConfigError, match="epochs_per_step"):
        GapSchedule(names, partitions=2, epochs_per_step=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20), st.data())
def test_gap_partitions_cover_the_layers_in_order(layers: int, data: st.DataObject) -> None:
    partitions = data.draw(st.integers(1, layers))
    names = [f"l{i}" for i in range(layers)]
    gap = GapSchedule(names, partitions, 1)
    assert [n for part in gap.partitions for n in part] == names
    sizes = [len(p) for p in gap.partitions]
    assert len(sizes) == partitions and max(sizes) - min(sizes) <= 1
    assert set().union(*(gap.dense_layers(e) for e in range(gap.rounds_epochs()))) == set(names)
