"""Budget-conditioned search: one agent over budgets sampled per episode, then asked for each."""

import numpy as np
import pytest
from omegaconf import OmegaConf
from rlprune.agents import make_searcher
from rlprune.envs import PruneEnv

from rlprune.api import load_target, search_budgets
from rlprune.errors import ConfigError
from rlprune.hardware import build_latency_model
from tests.support import compose_config, make_env, record


def test_env_samples_a_budget_per_episode_and_keeps_the_best_of_each():
    base = make_env(budget=0.5, evaluations=40, samples=16)
    env = PruneEnv(base.problem, np.zeros((len(base.space), 3)), budgets=[0.5, 0.45, 0.4])
    outcomes = record(env)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        env.reset()
        seen.add(env.budget)
        done = False
        while not done:
            _, _, done, _, _ = env.step(rng.uniform(-1, 1, env.action_size).astype(np.float32))
    assert seen == {0.5, 0.45, 0.4}
    assert all(o.latency <= o.budget + 1e-9 for o in outcomes)
    for budget in seen:
        of_budget = [o for o in outcomes if o.budget == budget]
        assert env.problem.best_by_budget[budget].accuracy == max(o.accuracy for o in of_budget)
    assert env.problem.best is env.problem.best_by_budget[0.5]


def test_reset_option_fixes_the_budget_and_puts_it_in_the_observation():
    base = make_env(budget=0.5, evaluations=5, samples=16)
    env = PruneEnv(base.problem, np.zeros((len(base.space), 3)), budgets=[0.5, 0.4])
    budget_entry = env.features.shape[1]  # the first dynamic feature
    for budget in (0.4, 0.5, 0.4):
        observation, _ = env.reset(options={"budget": budget})
        assert env.budget == budget and observation[budget_entry] == pytest.approx(budget)
    with pytest.raises(Exception, match="below the cheapest"):
        env.reset(options={"budget": 0.05})


def test_search_budgets_answers_every_budget_within_its_evaluations():
    cfg = compose_config(
        "dense.epochs=3", "search.evaluations=30", "wandb.mode=disabled", "progress_bar=false"
    )
    target = load_target(cfg)
    hardware = build_latency_model(OmegaConf.to_container(cfg.hardware, resolve=True))
    best = search_budgets(cfg, target, hardware, [0.5, 0.35, 0.5])
    assert list(best) == [0.5, 0.35]
    for budget, result in best.items():
        outcome = result.best
        assert outcome.budget == budget and outcome.latency <= budget + 1e-9
        assert outcome.episode <= 30 and result.evaluations == 30


def test_search_budgets_needs_an_rl_agent():
    cfg = compose_config("agent=uniform", "dense.epochs=3", "wandb.mode=disabled")
    target = load_target(cfg)
    hardware = build_latency_model(OmegaConf.to_container(cfg.hardware, resolve=True))
    with pytest.raises(ConfigError, match="needs an RL agent"):
        search_budgets(cfg, target, hardware, [0.5, 0.35])


def test_td3_noise_covers_the_pattern_entry_of_a_multi_pattern_search():
    env = make_env(budget=0.45, evaluations=12, samples=16, pattern=["kofn_weight", "nm"])
    assert env.action_size == 3
    agent_cfg = OmegaConf.to_container(
        compose_config("agent=td3", "agent.hyperparameters.learning_starts=6").agent
    )
    make_searcher(agent_cfg).search(env, seed=0)
    assert env.problem.used == 12


def test_the_sweep_mode_writes_one_report_per_budget_from_one_agent(tmp_path):
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "rlprune", f"hydra.run.dir={tmp_path}", "budget.sweep=[0.5,0.3]"]
    command += ["search.evaluations=30", "dense.epochs=3", "finetune.epochs=1", "progress_bar=false"]
    result = subprocess.run([*command, "wandb.mode=disabled"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for budget in (0.5, 0.3):
        report = json.loads((tmp_path / f"budget_{budget}" / "report.json").read_text())
        assert report["budget"] == budget and report["latency"] <= budget + 1e-9
        assert report["search"]["evaluations"] == 30  # one search served both budgets
        assert (tmp_path / f"budget_{budget}" / "policy.yaml").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "rlprune", f"hydra.run.dir={tmp_path / 'b'}", "budget.sweep=[0.5,1.5]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "budget.sweep=[0.5, 1.5] is not allowed" in bad.stderr
