"""Latency model fidelity and real CPU speedup (docs/latency.md).

For each zoo model, CNNs and transformers (untrained weights: timing does not depend on them)
sample random filter-pruning policies (per layer any keep count from 5% to 100% of its filters,
as the search's default ``min_density``; the final classifier and the layers whose filters are
fixed, as attention heads, are never pruned), each with fp32 or int8 for the whole network or bits drawn
per layer (``mixed``, as the search picks them; int8 where torch.ao quantizes the model on
this CPU), plus the dense fp32 and dense int8 policies. Each policy is exported to a real
network (Torch-Pruning, batch norms folded; FX int8 for the 8-bit layers),
timed whole and side by side with the networks of its precision using ``torch.utils.benchmark``
(fixed threads, interleaved short blocks read against a marker op's:
:meth:`rlprune.hardware.MeasuredModel.time_networks`), and predicted by
every latency model that applies:

* ``local_cpu``: the measured lookup table, summed over the exported layers, plus the glue
  between them (:meth:`MeasuredModel.calibrate`, measured once on the dense model) (seconds);
* ``arm_cpu``: the roofline of a different CPU, for reference (ranking only);
* ``flops``: MACs of the exported layers (MACs x density; bits ignored);
* ``bops``: the BOPs proxy.

Every sampled network is timed a second time, and that timing is scored like a prediction
(``timed again``): how well this machine repeats itself, which no latency model can beat.

Per model, precision (and all policies together: what a search ranks) and latency model: MAPE
and share within ±10% (in seconds for ``local_cpu``; for all models also on the ratio to the
dense policy, which is what a budget is), Kendall τ, and the share of policies predicted
within the budget (median measured/dense ratio) that measure over it. Then the measured
speedup of a uniform filter-pruned export at predicted budget 0.5, and of the dense int8
export, each against the dense model measured in the same run.

    python -m rlprune.bench latency [--policies 50] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import nn

from rlprune.config import default_cache_dir
from rlprune.errors import ModelError
from rlprune.export import export_filter_pruned, export_int8, fold_batch_norms
from rlprune.hardware import BopsModel, LatencyModel, MeasuredModel, load_latency_model, network_latency
from rlprune.hardware.measured import cpu_model
from rlprune.io import write_json_atomic
from rlprune.layers import LayerInfo, discover_layers, filter_couplings
from rlprune.models import MNIST1DCNN, DigitsCNN, ResNet20, TinyLM, ViT
from rlprune.policy import Choice, Pattern, Policy

# the fewest filters a sampled policy keeps: the search's default min_density
MIN_KEEP = 0.05
VOCABULARY = 64


def _images(*shape: int) -> Callable[[int], torch.Tensor]:
    return lambda batch: torch.randn((batch, *shape))


def _tokens(batch: int) -> torch.Tensor:
    return torch.randint(VOCABULARY, (batch, 32))


# each model: how it is built, and a batch of its inputs of a given size
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor]]] = {
    "mnist1d_cnn": (lambda: MNIST1DCNN(in_channels=1, num_classes=10), _images(1, 40)),
    "digits_cnn": (lambda: DigitsCNN(in_channels=1, num_classes=10), _images(1, 8, 8)),
    "resnet20": (lambda: ResNet20(in_channels=1, num_classes=10, width=16, dims=2), _images(1, 8, 8)),
    "vit": (
        lambda: ViT(in_channels=1, num_classes=10, image_size=8, patch=2, dim=128, depth=4, heads=4),
        _images(1, 8, 8),
    ),
    "tiny_lm": (lambda: TinyLM(num_classes=VOCABULARY, length=32, dim=128, depth=4, heads=4), _tokens),
}
PREDICTORS = ("local_cpu", "arm_cpu", "flops", "bops")
# the second timing of each network, scored as if it predicted the first: the ceiling
REMEASURED = "timed again"
# how a sampled policy's layers run: all float, all int8, or each layer drawn (the search's choice)
PRECISIONS = ("fp32", "int8", "mixed")


def _keep_options(channels: int) -> list[int]:
    """Keep counts from :data:`MIN_KEEP` to all of ``channels``: any count, as the search draws them."""
    return list(range(max(1, math.ceil(MIN_KEEP * channels)), channels + 1))


def _uniform_policy(layers: list[LayerInfo], ratio: float) -> Policy:
    """Each of ``layers`` keeps ``ratio`` of its filters, rounded to a multiple of 8."""

    def keep(c: int) -> int:
        return c if c <= 8 else max(8, min(c, round(ratio * c / 8) * 8))

    return Policy.of(
        {layer.name: Choice(Pattern.FILTER, keep(layer.out_channels), layer.out_channels) for layer in layers}
    )


class Predictors:
    """The latency models compared, each turned into a network prediction of exported layers."""

    def __init__(self, local: MeasuredModel, first_layer: str, overhead: float) -> None:
        self.local = local
        self.overhead = overhead
        self.arm = load_latency_model("arm_cpu")
        bops = load_latency_model("bops")
        assert isinstance(bops, BopsModel)
        self.bops = bops.with_input_layers([first_layer])

    @staticmethod
    def _seconds(model: LatencyModel, layers: list[LayerInfo], bits: Sequence[int]) -> float:
        choices = [Choice(Pattern.DENSE, 1, 1, b, b) for b in bits]
        return network_latency(model, layers, choices)

    def local_seconds(self, layers: list[LayerInfo], bits: Sequence[int]) -> float:
        """The measured table's seconds for ``layers`` (exported) at ``bits``, glue included."""
        return self._seconds(self.local, layers, bits) + self.overhead

    def predict(self, layers: list[LayerInfo], bits: Sequence[int]) -> dict[str, float]:
        """Each model's prediction for ``layers`` (exported), layer ``i`` at ``bits[i]``."""

        def net(model: LatencyModel) -> float:
            return self._seconds(model, layers, bits)

        return {
            "local_cpu": self.local_seconds(layers, bits),
            "arm_cpu": net(self.arm),
            "flops": float(sum(layer.macs * layer.calls for layer in layers)),
            "bops": net(self.bops),
        }


def _metrics(
    pred: np.ndarray, meas: np.ndarray, pred_dense: float, meas_dense: float, budget: float, absolute: bool
) -> dict:
    pr, mr = pred / pred_dense, meas / meas_dense
    rel_ratio = np.abs(pr - mr) / mr
    out = {
        "mape_ratio": float(rel_ratio.mean()),
        "within10_ratio": float((rel_ratio <= 0.10).mean()),
        "kendall_tau": float(kendalltau(pred, meas).statistic),
    }
    out["budget"] = budget
    inside = pr <= budget
    out["predicted_within_budget"] = int(inside.sum())
    out["over_budget_share"] = float((mr[inside] > budget).mean()) if inside.any() else 0.0
    if absolute:
        rel = np.abs(pred - meas) / meas
        out["mape"] = float(rel.mean())
        out["within10"] = float((rel <= 0.10).mean())
    return out


def _fidelity(records: list[dict], kinds: Sequence[str]) -> dict[str, dict[str, dict]]:
    """Each predictor's (and the second timing's) :func:`_metrics`, per precision (int8 and fp32
    networks behave differently on a CPU) and over all records together (what a search ranks);
    ratios are to ``records[0]``, the dense fp32 network, and the budget is the median ratio."""
    meas_dense = records[0]["measured"]
    groups = {kind: [r for r in records if r["precision"] == kind] for kind in kinds}
    if len(groups) > 1:
        groups["all"] = records
    fidelity: dict[str, dict[str, dict]] = {}
    for kind, chosen in groups.items():
        meas = np.array([r["measured"] for r in chosen])
        budget = float(np.median(meas / meas_dense))
        fidelity[kind] = {
            key: _metrics(
                np.array([r["predicted"][key] for r in chosen]),
                meas,
                records[0]["predicted"][key],
                meas_dense,
                budget,
                absolute=key == "local_cpu",
            )
            for key in PREDICTORS
        }
        fidelity[kind][REMEASURED] = _metrics(
            np.array([r["measured_again"] for r in chosen]),
            meas,
            records[0]["measured_again"],
            meas_dense,
            budget,
            absolute=True,
        )
    return fidelity


def _random_policy(layers: list[LayerInfo], rng: random.Random) -> Policy:
    """Each of ``layers`` keeps any count of its filters from :data:`MIN_KEEP` to all."""
    return Policy.of(
        {
            layer.name: Choice(
                Pattern.FILTER, rng.choice(_keep_options(layer.out_channels)), layer.out_channels
            )
            for layer in layers
        }
    )


def _prunable(model: nn.Module, x: torch.Tensor, layers: list[LayerInfo]) -> list[LayerInfo]:
    """The layers whose filters a policy may remove: all but the classifier and those whose
    filters are fixed (attention heads, a depthwise conv: :func:`rlprune.layers.filter_couplings`)."""
    couplings = filter_couplings(model, x, layers)
    return [layer for layer in layers[:-1] if not couplings[layer.name].fixed]


def run_model(
    name: str,
    policies: int,
    local: MeasuredModel,
    rng: random.Random,
    log: Callable[[str], None],
    quick: bool = False,
) -> dict:
    """Fidelity and speedup figures for one zoo model."""
    build, inputs = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = inputs(local.batch_size)
    layers = discover_layers(model, x)
    names = [layer.name for layer in layers]
    prunable = _prunable(model, x, layers)
    overhead = local.calibrate(model, x)
    predictors = Predictors(local, layers[0].name, overhead)
    int8_note = None
    try:
        export_int8(model, x)
        kinds = list(PRECISIONS)
    except ModelError as exc:
        int8_note = str(exc)
        kinds = ["fp32"]

    def pruned(policy: Policy) -> tuple[nn.Module, list[LayerInfo]]:
        exported = fold_batch_norms(export_filter_pruned(model, policy, x))
        found = {info.name: info for info in discover_layers(exported, x)}
        return exported, [found[n] for n in names]

    def deploy(policy: Policy, bits: Sequence[int]) -> tuple[nn.Module, list[LayerInfo]]:
        exported, eff = pruned(policy)
        if 8 in bits:
            floats = [name for name, b in zip(names, bits, strict=True) if b != 8]
            exported = export_int8(exported, x, float_layers=floats)
        return local.deploy(exported, x), eff

    def layer_bits(kind: str) -> tuple[int, ...]:
        if kind == "mixed":  # each layer's bits drawn, as the search chooses them
            return tuple(rng.choice((8, 32)) for _ in names)
        return (32 if kind == "fp32" else 8,) * len(names)

    sample_kinds = ["fp32"] if quick else kinds  # quick: int8 only for the speedup row (FX export is slow)
    # the dense network first, at fp32 (every ratio's reference) and int8
    samples = [(Policy(), kind, layer_bits(kind)) for kind in sample_kinds if kind != "mixed"]
    for _ in range(policies):
        policy = _random_policy(prunable, rng)
        kind = rng.choice(sample_kinds)
        samples.append((policy, kind, layer_bits(kind)))

    exported = [deploy(p, b) for p, _, b in samples]
    local.prepare(
        [
            (layer, Choice(Pattern.DENSE, 1, 1, b, b))
            for (_, _, bits), (_, eff) in zip(samples, exported, strict=True)
            for layer, b in zip(eff, bits, strict=True)
        ]
    )

    # §5: uniform filter pruning at predicted budget 0.5, and the dense int8 export
    fp32 = layer_bits("fp32")
    dense_pred = predictors.local_seconds(layers, fp32)

    def predicted_ratio(ratio: float) -> float:
        _, eff = pruned(_uniform_policy(prunable, ratio))
        return predictors.local_seconds(eff, fp32) / dense_pred

    low, high = 0.05, 1.0
    for _ in range(4 if quick else 8):
        mid = (low + high) / 2
        low, high = (mid, high) if predicted_ratio(mid) <= 0.5 else (low, mid)
    half_net, half_eff = deploy(_uniform_policy(prunable, low), fp32)
    extra = {"dense": local.deploy(fold_batch_norms(model), x), "filter_budget_0.5": half_net}
    extra_bits = [32, 32]
    if "int8" in kinds:
        extra["int8"] = local.deploy(export_int8(model, x), x)
        extra_bits.append(8)
    # the same dense networks called from Python, not deployed: what TorchScript saves
    extra["dense eager"] = local.in_memory_format(fold_batch_norms(model))
    extra_bits.append(32)
    if "int8" in kinds:
        extra["int8 eager"] = local.in_memory_format(export_int8(model, x))
        extra_bits.append(8)

    start = time.time()
    # every network timed with those of its precision (mixed ones, holding int8 ops, with int8);
    # the dense policy 4 times more, to show the noise
    nets = [net for net, _ in exported] + [exported[0][0]] * 4 + [*extra.values()]
    bits = [32 if kind == "fp32" else 8 for _, kind, _ in samples] + [32] * 4 + extra_bits
    repeats = 1 if quick else 3
    seconds = local.time_networks(nets, x, bits, repeats)
    # the sampled networks timed once more: how well this machine repeats itself bounds how
    # well any latency model can agree with it
    again = local.time_networks(nets[: len(samples)], x, bits[: len(samples)], repeats)
    log(f"  {name}: {len(nets) + len(samples)} network timings in {time.time() - start:.0f} s")
    records = [
        {
            "precision": kind,
            "bits": dict(zip(names, bits, strict=True)),
            "keep": {n: c.keep for n, c in policy},
            "measured": t,
            "measured_again": t_again,
            "predicted": predictors.predict(eff, bits),
        }
        for (policy, kind, bits), (_, eff), t, t_again in zip(samples, exported, seconds, again, strict=False)
    ]
    dense_repeats = seconds[len(samples) : len(samples) + 4]
    timed = dict(zip(extra, seconds[len(samples) + 4 :], strict=True))

    fidelity = _fidelity(records, sample_kinds)
    meas_dense = records[0]["measured"]

    speedups = {
        "filter_budget_0.5": {
            "keep_ratio": low,
            "predicted_ratio": predictors.local_seconds(half_eff, fp32) / dense_pred,
        }
    }
    if "int8" in extra:
        int8_pred = predictors.local_seconds(layers, layer_bits("int8"))
        speedups["int8"] = {"predicted_ratio": int8_pred / dense_pred}
    for key, entry in speedups.items():
        entry.update(
            measured_ratio=timed[key] / timed["dense"], measured_s=timed[key], dense_s=timed["dense"]
        )
    eager = {key.removesuffix(" eager"): t for key, t in timed.items() if key.endswith(" eager")}
    return {
        "model": name,
        "input_shape": list(x.shape[1:]),
        "layers": len(layers),
        "precisions": kinds,
        "int8_note": int8_note,
        "policies": len(records),
        "dense_measured_s": {"policy": meas_dense, "repeats": dense_repeats},
        "fidelity": fidelity,
        "speedup": speedups,
        "eager_s": eager,
        "deployed_s": {key: timed[key] for key in eager},
        "records": records,
    }


def print_tables(results: dict) -> None:
    """The bench's tables: fidelity per model, precision and latency model; the speedups; the
    dense networks eager against deployed; and the timing noise."""
    m = results["machine"]
    print(
        f"latency fidelity on {m['cpu']}, {m['threads']} thread(s), torch {m['torch']}, "
        f"batch {results['settings']['batch_size']}, "
        f"load {m['load_avg_start']:.2f}->{m['load_avg_end']:.2f}; local_cpu and timed again "
        "MAPE/±10% in seconds, others on the ratio to dense; timed again: a second timing, the ceiling"
    )
    header = (
        f"{'model':<12} {'policies':<8} {'latency model':<13} {'MAPE':>6} {'±10%':>5} {'ratio MAPE':>10} "
        f"{'±10% r':>6} {'τ':>5} {'over budget':>11}"
    )
    print(header)
    for r in results["models"]:
        for precision, table in r["fidelity"].items():
            for key, f in table.items():
                mape = f"{f['mape']:.1%}" if "mape" in f else "-"
                within = f"{f['within10']:.0%}" if "within10" in f else "-"
                print(
                    f"{r['model']:<12} {precision:<8} {key:<13} {mape:>6} {within:>5} "
                    f"{f['mape_ratio']:>10.1%} {f['within10_ratio']:>6.0%} {f['kendall_tau']:>5.2f} "
                    f"{f['over_budget_share']:>6.0%} of {f['predicted_within_budget']:<3}"
                )
    print(
        f"{'model':<12} {'export':<18} {'predicted':>9} {'measured':>8}  "
        "(ratio to dense fp32 measured in this run)"
    )
    for r in results["models"]:
        for key, s in r["speedup"].items():
            note = ""
            if key == "filter_budget_0.5" and s["predicted_ratio"] > 0.5:  # the bisection hit its floor
                note = "  0.5 out of reach: the narrowest uniform export (8 filters a layer)"
            print(
                f"{r['model']:<12} {key:<18} {s['predicted_ratio']:>9.3f} {s['measured_ratio']:>8.3f}{note}"
            )
    spreads = []
    for r in results["models"]:
        dense = [r["dense_measured_s"]["policy"], *r["dense_measured_s"]["repeats"]]
        spreads.append(f"{r['model']} {max(dense) / min(dense) - 1:.1%}")
    print("dense networks called from Python (eager) against deployed (TorchScript), µs:")
    for r in results["models"]:
        row = ", ".join(
            f"{key} {r['eager_s'][key] * 1e6:.0f} vs {r['deployed_s'][key] * 1e6:.0f}" for key in r["eager_s"]
        )
        print(f"  {r['model']:<12} {row}")
    print(f"timing noise, slowest over fastest of 5 timings of the dense fp32 network: {', '.join(spreads)}")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table and write JSON. Returns the results."""
    parser = argparse.ArgumentParser(prog="python -m rlprune.bench latency", description=__doc__)
    parser.add_argument("--policies", type=int, default=50, help="random policies per model (plus dense)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds (fastest kept)")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="measured table cache (default: rlprune's)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--batch-size", type=int, default=1, help="samples per timed call (1: on-device inference)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="5 policies, mnist1d_cnn, short timing (a few s)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.policies, args.models, args.rounds = min(args.policies, 5), args.models[:1], 2

    local = MeasuredModel(
        name="local_cpu",
        threads=args.threads,
        batch_size=args.batch_size,
        rounds=args.rounds,
        retries=0 if args.quick else 2,
        verify=0 if args.quick else 4,
        cache_dir=args.cache_dir or default_cache_dir(),
        progress=not args.quick,
    )
    rng = random.Random(args.seed)
    load_before = os.getloadavg()[0]
    started = time.time()
    results_models = [run_model(m, args.policies, local, rng, print, args.quick) for m in args.models]
    results = {
        "benchmark": "latency",
        "machine": {
            "cpu": cpu_model(),
            "platform": platform.platform(),
            "threads": args.threads,
            "torch": torch.__version__,
            "int8_engine": local.engine,
            "load_avg_start": load_before,
            "load_avg_end": os.getloadavg()[0],
        },
        "settings": {
            "policies": args.policies,
            "rounds": args.rounds,
            "lut_rounds": local.rounds,
            "retries": local.retries,
            "verify": local.verify,
            "batch_size": local.batch_size,
            "seed": args.seed,
            "quick": args.quick,
        },
        "lut": {
            "cache": str(local.cache_path),
            "measurements": local.measurements,
            "retimed": local.retimed,
            "still_slow": local.still_slow,
            "entries": len(local.table),
        },
        "seconds": time.time() - started,
        "models": results_models,
    }
    write_json_atomic(args.out, results)

    print_tables(results)
    print(f"written to {args.out}")
    return results
