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
    # PPO's refine step scores on shares of the reward split too, each costing its share
    assert sum(o.fidelity for o in outcomes) == pytest.approx(20)
    assert all(o.latency <= 0.4 + 1e-9 for o in outcomes)


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


@pytest.mark.parametrize(("metric", "starts_at"), [("loss", "uniform"), ("accuracy", "centre")])
def test_a_warm_start_begins_at_the_better_of_the_best_uniform_policy_and_the_centre(metric, starts_at):
    import numpy as np
    import torch
    from rlprune.agents.baselines import uniform_policies

    env = make_env(budget=0.4, evaluations=12, pattern="kofn_weight", samples=16, metric=metric)
    outcomes = record(env)
    uniform = uniform_policies(env.space, 0.4)
    # fewer transitions than n_steps: the search ends before PPO's first update, so the agent
    # still holds the mean action it started from
    assert (12 - len(uniform) - 1) * len(env.space) < 512
    searcher = make_searcher({"name": "ppo", "warm_start": True, "hyperparameters": {"n_steps": 512}})
    searcher.search(env, seed=0)
    assert env.problem.used == 12
    assert [o.policy for o in outcomes[: len(uniform)]] == [env.space.policy(p) for p in uniform]
    # then the episode of the action box's centre, where an untrained agent's mean action sits
    fresh = make_env(budget=0.4, evaluations=2, pattern="kofn_weight", samples=16, metric=metric)
    assert outcomes[len(uniform)].policy == fresh.play(np.zeros(env.action_size)).policy
    values = [env.problem.value(o) for o in outcomes[: len(uniform) + 1]]
    best = uniform[int(np.argmax(values[:-1]))]
    # an untrained network scores every policy alike on accuracy: a tie keeps the centre
    assert ("centre" if values[-1] >= max(values[:-1]) else "uniform") == starts_at
    obs = torch.as_tensor(env.reset()[0])[None]
    start = searcher.agent.policy.get_distribution(obs).distribution.mean[0].detach().numpy()
    expected = np.zeros(env.action_size) if starts_at == "centre" else env.action_of(best)
    np.testing.assert_allclose(start, expected, atol=0.05)
    if starts_at == "uniform":  # played without noise, that action gives the best uniform policy's bits
        outcome = fresh.play(env.action_of(best))
        assert {choice.w_bits for _, choice in outcome.policy} == {env.space.bits[best[0][1]]}


def test_warm_start_is_refused_for_squashed_actors():
    with pytest.raises(ConfigError, match=r"agent\.warm_start=true .*set agent\.warm_start=false"):
        make_searcher({"name": "sac", "warm_start": True})


@pytest.mark.parametrize(
    ("pattern", "hardware"), [("kofn_weight", "arm_cpu"), (["nm", "kofn_weight"], "a100")]
)
def test_picks_of_undoes_policy(pattern, hardware):
    import numpy as np

    env = make_env(budget=0.4, evaluations=1, pattern=pattern, hardware=hardware, samples=16)
    space = env.space
    rng = np.random.default_rng(0)
    for _ in range(20):
        picks = [(int(rng.integers(len(s))), int(rng.integers(len(space.bits)))) for s in space.shapes]
        assert space.picks_of(space.policy(picks)) == picks


def test_a_refining_agent_hands_its_best_policy_to_evolution_for_the_last_evaluations():
    env = make_env(budget=0.4, evaluations=30, pattern="kofn_weight", samples=16)
    outcomes = record(env)
    searcher = make_searcher(
        {"name": "ppo", "refine": 0.5, "hyperparameters": {"n_steps": 32, "batch_size": 32}}
    )
    searcher.search(env, seed=0)
    assert env.problem.used == 30
    # the agent plays whole episodes (full scores) until 15 evaluations are spent; the rest is
    # evolution's staged selection, which scores offspring on shares of the reward split first
    agent_phase = outcomes[:15]
    assert all(o.fidelity == 1 for o in agent_phase)
    assert any(o.fidelity < 1 for o in outcomes[15:])
    assert all(o.latency <= 0.4 + 1e-9 for o in outcomes)
    best_of_agent = max(env.problem.value(o) for o in agent_phase)
    assert env.problem.value(env.problem.best) >= best_of_agent


@pytest.mark.parametrize(
    ("key", "value"), [("refine", 1.0), ("refine", -0.1), ("refine", "half"), ("warm_start", "yes")]
)
def test_bad_warm_start_and_refine_name_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"agent\.{key}=.* is not allowed"):
        make_searcher({"name": "ppo", key: value})


def test_a_profiled_start_is_scored_and_imitated_where_it_beats_the_other_starts():
    import numpy as np
    import torch
    from rlprune.agents.baselines import uniform_policies
    from rlprune.agents.profile import FIDELITY, profile_price

    env = make_env(budget=0.4, evaluations=60, pattern="kofn_weight", samples=16, metric="kl")
    outcomes = record(env)
    price = profile_price(env.problem)
    searcher = make_searcher(
        {"name": "ppo", "warm_start": True, "profile": 0.9, "hyperparameters": {"n_steps": 512}}
    )
    searcher.search(env, seed=0)
    assert env.problem.used == 60  # the profile's fractions and all
    starts = len(uniform_policies(env.space, 0.4)) + 1  # the uniform policies and the centre
    choices = sum(len(shapes) * len(env.space.bits) - 1 for shapes in env.space.shapes)
    profiled = outcomes[starts : starts + choices + 1]  # the reference, then every other choice
    assert [o.fidelity for o in profiled] == [round(FIDELITY * 16) / 16] * (choices + 1)
    assert sum(o.fidelity for o in profiled) + 1 == pytest.approx(price + 1)
    # the penalties the scores imply, and the allocation they give, is the next (full) episode
    top = [(len(s) - 1, len(env.space.bits) - 1) for s in env.space.shapes]
    kl = iter(o.kl for o in profiled[1:])
    penalties = [np.zeros((len(s), len(env.space.bits))) for s in env.space.shapes]
    for step, table in enumerate(penalties):
        for pick in np.ndindex(table.shape):
            if pick != top[step]:
                table[pick] = next(kl) - profiled[0].kl
    shown = outcomes[starts + choices + 1]
    assert shown.fidelity == 1
    assert shown.policy == env.space.policy(env.space.allocate(penalties, env.space.absolute_budget(0.4)))
    # on this network it beats the uniform policies and the centre, so the agent imitates it:
    # its mean action (no update within 60 evaluations at 512 steps per update) plays it again
    assert shown.kl < min(o.kl for o in outcomes[:starts])
    fresh = make_env(budget=0.4, evaluations=1, pattern="kofn_weight", samples=16, metric="kl")
    observation, done = fresh.reset()[0], False
    while not done:
        with torch.no_grad():
            mean = searcher.agent.policy.get_distribution(
                torch.as_tensor(observation)[None]
            ).distribution.mean
        observation, _, done, _, info = fresh.step(mean[0].numpy())
    assert info["outcome"].policy == shown.policy


def test_no_profile_where_it_would_cost_more_than_its_share():
    env = make_env(budget=0.4, evaluations=60, pattern="kofn_weight", samples=16, metric="kl")
    outcomes = record(env)
    make_searcher({"name": "ppo", "warm_start": True, "profile": 0.05}).search(env, seed=0)
    assert all(o.fidelity == 1 for o in outcomes)


@pytest.mark.parametrize("value", [1.0, -0.1, "some", True])
def test_a_bad_profile_share_names_the_key(value):
    with pytest.raises(ConfigError, match=r"agent\.profile=.* share of the evaluations in \[0, 1\)"):
        make_searcher({"name": "ppo", "warm_start": True, "profile": value})
