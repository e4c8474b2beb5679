import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from rlprune.agents import EvolutionSearch, RandomSearch, TPESearch, UniformSearch
from rlprune.envs import ENV_ID, PruneEnv, SpaceSettings, build_space
from rlprune.envs.default import default_config
from rlprune.envs.features import measure_sensitivity
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from rlprune.api import dense_cache_path, describe, make_space, resolve_budget
from rlprune.compress import policy_masks
from rlprune.errors import BudgetError, ConfigError
from rlprune.hardware import build_latency_model
from rlprune.layers import discover_layers
from rlprune.models import MNIST1DCNN
from rlprune.policy import Policy
from tests.support import compose_config, hardware_config, make_env


def play(env: PruneEnv, actions: np.ndarray) -> dict:
    obs, _ = env.reset()
    for t, action in enumerate(actions):
        assert env.observation_space.contains(obs)
        obs, _, terminated, truncated, info = env.step(action)
        assert terminated == (t == len(actions) - 1) and not truncated
    return info


def test_env_passes_gymnasium_and_sb3_checkers(env):
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_env_is_registered():
    assert ENV_ID in gym.registry
    env = make_env()
    made = gym.make(ENV_ID, problem=env.problem, sensitivity=np.zeros((len(env.space), 3)))
    assert made.unwrapped.space is env.space


@pytest.mark.slow  # trains the default dense model for 3 epochs when the session has not yet
def test_registered_id_alone_makes_the_default_problem_that_passes_both_checkers_warning_free():
    quick = ["dense.epochs=3"]  # the only change to the defaults: a short dense training
    made = gym.make(ENV_ID, overrides=quick)
    env = made.unwrapped
    cfg = compose_config(*quick)
    assert cfg.model._target_.endswith("MNIST1DCNN") and cfg.hardware.name == "arm_cpu"
    model, splits, layers, searched = describe(cfg)
    assert dense_cache_path(cfg, splits).is_file()  # the cached dense model of the app's config
    arm = make_space(cfg, model, splits.train_x[:1], layers, searched, build_latency_model(cfg.hardware))
    assert env.space.patterns == arm.patterns == ("kofn_weight",)  # the Arm core's own pattern
    assert env.space.dense_latency == pytest.approx(arm.dense_latency)
    assert [lay.name for lay in env.space.layers] == [lay.name for lay in arm.layers]
    assert env.budget == resolve_budget("auto", cfg.budget.auto_share, arm).latency < 1.0
    assert env.wall == "band" and env.problem.evaluations == cfg.search.evaluations
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=True)  # Gymnasium asks for the unwrapped env
        sb3_check_env(made, warn=True)
    observation, _ = made.reset(seed=0)
    assert made.observation_space.contains(observation)


def test_registered_id_takes_a_problem_with_its_sensitivity_or_neither():
    env = make_env(samples=16)
    with pytest.raises(TypeError, match="sensitivity"):
        gym.make(ENV_ID, problem=env.problem)
    with pytest.raises(TypeError, match="overrides"):
        gym.make(ENV_ID, problem=env.problem, sensitivity=np.zeros((len(env.space), 3)), overrides=["seed=1"])


def test_default_env_refuses_an_override_hydra_cannot_apply_naming_it():
    with pytest.raises(ConfigError, match="hardware=nowhere"):
        default_config(["hardware=nowhere"])


CHEAPEST = make_env(budget=1.0, samples=16).space.cheapest()


@settings(max_examples=25, deadline=None)
@given(share=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_every_episode_ends_within_budget(share, seed):
    budget = CHEAPEST + share * (1.0 - CHEAPEST)
    env = make_env(budget=budget, samples=16)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        info = play(env, rng.uniform(-1, 1, size=(len(env.space), 2)))
        assert info["outcome"].latency <= budget + 1e-9


def test_full_budget_forces_density_up_but_never_a_bit_width(env):
    env = make_env(budget=1.0)
    top = play(env, np.tile([-1.0, 1.0], (len(env.space), 1)))  # sparsest, highest bits
    assert top["outcome"].latency == pytest.approx(1.0)
    assert all(c.density == 1.0 and c.w_bits == env.space.bits[-1] for _, c in top["outcome"].policy)
    # the wall spends the budget on density only: a wish for the lowest bits keeps them, dense
    low = play(env, -np.ones((len(env.space), 2)))
    assert all(c.density == 1.0 and c.w_bits == env.space.bits[0] for _, c in low["outcome"].policy)


def test_wishes_are_granted_when_the_budget_allows():
    env = make_env(budget=0.9)
    # asking for the sparsest, lowest-bit option on the first layer is cheap, so it is granted
    env.reset()
    env.step(np.array([-1.0, -1.0], dtype=np.float32))
    shape, bits = env.picks[0]
    assert bits == 0 and env.space.shapes[0][shape].density == min(s.density for s in env.space.shapes[0])


def test_each_episode_spends_one_evaluation(env):
    for _ in range(3):
        play(env, np.zeros((len(env.space), 2)))
    assert env.problem.used == 3
    assert env.problem.best is not None and env.problem.best.latency <= 0.5 + 1e-9


def test_infeasible_and_out_of_range_budgets_are_refused():
    with pytest.raises(BudgetError, match="below the cheapest reachable latency"):
        make_env(budget=0.001)
    with pytest.raises(ConfigError, match=r"budget.latency must be in \(0, 1\]"):
        make_env(budget=1.5)


def test_layers_that_cannot_take_nm_are_skipped_with_a_reason(env):
    assert "conv1" in env.space.skipped  # reduction length 1*5 is not a multiple of 4
    assert [s.pattern.value for s in env.space.shapes[0]] == ["dense"]


def test_padded_nm_takes_any_reduction_length_and_the_masks_agree():
    layers = discover_layers(MNIST1DCNN(), torch.randn(1, 1, 40))
    device = build_latency_model(hardware_config("a100"))
    padded = build_space(layers, layers, device, SpaceSettings("nm", levels=8, nm_pad=True))
    assert "conv1" not in padded.skipped
    choice = padded.shapes[0][0].choice(16)
    assert (choice.keep, choice.group) == (2, 4)
    # 2 of the first 4, 1 of the last 1
    mask = policy_masks(MNIST1DCNN(), Policy.of({"conv1": choice}), pad=True)["conv1"]
    assert mask.flatten(1).sum(1).eq(3).all()
    tiles = SpaceSettings("nm_transposable", levels=8, nm_pad=True)
    transposable = build_space(layers, layers, device, tiles)
    assert "conv1" in transposable.skipped  # tiles cannot be padded


def test_several_patterns_add_a_pattern_action_and_each_layer_picks_its_own():
    env = make_env(budget=0.6, pattern=["nm", "kofn_weight"], samples=16)
    assert env.action_space.shape == (3,)
    assert [p.value for p in env.space.patterns] == ["nm", "kofn_weight"]
    gym_check_env(env, skip_render_check=True)
    picked = set()
    for wish in (-1.0, 1.0):  # -1 asks for the first pattern, +1 for the last
        actions = np.tile(np.array([-0.2, 1.0, wish], dtype=np.float32), (len(env.space), 1))
        info = play(env, actions)
        assert info["outcome"].latency <= 0.6 + 1e-9
        picked |= {choice.pattern.value for _, choice in info["outcome"].policy}
    assert {"nm", "kofn_weight"} <= picked


def test_the_score_memo_is_bounded_and_keeps_the_most_recent():
    from rlprune.envs import PolicyEvaluator

    env = make_env(pattern="kofn_weight", samples=16)
    scored = env.problem.evaluator
    evaluator = PolicyEvaluator(
        scored.model, [lay.name for lay in env.space.layers], scored.x, scored.y, memo_size=2
    )
    top_bits = len(env.space.bits) - 1
    policies = [env.space.policy([(s, top_bits) for _ in env.space.shapes]) for s in range(3)]
    for policy in policies:
        evaluator(policy)
    assert evaluator.forward_passes == 3
    evaluator(policies[2])  # remembered
    assert evaluator.forward_passes == 3
    evaluator(policies[0])  # forgotten: the memo holds the two most recent only
    assert evaluator.forward_passes == 4


def test_cached_masks_stay_within_their_bytes_and_score_as_fresh_ones(monkeypatch):
    import rlprune.envs.evaluator as evaluator_module
    from rlprune.envs import PolicyEvaluator

    env = make_env(pattern="kofn_weight", samples=16)
    scored = env.problem.evaluator
    names = [lay.name for lay in env.space.layers]
    top_bits = len(env.space.bits) - 1
    policies = [env.space.policy([(s, top_bits) for _ in env.space.shapes]) for s in range(4)]
    one_policy = sum(scored.model.get_submodule(name).weight.numel() for name in names)
    monkeypatch.setattr(evaluator_module, "MASK_BYTES", 2 * one_policy)  # two policies' masks
    evaluator = PolicyEvaluator(scored.model, names, scored.x, scored.y, memo_size=1)
    for policy in [*policies, policies[0]]:  # the first one's masks are made again
        assert evaluator(policy) == PolicyEvaluator(scored.model, names, scored.x, scored.y)(policy)
        stored = sum(mask.nbytes for mask in evaluator._masks._tensors.values())
        assert evaluator._masks.nbytes == stored <= 2 * one_policy
    assert len(evaluator._masks) == 2 * len(names)


def test_a_layer_a_policy_leaves_out_is_scored_dense_and_float():
    from rlprune.envs import PolicyEvaluator

    from rlprune.policy import Choice, Pattern, Policy

    env = make_env(samples=16)
    scored = env.problem.evaluator
    names = [lay.name for lay in env.space.layers]
    fresh = PolicyEvaluator(scored.model, names, scored.x, scored.y)
    low = {name: Choice(Pattern.NM, 1, 4, 4, 4) for name in names}
    partial = Policy.of({names[0]: low[names[0]]})  # the others dense and float
    explicit = Policy.of({names[0]: low[names[0]], **{name: Choice() for name in names[1:]}})
    scored(Policy.of(low))  # every layer 1:4 at 4 bits, before
    assert scored(partial) == fresh(explicit)
    assert fresh(partial) == fresh(explicit) and fresh.forward_passes == 1  # one policy, one pass


def test_space_settings_name_the_key_and_keep_canonical_patterns():
    chosen = SpaceSettings(["nm", "kofn_weight", "nm"], bits=[16, 8], nm_options=[[2, 4]])
    assert chosen.patterns == ("nm", "kofn_weight") and chosen.bits == (8, 16)
    assert chosen.nm_options == ((2, 4),)
    for kwargs, message in [
        ({"patterns": "zigzag"}, r"unknown search.pattern 'zigzag'"),
        ({"patterns": "nm", "levels": 1}, r"search.levels must be >= 2"),
        ({"patterns": "nm", "min_density": 0.0}, r"search.min_density must be in \(0, 1\]"),
        ({"patterns": "nm", "nm_options": [[4, 4]]}, r"search.nm_options: N:M must have 0 < N < M"),
    ]:
        with pytest.raises(ConfigError, match=message):
            SpaceSettings(**kwargs)


def test_a_space_with_no_searched_layer_is_empty_and_costs_the_whole_network_as_fixed():
    model, x = MNIST1DCNN().eval(), torch.randn(2, 1, 40)
    layers = discover_layers(model, x)
    space = build_space(
        layers, [], build_latency_model(hardware_config("arm_cpu")), SpaceSettings("kofn_weight")
    )
    assert len(space) == 0 and space.fixed_latency == space.dense_latency > 0


class Counted:
    """A sensitivity measurement that counts its calls."""

    def __init__(self, env: PruneEnv) -> None:
        self.calls, self.env = 0, env

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return measure_sensitivity(self.env.space, self.env.problem.evaluator)


def test_sensitivity_is_measured_once_when_an_observation_first_needs_it():
    eager = make_env(samples=16, evaluations=8)
    measure = Counted(eager)
    env = PruneEnv(eager.problem, measure)
    UniformSearch().search(env, 0)  # scores policies through the problem: no observation
    assert measure.calls == 0 and env.sensitivity_seconds == 0.0
    observation, _ = env.reset()
    assert measure.calls == 1 and env.sensitivity_seconds > 0
    np.testing.assert_array_equal(observation, eager.reset()[0])
    env.reset()
    assert measure.calls == 1


@pytest.mark.parametrize("searcher", [EvolutionSearch, UniformSearch, TPESearch, RandomSearch])
def test_searchers_that_never_read_an_observation_never_measure_the_sensitivity(searcher):
    eager = make_env(samples=16, evaluations=20)
    measure = Counted(eager)
    searcher().search(PruneEnv(eager.problem, measure), 0)
    assert eager.problem.used > 0 and measure.calls == 0


def test_sensitivity_of_another_shape_or_outside_0_1_is_refused_naming_it():
    env = make_env(samples=16)
    steps = len(env.space)
    shape = rf"\({steps}, 3\), a row per step of the space .*, not \({steps}, 2\)"
    with pytest.raises(ValueError, match=shape):
        PruneEnv(env.problem, np.zeros((steps, 2)))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\], not \[nan, nan, nan\]"):
        PruneEnv(env.problem, np.where(np.eye(steps, 3) > 0, np.nan, 0.0))
    late = PruneEnv(env.problem, lambda: np.full((steps, 3), 2.0))  # a measurement is checked when read
    with pytest.raises(ValueError, match=r"not \[2.0, 2.0, 2.0\]"):
        late.reset()


def test_a_run_reports_the_time_its_searcher_spent_measuring_the_sensitivity():
    from rich.console import Console

    from rlprune.api import load_target, search
    from rlprune.report import print_report
    from tests.support import printable_report

    base = ["dense.epochs=3", "search.evaluations=12", "wandb.mode=disabled", "progress_bar=false"]
    cfg = compose_config(*base, "agent=evolution")
    target = load_target(cfg)
    hardware = build_latency_model(hardware_config("a100"))
    scored = []
    evolved = search(cfg, target, hardware, listeners=[lambda outcome, improved: scored.append(outcome)])
    assert evolved.sensitivity_seconds == 0.0
    assert evolved.forward_passes <= len(scored)  # each pass a counted score (at some fidelity)
    learned = search(compose_config(*base, "agent=ppo"), target, hardware)
    assert 0 < learned.sensitivity_seconds < learned.seconds
    assert learned.forward_passes > 3 * len(learned.space)  # the sensitivity's scores, uncounted

    for seconds, shown in [(0.0, False), (2.5, True)]:
        console = Console(record=True, width=400)
        report = printable_report()
        report["search"]["sensitivity_seconds"] = seconds
        print_report(report, console)
        text = console.export_text()
        assert "search: 10 evaluations in 1.0 s" in text
        assert ("(2.5 s of it measuring each layer's sensitivity)" in text) is shown


def test_an_episode_of_given_actions_is_the_one_the_steps_play(env):
    actions = np.random.default_rng(3).uniform(-1, 1, size=(len(env.space), 2))
    stepped = play(env, actions)["outcome"]
    given = env.outcome_of(actions)
    assert given.policy == stepped.policy and given.latency == stepped.latency
    assert given.accuracy == stepped.accuracy and given.episode == stepped.episode + 1
    with pytest.raises(ValueError, match=f"one action per step: {len(env.space)} steps, 2 actions"):
        env.outcome_of(actions[:2])
