"""How well each reward metric separates close policies (docs/benchmarks.md, "Reward metrics").

On one target, ``--policies`` random policies within budget (random actions through the action
wall) are scored on the reward split with every metric at once: accuracy, loss and
KL(dense ‖ policy). For each metric it reports how many policies share their value with another
(ties a search cannot rank), and the Spearman rank correlation of the metric with test accuracy
before finetune (all policies) and after a short finetune of ``--finetune`` of them (a seeded
sample). Each ``--reward-fractions`` value is one row: a larger reward split resolves finer
differences but leaves less data to train on.

    python -m rlprune.bench reward --policies 200 --finetune 20 --reward-fractions 0.2 0.4
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from scipy.stats import spearmanr

from rlprune.agents.baselines import play
from rlprune.api import augmentation, make_space, resolve_budget, scorer, test_score
from rlprune.bench import QUIET, compose_config, load, machine
from rlprune.compress import compress, recalibrate_batch_norms
from rlprune.envs import PruneEnv, SearchProblem
from rlprune.envs.features import measure_sensitivity
from rlprune.finetune import FinetuneSettings, finetune
from rlprune.io import write_json_atomic

METRICS = {"accuracy": lambda o: o.accuracy, "loss": lambda o: -o.loss, "kl": lambda o: -o.kl}
"""Each metric as the number a search maximises."""


def tied(values: list[float]) -> int:
    """How many of ``values`` equal another of them."""
    _, counts = np.unique(np.asarray(values), return_counts=True)
    return int(counts[counts > 1].sum())


def measure(overrides: list[str], policies: int, finetunes: int, epochs: int, seed: int) -> dict[str, Any]:
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
    env = PruneEnv(problem, measure_sensitivity(space, evaluator))
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
    sample = sorted(rng.choice(len(outcomes), size=min(finetunes, len(outcomes)), replace=False).tolist())
    settings = FinetuneSettings.from_config(
        {**OmegaConf.to_container(cfg.finetune, resolve=True), "epochs": epochs}
    )
    after = []
    for i in sample:
        tuned = finetune(
            target.model,
            outcomes[i].policy,
            target.searched,
            target.splits,
            settings,
            cfg.seed,
            cfg.search.nm_pad,
            space.couplings,
            augmentation(cfg),
        )
        after.append(test_score(tuned.model, target.splits).accuracy)
    rows = {}
    for name, value in METRICS.items():
        values = [value(o) for o in outcomes]
        rows[name] = {
            "tied": tied(values),
            "distinct": len(set(values)),
            "spearman_test_before": float(spearmanr(values, before).statistic),
            "spearman_test_after": float(spearmanr([values[i] for i in sample], after).statistic),
        }
    return {
        "overrides": overrides,
        "reward_samples": len(target.splits.reward_y),
        "budget": budget,
        "dense_reward_accuracy": target.dense_reward.accuracy,
        "dense_test_accuracy": target.dense_test.accuracy,
        "policies": len(outcomes),
        "finetuned": len(sample),
        "metrics": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table and write JSON. Returns the results."""
    parser = argparse.ArgumentParser(prog="python -m rlprune.bench reward", description=__doc__)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--finetune", type=int, default=20, help="policies finetuned (a seeded sample)")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--reward-fractions", type=float, nargs="+", default=[0.2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of the target")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/reward.json"))
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"benchmark": "reward", "machine": machine(), "rows": []}
    for fraction in args.reward_fractions:
        overrides = [*args.overrides, f"data.reward_fraction={fraction}"]
        row = measure(overrides, args.policies, args.finetune, args.finetune_epochs, args.seed)
        results["rows"].append(row)
        write_json_atomic(args.out, results)
    print(f"reward metrics: {args.policies} random policies within budget, {args.finetune} finetuned")
    print(f"{'fraction':>8} {'samples':>7}  {'metric':<8} {'tied':>5} {'distinct':>8}  ρ test  ρ finetuned")
    for fraction, row in zip(args.reward_fractions, results["rows"], strict=True):
        for name, m in row["metrics"].items():
            print(
                f"{fraction:>8} {row['reward_samples']:>7}  {name:<8} {m['tied']:>5} {m['distinct']:>8}  "
                f"{m['spearman_test_before']:>6.3f}  {m['spearman_test_after']:>11.3f}"
            )
    print(f"\nwritten to {args.out}")
    return results
