"""How well each reward metric separates close policies (docs/benchmarks.md, "Reward metrics").

On one target, ``--policies`` random policies within budget (random actions through the action
wall) are scored on the reward split with every metric at once: accuracy, loss and
KL(dense ‖ policy). For each metric it reports how many policies share their value with another
(ties a search cannot rank) and its Spearman rank correlation with test accuracy before
finetune, over all policies and over the close ones: the best quarter by test accuracy (``--top``),
where a search spends its end game. ``--finetune`` of those close ones (a seeded sample) are
finetuned for ``--finetune-epochs``, and the correlation with test accuracy after finetune is
reported too. Each ``--reward-fractions`` value is one row: a larger reward split resolves finer
differences but leaves less data to train on (the dense model is retrained for each).

    python -m rlprune.bench reward --policies 200 --finetune 20 --reward-fractions 0.2 0.4
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from rlprune.agents.baselines import play
from rlprune.api import make_space, resolve_budget, scorer, test_score
from rlprune.bench import QUIET, finetuned_test_accuracy, load, machine
from rlprune.compress import compress, recalibrate_batch_norms
from rlprune.config import compose_config
from rlprune.envs import PruneEnv, SearchProblem
from rlprune.envs.features import measure_sensitivity
from rlprune.io import write_json_atomic

METRICS = {"accuracy": lambda o: o.accuracy, "loss": lambda o: -o.loss, "kl": lambda o: -o.kl}
"""Each metric as the number a search maximises."""


def tied(values: list[float]) -> int:
    """How many of ``values`` equal another of them."""
    _, counts = np.unique(np.asarray(values), return_counts=True)
    return int(counts[counts > 1].sum())


def measure(
    overrides: list[str], policies: int, finetunes: int, epochs: int, top: float, seed: int
) -> dict[str, Any]:
    """The separation of every metric on the target of ``overrides`` (one reward fraction)."""
    cfg = compose_config([*QUIET, "reward.metric=kl", f"search.evaluations={policies}", *overrides])
    target, hardware = load(cfg)
    example = target.splits.train_x[:1]
    space = make_space(cfg, target.model, example, target.layers, target.searched, hardware)
    space, evaluator = scorer(cfg, target, hardware, space)
    budget = resolve_budget(cfg.budget.latency, cfg.budget.auto_share, space).latency
    problem = SearchProblem(space, evaluator, budget, policies, "kl")
    outcomes: list = []
    problem.listeners.append(lambda outcome, improved: outcomes.append(outcome))
    env = PruneEnv(problem, partial(measure_sensitivity, space, evaluator))  # random play never reads it
    rng = np.random.default_rng(seed)
    while not problem.exhausted:
        play(env, rng)
    recalibration = target.splits.train_x[: cfg.reward.bn_recalibration * cfg.dense.batch_size]
    before = []
    for outcome in outcomes:
        masked = compress(target.model, outcome.policy, pad=cfg.search.nm_pad, couplings=space.couplings)
        if cfg.reward.bn_recalibration:
            recalibrate_batch_norms(masked, recalibration, cfg.dense.batch_size)
        before.append(test_score(masked, target.splits).accuracy)
    close = np.argsort(before, kind="stable")[::-1][: max(2, round(top * len(outcomes)))]
    sample = sorted(rng.choice(close, size=min(finetunes, len(close)), replace=False).tolist())
    after = [
        finetuned_test_accuracy(cfg, target, outcomes[i].policy, space.couplings, epochs) for i in sample
    ]
    rows = {}
    for name, value in METRICS.items():
        values = [value(o) for o in outcomes]
        rows[name] = {
            "tied": tied(values),
            "tied_close": tied([values[i] for i in close]),
            "distinct": len(set(values)),
            "spearman_test_before": float(spearmanr(values, before).statistic),
            "spearman_close_test_before": float(
                spearmanr([values[i] for i in close], [before[i] for i in close]).statistic
            ),
            "spearman_close_test_after": float(spearmanr([values[i] for i in sample], after).statistic),
        }
    policies_scored = [
        {"accuracy": o.accuracy, "loss": o.loss, "kl": o.kl, "latency": o.latency, "test_before": b}
        for o, b in zip(outcomes, before, strict=True)
    ]
    return {
        "overrides": overrides,
        "reward_samples": len(target.splits.reward_y),
        "budget": budget,
        "dense_reward_accuracy": target.dense_reward.accuracy,
        "dense_test_accuracy": target.dense_test.accuracy,
        "policies": len(outcomes),
        "close": len(close),
        "finetuned": {"indices": sample, "test_after": after},
        "metrics": rows,
        "scored": policies_scored,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table and write JSON. Returns the results."""
    parser = argparse.ArgumentParser(prog="python -m rlprune.bench reward", description=__doc__)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--finetune", type=int, default=20, help="close policies finetuned (a seeded sample)")
    parser.add_argument("--top", type=float, default=0.25, help="the close policies: this best share")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--reward-fractions", type=float, nargs="+", default=[0.2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of the target")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/reward.json"))
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"benchmark": "reward", "machine": machine(), "rows": []}
    for fraction in args.reward_fractions:
        overrides = [*args.overrides, f"data.reward_fraction={fraction}"]
        row = measure(overrides, args.policies, args.finetune, args.finetune_epochs, args.top, args.seed)
        results["rows"].append(row)
        write_json_atomic(args.out, results)
    print(
        f"reward metrics: {args.policies} random policies within budget; close: the best {args.top:.0%} "
        f"by test accuracy, {args.finetune} of them finetuned; ρ: Spearman with test accuracy"
    )
    print(
        f"{'fraction':>8} {'samples':>7}  {'metric':<8} {'tied':>5} {'tied close':>10}  "
        f"{'ρ all':>6}  {'ρ close':>7}  {'ρ close finetuned':>17}"
    )
    for fraction, row in zip(args.reward_fractions, results["rows"], strict=True):
        for name, m in row["metrics"].items():
            print(
                f"{fraction:>8} {row['reward_samples']:>7}  {name:<8} {m['tied']:>5} {m['tied_close']:>10}  "
                f"{m['spearman_test_before']:>6.3f}  {m['spearman_close_test_before']:>7.3f}  "
                f"{m['spearman_close_test_after']:>17.3f}"
            )
    print(f"\nwritten to {args.out}")
    return results
