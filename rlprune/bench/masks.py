"""Benchmark of the mask algorithms (docs/benchmarks.md, "Mask algorithms").

For each layer shape, on Gaussian weights with magnitude scores: the time per mask of k-of-n at
each granularity, N:M, and transposable N:M (greedy and exact); the |w| the greedy keeps as a
ratio to the exact transposable mask (per tile: mean and min) and both as a ratio to the
unconstrained N:M mask; log10 mask diversity per pattern; DPP confidence and diversity of a
Gumbel top-k mask started from the weights. Times are medians of repeats on a fixed thread count.

``python -m rlprune.bench masks [--sizes 64x64,512x512x3x3] [--quick] [--out PATH] [--threads N]``
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rlprune.io import write_json_atomic
from rlprune.masks import (
    GumbelTopKMask,
    kofn_mask,
    log10_mask_diversity,
    magnitude,
    nm_mask,
    transposable_mask,
    weight_view,
)
from rlprune.masks.transposable import to_tiles
from rlprune.policy import Choice, Pattern

DEFAULT_SIZES = "64x64,256x256,1024x1024,4096x4096,512x512x3x3"
QUICK_SIZES = "64x64,256x256,32x32x3x3"
NM_CHOICES = ((2, 4), (4, 8))
EXACT_LIMIT_S = 120.0  # exact solves estimated to take longer are skipped
SAMPLE_TILES = 2048  # tiles solved to estimate the time of a whole exact solve


def parse_shape(text: str) -> tuple[int, ...]:
    """``"4096"`` or ``"4096x4096"`` (Linear ``O x I``), ``"512x512x3x3"`` (Conv2d ``O x I x kh x kw``)."""
    dims = tuple(int(d) for d in text.lower().split("x"))
    return dims * 2 if len(dims) == 1 else dims


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls of ``fn`` in seconds, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def tile_sums(scores: torch.Tensor, mask: torch.Tensor, group: int) -> torch.Tensor:
    """Kept score of every ``group x group`` tile of the 2-D view, in float64."""
    return to_tiles(weight_view((scores * mask).double()), group).sum((1, 2))


def bench_layer(
    name: str, weight: torch.Tensor, repeats: int, exact_limit_s: float = EXACT_LIMIT_S
) -> dict[str, Any]:
    """Every figure of one layer; ``weight`` may be Gaussian or trained.

    Times are in milliseconds; an exact solve estimated (from :data:`SAMPLE_TILES` tiles) to take
    longer than ``exact_limit_s`` is skipped and its estimate recorded instead.
    """
    shape = tuple(weight.shape)
    out, inp = shape[0], shape[1]
    conv = len(shape) > 2
    ms: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    ms["magnitude"], scores = median_time(lambda: magnitude(weight), repeats)
    n_weight = math.prod(shape[1:])
    ms["kofn_weight"], _ = median_time(lambda: kofn_mask(scores, n_weight // 2, "weight"), repeats)
    if conv:
        ms["kofn_kernel"], _ = median_time(lambda: kofn_mask(scores, max(1, inp // 2), "kernel"), repeats)
    ms["kofn_filter"], _ = median_time(lambda: kofn_mask(scores, max(1, out // 2), "filter"), repeats)

    retained: dict[str, float] = {}
    exact_over_greedy: dict[str, float] = {}
    rows, length = out, n_weight
    for keep, group in NM_CHOICES:
        tag = f"{keep}:{group}"
        ms[f"nm_{tag}"], nm = median_time(lambda k=keep, g=group: nm_mask(scores, k, g, pad=True), repeats)
        if rows % group or length % group:
            notes[f"transposable_{tag}"] = f"2-D view {rows}x{length} is not tiled by {group}x{group}"
            continue
        ms[f"greedy_{tag}"], greedy = median_time(
            lambda k=keep, g=group: transposable_mask(scores, k, g, "greedy"), repeats
        )
        nm_total = (scores * nm).double().sum().item()
        greedy_tiles = tile_sums(scores, greedy, group)
        retained[f"greedy/nm_{tag}"] = greedy_tiles.sum().item() / nm_total
        estimate = _estimate_exact(scores, keep, group)
        if estimate > exact_limit_s:
            ms[f"exact_{tag}"] = None
            notes[f"exact_{tag}"] = f"skipped: estimated {estimate:.0f} s > {exact_limit_s:.0f} s"
            continue
        exact_repeats = repeats if estimate < 1.0 else 1
        ms[f"exact_{tag}"], exact = median_time(
            lambda k=keep, g=group: transposable_mask(scores, k, g, "exact"), exact_repeats
        )
        exact_tiles = tile_sums(scores, exact, group)
        ratio = greedy_tiles / exact_tiles.clamp_min(torch.finfo(torch.float64).tiny)
        retained[f"exact/nm_{tag}"] = exact_tiles.sum().item() / nm_total
        retained[f"greedy/exact_{tag}_mean"] = ratio.mean().item()
        retained[f"greedy/exact_{tag}_min"] = ratio.min().item()
        exact_over_greedy[tag] = ms[f"exact_{tag}"] / ms[f"greedy_{tag}"]
    ms = {k: None if v is None else v * 1e3 for k, v in ms.items()}

    half = Choice(Pattern.KOFN_WEIGHT, max(1, n_weight // 2), n_weight)
    diversity = {
        "unstructured_50%": log10_mask_diversity(Choice(Pattern.UNSTRUCTURED, 1, 2), shape),
        "kofn_weight_50%": log10_mask_diversity(half, shape),
        "nm_2:4": log10_mask_diversity(Choice(Pattern.NM, 2, 4), shape),
    }
    for keep, group in NM_CHOICES:
        if not (rows % group or length % group):
            choice = Choice(Pattern.NM_TRANSPOSABLE, keep, group)
            diversity[f"transposable_{keep}:{group}"] = log10_mask_diversity(choice, shape)
    granularity = "kernel" if conv else "weight"
    n_units = inp if conv else n_weight
    learned = GumbelTopKMask(shape, max(1, n_units // 2), granularity, weight=weight)
    dpp = {"granularity": granularity, "confidence": learned.confidence(), "diversity": learned.diversity()}
    return {
        "layer": name,
        "shape": list(shape),
        "ms": ms,
        "retained": retained,
        "exact_over_greedy_time": exact_over_greedy,
        "log10_md": diversity,
        "dpp": dpp,
        "notes": notes,
    }


def _estimate_exact(scores: torch.Tensor, keep: int, group: int) -> float:
    """Seconds an exact solve of the whole layer would take, timed on a band of its 2-D view."""
    view = weight_view(scores)
    tiles_per_band = view.shape[1] // group
    bands = max(1, min(view.shape[0] // group, math.ceil(SAMPLE_TILES / tiles_per_band)))
    sample = view[: bands * group]
    start = time.perf_counter()
    transposable_mask(sample, keep, group, "exact")
    return (time.perf_counter() - start) * (view.shape[0] // group) / bands


def _cell(value: float | None, digits: int = 1) -> str:
    return "skip" if value is None else f"{value:.{digits}f}"


def format_tables(results: dict[str, Any]) -> str:
    """The three plain-text tables: times, retained magnitude, diversity."""
    rows = results["rows"]
    width = max(len(r["layer"]) for r in rows) + 2
    lines = [f"mask benchmark, {results['machine']['threads']} thread(s), {results['machine']['processor']}"]
    lines.append("")
    time_cols = [
        ("kofn_weight", "kofn-w"),
        ("kofn_kernel", "kofn-k"),
        ("kofn_filter", "kofn-f"),
        ("nm_2:4", "nm2:4"),
        ("nm_4:8", "nm4:8"),
        ("greedy_2:4", "grd2:4"),
        ("greedy_4:8", "grd4:8"),
        ("exact_2:4", "ex2:4"),
        ("exact_4:8", "ex4:8"),
    ]
    lines.append("time per mask [ms] (median); magnitude scores precomputed, |w| column is their cost")
    lines.append(
        "layer".ljust(width)
        + "|w|".rjust(8)
        + "".join(h.rjust(9) for _, h in time_cols)
        + "  ex/grd 2:4  4:8"
    )
    for r in rows:
        cells = [_cell(r["ms"][k]) if k in r["ms"] else "-" for k, _ in time_cols]
        speed = [_cell(r["exact_over_greedy_time"].get(t)) for t in ("2:4", "4:8")]
        lines.append(
            r["layer"].ljust(width)
            + f"{r['ms']['magnitude']:.1f}".rjust(8)
            + "".join(c.rjust(9) for c in cells)
            + speed[0].rjust(12)
            + speed[1].rjust(5)
        )
    lines.append("")
    lines.append("retained |w|: greedy/exact per tile (mean, min); greedy and exact over unconstrained N:M")
    keys = [
        ("greedy/exact_2:4_mean", "g/e2:4"),
        ("greedy/exact_2:4_min", "min"),
        ("greedy/exact_4:8_mean", "g/e4:8"),
        ("greedy/exact_4:8_min", "min"),
        ("greedy/nm_2:4", "g/nm2:4"),
        ("exact/nm_2:4", "e/nm2:4"),
        ("greedy/nm_4:8", "g/nm4:8"),
        ("exact/nm_4:8", "e/nm4:8"),
    ]
    lines.append("layer".ljust(width) + "".join(h.rjust(9) for _, h in keys))
    for r in rows:
        lines.append(
            r["layer"].ljust(width) + "".join(_cell(r["retained"].get(k), 4).rjust(9) for k, _ in keys)
        )
    lines.append("")
    lines.append(
        "log10 mask diversity per layer; DPP metrics of a Gumbel top-k mask (k = n/2) started from |w|"
    )
    md_keys = ["unstructured_50%", "kofn_weight_50%", "nm_2:4", "transposable_2:4", "transposable_4:8"]
    heads = ["unstr50%", "kofn-w50%", "nm2:4", "T2:4", "T4:8"]
    lines.append("layer".ljust(width) + "".join(h.rjust(11) for h in heads) + "   dpp-conf  dpp-div")
    for r in rows:
        md = "".join(_cell(r["log10_md"].get(k)).rjust(11) for k in md_keys)
        dpp = f"{r['dpp']['confidence']:.4f}".rjust(11) + f"{r['dpp']['diversity']:.4f}".rjust(9)
        lines.append(r["layer"].ljust(width) + md + dpp)
    notes = [f"  {r['layer']}: {k}: {v}" for r in rows for k, v in r["notes"].items()]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, write the JSON atomically, print the tables last; return the results."""
    parser = argparse.ArgumentParser(
        prog="python -m rlprune.bench masks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sizes", default=None, help=f"comma-separated shapes (default {DEFAULT_SIZES})")
    parser.add_argument("--quick", action="store_true", help=f"small shapes, one repeat ({QUICK_SIZES})")
    parser.add_argument("--out", default="benchmarks/results/masks.json", help="JSON output path")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per figure (default 5, quick 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the Gaussian weights")
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    repeats = args.repeats or (1 if args.quick else 5)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        generator = torch.Generator().manual_seed(args.seed)
        rows = []
        for text in sizes.split(","):
            shape = parse_shape(text.strip())
            weight = torch.randn(shape, generator=generator)
            name = ("conv " if len(shape) > 2 else "linear ") + "x".join(map(str, shape))
            rows.append(bench_layer(name, weight, repeats))
    finally:
        torch.set_num_threads(previous_threads)
    results = {
        "benchmark": "masks",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "threads": args.threads,
        },
        "weights": f"Gaussian N(0, 1), seed {args.seed}; scores = |w|",
        "repeats": repeats,
        "rows": rows,
    }
    write_json_atomic(args.out, results)
    print(format_tables(results))
    return results
