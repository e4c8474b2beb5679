"""The exact best policy of a small search space, to judge searchers against.

For each budget, every policy within budget is listed; of those, the *maximal* ones (no step
can go up one level, to the next option or bit-width, and still fit) are scored on the reward
split, as a search scores them. A policy one level below a maximal one keeps fewer weights or
bits, so the best maximal policy is the optimum wherever more weights and bits never score
worse; ``--every`` scores every policy within budget instead, to check that on a space.

Only spaces whose steps cost seconds of their own are listed (no filter couplings, no
float/int8 switch cost), up to ``--limit`` policies in all: the language model's 2:4-or-dense
space has 6^9 (about 10 million) policies and, at budget 0.45, 590 maximal ones.

    python -m rlprune.bench optimum --target text-a100 --budgets 0.6 0.45 0.35
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlprune.api import scorer
from rlprune.bench import QUIET, load, machine
from rlprune.bench.search import TARGETS
from rlprune.config import compose_config
from rlprune.envs import SearchProblem, SearchSpace
from rlprune.envs.space import Picks
from rlprune.errors import ConfigError
from rlprune.io import write_json_atomic


def step_tables(space: SearchSpace) -> list[np.ndarray]:
    """Each step's seconds ``[options, bits]``.

    Raises:
        ConfigError: where a step's seconds depend on other steps' decisions.
    """
    own = all(set(cost.axes) <= {2 * i, 2 * i + 1} for i, cost in enumerate(space.programme.costs))
    if not own or space.mixed_seconds > 0:
        raise ConfigError(
            "the optimum bench lists spaces whose steps cost seconds of their own; this one has "
            "filter couplings or a float/int8 switch cost: pick a target without filters or measured int8"
        )
    return [space.table(i) for i in range(len(space))]


def within_budget(tables: list[np.ndarray], limit: float, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean grids over every policy (one axis of ``options * bits`` per step): within ``limit``
    seconds, and maximal there (no step can go up a level and still fit).

    Raises:
        ConfigError: when the space has more than ``cap`` policies.
    """
    sizes = [t.size for t in tables]
    if math.prod(sizes) > cap:
        raise ConfigError(
            f"the space has {math.prod(sizes):,} policies, more than --limit {cap:,}: "
            "search fewer bits or options (search.bits, search.levels), or raise --limit"
        )
    seconds = np.zeros(sizes)
    for i, table in enumerate(tables):
        seconds = seconds + table.reshape([-1 if j == i else 1 for j in range(len(tables))])
    fits = seconds <= limit
    maximal = fits.copy()
    for i, table in enumerate(tables):
        options, bits = table.shape
        for index in range(table.size):
            shape, b = divmod(index, bits)
            here = _at(len(tables), i, index)
            for up_shape, up_b in ((shape + 1, b), (shape, b + 1)):
                if up_shape < options and up_b < bits:
                    maximal[here] &= ~fits[_at(len(tables), i, up_shape * bits + up_b)]
    return fits, maximal


def _at(ndim: int, axis: int, index: int) -> tuple[Any, ...]:
    return tuple(index if j == axis else slice(None) for j in range(ndim))


def grid_picks(tables: list[np.ndarray], flat: np.ndarray) -> Picks:
    """The ``(option, bits)`` pairs of one grid index."""
    return [divmod(int(k), t.shape[1]) for k, t in zip(flat, tables, strict=True)]


def best_of(problem: SearchProblem, candidates: np.ndarray, tables: list[np.ndarray]) -> dict[str, Any]:
    """Score every candidate (grid indices, one row each); the best and what it took."""
    started = time.perf_counter()
    for row in candidates:
        problem.score(grid_picks(tables, row))
    best = problem.best
    assert best is not None  # every candidate is within budget
    return {
        "scored": len(candidates),
        "value": problem.value(best),
        "accuracy": best.accuracy,
        "loss": best.loss,
        "kl": best.kl,
        "latency": best.latency,
        "picks": problem.space.picks_of(best.policy),
        "policy": [f"{choice.density:g}@{choice.w_bits}" for _, choice in best.policy],
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print each budget's optimum, write the JSON; returns the results."""
    parser = argparse.ArgumentParser(prog="python -m rlprune.bench optimum", description=__doc__)
    parser.add_argument("--target", choices=sorted(TARGETS), default="text-a100")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.6, 0.45, 0.35])
    parser.add_argument("--every", action="store_true", help="score every policy within budget")
    parser.add_argument("--limit", type=int, default=50_000_000, help="most policies the space may have")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    parser.add_argument("--out", type=Path, help="default benchmarks/results/optimum_<target>.json")
    args = parser.parse_args(argv)
    args.out = args.out or Path(f"benchmarks/results/optimum_{args.target}.json")

    cfg = compose_config([*QUIET, *TARGETS[args.target], *args.overrides])
    target, hardware = load(cfg)
    space, evaluator = scorer(cfg, target, hardware, None)
    tables = step_tables(space)
    results: dict[str, Any] = {
        "benchmark": "optimum",
        "target": args.target,
        "overrides": [*TARGETS[args.target], *args.overrides],
        "metric": cfg.reward.metric,
        "policies": math.prod(t.size for t in tables),
        "scored": "every policy within budget" if args.every else "maximal policies",
        "machine": machine(),
        "budgets": [],
    }
    for budget in args.budgets:
        space.check_budget(budget)
        # the tolerance a search's problem allows (SearchProblem.record)
        fits, maximal = within_budget(tables, space.absolute_budget(budget + 1e-9), args.limit)
        candidates = np.argwhere(fits if args.every else maximal)
        problem = SearchProblem(space, evaluator, budget, len(candidates), cfg.reward.metric)
        found = best_of(problem, candidates, tables)
        results["budgets"].append(
            {"budget": budget, "within": int(fits.sum()), "maximal": int(maximal.sum()), **found}
        )
        write_json_atomic(args.out, results)
    print_table(results)
    print(f"\nwritten to {args.out}")
    return results


def print_table(results: dict[str, Any]) -> None:
    """One line per budget: how many policies fit, how many were scored, the best."""
    print(
        f"optimum of {results['target']} ({results['policies']:,} policies; {results['scored']} "
        f"scored; reward {results['metric']}); {results['machine']}"
    )
    heads = f"{'within':>10}  {'maximal':>8}  {'scored':>8}  {'best':>10}  {'accuracy':>8}"
    print(f"{'budget':>6}  {heads}  density@bits per layer")
    for row in results["budgets"]:
        best = row[results["metric"]]
        print(
            f"{row['budget']:>6}  {row['within']:>10,}  {row['maximal']:>8,}  {row['scored']:>8,}  "
            f"{best:>10.6g}  {row['accuracy']:>8.4f}  {' '.join(row['policy'])}"
        )
