"""The report of a run: a per-layer table and the headline numbers, as data, text and JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from rlprune.hardware import LatencyModel, weight_storage_bits
from rlprune.layers import LayerInfo
from rlprune.policy import Policy


def layer_rows(
    layers: Sequence[LayerInfo], policy: Policy, hardware: LatencyModel, skipped: dict[str, str]
) -> list[dict[str, Any]]:
    """One row per prunable layer: its choice, its share of the policy's latency and its size.

    Layers outside the search keep the device's dense reference choice.
    """
    reference = hardware.dense_choice()
    choices = [policy.get(layer.name, reference) for layer in layers]
    seconds = [hardware.latency(layer, choice) for layer, choice in zip(layers, choices, strict=True)]
    total = sum(seconds)
    rows = []
    for layer, choice, t in zip(layers, choices, seconds, strict=True):
        rows.append(
            {
                "layer": layer.name,
                "kind": layer.kind,
                "pattern": choice.pattern.value,
                "keep": choice.keep,
                "group": choice.group,
                "sparsity": round(choice.sparsity, 4),
                "w_bits": choice.w_bits,
                "a_bits": choice.a_bits,
                "latency_share": round(t / total, 4),
                "size_bits": weight_storage_bits(layer, choice, choice.w_bits, compressed=True),
                "searched": layer.name in dict(policy.choices),
                "skipped": skipped.get(layer.name),
            }
        )
    return rows


def size_ratio(layers: Sequence[LayerInfo], rows: Sequence[dict[str, Any]]) -> float:
    """Compressed weight storage relative to dense float32."""
    return sum(r["size_bits"] for r in rows) / sum(32 * layer.params for layer in layers)


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the per-layer table and the headline numbers."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: full layer names rather than 80 columns
            console = Console(width=160)
    table = Table(title=f"rlprune policy — {report['search']['agent']} on {report['hardware']}")
    for column in ("layer", "kind", "pattern", "keep:group", "sparsity", "bits w/a", "latency %"):
        table.add_column(column, justify="left" if column in ("layer", "kind", "pattern") else "right")
    for row in report["layers"]:
        pattern = row["pattern"] + ("" if row["searched"] else " (fixed)")
        table.add_row(
            row["layer"],
            row["kind"],
            pattern,
            f"{row['keep']}:{row['group']}",
            f"{row['sparsity']:.2f}",
            f"{row['w_bits']}/{row['a_bits']}",
            f"{100 * row['latency_share']:.1f}",
        )
    console.print(table)
    acc = report["accuracy"]
    console.print(
        f"latency {report['latency']:.3f} of dense (budget {report['budget']})   "
        f"size {report['size_ratio']:.3f} of fp32\n"
        f"accuracy: dense test {acc['dense_test']:.4f} | "
        f"search best (reward split) {acc['search_best_reward']:.4f} | "
        f"test before finetune {acc['pruned_test_before_finetune']:.4f} | "
        f"after finetune {acc['pruned_test_after_finetune']:.4f}\n"
        f"search: {report['search']['evaluations']} evaluations in {report['search']['seconds']:.1f} s",
        soft_wrap=True,
    )
