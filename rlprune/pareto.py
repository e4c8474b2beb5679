"""The Pareto report of a sweep: accuracy against latency for every run under a folder.

    python -m rlprune -m budget.latency=0.3,0.5,0.7 agent=ppo,uniform
    python -m rlprune.pareto multirun/<date>/<time>

Every ``report.json`` below the folder is one point (its latency relative to the dense model,
its test accuracy after finetuning); each hardware adds its dense point at latency 1. A point is
Pareto-optimal when no run on the same hardware is at least as fast and at least as accurate,
and strictly better in one. The table is printed and written to ``pareto.json``, the plot to
``pareto.png`` (one curve per hardware and searcher, dense points as stars, the front circled),
both in the folder; with ``--wandb offline|online`` they are also logged to a W&B run grouped
under the folder's name.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rlprune.io import write_atomic, write_json_atomic


@dataclass(frozen=True)
class Point:
    """One run of a sweep (or a dense reference, ``agent == "dense"``)."""

    run: str
    hardware: str
    agent: str
    budget: float
    latency: float
    accuracy: float
    search_accuracy: float


def collect(folder: Path) -> tuple[list[Point], list[str]]:
    """The runs under ``folder`` and each hardware's dense point; also the runs that left no report."""
    points, dense = [], {}
    for path in sorted(folder.rglob("report.json")):
        report = json.loads(path.read_text())
        accuracy = report["accuracy"]
        run = str(path.parent.relative_to(folder))
        points.append(
            Point(
                run=run,
                hardware=report["hardware"],
                agent=report["search"]["agent"],
                budget=report["budget"],
                latency=report["latency"],
                accuracy=accuracy["pruned_test_after_finetune"],
                search_accuracy=accuracy["search_best_reward"],
            )
        )
        dense.setdefault(report["hardware"], accuracy["dense_test"])
    points += [Point("dense", hw, "dense", 1.0, 1.0, acc, acc) for hw, acc in dense.items()]
    failed = sorted(str(p.parent.relative_to(folder)) for p in folder.rglob("error.log"))
    return points, failed


def pareto_front(points: Sequence[Point]) -> list[bool]:
    """Per point, whether no point of the same hardware dominates it (faster-or-equal and more accurate)."""

    def dominates(a: Point, b: Point) -> bool:
        better = a.latency < b.latency or a.accuracy > b.accuracy
        return a.hardware == b.hardware and a.latency <= b.latency and a.accuracy >= b.accuracy and better

    return [not any(dominates(other, point) for other in points) for point in points]


def plot(points: Sequence[Point], front: Sequence[bool], path: Path) -> None:
    """Accuracy against latency: one curve per hardware and searcher, the front circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hardware = sorted({p.hardware for p in points})
    agents = sorted({p.agent for p in points if p.agent != "dense"})
    curves = [(hw, agent) for hw in hardware for agent in agents]
    colors = dict(zip(curves, plt.get_cmap("tab10").colors * 4, strict=False))
    styles = dict(zip(hardware, ["-", "--", ":", "-."] * 4, strict=False))
    markers = dict(zip(hardware, "osD^vP<>" * 4, strict=False))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for hw, agent in curves:
        curve = sorted((p.latency, p.accuracy) for p in points if p.hardware == hw and p.agent == agent)
        if curve:
            xs, ys = zip(*curve, strict=True)
            ax.plot(xs, ys, styles[hw], marker=markers[hw], color=colors[hw, agent], label=f"{hw} · {agent}")
    for hw in hardware:
        dense = [p for p in points if p.hardware == hw and p.agent == "dense"]
        xs, ys = [p.latency for p in dense], [p.accuracy for p in dense]
        ax.scatter(
            xs, ys, marker="*", s=220, color="gold", edgecolors="black", zorder=3, label=f"{hw} · dense"
        )
    best = [p for p, f in zip(points, front, strict=True) if f]
    ax.scatter(
        [p.latency for p in best],
        [p.accuracy for p in best],
        s=180,
        facecolors="none",
        edgecolors="black",
        linewidths=1.5,
        label="Pareto-optimal",
    )
    ax.set_xlabel("latency (share of the dense model on its hardware)")
    ax.set_ylabel("test accuracy after finetune")
    ax.set_title("rlprune sweep: accuracy against latency (★ dense)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Collect, print, write and plot the sweep's Pareto table. Returns it."""
    parser = argparse.ArgumentParser(prog="python -m rlprune.pareto", description=__doc__)
    parser.add_argument("folder", type=Path, help="a multirun folder (or any folder of runs)")
    parser.add_argument("--wandb", default="disabled", choices=["offline", "online", "disabled"])
    parser.add_argument("--project", default="rlprune")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(
            f"error: {args.folder} is not a folder; pass a multirun folder, e.g. multirun/<date>/<time>"
        )
    points, failed = collect(args.folder)
    if not any(p.agent != "dense" for p in points):
        raise SystemExit(f"error: no report.json under {args.folder}: no run of the sweep finished")
    front = pareto_front(points)
    rows = [{**asdict(p), "pareto": f} for p, f in zip(points, front, strict=True)]
    table = {"folder": str(args.folder), "failed_runs": failed, "points": rows}
    write_json_atomic(args.folder / "pareto.json", table)
    plot(points, front, args.folder / "pareto.png")
    _print(rows, failed)
    if args.wandb != "disabled":
        _log(args, rows)
    print(f"written to {args.folder / 'pareto.json'} and {args.folder / 'pareto.png'}")
    return table


def _print(rows: list[dict], failed: list[str]) -> None:
    header = f"{'hardware':<12} {'agent':<9} {'budget':>6} {'latency':>7} {'test acc':>8} {'search acc':>10}"
    print(f"{header}  pareto  run")
    for r in sorted(rows, key=lambda r: (r["hardware"], r["agent"], r["latency"])):
        mark = "*" if r["pareto"] else ""
        print(
            f"{r['hardware']:<12} {r['agent']:<9} {r['budget']:>6.2f} {r['latency']:>7.3f} "
            f"{r['accuracy']:>8.4f} {r['search_accuracy']:>10.4f}  {mark:^6}  {r['run']}"
        )
    if failed:
        print(f"runs that failed (see their error.log): {', '.join(failed)}")


def _log(args: argparse.Namespace, rows: list[dict]) -> None:
    from rlprune.tracking import Tracker

    tracker = Tracker(
        args.wandb,
        args.project,
        args.folder,
        {"folder": str(args.folder)},
        name=f"pareto-{args.folder.name}",
        group=args.folder.name,
        tags=["pareto"],
    )
    tracker.log_table("pareto", rows)
    tracker.log_image("pareto_plot", args.folder / "pareto.png")
    tracker.finish()
    if tracker.failure:
        print(
            f"error: W&B logging failed ({tracker.failure}); pareto.json and pareto.png are written",
            file=sys.stderr,
        )
        raise SystemExit(3)


if __name__ == "__main__":
    main()
