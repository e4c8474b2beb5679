"""``agent.n_envs``: SB3 agents playing several envs in worker processes, counted as one search."""

import multiprocessing
import pickle

import pytest
from rlprune.agents import make_searcher

from rlprune.errors import ConfigError
from tests.support import compose_config, make_env, record


def _agent(name: str, n_envs: int) -> dict:
    from omegaconf import OmegaConf

    agent = OmegaConf.to_container(compose_config(f"agent={name}").agent, resolve=True)
    # the agent spends every evaluation (no refine step): the counting under test is the workers'
    return {**agent, "n_envs": n_envs} | ({"refine": 0.0} if "refine" in agent else {})


@pytest.mark.parametrize("name", ["ppo", pytest.param("sac", marks=pytest.mark.slow)])
def test_parallel_envs_spend_exactly_the_evaluations_of_one_search(name):
    # 21 is odd: the last step of two workers ends two episodes, and only one may count
    env = make_env(budget=0.4, evaluations=21, samples=16)
    outcomes = record(env)
    make_searcher(_agent(name, n_envs=2)).search(env, seed=0)
    assert env.problem.used == 21
    assert [o.episode for o in outcomes] == list(range(1, 22))
    assert all(o.latency <= 0.4 + 1e-9 for o in outcomes)
    assert env.problem.best == max(outcomes, key=env.problem.value)
    assert multiprocessing.active_children() == []  # the workers were closed


@pytest.mark.slow
def test_parallel_envs_are_deterministic_per_seed():
    found = []
    for _ in range(2):
        env = make_env(budget=0.4, evaluations=12, samples=16)
        outcomes = record(env)
        make_searcher(_agent("ppo", n_envs=2)).search(env, seed=3)
        found.append([o.policy for o in outcomes])
    assert found[0] == found[1]


def test_an_evaluator_pickles_as_its_arguments_and_scores_the_same():
    env = make_env(budget=0.4, samples=16)
    space, evaluator = env.space, env.problem.evaluator
    policy = space.policy([(0, 0)] * len(space))
    twin = pickle.loads(pickle.dumps(evaluator))
    assert twin is not evaluator and twin.model is not evaluator.model
    assert twin(policy) == evaluator(policy)


@pytest.mark.parametrize(
    ("agent", "needle"),
    [
        ({"name": "tpe", "n_envs": 2}, "needs a stable-baselines3 agent"),
        ({"name": "haq", "n_envs": 2}, "needs a stable-baselines3 agent"),
        ({"name": "ppo", "n_envs": 0}, "an integer >= 1"),
    ],
)
def test_n_envs_that_cannot_run_is_refused_naming_the_key(agent, needle):
    with pytest.raises(ConfigError, match=f"agent.n_envs.*{needle}"):
        make_searcher(agent)
