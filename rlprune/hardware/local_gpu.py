"""A latency table measured on the CUDA GPU at hand (docs/gpu.md, "hardware=local_gpu").

``latency(layer, choice)`` is the time of one batch through the layer as the deployed GPU
network runs it (:func:`rlprune.cuda.deploy.deploy_cuda`): the same module, built from an
:class:`~rlprune.cuda.ops.OpSpec` on random weights, timed as CUDA-graph replays
(:class:`~rlprune.cuda.timing.CudaGraphTimer`), scaled by the network calibration below.

* **Kernels.** FP16 (or BF16) dense for every layer; for Linear layers, 2:4 through
  cuSPARSELt (``sparse``), int8 through ``torch._int_mm`` (``int8``) and int8 2:4 through
  cuSPARSELt (``int8_sparse``). PyTorch has no sparse or int8 GPU kernel for convolutions:
  there those choices cost what dense costs, as they run. A kernel slower than dense on this
  GPU (2:4 on small products) is costed as measured, so the search learns to avoid it.
* **Filter pruning** is the smaller dense layer; channel counts are measured on a grid
  (multiples of ``channel_step``) and interpolated, as the CPU table does.
* **L2.** An op timed alone keeps its weights in L2 across replays; in a network the other
  layers evict them. Each op is timed over copies on distinct buffers that together exceed
  twice the L2 (at most ``max_copies``).
* **Network calibration** (:meth:`GpuTableModel.calibrate`): a deployed network is not the
  sum of its ops (the glue between them, layouts, launch gaps inside one graph). A few
  deployed networks are timed whole (dense, filters halved, and each sparse and int8 kernel on
  every Linear it applies to) and a non-negative least-squares fit gives a scale per kernel and
  a constant: ``network ~ constant + sum_k scale_k * (sum of its ops on kernel k)``.

The measuring goes through a :class:`GpuTimer` (the real one needs CUDA); tests hand in a fake.
Measurements are cached as JSON under ``cache_dir/latency/``, keyed by the GPU, its driver,
torch, CUDA and cuSPARSELt versions and the dtype.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from rlprune.config import default_cache_dir
from rlprune.cuda.deploy import runs_two_four
from rlprune.cuda.kernels import linear_kernel
from rlprune.cuda.ops import KERNELS, OpSpec
from rlprune.errors import ConfigError
from rlprune.hardware.base import LatencyModel, effective_cells
from rlprune.hardware.measured.cache import TableCache
from rlprune.hardware.measured.ops import grid_corners, padding
from rlprune.hardware.profile import ConfigReader, read_common
from rlprune.layers import FilterCoupling, LayerInfo
from rlprune.policy import Choice, Pattern, Policy

CACHE_FORMAT = 1
DTYPES = ("float16", "bfloat16")


class GpuTimer(Protocol):
    """What the table measures through: ops by spec, and deployed networks whole."""

    def device_key(self) -> dict[str, Any]:
        """What identifies the GPU and its software (the cache key)."""

    def op_seconds(self, specs: Sequence[OpSpec]) -> list[float]:
        """Seconds per call of each op, as deployed."""

    def network_seconds(
        self, model: nn.Module, policies: Sequence[Policy], example: torch.Tensor
    ) -> list[float]:
        """Seconds per batch of ``model`` deployed under each policy (its masks applied for real)."""


def layer_kernel(layer: LayerInfo, choice: Choice, runs_integer: bool) -> str:
    """The kernel a deployed GPU network runs ``layer`` with under ``choice``
    (:func:`rlprune.cuda.deploy.kernel_of` for a layer described by its shape)."""
    if layer.kind != "linear":
        return "dense"
    return linear_kernel(layer.in_channels, layer.out_channels, runs_two_four(choice), runs_integer)


class GpuTableModel(LatencyModel):
    """Seconds per batch measured on this CUDA GPU, interpolated over a grid of channel counts.

    Attributes:
        dtype: the float dtype's name (``float16`` or ``bfloat16``).
        channel_step: grid spacing of channel counts.
        cache: the table's file (:class:`~rlprune.hardware.measured.cache.TableCache`).
        scales: kernel -> the factor its ops take inside a deployed network (:meth:`calibrate`).
        fitted_networks: what :meth:`calibrate` fitted to, one dict per deployed network: its
            ``policy`` (plain data), the table's unscaled ``ops`` seconds per kernel, and the
            measured ``seconds``.
        measurements: ops this instance has timed (cache misses).
    """

    def __init__(
        self,
        *,
        timer: GpuTimer,
        name: str = "local_gpu",
        description: str = "",
        batch_size: int = 32,
        bits: Sequence[int] = (8, 16),
        reference_bits: int = 16,
        dtype: str = "float16",
        channel_step: int = 16,
        cache_dir: str | os.PathLike[str] | None = None,
        patterns: Sequence[Pattern | str] = tuple(Pattern),
        sources: Mapping[str, str] | None = None,
    ) -> None:
        if reference_bits != 16:
            raise ConfigError(f"hardware '{name}': reference_bits must be 16 (FP16/BF16 on a GPU)")
        if dtype not in DTYPES:
            raise ConfigError(f"hardware '{name}': dtype must be one of {list(DTYPES)}, got {dtype!r}")
        super().__init__(
            name=name,
            batch_size=batch_size,
            bits=bits,
            reference_bits=reference_bits,
            nm_options=((2, 4),),
            patterns=patterns,
        )
        self.timer = timer
        self.description = description
        self.dtype = dtype
        self.channel_step = int(channel_step)
        self.sources = dict(sources or {})
        self.scales = dict.fromkeys(KERNELS, 1.0)
        self.fitted_networks: list[dict[str, Any]] = []
        self.measurements = 0
        folder = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
        self.cache = TableCache(folder, name, {**timer.device_key(), "dtype": dtype}, CACHE_FORMAT)
        self._table: dict[str, float] = self.cache.load()

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any], where: str = "hardware config", timer: GpuTimer | None = None
    ) -> GpuTableModel:
        """Build from a ``model: measured_gpu`` config node; the timer is the CUDA one unless given.

        Raises:
            ConfigError: a bad field, or no CUDA GPU to measure on.
        """
        reader = ConfigReader(cfg, where)
        reader.raw("model")
        name, batch_size, reference, bits = read_common(reader)
        description = reader.string("description", name)
        dtype = reader.string("dtype", "float16")
        if dtype not in DTYPES:
            raise reader.error("dtype", f"one of {list(DTYPES)}", dtype)
        step = reader.integer("channel_step", 16, minimum=1)
        rounds = reader.integer("rounds", 7, minimum=1)
        block_time = reader.number("block_time", 0.01, positive=True)
        max_copies = reader.integer("max_copies", 16, minimum=1)
        cache_dir = reader.raw("cache_dir", None)
        if isinstance(cache_dir, str) and ("${" in cache_dir or not cache_dir.strip()):
            cache_dir = None
        if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
            raise reader.error("cache_dir", "a folder path", cache_dir)
        patterns = reader.patterns("patterns", [p.value for p in Pattern])
        nm_raw = reader.raw("nm_options", [[2, 4]])
        if nm_raw not in ([[2, 4]], [(2, 4)]):
            raise reader.error("nm_options", "[[2, 4]]: sparse tensor cores run 2:4", nm_raw)
        sources = reader.sources(("batch_size", "channel_step", "rounds", "block_time", "max_copies"))
        reader.finish()
        if bits != tuple(sorted(set(bits) & {8, 16})):
            raise reader.error("bits", "a subset of [8, 16] (int8 and FP16/BF16 run on a GPU)", list(bits))
        if timer is None:
            from rlprune.cuda.timing import CudaTimer

            timer = CudaTimer(dtype=dtype, rounds=rounds, block_time=block_time, max_copies=max_copies)
        return cls(
            timer=timer,
            name=name,
            description=description,
            batch_size=batch_size,
            bits=bits,
            reference_bits=reference,
            dtype=dtype,
            channel_step=step,
            cache_dir=cache_dir,
            patterns=patterns,
            sources=sources,
        )

    # -- the lookup ----------------------------------------------------------------------------

    def kernel(self, layer: LayerInfo, choice: Choice) -> str:
        """The kernel ``layer`` runs with under ``choice`` (see the module doc)."""
        return layer_kernel(layer, choice, self.runs_integer(choice))

    def _latency(self, layer: LayerInfo, choice: Choice) -> float:
        points = self.grid_points(layer, choice)
        self._measure([spec for spec, _ in points])
        return self.scales[points[0][0].kernel_class] * sum(w * self._table[spec.key] for spec, w in points)

    def grid_points(self, layer: LayerInfo, choice: Choice) -> list[tuple[OpSpec, float]]:
        """The table entries ``latency(layer, choice)`` interpolates, with their weights (sum 1)."""
        if choice.pattern is Pattern.FILTER:
            layer = layer.with_channels(layer.in_channels, choice.keep)
        kernel = self.kernel(layer, choice)
        if kernel == "dense":
            corners = grid_corners(layer, self.channel_step)
        else:  # sparse and int8 kernels need aligned shapes: measured as they are
            corners = [((layer.in_channels, layer.out_channels), 1.0)]
        return [(self.spec(layer, ci, co, kernel), w) for (ci, co), w in corners if w > 0]

    def spec(self, layer: LayerInfo, c_in: int, c_out: int, kernel: str) -> OpSpec:
        """The op of ``layer`` at ``c_in`` to ``c_out`` channels on ``kernel``, at this batch size."""
        if layer.kind == "linear":
            geometry: dict[str, Any] = {"kernel": (), "stride": (), "padding": (), "groups": 1}
            spatial = tuple(layer.in_shape[:-1])
        else:
            groups = c_in if layer.depthwise else layer.groups
            geometry = {
                "kernel": tuple(layer.kernel_size),
                "stride": tuple(layer.stride),
                "padding": padding(layer),
                "groups": groups,
            }
            spatial = tuple(layer.in_shape[1:])
        return OpSpec(
            kind=layer.kind,
            c_in=c_in,
            c_out=c_out,
            spatial=spatial,
            batch=self.batch_size,
            kernel_class=kernel,
            dtype=self.dtype,
            **geometry,
        )

    # -- measuring -----------------------------------------------------------------------------

    def prepare(self, cells: Sequence[tuple[LayerInfo, Choice]]) -> None:
        """Time every table entry the ``(layer, choice)`` cells need that is not cached yet, at once."""
        specs = [
            spec
            for layer, choice in cells
            if self.supports(layer, choice)
            for spec, _ in self.grid_points(layer, choice)
        ]
        self._measure(specs)

    def _measure(self, specs: Sequence[OpSpec]) -> None:
        missing = list({spec.key: spec for spec in specs if spec.key not in self._table}.values())
        if not missing:
            return
        seconds = self.timer.op_seconds(missing)
        bad = [(s.key, t) for s, t in zip(missing, seconds, strict=True) if not (math.isfinite(t) and t > 0)]
        if bad:
            raise ConfigError(f"hardware '{self.name}': the timer returned no valid time for {bad[:3]}")
        self._table.update({spec.key: float(t) for spec, t in zip(missing, seconds, strict=True)})
        self.measurements += len(missing)
        self._table = self.cache.save(self._table)

    def calibrate(self, network: nn.Module, example: torch.Tensor) -> float:
        """Fit each kernel's scale and the network's constant seconds to deployed networks.

        Times ``network`` deployed dense, with every prunable layer's filters halved, and with
        each non-dense kernel on every Linear it applies to, sums the table's ops of each, and
        fits ``network ~ constant + sum_k scale_k * ops_k`` by non-negative least squares
        (docs/gpu.md, "Network calibration"). Returns the constant.
        """
        from rlprune.layers import discover_layers, filter_couplings

        example = example[torch.arange(self.batch_size) % len(example)]  # timed at the table's batch size
        layers = discover_layers(network, example)
        couplings = filter_couplings(network, example, layers)
        policies = calibration_policies(layers, couplings, self.bits, self.channel_multiple)
        features = []
        for policy in policies:
            sums = dict.fromkeys(KERNELS, 0.0)
            picked = [policy.get(layer.name, self.dense_choice()) for layer in layers]
            for layer, choice in effective_cells(layers, picked, couplings):
                sums[self.kernel(layer, choice)] += self.op_total(layer, choice) * layer.calls
            features.append(sums)
        # a kernel whose ops are a sliver of the network (a classifier head) cannot be fitted
        keep = [
            i
            for i, f in enumerate(features)
            if i < 2 or sum(f.values()) - f["dense"] >= 0.1 * sum(f.values())
        ]
        policies, features = [policies[i] for i in keep], [features[i] for i in keep]
        seconds = self.timer.network_seconds(network, policies, example)
        constant, scales = fit_network(features, seconds)
        self.scales = {k: scales.get(k, 1.0) for k in KERNELS}
        self.fitted_networks = [
            {"policy": p.to_dict(), "ops": f, "seconds": s}
            for p, f, s in zip(policies, features, seconds, strict=True)
        ]
        self._cache.clear()
        return constant

    def op_total(self, layer: LayerInfo, choice: Choice) -> float:
        """The table's unscaled seconds of ``layer`` under ``choice`` (the ops alone)."""
        points = self.grid_points(layer, choice)
        self._measure([spec for spec, _ in points])
        return sum(w * self._table[spec.key] for spec, w in points)

    @property
    def table(self) -> dict[str, float]:
        """A copy of the measured entries (key -> seconds)."""
        return dict(self._table)


def calibration_policies(
    layers: Sequence[LayerInfo],
    couplings: Mapping[str, FilterCoupling],
    bits: Sequence[int],
    channel_multiple: int = 1,
) -> list[Policy]:
    """Dense, filters halved wherever they may be pruned (to a multiple of ``channel_multiple``),
    and one policy per non-dense Linear kernel."""
    dense = Policy()
    half = {layer.name: layer.out_channels // 2 // channel_multiple * channel_multiple for layer in layers}
    halved = Policy.of(
        {
            layer.name: Choice(Pattern.FILTER, half[layer.name], layer.out_channels, 16, 16)
            for layer in layers
            if couplings[layer.name].blocked is None and 0 < half[layer.name] < layer.out_channels
        }
    )
    policies = [dense, halved]
    linears = [layer for layer in layers if layer.kind == "linear"]
    sparse_ok = [layer for layer in linears if layer.in_channels % 4 == 0]
    if sparse_ok:
        policies.append(Policy.of({layer.name: Choice(Pattern.NM, 2, 4, 16, 16) for layer in sparse_ok}))
    if 8 in bits and linears:
        policies.append(Policy.of({layer.name: Choice(Pattern.DENSE, 1, 1, 8, 8) for layer in linears}))
        if sparse_ok:
            policies.append(Policy.of({layer.name: Choice(Pattern.NM, 2, 4, 8, 8) for layer in sparse_ok}))
    return policies


def fit_network(
    features: Sequence[Mapping[str, float]], seconds: Sequence[float]
) -> tuple[float, dict[str, float]]:
    """``constant`` and a scale per kernel with ``seconds ~ constant + sum_k scale_k * features_k``.

    Non-negative least squares over the networks, in relative terms (each network's error
    over its own time), so a small network weighs as much as a large one. A kernel that no
    network uses, or that the fit leaves at 0 (its ops too small to see in any network), keeps
    scale 1: the table's own time.
    """
    used = [k for k in KERNELS if any(f.get(k, 0.0) > 0 for f in features)]
    times = np.asarray(seconds, dtype=float)
    a = np.array([[1.0, *(f.get(k, 0.0) for k in used)] for f in features]) / times[:, None]
    solution, _ = nnls(a, np.ones(len(times)))
    constant, *scales = solution.tolist()
    return constant, {k: s if s > 0 else 1.0 for k, s in zip(used, scales, strict=True)}
