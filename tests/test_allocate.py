"""The budgeted allocation over the cost programme (``SearchSpace.allocate``), against brute force."""

import numpy as np
import pytest
from rlprune.envs import SpaceSettings, build_space
from rlprune.envs.dp import Factor

from rlprune.hardware import build_latency_model
from rlprune.layers import filter_couplings
from tests.support import hardware_config
from tests.test_filter_search import mnist1d


def coupled_space():
    """Filters of the MNIST-1D CNN: a step's seconds depend on the filters its inputs kept."""
    model, x, layers = mnist1d()
    device = build_latency_model(hardware_config("a100"))
    settings = SpaceSettings("filter", bits=[8, 16], levels=3, min_density=0.3, nm_pad=False)
    return build_space(layers, layers, device, settings, filter_couplings(model, x, layers))


def every_policy(space, penalties):
    """Seconds and summed penalty of every policy, as arrays over all the decisions."""
    axes = tuple(range(2 * len(space)))
    shape = tuple(n for options in space.programme.options for n in (options, len(space.bits)))
    seconds = sum(np.broadcast_to(c.over(axes), shape) for c in space.programme.costs)
    penalty = sum(
        np.broadcast_to(Factor((2 * i, 2 * i + 1), p).over(axes), shape) for i, p in enumerate(penalties)
    )
    return seconds, penalty


def random_penalties(space, seed):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, (len(shapes), len(space.bits))) for shapes in space.shapes]


def total(penalties, picks):
    return sum(p[pick] for p, pick in zip(penalties, picks, strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_allocation_is_optimal_at_a_budget_its_relaxation_meets(seed):
    # a policy that minimises penalty + λ·seconds is the least penalty within its own seconds:
    # at that budget the allocation must match brute force exactly
    space = coupled_space()
    penalties = random_penalties(space, seed)
    seconds, penalty = every_policy(space, penalties)
    scale = penalty.max() / seconds.max()
    for price in (0.3 * scale, scale, 3 * scale):
        budget = float(seconds.flat[np.argmin(penalty + price * seconds)])
        best = penalty[seconds <= budget * (1 + 1e-9)].min()
        picks = space.allocate(penalties, budget)
        assert space.seconds(picks) <= budget * (1 + 1e-9)
        assert total(penalties, picks) == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_allocation_fits_any_budget_and_no_single_step_can_improve_it(seed):
    space = coupled_space()
    penalties = random_penalties(space, seed)
    seconds, penalty = every_policy(space, penalties)
    for budget in np.quantile(seconds, [0.01, 0.2, 0.5, 0.9]):
        picks = space.allocate(penalties, float(budget))
        assert space.seconds(picks) <= budget * (1 + 1e-9)
        for step, grid in enumerate(penalties):
            for pick in zip(*np.nonzero(grid < grid[picks[step]]), strict=True):
                changed = [*picks[:step], pick, *picks[step + 1 :]]
                assert space.seconds(changed) > budget * (1 + 1e-9)
        # close to the brute-force optimum: within the largest penalty of one step's choice
        best = penalty[seconds <= budget * (1 + 1e-9)].min()
        assert best <= total(penalties, picks) <= best + max(p.max() for p in penalties)


def test_allocation_at_the_dense_budget_takes_every_least_penalty_choice():
    space = coupled_space()
    penalties = random_penalties(space, 3)
    picks = space.allocate(
        penalties, space.seconds([(len(s) - 1, len(space.bits) - 1) for s in space.shapes]) * 2
    )
    assert picks == [tuple(int(v) for v in np.unravel_index(np.argmin(p), p.shape)) for p in penalties]
