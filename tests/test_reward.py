"""The reward: KL(dense ‖ policy) as a metric, and scores on part of the reward split (fidelity)."""

import pytest
import torch
from rlprune.envs.evaluator import evaluate_against

from rlprune.errors import RlpruneError
from rlprune.policy import Choice, Pattern, Policy
from rlprune.training import evaluate
from tests.support import make_env, record


def dense_picks(env):
    """Every step dense at its highest bit-width."""
    return [(len(shapes) - 1, len(env.space.bits) - 1) for shapes in env.space.shapes]


def sparse_picks(env):
    """Every step at its sparsest option and lowest bit-width."""
    return [(0, 0) for _ in env.space.shapes]


def test_kl_is_zero_for_the_dense_network_and_positive_once_compressed():
    env = make_env(metric="kl", pattern="kofn_weight", hardware="arm_cpu")
    evaluator = env.problem.evaluator
    float32 = Choice(Pattern.DENSE, 1, 1, 32, 32)
    dense = evaluator(Policy(tuple((name, float32) for name, _ in env.space.policy(dense_picks(env)))))
    sparse = evaluator(env.space.policy(sparse_picks(env)))
    assert dense.kl == pytest.approx(0.0, abs=1e-7)
    assert sparse.kl > 1e-5  # an untrained network: nearly uniform outputs, small divergences


def test_evaluate_against_agrees_with_evaluate_on_accuracy_and_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))
    reference = torch.log_softmax(torch.randn(50, 3), -1)
    plain, against = evaluate(model, x, y, batch_size=16), evaluate_against(model, x, y, reference, 16)
    assert against.accuracy == plain.accuracy and against.loss == pytest.approx(plain.loss)
    p = reference.exp()
    expected = (p * (reference - torch.log_softmax(model(x), -1))).sum(-1).mean().item()
    assert against.kl == pytest.approx(expected, rel=1e-5)


def test_kl_metric_keeps_the_policy_of_least_kl_as_best():
    env = make_env(metric="kl", budget=1.0, evaluations=2)
    outcomes = record(env)
    env.problem.score(sparse_picks(env))
    env.problem.score(dense_picks(env))
    best = min(outcomes, key=lambda o: o.kl)
    assert env.problem.best == best and best.kl < max(o.kl for o in outcomes)


def test_kl_metric_needs_an_evaluator_with_the_dense_outputs():
    env = make_env()
    with pytest.raises(RlpruneError, match=r"reward\.metric=kl"):
        type(env.problem)(env.space, env.problem.evaluator, 0.5, 10, "kl")


def test_a_score_on_part_of_the_split_costs_that_share_and_never_becomes_best():
    env = make_env(samples=64, evaluations=2, budget=1.0)
    problem = env.problem
    low = problem.score(dense_picks(env), samples=16)
    assert problem.used == 0.25 and low.fidelity == 0.25 and problem.best is None
    assert problem.evaluator(problem.space.policy(dense_picks(env)), 16).accuracy == low.accuracy
    problem.score(sparse_picks(env), samples=48)
    assert problem.used == 1.0 and problem.best is None
    full = problem.score(dense_picks(env))
    assert problem.used == 2.0 and problem.exhausted and problem.best == full
    assert [o.episode for o in (low, full)] == [1, 3]


def test_a_score_costing_more_than_is_left_is_refused():
    env = make_env(samples=64, evaluations=1)
    env.problem.score(sparse_picks(env), samples=32)
    with pytest.raises(RlpruneError, match=r"0\.5 of its 1 evaluations left"):
        env.problem.score(sparse_picks(env))
    env.problem.score(sparse_picks(env), samples=32)
    assert env.problem.exhausted


def test_fidelity_outside_the_split_is_refused():
    env = make_env(samples=64)
    with pytest.raises(RlpruneError, match="1 to 64 reward samples"):
        env.problem.evaluator(env.space.policy(sparse_picks(env)), 0)


def test_full_fidelity_scores_keep_evaluations_an_integer():
    env = make_env(evaluations=3)
    for _ in range(3):
        env.problem.score(sparse_picks(env))
    assert env.problem.used == 3 and isinstance(env.problem.used, int)


def test_a_partial_score_recalibrates_batch_norms_on_whole_batches(monkeypatch):
    import rlprune.envs.evaluator as evaluator_module
    from rlprune.envs import PolicyEvaluator

    passes = []
    real = evaluator_module.recalibrate_batch_norms
    monkeypatch.setattr(
        evaluator_module, "recalibrate_batch_norms", lambda m, x, b: (passes.append(len(x)), real(m, x, b))
    )
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 8), torch.nn.BatchNorm1d(8))
    names = ["1"]
    evaluator = PolicyEvaluator(
        model,
        names,
        torch.randn(64, 1, 40),
        torch.randint(0, 8, (64,)),
        recalibration=torch.randn(400, 1, 40),
    )
    float32 = Choice(Pattern.DENSE, 1, 1, 32, 32)
    policy = Policy(((names[0], float32),))
    for samples in (64, 19, 30, 8):  # shares 1, 0.30, 0.47, 0.125 of the split
        evaluator(policy, samples)
    assert passes == [400, 100, 200, 100]  # each a whole number of batches of 100
