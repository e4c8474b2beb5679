"""Search quality at equal cost (docs/benchmarks.md, "Search quality"): every searcher, same evaluations,
same target.

For each target (model, data, hardware model), budget, searcher and seed, the searcher gets
``--evaluations`` policy evaluations on the same trained dense model and search space. The
table gives mean ± std over seeds of: the best policy's reward-split accuracy (before
finetune), its test accuracy after the same short finetune, the latency it reached (≤ budget),
the search's wall time and its evaluations per second, and where the search ranks policies by
KL (``reward.metric=kl``, the ``text-a100`` target) the best policy's KL to the dense model.
Per target and budget, ``*`` marks the best mean before finetune (the lowest KL where KL
ranks). A budget below what a target's space can reach is listed as such.

    python -m rlprune.bench search --targets mnist1d-arm_cpu --budgets 0.5 0.25 --seeds 0 1
    python -m rlprune.bench search --agents ppo ppo:agent.wall=feasible   # one lever at a time
    python -m rlprune.bench search --agents ppo "ppo:search.bits=[8]" ppo:search.min_density=1.0

The searchers take turns seed by seed (seed 0 of each, then seed 1 of each, ...), so a drift in
the machine's speed between the start and the end of a run slows them alike and their times
compare. Each search prints one line to stderr as it ends. It writes JSON (``--out``, again
after every seed) and a PNG beside it: before-finetune accuracy against budget, one panel per
target, one line per searcher.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from scipy.stats import t as t_dist

from rlprune.api import make_space, search
from rlprune.bench import QUIET, finetuned_test_score, load, machine
from rlprune.config import compose_config
from rlprune.envs import SearchSpace
from rlprune.errors import RlpruneError
from rlprune.io import write_atomic, write_json_atomic

# name -> Hydra overrides. The GPU profile accelerates N:M only; the CPU table is timed here at
# batch 32, where filters and int8 both pay (at batch 1 these CNNs are dispatch-bound).
TARGETS = {
    f"{data}-{device}": [f"model={model}", f"data={data}", *settings]
    for model, data in (("mnist1d_cnn", "mnist1d"), ("digits_cnn", "digits"))
    for device, settings in (
        ("arm_cpu", ["hardware=arm_cpu", "search.pattern=kofn_weight"]),
        ("a100", ["hardware=a100", "search.pattern=nm"]),
        ("local_cpu", ["hardware=local_cpu", "hardware.batch_size=32", "search.pattern=filter"]),
    )
}
# networks with residual adds (one step decides the convs an add ties) and, in MobileNetV2,
# depthwise convs (an expansion's step also decides its depthwise conv)
for model in ("resnet20", "mobilenetv2"):
    TARGETS[f"digits-{model}-arm_cpu"] = [
        f"model={model}",
        "data=digits",
        "hardware=arm_cpu",
        "search.pattern=filter",
    ]
# the ViT on MNIST-1D on the BOPs proxy: 10 steps of 20 k-of-n levels at 8 bit-widths (2 to 32),
# floor 0.0002. On the Arm model (floor 0.405) PPO's policy at 0.45 beats the dense reward
# accuracy, on the GPU profiles it has two N:M options per layer, on BitFusion filters on 2 of
# its 10 layers: too little to allocate there
TARGETS["mnist1d-vit-bops"] = ["model=vit", "data=mnist1d", "hardware=bops", "search.pattern=kofn_weight"]
# the embedded language model on the A100 roofline: 2:4-or-dense and bits per Linear layer, the
# search ranking policies by their KL divergence to the dense model (docs/language_models.md)
TARGETS["text-a100"] = [
    "model=tiny_lm",
    "data=text",
    "hardware=a100",
    "search.pattern=nm",
    "reward.metric=kl",
]
SEARCHERS = ["ppo", "amc", "haq", "uniform", "random", "greedy", "tpe", "evolution"]
FLOOR = "floor"
"""A budget of the cheapest latency the target's space reaches, rounded up to the next 0.001."""
SUITES = {
    # where allocation is hard (issue #22): (target, budget) cells
    "hard": [
        ("digits-mobilenetv2-arm_cpu", 0.45),
        ("digits-resnet20-arm_cpu", 0.18),
        ("mnist1d-vit-bops", 0.01),
        ("mnist1d-arm_cpu", FLOOR),
    ],
}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def interval95(values: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean of ``values`` (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    return float(t_dist.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))


def resolve(budget: float | str, cheapest: float) -> float:
    """A budget of the command line: a number, or :data:`FLOOR` on a space whose floor is ``cheapest``."""
    return math.ceil(cheapest * 1000 - 1e-9) / 1000 if budget == FLOOR else float(budget)


def run_cell(cfg: Any, target: Any, hardware: Any, space: Any, finetune_epochs: int) -> dict[str, Any]:
    """One search and its short finetune; the numbers of one seed."""
    result = search(cfg, target, hardware, space=space)
    after = finetuned_test_score(cfg, target, result.best.policy, space.couplings, finetune_epochs)
    return {
        "seed": int(cfg.seed),
        "accuracy": result.best.accuracy,
        "loss": result.best.loss,
        "kl": result.best.kl,  # None unless reward.metric=kl
        "test_after_finetune": after.accuracy,
        "test_loss_after_finetune": after.loss,
        "latency": result.best.latency,
        "bits": sorted({choice.w_bits for _, choice in result.best.policy}),
        "density": float(np.mean([choice.density for _, choice in result.best.policy])),
        "evaluations": result.evaluations,
        "seconds": result.seconds,  # the sensitivity's included, where the searcher read it
        "sensitivity_seconds": result.sensitivity_seconds,
        "evaluations_per_second": result.evaluations / result.seconds,
    }


def bench_target(
    name: str,
    budgets: list[float | str],
    args: argparse.Namespace,
    progress: Callable[[dict[str, Any]], None] = lambda found: None,
) -> dict[str, Any]:
    """Every budget (a number or :data:`FLOOR`), searcher and seed on one target, the searchers
    taking turns seed by seed; ``progress`` gets what is found so far after each seed, so a long
    run keeps it."""
    base = [*QUIET, f"search.evaluations={args.evaluations}", *TARGETS[name], *args.overrides]
    cfg = compose_config(base)
    target, hardware = load(cfg)
    found = {
        "name": name,
        "overrides": [*TARGETS[name], *args.overrides],
        "model": cfg.model._target_,
        "data": cfg.data.name,
        "hardware": hardware.name,
        "pattern": OmegaConf.to_container(cfg.search, resolve=True)["pattern"],
        "dense_reward_accuracy": target.dense_reward.accuracy,
        "dense_test_accuracy": target.dense_test.accuracy,
    }
    spaces: dict[str, SearchSpace] = {}  # one per search config: agent specs may change it

    def space_of(run_cfg: Any) -> SearchSpace:
        key = OmegaConf.to_yaml(run_cfg.search)
        if key not in spaces:
            example = target.splits.train_x[:1]
            spaces[key] = make_space(run_cfg, target.model, example, target.layers, target.searched, hardware)
        return spaces[key]

    cheapest = space_of(cfg).cheapest()
    cells: list[dict[str, Any]] = []
    for budget in (resolve(b, cheapest) for b in budgets):
        if budget < cheapest:
            cells.append({"budget": budget, "infeasible": f"below the cheapest latency {cheapest:.3f}"})
            continue
        runs: dict[str, list[dict[str, Any]]] = {agent: [] for agent in args.agents}
        failed: dict[str, str] = {}
        # the searchers take turns on each seed, so a drift in the machine's speed slows them alike
        for seed in args.seeds:
            for agent in (a for a in args.agents if a not in failed):
                searcher, *changes = agent.split(":")
                run_cfg = compose_config(
                    [*base, f"agent={searcher}", *changes, f"budget.latency={budget}", f"seed={seed}"]
                )
                try:
                    space = space_of(run_cfg)
                    run = run_cell(run_cfg, target, hardware, space, args.finetune_epochs)
                except RlpruneError as error:  # e.g. HAQ's rule, or bits alone, cannot reach this budget
                    failed[agent] = said = str(error)
                else:
                    runs[agent].append(run)
                    accuracy, test = run["accuracy"], run["test_after_finetune"]
                    said = f"reward {accuracy:.4f}, test {test:.4f}, {run['seconds']:.0f} s"
                # a long run shows each search as it ends (the table comes at the end)
                print(f"{name} {budget:g} {agent} seed {seed}: {said}", file=sys.stderr, flush=True)
            # after each seed every searcher has runs or failed: a long run keeps what it measured
            so_far = [summarise(budget, a, runs[a], failed.get(a)) for a in args.agents]
            progress({**found, "cheapest": cheapest, "cells": [*cells, *so_far]})
        cells.extend(so_far)
    return {**found, "cheapest": cheapest, "cells": cells}


def summarise(budget: float, agent: str, runs: list[dict[str, Any]], failed: str | None) -> dict[str, Any]:
    """One searcher's cell at one budget: its runs with mean, std and 95% interval of each
    number, or why it failed (then its runs are dropped: they would be a mean of fewer seeds)."""
    if failed:
        return {"budget": budget, "agent": agent, "failed": failed}
    cell: dict[str, Any] = {"budget": budget, "agent": agent, "runs": runs}
    for key in ("accuracy", "loss", "kl", "test_after_finetune", "seconds", "evaluations_per_second"):
        if runs[0][key] is not None:
            cell[f"{key}_mean"], cell[f"{key}_std"] = _mean_std([r[key] for r in runs])
            cell[f"{key}_ci95"] = interval95([r[key] for r in runs])
    cell["latency_max"] = max(r["latency"] for r in runs)
    return cell


def print_table(results: dict[str, Any]) -> None:
    """The benchmark's table, one block per target."""
    spread = results.get("spread", "std")
    print(
        f"search quality: {results['evaluations']} evaluations per search, seeds {results['seeds']}, "
        f"finetune {results['finetune_epochs']} epochs; mean ± "
        f"{'95% t-interval' if spread == 'ci95' else 'std'}; {results['machine']}"
    )
    for t in results["targets"]:
        w = max([8, *(len(c["agent"]) for c in t["cells"] if "agent" in c)])
        print(
            f"\n{t['name']} ({t['pattern']}): dense reward {t['dense_reward_accuracy']:.4f}, "
            f"dense test {t['dense_test_accuracy']:.4f}, cheapest latency {t['cheapest']:.3f}"
        )
        print(
            f"{'budget':>6}  {'agent':<{w}} {'reward acc (search)':>19}  {'test after finetune':>19}  "
            f"{'latency':>7}  {'search s':>8}  {'evals/s':>7}"
        )
        for budget in dict.fromkeys(c["budget"] for c in t["cells"]):
            group = [c for c in t["cells"] if c["budget"] == budget]
            scored = [c for c in group if "runs" in c]
            top = max((_ranked(c) for c in scored), default=None)
            for c in group:
                if "infeasible" in c or "failed" in c:
                    print(f"{budget:>6}  {c.get('agent', '-'):<{w}} {c.get('infeasible') or c['failed']}")
                    continue
                mark = "*" if _ranked(c) >= top - 1e-9 else " "  # ties: KLs a rounding error apart
                kl = f"  KL {c['kl_mean']:.5f} ± {c[f'kl_{spread}']:.5f}" if "kl_mean" in c else ""
                print(
                    f"{budget:>6}  {c['agent']:<{w}} "
                    f"{c['accuracy_mean']:.4f} ± {c[f'accuracy_{spread}']:.4f}{mark}  "
                    f"{c['test_after_finetune_mean']:.4f} ± {c[f'test_after_finetune_{spread}']:.4f}   "
                    f"{c['latency_max']:>7.3f}  {c['seconds_mean']:>8.1f}  "
                    f"{c['evaluations_per_second_mean']:>7.1f}{kl}"
                )


def _ranked(cell: dict[str, Any]) -> float:
    """What ``*`` ranks a cell by: minus its mean KL where the search minimised KL, else its mean accuracy."""
    return -cell["kl_mean"] if "kl_mean" in cell else cell["accuracy_mean"]


def plot(results: dict[str, Any], path: Path) -> None:
    """Before-finetune accuracy against budget: one panel per target, one line per searcher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = results["targets"]
    columns = min(3, len(targets))
    rows = -(-len(targets) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False)
    for ax in axes.flat[len(targets) :]:
        ax.set_visible(False)
    for ax, t in zip(axes.flat, targets, strict=False):
        scored = [c for c in t["cells"] if "runs" in c]
        for agent in dict.fromkeys(c["agent"] for c in scored):
            cells = sorted((c for c in scored if c["agent"] == agent), key=lambda c: c["budget"])
            ax.errorbar(
                [c["budget"] for c in cells],
                [c["accuracy_mean"] for c in cells],
                yerr=[c["accuracy_std"] for c in cells],
                marker="o",
                capsize=3,
                label=agent,
            )
        ax.axhline(t["dense_reward_accuracy"], color="gray", linestyle="--", label="dense")
        ax.set(title=f"{t['name']} ({t['pattern']})", xlabel="latency budget (share of dense)")
        ax.set_ylabel("best reward-split accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def _budget(text: str) -> float | str:
    """A ``--budgets`` value: a number, or :data:`FLOOR`."""
    return FLOOR if text == FLOOR else float(text)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table, write JSON and the plot. Returns the results."""
    parser = argparse.ArgumentParser(prog="python -m rlprune.bench search", description=__doc__)
    parser.add_argument(
        "--suite",
        choices=sorted(SUITES),
        help="a fixed set of (target, budget) cells, 5 seeds, mean ± 95%% t-interval "
        "(--targets then picks among its targets, --budgets is not used)",
    )
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS))
    parser.add_argument(
        "--budgets",
        type=_budget,
        nargs="+",
        default=[0.5, 0.35, 0.25],
        help=f"shares of the dense latency, or {FLOOR} (the cheapest reachable, rounded up)",
    )
    parser.add_argument(
        "--agents",
        nargs="+",
        default=SEARCHERS,
        help="searchers; NAME:KEY=VALUE:... adds overrides, e.g. ppo:agent.wall=feasible (for ablations)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2, or 0 to 4 with --suite")
    parser.add_argument("--evaluations", type=int, default=500)
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=2,
        help="epochs of the finetune before the test (0: the network the search scored)",
    )
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every target")
    parser.add_argument("--out", type=Path, help="default benchmarks/results/search[_<suite>].json")
    args = parser.parse_args(argv)
    if args.suite:
        cells = [(t, b) for t, b in SUITES[args.suite] if not args.targets or t in args.targets]
    else:
        cells = [(t, b) for t in args.targets or ["mnist1d-arm_cpu"] for b in args.budgets]
    args.seeds = args.seeds or ([0, 1, 2, 3, 4] if args.suite else [0, 1, 2])
    args.out = args.out or Path(f"benchmarks/results/search{'_' + args.suite if args.suite else ''}.json")

    results = {
        "benchmark": "search",
        "evaluations": args.evaluations,
        "seeds": args.seeds,
        "finetune_epochs": args.finetune_epochs,
        "machine": machine(),
        "suite": args.suite,
        "spread": "ci95" if args.suite else "std",
        "targets": [],
    }

    def progress(found: dict[str, Any]) -> None:  # a long run keeps what it measured so far
        write_json_atomic(args.out, {**results, "targets": [*results["targets"], found]})

    for name in dict.fromkeys(t for t, _ in cells):
        results["targets"].append(bench_target(name, [b for t, b in cells if t == name], args, progress))
        write_json_atomic(args.out, results)
    plot(results, args.out.with_suffix(".png"))
    print_table(results)
    print(f"\nwritten to {args.out} and {args.out.with_suffix('.png')}")
    return results
