"""GPU deploy benchmark: ``local_gpu`` and a roofline profile against deployed networks.

For each zoo model (the ViT of the GPU issue, ResNet-20, MobileNetV2, and a language model of
the ViT's widths) and batch size:

1. ``hardware=local_gpu`` (:class:`~rlprune.hardware.local_gpu.GpuTableModel`) times the ops
   the policies need and calibrates on deployed networks (a fresh table in a temporary cache).
2. Random policies over the options a GPU runs (FP16, 2:4 and int8 on Linear layers, filter
   pruning where it may be applied) plus named ones (every Linear 2:4, the MLPs 2:4), each
   deployed by :func:`rlprune.cuda.timing.deploy_policy` and timed as CUDA-graph replays,
   twice in two passes (the second timing's τ is the ceiling a table can reach).
3. Latency over dense, measured against ``local_gpu``'s and the roofline profile's
   predictions: MAPE, share within ±10%, Kendall τ.

Each deployed network is checked against the float32 network with the same masks (relative
error), so a time is only reported for a network that computes the right thing.

``python -m rlprune.bench gpu --deploy [--models vit resnet20 mobilenetv2 lm] [--batches 1 32 256]
[--policies 30] [--profile h200] [--channel-step N] [--out PATH]``. Needs a CUDA GPU; never run in
tests or CI. Each batch's row saves ``local_gpu``'s table and calibration networks, so
``--replay`` (:mod:`rlprune.bench.gpu_replay`) can score other settings of it without a GPU.
"""

from __future__ import annotations

import functools
import random
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rlprune.io import write_json_atomic
from rlprune.policy import Choice, Pattern, Policy

MODELS = ("vit", "resnet20", "mobilenetv2", "lm")
DENSITY_LEVELS = [0.25 + 0.75 * i / 15 for i in range(16)]  # filter keep ratios drawn from
VOCABULARY, TOKENS = 8192, 128  # the language model's


def zoo_model(name: str) -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    """A zoo network (random weights, seeded) and a maker of a batch of its inputs."""
    from rlprune.models import MobileNetV2, ResNet20, TinyLM, ViT

    torch.manual_seed(0)

    def images(batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, 32, 32)

    if name == "vit":  # the GPU issue's ViT: 65 tokens of width 768, 24 searchable Linear layers
        return ViT(in_channels=3, num_classes=10, dims=2, image_size=32, patch=4, dim=768, depth=6, heads=12,
                   mlp_ratio=4), images  # fmt: skip
    if name == "resnet20":
        return ResNet20(in_channels=3, num_classes=10, dims=2), images
    if name == "mobilenetv2":
        return MobileNetV2(in_channels=3, num_classes=10, dims=2), images
    if name == "lm":  # the ViT's widths as a decoder-only language model over 128 token ids
        model = TinyLM(num_classes=VOCABULARY, length=TOKENS, dim=768, depth=6, heads=12, mlp_ratio=4)
        return model, lambda batch: torch.randint(VOCABULARY, (batch, TOKENS))
    raise SystemExit(f"--models: unknown model {name!r}; choose from {list(MODELS)}")


def traced_zoo_model(name: str) -> tuple[nn.Module, Callable[[int], torch.Tensor], list, dict]:
    """:func:`zoo_model` in eval mode with its layers and their filter couplings, traced once."""
    from rlprune.layers import discover_layers, filter_couplings

    model, inputs = zoo_model(name)
    model.eval()
    example = inputs(2)
    layers = discover_layers(model, example)
    return model, inputs, layers, filter_couplings(model, example, layers)


def layer_options(layer: Any, free: bool, last: bool) -> list[Callable[[random.Random], Choice]]:
    """The choices a GPU runs differently on ``layer``, as draws from a random generator."""
    options: list[Callable[[random.Random], Choice]] = [lambda r: Choice(Pattern.DENSE, 1, 1, 16, 16)]
    if layer.kind == "linear" and not last:
        options.append(lambda r: Choice(Pattern.DENSE, 1, 1, 8, 8))
        if layer.in_channels % 4 == 0:
            options.append(lambda r: Choice(Pattern.NM, 2, 4, 16, 16))
            options.append(lambda r: Choice(Pattern.NM, 2, 4, 8, 8))
    if free and not last:
        out = layer.out_channels

        step = 16 if layer.kind == "linear" else 8  # GPU-friendly widths, as the zoo's are

        def filters(r: random.Random) -> Choice:
            keep = max(step, step * round(r.choice(DENSITY_LEVELS[:-1]) * out / step))
            bits = 8 if layer.kind == "linear" and r.random() < 0.5 else 16
            return Choice(Pattern.FILTER, min(keep, out), out, bits, bits)

        options.append(filters)
    return options


def random_policies(layers: list, couplings: dict, count: int, seed: int) -> list[Policy]:
    """``count`` policies: each layer changed with a probability drawn per policy."""
    rng = random.Random(seed)
    menus = {
        layer.name: layer_options(layer, couplings[layer.name].blocked is None, i == len(layers) - 1)
        for i, layer in enumerate(layers)
    }
    policies = []
    for _ in range(count):
        share = rng.uniform(0.2, 1.0)
        picks = {}
        for layer in layers:
            menu = menus[layer.name]
            if len(menu) > 1 and rng.random() < share:
                picks[layer.name] = rng.choice(menu[1:])(rng)
        policies.append(Policy.of(picks))
    return policies


def named_policies(layers: list) -> dict[str, Policy]:
    """Every Linear but the head 2:4, and the MLPs' Linear layers alone 2:4 (the issue's policies)."""
    linears = [lay for lay in layers[:-1] if lay.kind == "linear" and lay.in_channels % 4 == 0]
    two_four = Choice(Pattern.NM, 2, 4, 16, 16)
    if not linears:
        return {}
    mlp = [lay for lay in linears if lay.name.endswith(("fc1", "fc2"))]
    out = {"all_linear_24": Policy.of(dict.fromkeys((lay.name for lay in linears), two_four))}
    if mlp:
        out["mlp_24"] = Policy.of(dict.fromkeys((lay.name for lay in mlp), two_four))
        out["mlp_24_int8"] = Policy.of(
            dict.fromkeys((lay.name for lay in mlp), Choice(Pattern.NM, 2, 4, 8, 8))
        )
        out["all_linear_int8"] = Policy.of(
            dict.fromkeys((lay.name for lay in linears), Choice(Pattern.DENSE, 1, 1, 8, 8))
        )
    return out


def needed_cells(table: Any, layers: list, couplings: dict, policies: list[Policy]) -> list[tuple]:
    """Every ``(layer, choice)`` whose op ``table`` reads for ``policies`` and its own calibration."""
    from rlprune.hardware.base import effective_cells
    from rlprune.hardware.local_gpu import calibration_policies

    dense = table.dense_choice()
    every = [*policies, *calibration_policies(layers, couplings, table.bits, table.channel_multiple)]
    return [
        cell
        for policy in every
        for cell in effective_cells(layers, [policy.get(lay.name, dense) for lay in layers], couplings)
    ]


def build_local_gpu(config: dict[str, Any], timer: Any, step: int | None = None) -> Any:
    """``hardware=local_gpu`` of ``config`` (a whole hardware config) measuring through ``timer``,
    on a grid of ``step`` channels (default: the config's)."""
    from rlprune.hardware.factory import model_fields, with_search_fields
    from rlprune.hardware.local_gpu import GpuTableModel

    fields = model_fields({**config, "channel_step": step or config["channel_step"]})
    return with_search_fields(GpuTableModel.from_config(fields, "local_gpu", timer=timer), config)


def local_table(
    config: dict[str, Any],
    timer: Any,
    layers: list,
    couplings: dict,
    policies: list[Policy],
    step: int | None,
) -> tuple[Any, dict[str, float]]:
    """``local_gpu`` of ``config`` on a grid of ``step`` channels (default: the config's), every op
    of :func:`needed_cells` timed through ``timer``; and the ops the config's own grid reads, timed
    too, so ``--replay`` can score that grid from this run's table (op key -> seconds)."""
    config_grid = build_local_gpu(config, timer)
    config_grid.prepare(needed_cells(config_grid, layers, couplings, policies))
    if not step or step == config["channel_step"]:
        return config_grid, config_grid.table
    # built after the config grid, so it reads what that timed from the shared cache
    table = build_local_gpu(config, timer, step)
    table.prepare(needed_cells(table, layers, couplings, policies))
    return table, config_grid.table


def fidelity(predicted: list[float], measured: list[float]) -> dict[str, float]:
    """MAPE, share within ±10% and Kendall τ of predicted against measured ratios."""
    from scipy.stats import kendalltau

    errors = [abs(p - m) / m for p, m in zip(predicted, measured, strict=True)]
    return {
        "mape": sum(errors) / len(errors),
        "within_10pct": sum(e <= 0.10 for e in errors) / len(errors),
        "kendall_tau": float(kendalltau(predicted, measured).statistic),
    }


def relative_error(deployment: Any, reference: nn.Module, x: torch.Tensor) -> float:
    """``||deployed(x) - reference(x)|| / ||reference(x)||``, the reference in float32 on the CPU."""
    with torch.no_grad():
        want = reference(x).double()
        got = deployment(x).double()
    return float(torch.linalg.norm(got - want) / torch.linalg.norm(want))


def run_model(
    name: str,
    batches: list[int],
    count: int,
    profile: str,
    rounds: int,
    save: Callable[[dict], None],
    channel_step: int | None = None,
) -> dict[str, Any]:
    """Tables, deployed networks and fidelity rows of one model at every batch size (``save``d after each).

    ``channel_step`` overrides ``local_gpu``'s grid spacing of channel counts.
    """
    from rlprune.cuda.deploy import deploy_cuda
    from rlprune.cuda.timing import CudaGraphTimer, CudaTimer, baked_policy
    from rlprune.hardware import network_latency
    from rlprune.hardware.factory import build_latency_model, load_hardware_config

    model, inputs, layers, couplings = traced_zoo_model(name)
    example = inputs(2)
    named = named_policies(layers)
    policies = [Policy(), *named.values(), *random_policies(layers, couplings, count, seed=1)]
    labels = ["dense", *named, *(f"random_{i}" for i in range(count))]
    timer = CudaGraphTimer(rounds=rounds, block_time=0.005)
    started = time.perf_counter()
    deployed, checks = [], []
    check_x = inputs(8)
    for policy in policies:  # deployed once, timed at every batch size
        reference = baked_policy(model, policy, example, couplings)  # deployed, and checked against
        deployment = deploy_cuda(reference, policy, example, [example], "cuda", torch.float16)
        checks.append(relative_error(deployment, reference, check_x))
        deployed.append(deployment)
    deploy_s = time.perf_counter() - started
    worst = max(range(len(checks)), key=checks.__getitem__)
    print(f"{name}: {len(policies)} networks deployed in {deploy_s:.0f}s; largest relative error "
          f"{checks[worst]:.3g} ({labels[worst]})", flush=True)  # fmt: skip
    out: dict[str, Any] = {
        "model": name,
        "layers": len(layers),
        "policies": labels,
        "choices": [policy.to_dict() for policy in policies],
        "kernels": [d.kernels for d in deployed],
        "dense_fallbacks": [d.dense_fallbacks for d in deployed],
        "remasked": [d.remasked for d in deployed],
        "relative_error": checks,
        "deploy_seconds": deploy_s,
        "batches": [],
    }
    with tempfile.TemporaryDirectory(prefix="rlprune_local_gpu_") as cache:  # a fresh table per run
        for batch in batches:
            t0 = time.perf_counter()
            data = load_hardware_config("local_gpu")[0] | {"batch_size": batch, "cache_dir": cache}
            op_timer = CudaTimer(block_time=0.005, rounds=rounds)
            local, config_grid = local_table(data, op_timer, layers, couplings, policies, channel_step)
            roof_cfg, _ = load_hardware_config(profile)
            roofline = build_latency_model({**roof_cfg, "batch_size": batch})
            x = inputs(batch)
            table_s = time.perf_counter() - t0
            constant = local.calibrate(model, x)
            calibrate_s = time.perf_counter() - t0 - table_s
            calls = [functools.partial(d.network, d.inputs(x)) for d in deployed]
            passes, walls = [[], []], [[], []]  # the second pass is the first's ceiling
            for timed, wall in zip(passes, walls, strict=True):
                for call in calls:
                    timed.append(timer.seconds([call]))
                    wall.append(timer.walls)
            measured, again = passes
            local_s = [network_latency(local, layers, p, couplings) + constant for p in policies]
            roof_s = [network_latency(roofline, layers, p, couplings) for p in policies]

            def ratios(values: list[float]) -> list[float]:
                return [v / values[0] for v in values[1:]]

            row = {
                "batch": batch,
                "dense_measured_s": measured[0],
                "dense_local_gpu_s": local_s[0],
                "dense_profile_s": roof_s[0],
                "measured_ratio": ratios(measured),
                "again_ratio": ratios(again),
                "local_gpu_ratio": ratios(local_s),
                "profile_ratio": ratios(roof_s),
                "local_gpu": fidelity(ratios(local_s), ratios(measured)),
                "profile": fidelity(ratios(roof_s), ratios(measured)),
                "timed_again": fidelity(ratios(again), ratios(measured)),
                "scales": local.scales,
                "constant_s": constant,
                "channel_step": local.channel_step,
                "table_entries": len(local.table),
                "table": {**config_grid, **local.table},  # op key -> seconds, for --replay
                "fitted_networks": local.fitted_networks,
                "table_seconds": table_s,
                "calibrate_seconds": calibrate_s,
                "timing_walls": walls,  # per pass and network: host seconds of each phase of its timing
                "shared_memory": timer.share_memory and op_timer.graph_timer.share_memory,
                "memory_errors": [e for e in (timer.memory_error, op_timer.graph_timer.memory_error) if e],
                "total_seconds": time.perf_counter() - t0,
            }
            out["batches"].append(row)
            save(out)
            print(summary_line(name, row, labels), flush=True)
    del deployed
    torch.cuda.empty_cache()
    return out


def summary_line(name: str, row: dict[str, Any], labels: list[str]) -> str:
    """One line per model and batch: fidelity of each predictor and the named policies' ratios."""
    lg, pr, ag = row["local_gpu"], row["profile"], row["timed_again"]
    rows = zip(labels[1:], row["measured_ratio"], row["local_gpu_ratio"], strict=True)
    named = [f"{lab}={m:.3f}(pred {p:.3f})" for lab, m, p in rows if not lab.startswith("random")]
    return (
        f"{name} b={row['batch']}: dense {row['dense_measured_s'] * 1e6:.0f}us | local_gpu MAPE "
        f"{100 * lg['mape']:.1f}% ±10% {100 * lg['within_10pct']:.0f}% τ {lg['kendall_tau']:.2f} | "
        f"profile MAPE {100 * pr['mape']:.1f}% τ {pr['kendall_tau']:.2f} | again τ {ag['kendall_tau']:.2f} | "
        f"{' '.join(named)} | {row['total_seconds']:.0f}s"
    )


def main_deploy(
    models: list[str],
    batches: list[int],
    count: int,
    profile: str,
    out: str,
    rounds: int,
    channel_step: int | None = None,
) -> None:
    """Run every model, writing the JSON after each batch (a failed model is recorded with its traceback)."""
    import platform

    cusparselt = getattr(torch.backends, "cusparselt", None)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cusparselt": cusparselt.version() if cusparselt and cusparselt.is_available() else None,
        "host": platform.node(),
        "profile": profile,
        "policies_per_model": count,
        "models": [],
    }
    for i, name in enumerate(models):

        def save(model_report: dict, i: int = i) -> None:
            report["models"][i:] = [model_report]
            write_json_atomic(out, report)

        try:
            run_model(name, batches, count, profile, rounds, save, channel_step)
        except Exception as exc:  # one model's failure must not lose the others' numbers
            traceback.print_exc()
            partial = report["models"][i] if len(report["models"]) > i else {"model": name}
            save({**partial, "error": f"{type(exc).__name__}: {exc}"})
    print(f"wrote {out}")
