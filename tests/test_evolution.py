"""agent=evolution: EvoPress-style level switches with staged, multi-fidelity selection."""

import numpy as np
import pytest
from omegaconf import OmegaConf
from rlprune.agents import EvolutionSearch, make_searcher
from rlprune.agents.evolution import mutate

from rlprune.errors import ConfigError
from tests.support import compose_config, make_env, record


def evolution(**settings):
    """The searcher of conf/agent/evolution.yaml, with ``settings`` changed."""
    node = OmegaConf.to_container(compose_config("agent=evolution").agent, resolve=True)
    return make_searcher({**node, **settings})


@pytest.mark.parametrize("samples", [64, 50])  # 50: fidelities that are not powers of two
def test_evolution_spends_exactly_its_evaluations_within_budget(samples):
    env = make_env(budget=0.4, evaluations=23, samples=samples, pattern="kofn_weight", hardware="arm_cpu")
    outcomes = record(env)
    evolution().search(env, seed=0)
    assert env.problem.used == 23 and env.problem.exhausted
    assert sum(o.fidelity for o in outcomes) == pytest.approx(23)
    assert {o.fidelity for o in outcomes} > {1}  # it did score on part of the split
    assert all(o.latency <= 0.4 + 1e-9 for o in outcomes)
    assert env.problem.best.fidelity == 1


@pytest.mark.parametrize(
    ("pattern", "hardware", "budget"),
    [
        ("nm", "a100", 0.45),
        (["nm", "kofn_weight"], "a100", 0.45),  # several patterns
        ("kofn_weight", "bitfusion", 0.4),  # six bit-widths
        ("unstructured", "bops", 0.05),
    ],
)
def test_every_offspring_stays_within_budget_on_every_space(pattern, hardware, budget):
    env = make_env(budget=budget, evaluations=8, samples=16, pattern=pattern, hardware=hardware)
    outcomes = record(env)
    evolution(offspring=8).search(env, seed=1)
    assert env.problem.exhausted and all(o.latency <= budget + 1e-9 for o in outcomes)
    assert len({o.policy for o in outcomes}) > 2  # it moved


def test_evolution_is_deterministic_per_seed():
    def policies(seed):
        env = make_env(budget=0.4, evaluations=15, samples=16)
        outcomes = record(env)
        evolution().search(env, seed=seed)
        return [(o.policy, o.fidelity) for o in outcomes]

    assert policies(3) == policies(3)
    assert policies(3) != policies(4)


def test_a_level_switch_raises_one_step_and_pays_for_it_within_budget():
    env = make_env(budget=0.4, pattern="kofn_weight", hardware="arm_cpu")
    space = env.space
    limit = space.absolute_budget(0.4)
    parent = [(0, 0) for _ in space.shapes]
    rng = np.random.default_rng(0)
    for _ in range(20):
        child = mutate(space, parent, limit, rng, switches=1)
        assert child is not None and child != parent and space.seconds(child) <= limit + 1e-12
        raised = [i for i, (c, p) in enumerate(zip(child, parent, strict=True)) if c > p]
        assert len(raised) == 1  # from the sparsest, lowest policy only the raised step moves


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"agent\.survivors"):
        EvolutionSearch(fidelities=(0.1, 0.5), survivors=(1, 4))
    with pytest.raises(ConfigError, match=r"agent\.fidelities"):
        EvolutionSearch(fidelities=(0.5, 1.0))
    with pytest.raises(ConfigError, match="agent=evolution takes"):
        make_searcher({"name": "evolution", "population": 3})


@pytest.mark.slow
def test_evolution_beats_random_search_at_equal_evaluations():
    # digits CNN near its cheapest latency (0.279), KL reward: random policies through the wall
    # stay 0.039-0.041 from the dense outputs, evolution reaches 0.025-0.029 (measured)
    from rlprune.envs.default import default_config, default_problem
    from rlprune.envs.prune_env import PruneEnv

    overrides = ["model=digits_cnn", "data=digits", "dense.epochs=5", "budget.latency=0.28"]
    cfg = default_config([*overrides, "search.evaluations=100", "reward.metric=kl"])
    found = {}
    for name in ("evolution", "random"):
        for seed in (0, 1):
            problem, sensitivity = default_problem(cfg)
            make_searcher({"name": name}).search(PruneEnv(problem, sensitivity), seed)
            assert problem.used == 100
            found.setdefault(name, []).append(problem.best.kl)
    assert np.mean(found["evolution"]) < np.mean(found["random"])
