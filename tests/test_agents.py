import pytest
from rlprune.agents import SEARCHERS, make_searcher

from rlprune.errors import ConfigError
from tests.support import compose_config, make_env, record


@pytest.mark.parametrize("name", ["ppo", "a2c", "sac", "td3", "ddpg", "random", "tpe"])
def test_every_searcher_spends_exactly_its_evaluations(name):
    from omegaconf import OmegaConf

    env = make_env(budget=0.4, evaluations=20, samples=16)
    outcomes = record(env)
    agent_cfg = OmegaConf.to_container(compose_config(f"agent={name}").agent, resolve=True)
    make_searcher(agent_cfg).search(env, seed=0)
    assert env.problem.used == 20
    assert env.problem.exhausted
    best = env.problem.best
    assert best is not None and best.latency <= 0.4 + 1e-9
    assert len(outcomes) == 20 and all(o.latency <= 0.4 + 1e-9 for o in outcomes)


def test_uniform_gives_every_layer_the_same_bits_and_nearest_density():
    env = make_env(budget=0.4, evaluations=50, pattern="kofn_weight", samples=16)
    outcomes = record(env)
    make_searcher({"name": "uniform"}).search(env, seed=0)
    assert 1 <= env.problem.used <= len(env.space.bits)
    for outcome in outcomes:
        assert outcome.latency <= 0.4 + 1e-9
        bits = {choice.w_bits for _, choice in outcome.policy}
        assert len(bits) == 1
        densities = [choice.density for _, choice in outcome.policy]
        assert max(densities) - min(densities) <= 0.2  # one common density, rounded per layer


def test_greedy_descends_to_the_budget_within_its_evaluations():
    env = make_env(budget=0.4, evaluations=400, pattern="kofn_weight", samples=16)
    outcomes = record(env)
    make_searcher({"name": "greedy"}).search(env, seed=0)
    assert 1 < env.problem.used <= 400
    assert env.problem.best is not None and env.problem.best.latency <= 0.4 + 1e-9
    # the first evaluation is the dense policy at the highest bit-width
    assert outcomes[0].latency == pytest.approx(1.0)


def test_unknown_agent_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown agent 'alphazero'; valid:"):
        make_searcher({"name": "alphazero"})
    assert {"ppo", "sac", "td3", "ddpg", "a2c", "uniform", "random", "greedy", "tpe"} <= set(SEARCHERS)


@pytest.mark.parametrize("name", ["ppo", "amc"])
def test_agents_leave_no_log_folder_in_the_system_temp_folder(name, tmp_path, monkeypatch):
    import tempfile

    from omegaconf import OmegaConf

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where SB3's default logger would go
    env = make_env(budget=0.4, evaluations=4, samples=16)
    agent_cfg = OmegaConf.to_container(compose_config(f"agent={name}").agent, resolve=True)
    make_searcher(agent_cfg).search(env, seed=0)  # no tracker: the path that made SB3-<date> folders
    assert env.problem.used == 4
    assert list(tmp_path.glob("SB3-*")) == []
