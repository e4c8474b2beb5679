"""Latency model fidelity and real CPU speedup (BENCHMARKS.md §4 and §5).

For each zoo model (untrained weights: timing does not depend on them) sample random
filter-pruning policies (per layer a keep count from multiples of 8 channels, 25%..100%; the
final classifier is never pruned) at int8 or fp32 for the whole network (where torch.ao
quantizes the model on this CPU), plus the dense fp32 and dense int8 policies. Each policy is
exported to a real network (Torch-Pruning; batch norms folded for fp32, FX int8 for 8 bits),
timed whole with ``torch.utils.benchmark`` (fixed threads, median of blocks), and predicted by
every latency model that applies:

* ``local_cpu``: the measured lookup table, summed over the exported layers (seconds);
* ``arm_cpu``: the roofline of a different CPU, for reference (ranking only);
* ``flops``: MACs of the exported layers (MACs x density; bits ignored);
* ``bops``: the BOPs proxy.

Per model and latency model: MAPE and share within ±10% (in seconds for ``local_cpu``; for all
models also on the ratio to the dense policy, which is what a budget is), Kendall τ, and the
share of policies predicted within the budget (median measured/dense ratio) that measure over
it. Then the measured speedup of a uniform filter-pruned export at predicted budget 0.5, and of
the dense int8 export, each against the dense model measured in the same run.

    python -m rlprune.bench latency [--policies 50] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import random
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import nn

from rlprune.errors import ModelError
from rlprune.export import export_filter_pruned, export_int8, fold_batch_norms
from rlprune.hardware import BopsModel, LatencyModel, MeasuredModel, load_latency_model, network_latency
from rlprune.hardware.measured import cpu_model, default_cache_dir
from rlprune.io import write_json_atomic
from rlprune.layers import LayerInfo, discover_layers
from rlprune.models import MNIST1DCNN, DigitsCNN, ResNet20
from rlprune.policy import Choice, Pattern, Policy

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mnist1d_cnn": (lambda: MNIST1DCNN(in_channels=1, num_classes=10), (1, 40)),
    "digits_cnn": (lambda: DigitsCNN(in_channels=1, num_classes=10), (1, 8, 8)),
    "resnet20": (lambda: ResNet20(in_channels=1, num_classes=10, width=16, dims=2), (1, 8, 8)),
}
PREDICTORS = ("local_cpu", "arm_cpu", "flops", "bops")


@contextlib.contextmanager
def _timing(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(before)


def time_network(
    module: nn.Module, x: torch.Tensor, threads: int, min_run_time: float, warmup: int = 10
) -> float:
    """Median seconds of one forward pass of ``module`` on ``x`` (torch.utils.benchmark)."""
    from torch.utils.benchmark import Timer

    module.eval()
    with _timing(threads):
        for _ in range(warmup + 1):
            module(x)
        timer = Timer("m(x)", globals={"m": module, "x": x}, num_threads=threads)
        return float(timer.blocked_autorange(min_run_time=min_run_time).median)


def _keep_options(channels: int) -> list[int]:
    """Keep counts from multiples of 8, 25% to 100% of ``channels`` (``channels`` itself included)."""
    low = max(8, math.ceil(0.25 * channels / 8) * 8)
    options = [*range(low, channels, 8), channels]
    return sorted(set(options))


def _uniform_policy(layers: list[LayerInfo], ratio: float) -> Policy:
    """Every layer but the classifier keeps ``ratio`` of its filters, rounded to a multiple of 8."""

    def keep(c: int) -> int:
        return c if c <= 8 else max(8, min(c, round(ratio * c / 8) * 8))

    return Policy.of(
        {
            layer.name: Choice(Pattern.FILTER, keep(layer.out_channels), layer.out_channels)
            for layer in layers[:-1]
        }
    )


class Predictors:
    """The latency models compared, each turned into a network prediction of exported layers."""

    def __init__(self, local: MeasuredModel, first_layer: str) -> None:
        self.local = local
        self.arm = load_latency_model("arm_cpu")
        bops = load_latency_model("bops")
        assert isinstance(bops, BopsModel)
        self.bops = bops.with_input_layers([first_layer])

    @staticmethod
    def _choices(layers: list[LayerInfo], bits: int) -> list[Choice]:
        return [Choice(Pattern.DENSE, 1, 1, bits, bits)] * len(layers)

    def predict(self, layers: list[LayerInfo], bits: int) -> dict[str, float]:
        def net(model: LatencyModel) -> float:
            return network_latency(model, layers, self._choices(layers, bits))

        return {
            "local_cpu": net(self.local),
            "arm_cpu": net(self.arm),
            "flops": float(sum(layer.macs for layer in layers)),
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
    inside = pr <= budget
    out["predicted_within_budget"] = int(inside.sum())
    out["over_budget_share"] = float((mr[inside] > budget).mean()) if inside.any() else 0.0
    if absolute:
        rel = np.abs(pred - meas) / meas
        out["mape"] = float(rel.mean())
        out["within10"] = float((rel <= 0.10).mean())
    return out


def run_model(
    name: str,
    policies: int,
    local: MeasuredModel,
    min_run_time: float,
    rng: random.Random,
    log: Callable[[str], None],
    quick: bool = False,
) -> dict:
    """Fidelity and speedup figures for one zoo model."""
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn((local.batch_size, *shape))
    layers = discover_layers(model, x)
    names = [layer.name for layer in layers]
    predictors = Predictors(local, layers[0].name)
    threads = local.threads
    int8_note = None
    try:
        export_int8(model, x)
        bit_options = [32, 8]
    except ModelError as exc:
        int8_note = str(exc)
        bit_options = [32]

    def deploy(policy: Policy, bits: int) -> tuple[nn.Module, list[LayerInfo]]:
        exported = export_filter_pruned(model, policy, x)
        found = {info.name: info for info in discover_layers(exported, x)}
        eff = [found[n] for n in names]
        return (export_int8(exported, x) if bits == 8 else fold_batch_norms(exported)), eff

    sample_bits = [32] if quick else bit_options  # quick: int8 only for the speedup row (FX export is slow)
    samples: list[tuple[Policy, int]] = [(Policy(), b) for b in sample_bits]
    for _ in range(policies):
        policy = Policy.of(
            {
                layer.name: Choice(
                    Pattern.FILTER, rng.choice(_keep_options(layer.out_channels)), layer.out_channels
                )
                for layer in layers[:-1]
            }
        )
        samples.append((policy, rng.choice(sample_bits)))

    exported = [deploy(p, b) for p, b in samples]
    local.prefetch(
        [layer for _, eff in exported for layer in eff],
        [Choice(Pattern.DENSE, 1, 1, b, b) for b in sample_bits],
    )
    records = []
    start = time.time()
    dense_before = time_network(exported[0][0], x, threads, min_run_time)
    for (policy, bits), (net, eff) in zip(samples, exported, strict=True):
        records.append(
            {
                "bits": bits,
                "keep": {n: c.keep for n, c in policy},
                "measured": time_network(net, x, threads, min_run_time),
                "predicted": predictors.predict(eff, bits),
            }
        )
    dense_after = time_network(exported[0][0], x, threads, min_run_time)
    log(f"  {name}: {len(records)} policies timed in {time.time() - start:.0f} s")

    meas = np.array([r["measured"] for r in records])
    meas_dense = records[0]["measured"]
    budget = float(np.median(meas / meas_dense))
    fidelity = {}
    for key in PREDICTORS:
        pred = np.array([r["predicted"][key] for r in records])
        fidelity[key] = _metrics(pred, meas, pred[0], meas_dense, budget, absolute=key == "local_cpu")

    # §5: uniform filter pruning at predicted budget 0.5, and the dense int8 export
    dense_fp32 = fold_batch_norms(model)
    dense_pred = network_latency(local, layers, [local.dense_choice()] * len(layers))

    def predicted_ratio(ratio: float) -> float:
        _, eff = deploy(_uniform_policy(layers, ratio), 32)
        return network_latency(local, eff, [local.dense_choice()] * len(eff)) / dense_pred

    low, high = 0.05, 1.0
    for _ in range(4 if quick else 8):
        mid = (low + high) / 2
        low, high = (mid, high) if predicted_ratio(mid) <= 0.5 else (low, mid)
    half_policy = _uniform_policy(layers, low)
    half_net, half_eff = deploy(half_policy, 32)
    speedups = {}
    dense_t = time_network(dense_fp32, x, threads, min_run_time)
    half_t = time_network(half_net, x, threads, min_run_time)
    speedups["filter_budget_0.5"] = {
        "keep_ratio": low,
        "predicted_ratio": network_latency(local, half_eff, [local.dense_choice()] * len(half_eff))
        / dense_pred,
        "measured_ratio": half_t / dense_t,
        "measured_s": half_t,
        "dense_s": dense_t,
    }
    if 8 in bit_options:
        int8_net = export_int8(model, x)
        int8_t = time_network(int8_net, x, threads, min_run_time)
        int8_choice = Choice(Pattern.DENSE, 1, 1, 8, 8)
        speedups["int8"] = {
            "predicted_ratio": network_latency(local, layers, [int8_choice] * len(layers)) / dense_pred,
            "measured_ratio": int8_t / dense_t,
            "measured_s": int8_t,
            "dense_s": dense_t,
        }
    return {
        "model": name,
        "input_shape": list(shape),
        "layers": len(layers),
        "bits": bit_options,
        "int8_note": int8_note,
        "policies": len(records),
        "dense_measured_s": {"first": dense_before, "policy": meas_dense, "last": dense_after},
        "budget": budget,
        "fidelity": fidelity,
        "speedup": speedups,
        "records": records,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table and write JSON. Returns the results."""
    parser = argparse.ArgumentParser(prog="python -m rlprune.bench latency", description=__doc__)
    parser.add_argument("--policies", type=int, default=50, help="random policies per model (plus dense)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds of timing per network")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="measured table cache (default: rlprune's)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="5 policies, mnist1d_cnn, short timing (a few s)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency.json"))
    args = parser.parse_args(argv)
    lut_time = 0.1
    if args.quick:
        args.policies, args.models, args.min_run_time, lut_time = (
            min(args.policies, 5),
            args.models[:1],
            0.02,
            0.01,
        )

    local = MeasuredModel(
        name="local_cpu",
        threads=args.threads,
        min_run_time=lut_time,
        cache_dir=args.cache_dir or default_cache_dir(),
        progress=not args.quick,
    )
    rng = random.Random(args.seed)
    load_before = os.getloadavg()[0]
    started = time.time()
    results_models = [
        run_model(m, args.policies, local, args.min_run_time, rng, print, args.quick) for m in args.models
    ]
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
            "min_run_time": args.min_run_time,
            "lut_min_run_time": lut_time,
            "batch_size": local.batch_size,
            "seed": args.seed,
            "quick": args.quick,
        },
        "lut": {
            "cache": str(local.cache_path),
            "measurements": local.measurements,
            "entries": len(local.table),
        },
        "seconds": time.time() - started,
        "models": results_models,
    }
    write_json_atomic(args.out, results)

    m = results["machine"]
    print(
        f"latency fidelity on {m['cpu']}, {m['threads']} thread(s), torch {m['torch']}, "
        f"batch {local.batch_size}, "
        f"load {m['load_avg_start']:.2f}->{m['load_avg_end']:.2f}; local_cpu MAPE/±10% in seconds, "
        "others on the ratio to dense"
    )
    header = (
        f"{'model':<12} {'latency model':<10} {'MAPE':>6} {'±10%':>5} {'ratio MAPE':>10} "
        f"{'±10% r':>6} {'τ':>5} {'over budget':>11}"
    )
    print(header)
    for r in results_models:
        for key, f in r["fidelity"].items():
            mape = f"{f['mape']:.1%}" if "mape" in f else "-"
            within = f"{f['within10']:.0%}" if "within10" in f else "-"
            print(
                f"{r['model']:<12} {key:<10} {mape:>6} {within:>5} {f['mape_ratio']:>10.1%} "
                f"{f['within10_ratio']:>6.0%} {f['kendall_tau']:>5.2f} "
                f"{f['over_budget_share']:>6.0%} of {f['predicted_within_budget']:<3}"
            )
    print(
        f"{'model':<12} {'export':<18} {'predicted':>9} {'measured':>8}  "
        "(ratio to dense fp32 measured in this run)"
    )
    for r in results_models:
        for key, s in r["speedup"].items():
            print(f"{r['model']:<12} {key:<18} {s['predicted_ratio']:>9.3f} {s['measured_ratio']:>8.3f}")
    print(f"written to {args.out}")
    return results
