"""AMC and HAQ reproduced: their walls, replay buffer and exploration."""

import gymnasium as gym
import numpy as np
import pytest
from omegaconf import OmegaConf
from rlprune.agents import make_searcher
from rlprune.agents.anchors import EpisodeRewardBuffer, TruncatedNormalDDPG
from rlprune.envs import PruneEnv

from rlprune.errors import BudgetError, ConfigError
from tests.support import compose_config, make_env, record


def _agent_config(name: str, **changes) -> dict:
    cfg = OmegaConf.to_container(compose_config(f"agent={name}").agent, resolve=True)
    return {**cfg, **changes}


@pytest.mark.parametrize(("name", "wall"), [("amc", "feasible"), ("haq", "final")])
def test_anchor_learns_within_budget_and_spends_exactly_its_evaluations(name, wall):
    # a short warm-up so that the DDPG updates, the buffer's rewrite and the noise all run
    env = make_env(budget=0.45, evaluations=24, samples=16, wall=wall, pattern="kofn_weight")
    outcomes = record(env)
    make_searcher(_agent_config(name, warmup_episodes=4)).search(env, seed=0)
    assert env.problem.used == 24
    assert len(outcomes) == 24 and all(o.latency <= 0.45 + 1e-9 for o in outcomes)


def test_feasible_wall_leaves_budget_unused_where_the_band_wall_spends_it():
    # the sparsest wish at the highest bits: AMC's wall keeps it, rlprune's raises the density
    # of each layer until the rest of the layers can spend what is left of the budget
    spent = {}
    for wall in ("band", "feasible"):
        env = make_env(
            budget=0.8, evaluations=5, samples=16, wall=wall, pattern="kofn_weight", hardware="arm_cpu"
        )
        env.reset()
        done = False
        while not done:
            _, _, done, _, info = env.step(np.array([-1.0, 1.0], dtype=np.float32))
        spent[wall] = info["outcome"].latency
    assert spent["band"] == pytest.approx(0.8, abs=0.05)
    assert spent["feasible"] < spent["band"] - 0.1


def test_haq_rule_lowers_from_the_last_layer_back_until_the_policy_fits():
    env = make_env(
        budget=0.5, evaluations=5, samples=16, wall="final", pattern="kofn_weight", hardware="arm_cpu"
    )
    space = env.space
    dense = [(len(shapes) - 1, len(space.bits) - 1) for shapes in space.shapes]
    budget = space.absolute_budget(0.5)
    fitted = space.lower_until_within(dense, budget)
    assert space.seconds(fitted) <= budget
    changed = [i for i, (a, b) in enumerate(zip(dense, fitted, strict=True)) if a != b]
    # the walk starts at the last layer, bits before density
    assert space.seconds(dense) > budget
    assert changed and changed[-1] == len(space) - 1
    assert fitted[-1][1] < dense[-1][1]


def test_haq_wall_refuses_a_budget_its_rule_cannot_reach():
    # where the lowest choice is not the cheapest (int8 slower than FP32 on a small CPU layer),
    # HAQ's rule can end over budget: the env says so before any episode
    env = make_env(budget=0.5, samples=16, pattern="kofn_weight", hardware="arm_cpu")
    for cost in env.space.costs:  # k-of-n: each step's seconds depend on its own choice only
        cost.table[0, 0] = 2 * cost.table.max()
    with pytest.raises(BudgetError, match=r"agent\.wall=final"):
        PruneEnv(env.problem, np.zeros((len(env.space), 3)), wall="final")


def test_unknown_wall_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"agent\.wall='wide'"):
        make_env(samples=16, wall="wide")


def test_episode_reward_buffer_gives_every_transition_the_final_reward_then_centres_it():
    space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    buffer = EpisodeRewardBuffer(16, space, space, device="cpu", baseline_momentum=0.5)
    for episode_reward in (0.2, 0.6):
        for step in range(3):
            done = step == 2
            reward = episode_reward if done else 0.0
            obs = np.zeros((1, 2), dtype=np.float32)
            buffer.add(obs, obs, obs, np.array([reward]), np.array([done]), [{}])
    assert buffer.rewards[:6, 0].tolist() == pytest.approx([0.2] * 3 + [0.6] * 3)
    first = buffer.sample(64)
    assert float(first.rewards.mean()) == pytest.approx(0.0, abs=1e-6)  # first baseline: its own mean
    assert buffer.baseline == pytest.approx(0.4, abs=0.15)


def test_truncated_normal_exploration_stays_in_bounds_and_narrows_per_episode():
    env = make_env(budget=0.5, evaluations=1000, samples=16)
    agent = TruncatedNormalDDPG(
        "MlpPolicy", env, noise=0.5, noise_decay=0.5, warmup_episodes=0, actor_learning_rate=1e-4, seed=0
    )
    agent._last_obs = np.zeros((1, *env.observation_space.shape), dtype=np.float32)
    spreads = []
    for episode in (0, 6):
        agent._episode_num = episode
        actions = np.stack([agent._sample_action(0)[0] for _ in range(200)])
        assert actions.shape == (200, 1, env.action_size)
        assert (actions >= -1.0).all() and (actions <= 1.0).all()
        spreads.append(actions.std())
    assert spreads[1] < spreads[0] / 4
