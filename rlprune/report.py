"""The report of a run: a per-layer table and the headline numbers, as data, text and JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from rlprune.hardware import LatencyModel, effective_cells, weight_storage_bits
from rlprune.layers import FilterCoupling, LayerInfo
from rlprune.policy import Policy

METRIC_HEADERS = {
    "log10_mask_diversity": "log10 MD",
    "sad": "SAD",
    "confidence": "confidence",
    "diversity": "diversity",
    "output_error_compressed": "out err",
    "output_error_fitted": "out err fitted",
    "fit_ridge": "ridge",  # empty where a fit's layer was left: no fit did better on held-out batches
}


def layer_rows(
    layers: Sequence[LayerInfo],
    policy: Policy,
    hardware: LatencyModel,
    skipped: dict[str, str],
    metrics: dict[str, dict[str, float]] | None = None,
    couplings: Mapping[str, FilterCoupling] | None = None,
    steps: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """One row per prunable layer: its choice, latency share (of all its calls), size, and mask metrics.

    Every row has the same keys, in the same order; a metric that does not apply to a layer
    (a dense layer has no mask, only SR-STE refreshes give SAD) is ``None``.

    Layers outside the search keep the device's dense reference choice; ``skipped`` says why a
    layer could not take the pattern; ``metrics`` adds per-layer mask metrics (log10 mask
    diversity, SAD, learned-mask confidence and diversity). With ``couplings``, latency and size
    count the input channels that upstream filter pruning removed. ``steps`` numbers the search
    step that decided each layer: layers tied by residual adds, and depthwise convs that follow
    their producer, share one.
    """
    metrics, steps = metrics or {}, steps or {}
    reference = hardware.dense_choice()
    choices = [policy.get(layer.name, reference) for layer in layers]
    effective = effective_cells(layers, choices, couplings)
    seconds = [hardware.latency(*cell) for cell in effective]
    total = sum(seconds)
    rows = []
    for layer, choice, (smaller, cost_choice), t in zip(layers, choices, effective, seconds, strict=True):
        rows.append(
            {
                "layer": layer.name,
                "step": steps.get(layer.name),
                "kind": layer.kind,
                "calls": layer.calls,
                "pattern": str(choice.pattern),
                "keep": choice.keep,
                "group": choice.group,
                "sparsity": round(choice.sparsity, 4),
                "w_bits": choice.w_bits,
                "a_bits": choice.a_bits,
                # a measured table can price every chosen layer at 0 (int8 ops on a busy machine)
                "latency_share": round(t / total, 4) if total > 0 else 0.0,
                "size_bits": weight_storage_bits(smaller, cost_choice, choice.w_bits, compressed=True),
                "searched": layer.name in dict(policy.choices),
                "skipped": skipped.get(layer.name),
                # every row has every metric column (None where the finetune gave the layer none):
                # one shape for report.json and for the W&B table
                **{metric: metrics.get(layer.name, {}).get(metric) for metric in METRIC_HEADERS},
            }
        )
    return rows


def size_ratio(layers: Sequence[LayerInfo], rows: Sequence[dict[str, Any]]) -> float:
    """Compressed weight storage relative to dense float32."""
    return sum(r["size_bits"] for r in rows) / sum(32 * layer.params for layer in layers)


def _layer_table(report: dict[str, Any]) -> Table:
    """One row per layer: its step, pattern, keep:group, sparsity, bits, share of the latency
    and the mask metrics the report holds."""
    table = Table(title=f"rlprune policy — {report['search']['agent']} on {report['hardware']}")
    extra = [m for m in METRIC_HEADERS if any(row.get(m) is not None for row in report["layers"])]
    for column in ("layer", "step", "kind", "pattern", "keep:group", "sparsity", "bits w/a", "latency %"):
        table.add_column(column, justify="left" if column in ("layer", "kind", "pattern") else "right")
    for metric in extra:
        table.add_column(METRIC_HEADERS[metric], justify="right")
    for row in report["layers"]:
        pattern = row["pattern"] + ("" if row["searched"] else " (fixed)")
        table.add_row(
            row["layer"] + (f" (x{row['calls']})" if row["calls"] > 1 else ""),  # its share is of all calls
            "" if row["step"] is None else str(row["step"]),
            row["kind"],
            pattern,
            f"{row['keep']}:{row['group']}",
            f"{row['sparsity']:.2f}",
            f"{row['w_bits']}/{row['a_bits']}",
            f"{100 * row['latency_share']:.1f}",
            *[f"{row[m]:.3g}" if row.get(m) is not None else "" for m in extra],
        )
    return table


COSTLY_LOSS = 0.05
"""A best policy this far under the dense network's reward-split accuracy gets a hint on the budget."""


def budget_hint(report: dict[str, Any]) -> str | None:
    """Why the best policy lost much of the dense accuracy, and what to change; ``None`` when it
    lost under :data:`COSTLY_LOSS`.

    On a device whose latency is bought only by removing filters (``local_cpu``), the budgets just
    above its cheapest latency leave a few filters per layer: the budget, not the search, sets
    the accuracy there.
    """
    acc = report["accuracy"]
    lost = acc["dense_reward"] - acc["search_best_reward"]
    if lost < COSTLY_LOSS:
        return None
    budget = f"budget {report['budget']}" + (" (auto)" if report.get("budget_auto") else "")
    if (floor := report.get("cheapest_latency")) is not None:
        budget += f" is {report['budget'] - floor:.3f} above the cheapest latency this device reaches"
        budget += f" ({floor:.3f})"
    return (
        f"the best policy scores {acc['search_best_reward']:.4f} on the reward split, {lost:.4f} under "
        f"the dense network; {budget}: a larger budget keeps more (budget.latency, "
        "budget.auto_share, or budget.sweep=[...] for the whole trade-off)"
    )


def _sensitivity_share(search: Mapping[str, Any]) -> str:
    """The share of the search's time that measured the layers' sensitivity, which its evaluations
    do not count ("" where the searcher never read it)."""
    seconds = search.get("sensitivity_seconds", 0.0)  # reports written before it was recorded
    return f" ({seconds:.1f} s of it measuring each layer's sensitivity)" if seconds else ""


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the per-layer table and the headline numbers."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: full layer names rather than 80 columns
            console = Console(width=160)
    console.print(_layer_table(report))
    acc = report["accuracy"]
    accuracy = "token accuracy" if "language_model" in report else "accuracy"
    console.print(
        f"latency {report['latency']:.3f} of dense (budget {report['budget']})   "
        f"size {report['size_ratio']:.3f} of fp32\n"
        f"{accuracy}: dense test {acc['dense_test']:.4f} | "
        f"search best (reward split) {acc['search_best_reward']:.4f} | "
        f"test before finetune {acc['pruned_test_before_finetune']:.4f} | "
        f"after finetune {acc['pruned_test_after_finetune']:.4f}\n"
        f"search: {report['search']['evaluations']} evaluations in {report['search']['seconds']:.1f} s"
        + _sensitivity_share(report["search"]),
        soft_wrap=True,
    )
    if lm := report.get("language_model"):
        ppl = lm["perplexity"]
        console.print(
            f"perplexity: dense test {ppl['dense_test']:.3f} | "
            f"search best (reward split) {ppl['search_best_reward']:.3f} | "
            f"test before finetune {ppl['pruned_test_before_finetune']:.3f} | "
            f"after finetune {ppl['pruned_test_after_finetune']:.3f} "
            f"(reward split {ppl['pruned_reward_after_finetune']:.3f}, dense {ppl['dense_reward']:.3f})\n"
            f"KL(dense ‖ final) on the test split: {lm['kl_to_dense_test']:.4f} nats per token",
            soft_wrap=True,
        )
    if (deployed := report.get("deployed")) and deployed["model"]:
        console.print(
            f"deployed on {deployed['device']} ({deployed['model']}, "
            f"{len(deployed['int8_layers'])} int8 layers): "
            f"latency {deployed['measured_latency']:.3f} of dense measured, "
            f"{report['latency']:.3f} predicted; test accuracy {deployed['test_accuracy']:.4f}",
            soft_wrap=True,
        )
        if deployed.get("int8_left_float"):
            console.print(
                f"warning: torch.ao's int8 export left {deployed['int8_left_float']} in float (it does "
                "not trace into the torch.nn module that holds them); the search costed them as int8",
                soft_wrap=True,
            )
        if deployed.get("remasked"):
            console.print(
                f"warning: the deploy imposed 2:4 again on {deployed['remasked']}: their masks were not "
                "made on the inputs that upstream filters leave, so they differ from the finetuned ones",
                soft_wrap=True,
            )
    if hint := budget_hint(report):
        console.print(f"warning: {hint}", soft_wrap=True)
    if report["latency"] > report["budget"] + 1e-9:
        console.print(
            f"warning: finetune.mask={report['finetune']['mask']} recast the searched policy; "
            f"its latency {report['latency']:.3f} exceeds the budget {report['budget']}",
            soft_wrap=True,
        )
