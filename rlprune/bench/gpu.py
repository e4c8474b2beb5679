"""GPU benchmark: 2:4 semi-structured sparse and int8 matrix products against dense FP16.

For each linear shape ``y = x W^T`` (``x`` is ``rows x size``, ``W`` is ``size x size``) it times,
with ``torch.utils.benchmark`` (median of blocks after warm-up):

* ``fp16``: dense FP16 ``F.linear``, the reference every ratio is taken against;
* ``fp16_24_cusparselt`` / ``fp16_24_cutlass``: the same product with ``W`` 2:4-pruned by
  magnitude and stored by ``torch.sparse.to_sparse_semi_structured`` (each backend);
* ``int8``: dense INT8 ``torch._int_mm`` (INT32 accumulators);
* ``int8_24``: INT8 with a 2:4 ``W`` through cuSPARSELt (``torch._cslt_sparse_mm``).

Each is timed twice: called from Python (``eager``) and as replays of a captured CUDA graph
(``graph``, the kernels alone, as a deployment with graphs or TensorRT runs them).

Each sparse result is checked against the dense product of the masked weight first (FP16 within
a relative error of 1e-2, INT8 exactly), so a timing is only reported for a kernel that computes
the right thing. A variant the installed torch or GPU cannot run is listed with its error.
These are the figures behind the ``h100`` and ``h200`` profiles' N:M speedups
(``conf/hardware/h100.yaml``, ``h200.yaml``).

With ``--networks``, it checks a GPU profile's roofline on whole zoo networks instead: per model,
the dense network and filter-pruned exports (uniform keep ratios and random per-layer keeps,
Torch-Pruning) run in FP16 at the profile's batch size as CUDA-graph replays, and the measured
latency ratio to dense is set against the roofline's prediction (MAPE, share within ±10%,
Kendall τ).

``python -m rlprune.bench gpu [--sizes 1024 2048 4096 8192] [--rows N] [--out PATH]``
``python -m rlprune.bench gpu --networks [--profile h100] [--policies 16] [--out PATH]``
``python -m rlprune.bench gpu --deploy ...`` (:mod:`rlprune.bench.gpu_deploy`)
Needs a CUDA GPU with 2:4 sparse tensor cores (Ampere or newer); never run in tests or CI.
``python -m rlprune.bench gpu --replay PATH [--channel-step N]`` (:mod:`rlprune.bench.gpu_replay`)
needs none: it scores ``local_gpu`` again from a ``--deploy`` JSON's saved tables.
"""

from __future__ import annotations

import argparse
import functools
import math
import platform
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

from rlprune.io import write_json_atomic
from rlprune.masks import nm_mask

VARIANTS = ("fp16", "fp16_24_cusparselt", "fp16_24_cutlass", "int8", "int8_24")
TIMINGS = ("eager", "graph")  # each call from Python; replays of a captured CUDA graph
FP16_TOLERANCE = 1e-2  # relative error of a sparse FP16 product against the dense one


def median_seconds(fn: Callable[[], Any], min_run_time: float) -> float:
    """Median seconds per call of ``fn`` over blocks of ``torch.utils.benchmark`` (syncs CUDA)."""
    fn()  # warm-up: kernel selection, cuSPARSELt plans, allocations
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def graphed(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` captured in a CUDA graph: replays run its kernels without the host work around them.

    cuSPARSELt's torch binding plans the product on the host at every call; a deployment that
    captures graphs (or TensorRT) pays that once, so both timings are reported.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64."""
    out, ref = out.double(), ref.double()
    return float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref))


def semi_structured(weight: torch.Tensor, cutlass: bool) -> torch.Tensor:
    """``weight`` (already 2:4) as a semi-structured sparse tensor on the chosen backend."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = cutlass
    return to_sparse_semi_structured(weight)


def shape_products(rows: int, size: int, device: torch.device) -> dict[str, Callable[[], Any]]:
    """The product of each variant on fresh random operands, checked against its dense reference.

    Returns the variants that run and are correct as zero-argument callables; a variant that
    raises or computes the wrong result is returned as the error string instead.
    """
    gen = torch.Generator(device=device).manual_seed(size * 7919 + rows)
    x = torch.randn(rows, size, device=device, dtype=torch.float16, generator=gen)
    w = torch.randn(size, size, device=device, dtype=torch.float16, generator=gen)
    mask = nm_mask(w.float().abs().cpu(), keep=2, group=4).to(device)
    w24 = w * mask
    xi = torch.randint(-8, 8, (rows, size), device=device, dtype=torch.int8, generator=gen)
    wi = torch.randint(-8, 8, (size, size), device=device, dtype=torch.int8, generator=gen) * mask
    wi = wi.to(torch.int8)

    def fp16_sparse(cutlass: bool) -> Callable[[], Any]:
        ws = semi_structured(w24, cutlass)
        error = relative_error(F.linear(x, ws), F.linear(x, w24))
        if not error < FP16_TOLERANCE:
            raise RuntimeError(f"relative error {error:.2e} against the dense product")
        return lambda: F.linear(x, ws)

    def int8_dense() -> Callable[[], Any]:
        exact = xi.double() @ wi.double().T
        if not torch.equal(torch._int_mm(xi, wi.T).double(), exact):
            raise RuntimeError("torch._int_mm disagrees with the float64 product")
        return lambda: torch._int_mm(xi, wi.T)

    def int8_sparse() -> Callable[[], Any]:
        compressed = torch._cslt_compress(wi)
        out = torch._cslt_sparse_mm(compressed, xi.T, out_dtype=torch.int32)
        if not torch.equal(out.T, torch._int_mm(xi, wi.T)):
            raise RuntimeError("cuSPARSELt INT8 2:4 product disagrees with the dense INT8 product")
        return lambda: torch._cslt_sparse_mm(compressed, xi.T, out_dtype=torch.int32)

    builders: dict[str, Callable[[], Callable[[], Any]]] = {
        "fp16": lambda: lambda: F.linear(x, w),
        "fp16_24_cusparselt": lambda: fp16_sparse(cutlass=False),
        "fp16_24_cutlass": lambda: fp16_sparse(cutlass=True),
        "int8": int8_dense,
        "int8_24": int8_sparse,
    }
    products: dict[str, Any] = {}
    for name, build in builders.items():
        try:
            products[name] = build()
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
            products[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return products


def measure(sizes: list[int], rows: int | None, min_run_time: float) -> list[dict[str, Any]]:
    """One row per size: seconds per variant (or its error) and speedups against dense FP16."""
    device = torch.device("cuda")
    results = []
    for size in sizes:
        m = rows or size
        products = shape_products(m, size, device)
        errors = {k: v for k, v in products.items() if not callable(v)}
        row: dict[str, Any] = {"rows": m, "size": size, "errors": errors}
        for mode in TIMINGS:
            seconds = {}
            for name, fn in products.items():
                if callable(fn):
                    try:
                        seconds[name] = median_seconds(graphed(fn) if mode == "graph" else fn, min_run_time)
                    except RuntimeError as exc:
                        errors[f"{name} ({mode})"] = f"RuntimeError: {str(exc).splitlines()[0][:160]}"
            row[mode] = timing_row(seconds, 2 * m * size * size)
        results.append(row)
        torch.cuda.empty_cache()
    return results


def timing_row(seconds: dict[str, float], flops: int) -> dict[str, Any]:
    """Seconds per variant, speedups against dense FP16 and of INT8 2:4 over dense INT8."""
    row: dict[str, Any] = {"seconds": seconds}
    base = seconds.get("fp16")
    row["speedup_vs_fp16"] = {k: base / s for k, s in seconds.items()} if base else {}
    if base:
        row["fp16_tflops"] = flops / base / 1e12
    if "int8" in seconds and "int8_24" in seconds:
        row["int8_24_vs_int8"] = seconds["int8"] / seconds["int8_24"]
    return row


def geometric_mean(values: list[float]) -> float:
    """The geometric mean of positive ``values``."""
    return math.exp(sum(math.log(v) for v in values) / len(values))


def table(results: list[dict[str, Any]]) -> str:
    """Speedups against dense FP16 per size and timing, the INT8 2:4 gain over dense INT8, FP16 TFLOP/s."""
    head = ["timing", "rows x size", "fp16 us", "fp16 TFLOP/s", *[f"{v} x" for v in VARIANTS[1:]]]
    head.append("int8_24/int8 x")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for mode, res in ((mode, res) for mode in TIMINGS for res in results):
        r = res[mode]
        speed = r["speedup_vs_fp16"]
        cells = [mode, f"{res['rows']}x{res['size']}", f"{r['seconds'].get('fp16', float('nan')) * 1e6:.1f}"]
        cells.append(f"{r.get('fp16_tflops', float('nan')):.0f}")
        cells += [f"{speed[v]:.2f}" if v in speed else "error" for v in VARIANTS[1:]]
        cells.append(f"{r['int8_24_vs_int8']:.2f}" if "int8_24_vs_int8" in r else "-")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def summary(results: list[dict[str, Any]]) -> dict[str, float]:
    """Geometric-mean speedup of each variant against dense FP16 over the sizes where it ran."""
    out = {}
    for v in VARIANTS[1:]:
        values = [r["speedup_vs_fp16"][v] for r in results if v in r["speedup_vs_fp16"]]
        if values:
            out[v] = geometric_mean(values)
    ratios = [r["int8_24_vs_int8"] for r in results if "int8_24_vs_int8" in r]
    if ratios:
        out["int8_24_vs_int8"] = geometric_mean(ratios)
    return out


def _zoo() -> dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...]]]:
    from rlprune.models import MNIST1DCNN, VGG, DigitsCNN, MobileNetV2, ResNet20

    return {
        "mnist1d_cnn": (lambda: MNIST1DCNN(in_channels=1, num_classes=10), (1, 40)),
        "digits_cnn": (lambda: DigitsCNN(in_channels=1, num_classes=10), (1, 8, 8)),
        "resnet20": (lambda: ResNet20(in_channels=3, num_classes=10, dims=2), (3, 32, 32)),
        "mobilenetv2": (lambda: MobileNetV2(in_channels=3, num_classes=10, dims=2), (3, 32, 32)),
        "vgg": (lambda: VGG(in_channels=3, num_classes=10, dims=2), (3, 32, 32)),
    }


def filter_policies(layers: list, couplings: dict, count: int, seed: int) -> list:
    """Uniform keep ratios from 1/4 to 1, then random per-layer keeps (multiples of 8, at least 8),
    on every layer whose filters may be pruned (their depthwise followers go with them)."""
    import random

    from rlprune.policy import Choice, Pattern, Policy

    free = [lay for lay in layers if couplings[lay.name].blocked is None and lay.out_channels > 8]
    rng = random.Random(seed)
    uniform = [0.25 + 0.75 * i / (count // 2 - 1) for i in range(count // 2)]

    def choice(layer, ratio: float) -> Choice:
        keep = min(layer.out_channels, max(8, 8 * round(ratio * layer.out_channels / 8)))
        return Choice(Pattern.FILTER, keep, layer.out_channels, 16, 16)

    policies = []
    for i in range(count):
        picks = {
            lay.name: choice(lay, uniform[i] if i < len(uniform) else rng.uniform(0.25, 1)) for lay in free
        }
        policies.append(Policy.of({n: c for n, c in picks.items() if c.keep < c.group}))
    return policies


def network_fidelity(profile: str, count: int, min_run_time: float, seed: int = 0) -> list[dict[str, Any]]:
    """Measured against predicted latency ratios of filter-pruned zoo networks (see the module doc)."""
    from scipy.stats import kendalltau

    from rlprune.export import export_filter_pruned
    from rlprune.hardware import load_latency_model, network_latency
    from rlprune.layers import discover_layers, filter_couplings
    from rlprune.policy import Policy

    hardware = load_latency_model(profile)
    rows = []
    for name, (build, shape) in _zoo().items():
        torch.manual_seed(seed)
        model = build().eval()
        example = torch.randn(2, *shape)
        layers = discover_layers(model, example)
        couplings = filter_couplings(model, example, layers)
        policies = [Policy(), *filter_policies(layers, couplings, count, seed)]
        x = torch.randn(hardware.batch_size, *shape, device="cuda", dtype=torch.float16)
        measured, predicted = [], []
        for policy in policies:
            net = export_filter_pruned(model, policy, example).cuda().half()
            with torch.no_grad():
                measured.append(median_seconds(graphed(functools.partial(net, x)), min_run_time))
            predicted.append(network_latency(hardware, layers, policy, couplings))
            del net
            torch.cuda.empty_cache()
        meas = [m / measured[0] for m in measured[1:]]
        pred = [p / predicted[0] for p in predicted[1:]]
        errors = [abs(p - m) / m for p, m in zip(pred, meas, strict=True)]
        rows.append(
            {
                "model": name,
                "batch": hardware.batch_size,
                "dense_measured_s": measured[0],
                "dense_predicted_s": predicted[0],
                "ratio_mape": sum(errors) / len(errors),
                "within_10pct": sum(e <= 0.10 for e in errors) / len(errors),
                "kendall_tau": float(kendalltau(pred, meas).statistic),
                "ratios": [{"predicted": p, "measured": m} for p, m in zip(pred, meas, strict=True)],
            }
        )
    return rows


def network_table(rows: list[dict[str, Any]]) -> str:
    """One line per model: dense seconds measured and predicted, ratio MAPE, ±10%, τ."""
    head = ["model", "batch", "dense ms measured", "dense ms predicted", "ratio MAPE", "±10%", "τ"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(
            f"{r['model']} | {r['batch']} | {r['dense_measured_s'] * 1e3:.3f} | "
            f"{r['dense_predicted_s'] * 1e3:.3f} | {100 * r['ratio_mape']:.1f}% | "
            f"{100 * r['within_10pct']:.0f}% | {r['kendall_tau']:.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse options, measure on the GPU, print the table and write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m rlprune.bench gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--rows", type=int, default=None, help="rows of x; default: the size")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timed blocks per variant")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/gpu[_networks].json")
    parser.add_argument("--networks", action="store_true", help="check a profile on whole zoo networks")
    parser.add_argument(
        "--profile", default=None, help="the hardware config (--networks: h100, --deploy: h200)"
    )
    parser.add_argument("--policies", type=int, default=None, help="per model (--networks: 16, --deploy: 30)")
    parser.add_argument(
        "--deploy", action="store_true", help="local_gpu and --profile against deployed networks"
    )
    parser.add_argument(
        "--models", nargs="+", default=None, help="with --deploy: vit resnet20 mobilenetv2 lm"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256], help="with --deploy")
    parser.add_argument("--rounds", type=int, default=7, help="with --deploy: timed blocks per measurement")
    parser.add_argument(
        "--channel-step",
        type=int,
        default=None,
        help="with --deploy or --replay: local_gpu's grid of channel counts (default: its config's, 16)",
    )
    parser.add_argument(
        "--replay",
        default=None,
        metavar="PATH",
        help="no GPU needed: local_gpu rebuilt from a saved --deploy JSON's tables, scored again",
    )
    args = parser.parse_args(argv)
    if args.replay:
        from rlprune.bench.gpu_replay import replay, replay_line

        for row in replay(args.replay, args.channel_step):
            print(replay_line(row), flush=True)
        return
    if bad := [s for s in [*args.sizes, args.rows or 64] if s < 64 or s % 64]:
        raise SystemExit(f"--sizes and --rows must be multiples of 64 (2:4 kernels' tile), got {bad}")
    if not torch.cuda.is_available():
        raise SystemExit("python -m rlprune.bench gpu needs a CUDA GPU; torch sees none on this machine")
    torch.backends.cuda.matmul.allow_tf32 = False
    warnings.filterwarnings("ignore", message=".*SparseSemiStructuredTensor is in prototype stage")
    if args.deploy:
        from rlprune.bench.gpu_deploy import MODELS, main_deploy

        torch.backends.cudnn.benchmark = True
        out = args.out or "benchmarks/results/gpu_deploy.json"
        models, policies = args.models or list(MODELS), args.policies or 30
        profile = args.profile or "h200"
        main_deploy(models, args.batches, policies, profile, out, args.rounds, args.channel_step)
        return
    if args.networks:
        torch.backends.cudnn.benchmark = True
        args.profile = args.profile or "h100"
        rows = network_fidelity(args.profile, args.policies or 16, args.min_run_time)
        report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "profile": args.profile}
        path = write_json_atomic(args.out or "benchmarks/results/gpu_networks.json", {**report, "rows": rows})
        print(f"{report['device']} torch {report['torch']}, profile {args.profile}, FP16; wrote {path}\n")
        print(network_table(rows))
        return
    results = measure(args.sizes, args.rows, args.min_run_time)
    cusparselt = getattr(torch.backends, "cusparselt", None)
    report = {
        "device": torch.cuda.get_device_name(),
        "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cusparselt": cusparselt.version() if cusparselt and cusparselt.is_available() else None,
        "host": platform.node(),
        "results": results,
        "summary": {mode: summary([r[mode] for r in results]) for mode in TIMINGS},
    }
    path = write_json_atomic(args.out or "benchmarks/results/gpu.json", report)
    versions = f"torch {report['torch']} CUDA {report['cuda']} cuSPARSELt {report['cusparselt']}"
    print(f"{report['device']} {versions}")
    for r in results:
        for name, error in r["errors"].items():
            print(f"  {r['rows']}x{r['size']} {name}: {error}")
    print(f"wrote {path}\n")
    print(table(results))
