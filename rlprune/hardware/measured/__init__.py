"""A latency lookup table measured on the machine at hand (ALGORITHMS.md, "Measured lookup table").

``latency(layer, choice)`` is the time of one batch of ``batch_size`` samples through the
layer's op on this CPU, as a deployed network runs it: traced and frozen TorchScript
(:meth:`MeasuredModel.deploy`), less the cost of calling a deployed module. It is timed
with :mod:`torch.utils.benchmark` at a fixed thread count in short blocks over interleaved
rounds, its fastest block, beside a marker op that whole networks are read against, in a quiet
stretch of the machine (:class:`~rlprune.hardware.measured.timing.QuietTimer`, or the timer
the model is handed). Eager PyTorch is not what is modelled: there
each int8 op costs about 20 µs more at batch 1 (two C++ exceptions per call), and more after
float ops.

What is measured, and what is not:

* Only what changes CPU time in PyTorch is measured: dense FP32 (``32`` bits), INT8 (``8``
  bits, ``torch.ao`` quantized Linear / Conv1d / Conv2d on the x86/fbgemm engine, quantized
  input, per-channel qint8 weights, as a deployed int8 layer runs between other int8 layers),
  and fewer channels (filter pruning runs the smaller dense layer
  ``layer.with_channels(in, keep)``; upstream pruning is the caller's adjusted ``LayerInfo``).
  Where an op has no int8 kernel on this machine it is costed at FP32 (see
  :attr:`MeasuredModel.int8_fallbacks`).
* Shape-keeping sparse patterns (k-of-n, N:M, unstructured) run dense in PyTorch on a CPU:
  they cost the same as dense at their bits, and ``nm_options`` is empty.
* The op is followed by its ``epilogue`` (``relu``: an elementwise ReLU on the output, fused
  into the int8 kernel as a deployed ``ConvReLU``/``LinearReLU`` is; ``none``: the op alone).
  Every hidden layer of the zoo is followed by an activation, whose cost scales with the
  layer's output and so belongs to the layer. Batch norm is assumed folded (deploy), so every
  op has a bias: a layer and its deployed, folded self share one table entry.
* Channel counts are measured on a grid (multiples of ``channel_step``) and interpolated
  bilinearly in ``(c_in, c_out)`` between the four neighbouring grid points; a count below
  ``channel_step`` is measured as it is. Depthwise convolutions interpolate along ``c``;
  other grouped convolutions are measured exactly. Every other dimension (kernel, stride,
  padding, spatial size, batch) is part of the table's key. ``local_cpu`` measures every count
  (``channel_step: 1``): off multiples of 8 the kernels slow down in steps, which no
  interpolation follows (a 3x3 conv on 8x8, INT8 at batch 1: 16 to 16 channels 11.9 µs, 15 to
  15 16.4 µs; FP32 at batch 32: 336 and 432 µs).
* 2-D convs run channels-last (``memory_format``), in their weights and activations, as
  their networks are deployed: on this machine's CPU that ran a float resnet20 at batch 1 in
  0.54x (8x8 inputs) to 0.84x (32x32) of its time in the default order, and the int8 layers
  of a mixed network return channels-last activations anyway, so the float layers after them
  ran so whatever the weights (one int8 stem took 100 µs off a 692 µs float resnet20 where
  its own op was worth 8).

Measurements are cached as JSON in ``cache_dir/latency/``, keyed by CPU model
(:func:`cpu_model`), torch's CPU kernels (AVX2, AVX512, ...), torch version and thread count
(one file per key, with a SHA-256 checksum over key and entries). A corrupt, truncated or
foreign (other key) file is ignored and rebuilt. Given the cache contents the
model is deterministic; a shape not in the cache is measured on first use (or in a batch with
:meth:`MeasuredModel.prepare`, with a progress bar).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.config import default_cache_dir
from rlprune.errors import ConfigError
from rlprune.hardware.base import LatencyModel
from rlprune.hardware.measured.cache import TableCache
from rlprune.hardware.measured.timing import (
    Call,
    Group,
    Marker,
    QuietTimer,
    Timer,
    Timing,
    time_in_turns,
)
from rlprune.hardware.profile import ConfigReader, read_common
from rlprune.layers import LayerInfo, neighbour_pairs
from rlprune.policy import FLOAT_BITS, Choice, Pattern, Policy

log = logging.getLogger(__name__)

# the settings a hardware config must give a source for (sources.<name>)
MEASURED_SETTINGS = (
    "batch_size",
    "threads",
    "channel_step",
    "rounds",
    "block_time",
    "warmup",
    "retries",
    "slack",
    "verify",
    "memory_format",
)
# 17: half-width networks, float and int8, set how ops shrink inside a network (beside glue
# and overhead too); 16: a marker's pace is its fastest round, deployed networks calibrated
# apart from stubbed ones; 15: ops by their fastest block again, networks read against the marker; 14: mixed
# networks whose halves differ (mixed_seconds); 13: ops and networks deployed in a memory
# format (channels-last), read against a marker op; 12: timed in quiet stretches (a marker op
# beside each timing), networks not read against their ops timed beside them; 11: every op
# with a bias (a deployed conv holds its folded BN's); 10: ops and networks timed deployed
# (TorchScript); 9: the int8 export fuses torch.relu; 8: ops timed among their own precision;
# 7: int8 glue may be cheaper; 6: int8 glue; 5: glue by narrowed stubs; 4: torch.relu
# epilogue; 1: median
CACHE_FORMAT = 17
EPILOGUES = ("relu", "none")
MEMORY_FORMATS = ("channels_last", "contiguous")
INT8_ENGINES = ("x86", "fbgemm")
# how often the precisions take turns in a calibration, each network keeping its median: over
# 4 calibrations of the mnist1d CNN here, the mixed networks read with a cv of 2.6-5.0% at 3,
# 0.7-1.1% at 9
CALIBRATION_REPEATS = 9
# grid entries (their specs: :meth:`MeasuredModel._spec`) built and timed together
Part = list[dict[str, Any]]
# the label of the empty deployed call timed with every part of the table (:meth:`MeasuredModel._group`)
EMPTY_CALL = "call"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name with its family, model and stepping numbers (``/proc/cpuinfo``), or
    ``platform.processor()`` elsewhere.

    A cloud VM may name only the vendor's line ("AMD EPYC"): the numbers tell its generations
    apart, whose tables differ (at batch 1, a dense FP32 resnet20 ran 273 µs on one "AMD EPYC",
    382 on another, and INT8 0.91 of FP32 on the first, 0.43 on the second).
    """
    fallback = platform.processor() or platform.machine() or "unknown"
    try:
        first = cpuinfo.read_text().split("\n\n", 1)[0]
    except OSError:
        return fallback
    pairs = (line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {key.strip().lower(): value.strip() for key, value in pairs}
    numbers = ", ".join(
        f"{key} {fields[key]}" for key in ("cpu family", "model", "stepping") if key in fields
    )
    name = fields.get("model name", fallback)
    return f"{name} ({numbers})" if numbers else name


def int8_engine() -> str | None:
    """The quantized engine that runs int8 Linear/Conv on this CPU (x86 or fbgemm), or None."""
    engines = torch.backends.quantized.supported_engines
    return next((e for e in INT8_ENGINES if e in engines), None)


def cpu_key(threads: int) -> dict[str, Any]:
    """What a CPU table's entries depend on beyond their shapes: the CPU (:func:`cpu_model`),
    the kernels torch dispatches to on it (AVX2, AVX512, ...), the architecture, torch's
    version and the thread count. The key of its cache file (:class:`TableCache`)."""
    return {
        "cpu": cpu_model(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": threads,
    }


def _grid(c: int, step: int) -> list[tuple[int, float]]:
    """Grid points around ``c`` and their linear weights (one point when ``c`` is on the grid)."""
    if c % step == 0 or c < step:
        return [(c, 1.0)]
    low = c // step * step
    w = (c - low) / step
    return [(low, 1.0 - w), (low + step, w)]


def _padding(kind: str, layer: LayerInfo) -> tuple[int, ...]:
    """The smallest padding per spatial dim that turns the layer's input size into its output size."""
    pads = []
    for size_in, size_out, k, s in zip(
        layer.in_shape[1:], layer.out_shape[1:], layer.kernel_size, layer.stride, strict=True
    ):
        for p in range(k + 1):
            if (size_in + 2 * p - k) // s + 1 == size_out:
                pads.append(p)
                break
        else:
            raise ConfigError(
                f"layer '{layer.name}': cannot reproduce output size {size_out} from input {size_in} "
                f"with kernel {k}, stride {s} (dilation is not supported by the measured table)"
            )
    return tuple(pads)


class MeasuredModel(LatencyModel):
    """Seconds per batch measured on this CPU, interpolated from a cached grid of channel counts.

    Attributes:
        threads: torch threads during timing (set only while timing, restored after).
        channel_step: grid spacing of channel counts (1: each count measured).
        rounds: interleaved timing rounds per measurement (:func:`time_rounds`).
        block_time: seconds of one timed block.
        warmup: untimed calls before each measurement.
        retries: how often a measurement taken in a slow stretch is taken again (:class:`QuietTimer`).
        slack: a measurement whose marker op's pace was over ``slack`` times its reference ran slow.
        verify: ops of each part of the table timed again in other parts, to catch a part that
            ran slow while its marker did not (:meth:`_verify`); 0: none.
        epilogue: ``relu`` or ``none``: what follows the op in the timed statement.
        memory_format: ``channels_last`` or ``contiguous``: the order of the 4-D weights and
            activations of every network and op this model deploys (:meth:`deploy`).
        cache_dir: folder holding ``latency/<name>-<key>.json``.
        measurements: how many measurements this instance has taken (cache misses).
        retimed: how many timings (a part of the table, or networks of one precision) were taken
            again because they ran in a slow stretch; ``still_slow``: how many of them never
            came out of one.
        int8_fallbacks: entry keys whose int8 op had no kernel here and were timed at FP32.
    """

    def __init__(
        self,
        *,
        name: str = "local_cpu",
        description: str = "",
        batch_size: int = 1,
        bits: Sequence[int] = (8, 32),
        reference_bits: int = FLOAT_BITS,
        threads: int = 1,
        channel_step: int = 1,
        rounds: int = 21,
        block_time: float = 0.001,
        warmup: int = 10,
        retries: int = 2,
        slack: float = 1.1,
        verify: int = 4,
        epilogue: str = "relu",
        memory_format: str = "channels_last",
        cache_dir: str | os.PathLike[str] | None = None,
        patterns: Sequence[Pattern | str] = tuple(Pattern),
        progress: bool = True,
        sources: Mapping[str, str] | None = None,
        timer: Timer | None = None,
    ) -> None:
        if reference_bits != FLOAT_BITS:
            raise ConfigError(f"hardware '{name}': reference_bits must be 32 (FP32 on a CPU)")
        bad = [b for b in bits if b not in (8, FLOAT_BITS)]
        if bad:
            raise ConfigError(
                f"hardware '{name}': bits {list(bits)}: only 8 (int8, torch.ao) and 32 (float) change "
                "CPU time in PyTorch; drop the others"
            )
        if epilogue not in EPILOGUES:
            raise ConfigError(
                f"hardware '{name}': epilogue must be one of {list(EPILOGUES)}, got {epilogue!r}"
            )
        if memory_format not in MEMORY_FORMATS:
            raise ConfigError(
                f"hardware '{name}': memory_format must be one of {list(MEMORY_FORMATS)}, "
                f"got {memory_format!r}"
            )
        if retries < 0 or verify < 0 or not slack > 1:
            raise ConfigError(
                f"hardware '{name}': retries and verify must be 0 or more and slack over 1, "
                f"got {retries}, {verify} and {slack}"
            )
        super().__init__(
            name=name,
            batch_size=batch_size,
            bits=bits,
            reference_bits=reference_bits,
            nm_options=(),
            patterns=patterns,
        )
        self.description = description
        self.threads = int(threads)
        self.channel_step = int(channel_step)
        self.rounds = int(rounds)
        self.block_time = float(block_time)
        self.warmup = int(warmup)
        self.retries = int(retries)
        self.slack = float(slack)
        self.verify = int(verify)
        self.epilogue = epilogue
        self.memory_format = memory_format
        self.progress = progress
        self.sources = dict(sources or {})
        self.cache_dir = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
        self.engine = int8_engine()
        self.table_cache = TableCache(self.cache_dir, name, cpu_key(self.threads), CACHE_FORMAT)
        self.timer: Timer = timer or QuietTimer(
            threads=self.threads,
            block_time=self.block_time,
            warmup=self.warmup,
            retries=self.retries,
            slack=self.slack,
            name=name,
        )
        self.measurements = 0
        self.retimed = 0
        self.still_slow = 0
        self.int8_fallbacks: set[str] = set()
        self._table: dict[str, float] = self.table_cache.load()
        self._glue: dict[str, tuple[float, int]] = {}  # layer name -> (seconds, out channels), calibrate()
        # calibrate(): seconds each op runs faster inside the deployed network than alone (float;
        # int8, negative where the int8 network pays more, as its quantize and dequantize), and
        # int8 glue over float glue (at most 1)
        self._float_scale = 1.0  # calibrate(): ops inside the network, scaled (at most 1)
        self._int8_scale = 1.0
        self._float_saving = 0.0
        self._int8_saving = 0.0
        self.switch_seconds = 0.0
        self.mixed_seconds = 0.0
        self._int8_glue_scale = 1.0

    # -- config --------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any], where: str = "hardware config", *, timer: Timer | None = None
    ) -> MeasuredModel:
        """Build from a ``model: measured`` config node (plain data), timed by ``timer`` (default:
        a :class:`QuietTimer` with the config's settings).

        ``cache_dir`` may be absent, null or an unresolved ``${...}`` string (a YAML file read
        without OmegaConf): the default cache (``$RLPRUNE_CACHE`` or ``~/.cache/rlprune``) is used.
        """
        reader = ConfigReader(cfg, where)
        reader.raw("model")
        name, batch_size, reference, bits = read_common(reader)
        description = reader.string("description", name)
        threads = reader.integer("threads", minimum=1)
        step = reader.integer("channel_step", minimum=1)
        rounds = reader.integer("rounds", minimum=1)
        block_time = reader.number("block_time", positive=True)
        warmup = reader.integer("warmup", 10, minimum=0)
        retries = reader.integer("retries", 2, minimum=0)
        slack = reader.number("slack", 1.1, positive=True)
        if not slack > 1:
            raise reader.error("slack", "a number over 1 (1.1: 10% over the marker's reference pace)", slack)
        verify = reader.integer("verify", 4, minimum=0)
        epilogue = reader.string("epilogue", "relu")
        if epilogue not in EPILOGUES:
            raise reader.error("epilogue", f"one of {list(EPILOGUES)}", epilogue)
        memory_format = reader.string("memory_format", "channels_last")
        if memory_format not in MEMORY_FORMATS:
            raise reader.error("memory_format", f"one of {list(MEMORY_FORMATS)}", memory_format)
        cache_dir = reader.raw("cache_dir", None)
        if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
            raise reader.error("cache_dir", "a folder path", cache_dir)
        if isinstance(cache_dir, str) and ("${" in cache_dir or not cache_dir.strip()):
            cache_dir = None
        patterns = reader.patterns("patterns", [p.value for p in Pattern])
        nm_raw = reader.raw("nm_options", [], "an empty list (no N:M kernels on a CPU in PyTorch)")
        if nm_raw:
            raise reader.error("nm_options", "an empty list: PyTorch on a CPU runs N:M masks dense", nm_raw)
        progress = reader.raw("progress", True)
        if not isinstance(progress, bool):
            raise reader.error("progress", "true or false", progress)
        sources = reader.sources(MEASURED_SETTINGS)
        reader.finish()
        if bits != tuple(sorted(set(bits) & {8, FLOAT_BITS})):
            raise reader.error("bits", "a subset of [8, 32] (int8 and float are what a CPU runs)", list(bits))
        return cls(
            name=name,
            description=description,
            batch_size=batch_size,
            bits=bits,
            reference_bits=reference,
            threads=threads,
            channel_step=step,
            rounds=rounds,
            block_time=block_time,
            warmup=warmup,
            retries=retries,
            slack=slack,
            verify=verify,
            epilogue=epilogue,
            memory_format=memory_format,
            cache_dir=cache_dir,
            patterns=patterns,
            progress=progress,
            sources=sources,
            timer=timer,
        )

    def deploy(self, network: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
        """``network`` as this CPU runs it: traced and frozen in this model's memory format
        (:func:`rlprune.export.to_torchscript`). Every network and op the table times is deployed so."""
        from rlprune.export import to_torchscript

        return to_torchscript(network, example, channels_last=self.memory_format == "channels_last")

    def in_memory_format(self, module: nn.Module) -> nn.Module:
        """``module`` with its 4-D weights in this model's memory format (in place), as
        :meth:`deploy` runs it: for a copy timed from Python."""
        channels_last = self.memory_format == "channels_last"
        return module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    # -- the lookup ----------------------------------------------------------------------------

    def _latency(self, layer: LayerInfo, choice: Choice) -> float:
        points = self.grid_points(layer, choice)
        missing = [spec for spec, _ in points if spec["key"] not in self._table]
        if missing:
            self._measure_all(missing, progress=False)
        op = sum(w * self._table[spec["key"]] for spec, w in points)
        kept = choice.keep if choice.pattern is Pattern.FILTER else layer.out_channels
        if self.runs_integer(choice):
            int8_op = max(0.0, self._int8_scale * op - self._int8_saving)
            return float(int8_op + self._glue_seconds(layer.name, kept, 8))
        float_op = max(0.0, self._float_scale * op - self._float_saving)
        return float(float_op + self._glue_seconds(layer.name, kept, FLOAT_BITS))

    def _glue_seconds(self, name: str, kept: int, bits: int) -> float:
        """The glue (:meth:`calibrate`) that follows layer ``name`` keeping ``kept`` filters."""
        glue, channels = self._glue.get(name, (0.0, 1))
        return glue * (self._int8_glue_scale if bits == 8 else 1.0) * kept / channels

    def calibrate(self, network: nn.Module, example: torch.Tensor) -> float:
        """Fit the table to ``network`` as deployed; return the seconds no choice changes.

        The ops between the layers (pooling, activations, reshapes, residual adds) are timed on
        a copy whose prunable layers are replaced by stubs that return their recorded outputs
        (batch norms folded, as deployed). Narrowing one stub's output shows how much of that
        time follows the layer's width: that share is added to the layer's latency, scaled by
        the channels it keeps. The stubs run from Python, but narrowing changes only the ops'
        work, so the split holds for the deployed network too.

        The whole network, deployed (:meth:`deploy`), is timed too, and the dense network is
        then predicted as measured: where its ops, each timed alone, add up to more than the
        network (1.1-1.6x for the zoo's CNNs at batch 1, channels-last), they run faster inside
        it; otherwise the stubs' glue is kept up to what the network spends beyond them, and
        the rest is the overhead returned. How the ops shrink with width inside the network is
        set by a copy with half the filters of every layer that can lose them on its own,
        deployed and timed beside it: each op runs scaled by at most 1 less a share (at most
        its own seconds; negative, an extra cost per op, where the scale leaves the network
        short), so that the dense network is predicted as measured and the half-width one,
        less its glue and the overhead, as near as the scale allows (:func:`_scale_and_share`).
        Where int8 is searched, its int8 export is stubbed and deployed the same way: an int8
        layer's width-following glue shrinks by the ratio of the two stubbed networks (never
        grows), and the int8 ops are fitted as the float ones, to the deployed int8 network and
        its half-width copy less that glue and the overhead (quantize and dequantize are in
        the share). Cached in the table under the network's structure; until called, layers
        cost their op alone.
        """
        from rlprune.export import fold_batch_norms
        from rlprune.layers import discover_layers

        x = torch.randn((self.batch_size, *example.shape[1:]), generator=torch.Generator().manual_seed(0))
        net = self.in_memory_format(fold_batch_norms(network).float())  # stubs return what layers would
        digest = hashlib.sha256(f"{net!r}|{tuple(x.shape)}|{self.memory_format}".encode()).hexdigest()[:16]
        prefix = f"network:{digest}:"
        outputs = _layer_outputs(net, x)
        layers = discover_layers(net, x)
        half = _half_width(net, x, layers)
        if prefix + "deployed:float" not in self._table:
            measured = self._measure_glue(net, x, outputs, half)
            self._table.update({prefix + k: v for k, v in measured.items()})
            self._save()
        ops = {bits: self._dense_ops(layers, bits) for bits in {FLOAT_BITS, *self.bits}}

        def read(key: str) -> float:
            return self._table[prefix + key]

        stub_glue = {name: read(f"glue:{name}") for name in outputs}
        stub_total = sum(stub_glue.values())
        # the dense deployed network, predicted as measured: its ops less their saving, then
        # the stubs' glue up to what is left, split over the layers as the stubs say
        deployed = read("deployed:float")
        beyond_ops = max(0.0, deployed - sum(ops[32]))
        kept = min(1.0, beyond_ops / stub_total) if stub_total > 0 else 1.0
        self._glue = {name: (g * kept, _channels(outputs[name])) for name, g in stub_glue.items()}
        overhead = beyond_ops - kept * stub_total
        half_layers = discover_layers(half, x) if half is not None else []

        def glue(found: list[LayerInfo], bits: int) -> float:
            return sum(self._glue_seconds(lay.name, lay.out_channels, bits) for lay in found)

        def fit(bits: int, network: float, half_key: str) -> tuple[float, float]:
            """The scale and the saving per op with which the ops at ``bits`` add up to
            ``network`` seconds, and the half-width network's (less its glue and the overhead)
            as near as a scale allows (:func:`_scale_and_share`); scale 1 where it was not timed."""
            if not half_layers or prefix + half_key not in self._table:
                return 1.0, _share_per_op(ops[bits], sum(ops[bits]) - network)
            half_ops = read(half_key) - overhead - glue(half_layers, bits)
            return _scale_and_share(ops[bits], network, self._dense_ops(half_layers, bits), half_ops)

        self._float_scale, self._float_saving = fit(FLOAT_BITS, deployed - beyond_ops, "deployed:half")
        self._int8_glue_scale, self._int8_scale, self._int8_saving = 1.0, 1.0, 0.0
        if 8 in ops and prefix + "deployed:int8" in self._table:
            extra = read("stubbed:int8") - read("stubbed:float")
            if stub_total > 0:
                self._int8_glue_scale = min(1.0, max(0.0, 1.0 + extra / stub_total))
            rest = read("deployed:int8") - overhead - glue(layers, 8)
            self._int8_scale, self._int8_saving = fit(8, rest, "deployed:half:int8")
        self._cache.clear()
        if 8 in ops:
            self.switch_seconds, self.mixed_seconds = self._mixing_seconds(layers, prefix, overhead)
        self._cache.clear()
        return overhead

    def _mixing_seconds(self, layers: list[LayerInfo], prefix: str, overhead: float) -> tuple[float, float]:
        """What a network that runs both float and int8 adds beyond its layers: seconds per
        pair of neighbours that differ, and seconds once (:attr:`mixed_seconds`).

        Fitted by least squares to the mixed networks :meth:`_measure_glue` timed: two whose
        consecutive layers alternate (many switches) and two whose halves differ (one or two).
        Neither is negative; with one switch count only, all is per switch. On this VM, over
        64 bit-width draws of a dense resnet20, the networks ran a mean 30 µs (9%) over layers
        and switches fitted to the alternating networks alone, whatever their switch count.
        """
        counts, excess = [], []
        for key, bits in _mixed_bits([layer.name for layer in layers]).items():
            switches = sum(bits[a] != bits[b] for a, b in neighbour_pairs(layers))
            if prefix + key not in self._table or not switches:
                continue
            predicted = overhead + sum(
                self.latency(layer, Choice(Pattern.DENSE, 1, 1, bits[layer.name], bits[layer.name]))
                for layer in layers
            )
            counts.append(switches)
            excess.append(self._table[prefix + key] - predicted)
        return _fit_switches(counts, excess) if counts else (0.0, 0.0)

    def _measure_glue(
        self, net: nn.Module, x: torch.Tensor, outputs: dict[str, torch.Tensor], half: nn.Module | None
    ) -> dict[str, float]:
        """Seconds of ``net`` and its stubbed copies, and ``glue:<layer>`` (see :meth:`calibrate`).

        Each layer's stub is narrowed to a quarter of its channels (at least 2, which cannot
        broadcast into a residual add); where the network still runs, the time saved, scaled to
        all channels, is that layer's glue if it stands out of the noise: three times the gap
        between two timings of the same stubbed network, and 1% of it.

        The deployed networks are timed apart from the stubbed ones, beside each other, as
        deployed networks are timed everywhere else: beside 22 stubbed resnet20s (eager), a
        dense deployed resnet20 read 397-403 µs in three calibrations; alone, 341-343.
        """
        kept = {name: max(2, _channels(out) // 4) for name, out in outputs.items()}
        stubbed = {"full": _stubbed(net, outputs), "again": _stubbed(net, outputs)}
        for name, out in outputs.items():
            if _channels(out) <= kept[name]:
                continue
            narrow = _stubbed(net, {**outputs, name: _narrow_channels(out, kept[name])})
            try:  # quietly: a traced (FX) network prints the traceback of a failing call itself
                with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                    narrow(x)
                stubbed[name] = narrow
            except RuntimeError:  # the layer's outputs meet another's (a residual add): constant
                pass
        deployed = {"deployed:float": self.deploy(net, x)}
        if half is not None:
            deployed["deployed:half"] = self.deploy(half, x)
        holding_int8: set[str] = set()  # timed with the int8 networks
        int8 = self._int8_export(net, x) if 8 in self.bits else None
        if int8 is not None:
            with self._engine():  # the int8 engine
                stubbed["stubbed:int8"] = _stubbed(int8, _record_outputs(int8, x, outputs))
                deployed["deployed:int8"] = self.deploy(int8, x)
            holding_int8 |= {"stubbed:int8", "deployed:int8"}
            half_int8 = self._int8_export(half, x) if half is not None else None
            if half_int8 is not None:
                with self._engine():
                    deployed["deployed:half:int8"] = self.deploy(half_int8, x)
                holding_int8.add("deployed:half:int8")
            for key, bits in _mixed_bits(list(outputs)).items():
                floats = [name for name, b in bits.items() if b == 32]
                mixed = self._int8_export(net, x, floats)
                if mixed is not None:
                    with self._engine():
                        deployed[key] = self.deploy(mixed, x)
                    holding_int8.add(key)
        seconds: dict[str, float] = {}
        for variants in (stubbed, deployed):
            calls = {key: functools.partial(module, x) for key, module in variants.items()}
            precisions = [8 if key in holding_int8 else 32 for key in variants]
            seconds.update(self._time_apart(calls, precisions, 2 * self.rounds, CALIBRATION_REPEATS))
        full, again = seconds.pop("full"), seconds.pop("again")
        # seconds only, never their differences: the cache keeps no negative entry
        measured = {"stubbed:float": full}
        measured.update((key, seconds.pop(key)) for key in [k for k in seconds if ":" in k])
        noise = max(3.0 * abs(full - again), 0.01 * full)
        glue = {f"glue:{name}": 0.0 for name in outputs}  # layers whose narrowing could not run: 0
        for name, narrowed in seconds.items():  # what is left: the narrowed variants
            channels = _channels(outputs[name])
            saved = (full - narrowed) * channels / (channels - kept[name])
            if saved > noise:
                glue[f"glue:{name}"] = saved
        return {**measured, **glue}

    def time_networks(
        self, networks: Sequence[nn.Module], x: torch.Tensor, bits: Sequence[int], repeats: int = 1
    ) -> list[float]:
        """Seconds of one forward pass of each network on ``x``, read against the marker op,
        side by side with the networks of its precision (``bits``: 8 where it holds int8 ops),
        at this model's rounds, in a quiet stretch, the precisions taking turns ``repeats``
        times (:meth:`_time_apart`)."""
        calls = {str(i): functools.partial(network.eval(), x) for i, network in enumerate(networks)}
        return list(self._time_apart(calls, bits, self.rounds, repeats).values())

    def _time_apart(
        self,
        calls: Mapping[str, Call],
        precisions: Sequence[int],
        rounds: int,
        repeats: int = 1,
    ) -> dict[str, float]:
        """Seconds per call, by label (in the order of ``calls``), each call taking turns only
        with the calls of its own precision and that precision's marker op (:func:`time_in_turns`)."""
        by_bits: dict[int, dict[str, Call]] = {}
        for (label, call), bits in zip(calls.items(), precisions, strict=True):
            by_bits.setdefault(bits, {})[label] = call
        groups = [
            Group(self._marker(bits), tuple(same), functools.partial(list, same.values()))
            for bits, same in sorted(by_bits.items())
        ]
        with self._engine(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            timing = time_in_turns(self.timer, groups, self._table, rounds=rounds, repeats=repeats)
        self._count(timing)
        seconds = {
            label: t
            for group, each in zip(groups, timing.seconds, strict=True)
            for label, t in zip(group.labels, each, strict=True)
        }
        return {label: seconds[label] for label in calls}  # in the order of calls

    def _count(self, timing: Timing) -> None:
        self.retimed += timing.retimed
        self.still_slow += timing.still_slow

    def _marker(self, bits: int) -> Marker:
        """The marker op timed beside every timing at ``bits``: a 16-channel 3x3 conv on 8x8,
        at this batch size, deployed; its reference pace is the table's ``pace:`` entry."""
        spec = self._spec(_MARKER, 16, 16, bits)

        def build() -> Call:
            with self._engine(), _quiet_ao_warnings():
                op, x = self._build(spec)
                return functools.partial(self.deploy(op, x), x)

        return Marker("pace:" + spec["key"], build)

    def _int8_export(
        self, net: nn.Module, x: torch.Tensor, float_layers: Sequence[str] = ()
    ) -> nn.Module | None:
        """The int8 export of ``net`` (torch.ao FX), or None where it cannot run here."""
        from rlprune.errors import ModelError
        from rlprune.export import export_int8

        if self.engine is None:
            return None
        try:
            with self._engine():  # the int8 engine
                return export_int8(net, x, float_layers=float_layers)
        except ModelError as exc:
            log.warning("%s: no int8 glue measured: %s", self.name, exc)
            return None

    def _dense_ops(self, layers: list[LayerInfo], bits: int) -> list[float]:
        """Seconds of each layer's dense op at ``bits``, timed alone (from the table)."""
        choice = Choice(Pattern.DENSE, 1, 1, bits, bits)
        points = [self.grid_points(layer, choice) for layer in layers]
        missing = [spec for each in points for spec, _ in each if spec["key"] not in self._table]
        self._measure_all(missing, progress=False)
        return [sum(w * self._table[spec["key"]] for spec, w in each) for each in points]

    def grid_points(self, layer: LayerInfo, choice: Choice) -> list[tuple[dict[str, Any], float]]:
        """The table entries ``latency(layer, choice)`` interpolates, with their weights (sum 1)."""
        if choice.pattern is Pattern.FILTER:
            layer = layer.with_channels(layer.in_channels, choice.keep)
        bits = 8 if self.runs_integer(choice) else 32
        step = self.channel_step
        depthwise = layer.kind != "linear" and layer.groups > 1 and layer.groups == layer.in_channels
        if depthwise and layer.out_channels == layer.in_channels:
            corners = [((c, c), w) for c, w in _grid(layer.in_channels, step)]
        elif layer.groups > 1:
            corners = [((layer.in_channels, layer.out_channels), 1.0)]
        else:
            corners = [
                ((ci, co), wi * wo)
                for ci, wi in _grid(layer.in_channels, step)
                for co, wo in _grid(layer.out_channels, step)
            ]
        return [(self._spec(layer, ci, co, bits), w) for (ci, co), w in corners if w > 0]

    def _spec(self, layer: LayerInfo, c_in: int, c_out: int, bits: int) -> dict[str, Any]:
        """What to time for one grid point: everything that builds the op, and its table key."""
        kind = layer.kind
        if kind == "linear":
            lead, padding, groups = tuple(layer.in_shape[:-1]), (), 1
            spatial = lead
        else:
            padding = _padding(kind, layer)
            depthwise = layer.groups > 1 and layer.groups == layer.in_channels
            groups = c_in if depthwise else layer.groups
            spatial = tuple(layer.in_shape[1:])
        spec = {
            "kind": kind,
            "c_in": c_in,
            "c_out": c_out,
            "kernel": list(layer.kernel_size),
            "stride": list(layer.stride),
            "padding": list(padding),
            "groups": groups,
            "spatial": list(spatial),
            "bits": bits,
            "batch": self.batch_size,
            "epilogue": self.epilogue,
            "memory_format": self.memory_format,
        }
        spec["key"] = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        return spec

    # -- measuring -----------------------------------------------------------------------------

    def prepare(self, cells: Sequence[tuple[LayerInfo, Choice]], *, progress: bool | None = None) -> None:
        """Measure every grid entry the ``(layer, choice)`` cells need that is not cached yet.

        Unsupported cells are left for :meth:`latency` to reject. Shows a tqdm bar (default:
        the config's ``progress``) and saves the cache once at the end.
        """
        needed: dict[str, dict[str, Any]] = {}
        for layer, choice in cells:
            if self.supports(layer, choice):
                for spec, _ in self.grid_points(layer, choice):
                    if spec["key"] not in self._table:
                        needed.setdefault(spec["key"], spec)
        self._measure_all(list(needed.values()), progress=self.progress if progress is None else progress)

    def _measure_all(self, specs: list[dict[str, Any]], *, progress: bool) -> None:
        if not specs:
            return
        parts = _parts(specs)
        bar = None
        started = time.perf_counter()
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(specs), desc=f"measuring {self.name}", unit="op", leave=False)

        def counted(part: Part) -> None:
            self.measurements += len(part)
            if bar is not None:
                bar.update(len(part))

        try:
            self._time_parts(parts, counted)
            self._verify(parts)
        finally:
            if bar is not None:
                bar.close()
            self._save()
        log.info(
            "%s: measured %d ops in %.1f s, cached in %s",
            self.name,
            len(specs),
            time.perf_counter() - started,
            self.cache_path,
        )

    def _time_parts(
        self,
        parts: list[Part],
        on_first: Callable[[Part], None] | None = None,
    ) -> None:
        """Time each part's ops together (:meth:`_time`), a part in a slow stretch again
        (:attr:`timer`), and write their seconds to the table; ``on_first(part)`` follows
        each part's first timing."""

        def record(i: int, seconds: list[float], first: bool) -> None:
            *ops, call = seconds
            self._table.update(
                (spec["key"], _without_call(op, call)) for spec, op in zip(parts[i], ops, strict=True)
            )
            if first and on_first is not None:
                on_first(parts[i])

        groups = [self._group(part) for part in parts]
        with self._engine(), _quiet_ao_warnings():
            timing = self.timer.time(groups, self._table, rounds=self.rounds, fastest=True, on_timed=record)
        self._count(timing)

    def _verify(self, parts: list[Part]) -> None:
        """Time :attr:`verify` ops of every part again, mixed into new parts; a part whose ops
        ran over ``slack`` times their second timing (the median over them) ran slow, and is
        timed again. Each op keeps its fastest timing.

        On this VM, busy, whole parts (32 ops) ran 1.2-2.1x while their marker op's fastest
        round stayed within ``slack`` of its reference, in two of two fresh tables: a part
        pruned mnist1d int8 networks leaned on put them at up to 1.47x their measured time.
        """
        if not self.verify:
            return
        fastest = {spec["key"]: self._table[spec["key"]] for part in parts for spec in part}
        picked = [part[:: max(1, len(part) // self.verify)][: self.verify] for part in parts]
        self._time_parts(_parts([spec for each in picked for spec in each]))
        slow = [
            part
            for part, specs in zip(parts, picked, strict=True)
            if statistics.median(fastest[s["key"]] / self._table[s["key"]] for s in specs) > self.slack
        ]
        for spec in (spec for each in picked for spec in each):
            fastest[spec["key"]] = min(fastest[spec["key"]], self._table[spec["key"]])
        if slow:
            log.info("%s: %d of %d table parts ran slow; timing them again", self.name, len(slow), len(parts))
            self.retimed += len(slow)
            self._time_parts(slow)
        self._table.update((key, min(seconds, self._table[key])) for key, seconds in fastest.items())

    @contextlib.contextmanager
    def _engine(self) -> Iterator[None]:
        """This machine's int8 engine (:func:`int8_engine`), while int8 ops are built and run."""
        engine = torch.backends.quantized.engine
        try:
            if self.engine is not None:
                torch.backends.quantized.engine = self.engine
            yield
        finally:
            torch.backends.quantized.engine = engine

    def _build(self, spec: dict[str, Any]) -> tuple[nn.Module, torch.Tensor]:
        """The op (with its epilogue) and an input batch for one grid entry (float or int8)."""
        gen = torch.Generator().manual_seed(0)
        kind, c_in, c_out = spec["kind"], spec["c_in"], spec["c_out"]
        shape = (
            (self.batch_size, *spec["spatial"], c_in)
            if kind == "linear"
            else (self.batch_size, c_in, *spec["spatial"])
        )
        x = torch.randn(shape, generator=gen)
        if x.dim() == 4 and spec["memory_format"] == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)  # as the layer before returns it
        if kind == "linear":
            op: nn.Module = nn.Linear(c_in, c_out)
        else:
            conv = nn.Conv1d if kind == "conv1d" else nn.Conv2d
            op = conv(
                c_in,
                c_out,
                tuple(spec["kernel"]),
                stride=tuple(spec["stride"]),
                padding=tuple(spec["padding"]),
                groups=spec["groups"],
            )
        op.eval()
        relu = spec["epilogue"] == "relu"
        if spec["bits"] == 8:
            if self.engine is None:
                self.int8_fallbacks.add(spec["key"])
            else:
                try:
                    return _int8_op(op, kind, relu), torch.quantize_per_tensor(x, 0.05, 64, torch.quint8)
                except (RuntimeError, NotImplementedError, AttributeError, AssertionError) as exc:
                    warnings.warn(f"no int8 kernel for {kind} here ({exc}); costing it at FP32", stacklevel=2)
                    self.int8_fallbacks.add(spec["key"])
        return (_ThenRelu(op) if relu else op), x

    def _group(self, part: Part) -> Group:
        """One part of the table (all at one precision) as the timer takes it: each grid entry's
        op deployed (:meth:`deploy`), then a call of an empty deployed module, labelled
        :data:`EMPTY_CALL`, which :func:`_without_call` takes off each op (a module that
        returns a new tensor costs the same): inside a network the ops run one after another
        without it. Each op's seconds are its fastest block (:meth:`QuietTimer._timed` says why)."""

        def build() -> list[Call]:
            with self._engine(), _quiet_ao_warnings():
                built = [self._build(spec) for spec in part]
                built.append((_Identity(), built[0][1]))
                return [functools.partial(self.deploy(op, x), x) for op, x in built]

        labels = (*(spec["key"] for spec in part), EMPTY_CALL)
        return Group(self._marker(part[0]["bits"]), labels, build)

    # -- the cache file ------------------------------------------------------------------------

    @property
    def key(self) -> dict[str, Any]:
        """What the table was measured on (:func:`cpu_key`): its cache file's key."""
        return self.table_cache.key

    @property
    def cache_path(self) -> Path:
        """The table's cache file (:class:`TableCache`)."""
        return self.table_cache.path

    def _save(self) -> None:
        self._table = self.table_cache.save(self._table)

    @property
    def table(self) -> dict[str, float]:
        """A copy of the measured entries (key -> seconds)."""
        return dict(self._table)


def _parts(specs: Sequence[dict[str, Any]], size: int = 32) -> list[Part]:
    """Ops in parts of ``size`` that are built and timed together, each of one precision (an op
    takes turns only with ops of its own precision: :meth:`MeasuredModel._time_apart`)."""
    by_bits: dict[int, list[dict[str, Any]]] = {}
    for spec in specs:
        by_bits.setdefault(spec["bits"], []).append(spec)
    return [same[i : i + size] for _, same in sorted(by_bits.items()) for i in range(0, len(same), size)]


def _without_call(seconds: float, call: float) -> float:
    """An op's timed call less an empty call's: its seconds inside a network.

    Timing noise can put a tiny op (a 24x16 Linear: 3 µs with its call) at or under an empty
    call; no op is free, so each keeps at least a tenth of its timed call.
    """
    return max(seconds - call, 0.1 * seconds)


@contextlib.contextmanager
def _quiet_ao_warnings() -> Iterator[None]:
    """Hide torch.ao's deprecation warnings while int8 ops are built and timed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(deprecated|torch\.ao\.quantization).*")
        yield


def _half_width(net: nn.Module, x: torch.Tensor, layers: list[LayerInfo]) -> nn.Module | None:
    """``net`` exported with half the filters of each layer that can lose filters on its own
    (Torch-Pruning; never the classifier), for :func:`_scale_and_share`; None where none can."""
    from rlprune.export import export_filter_pruned
    from rlprune.layers import filter_couplings

    couplings = filter_couplings(net, x, layers[:-1])
    policy = Policy.of(
        {
            layer.name: Choice(Pattern.FILTER, layer.out_channels // 2, layer.out_channels)
            for layer in layers[:-1]
            if couplings[layer.name].blocked is None and layer.out_channels >= 2
        }
    )
    return export_filter_pruned(net, policy, x) if len(policy) else None


def _scale_and_share(
    dense_ops: Sequence[float], dense: float, half_ops: Sequence[float], half: float
) -> tuple[float, float]:
    """A scale ``k`` and a saving ``s`` per op with ``sum(max(0, k * op - s))`` equal to
    ``dense`` (the seconds the dense network spends in its ops), and as near ``half`` (the
    half-width network's) as ``k`` allows.

    ``k`` runs from 0 (every op a constant, whatever its width) to 1 (an equal share off each
    op, as :func:`_share_per_op`); ``s`` is negative where the network costs more than its
    ops scaled (an int8 network's quantize and dequantize). A narrower network is predicted
    faster the larger ``k``. On this VM, over 22 filter-pruned float resnet20s, the share
    alone put them a mean 5.5% under their measured time; refitted so, 2.4% under (3.2% in
    the next run). Over 17 filter-pruned int8 mnist1d CNNs at batch 32 the share alone put
    them a mean 13.5% under; fitted so, 2.9% (k 0.77, s -2.6 µs).
    """

    def share(k: float) -> float:
        return _share_per_op([k * op for op in dense_ops], k * sum(dense_ops) - dense)

    def predicted_half(k: float) -> float:
        saving = share(k)
        return sum(max(0.0, k * op - saving) for op in half_ops)

    low, high = 0.0, 1.0
    if half >= predicted_half(low):
        return low, share(low)
    if half <= predicted_half(high):
        return high, share(high)
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if predicted_half(mid) > half else (low, mid)
    return low, share(low)


def _share_per_op(ops: Sequence[float], total: float) -> float:
    """The share ``c`` with ``sum(min(op, c) for op in ops) == total``: equal, capped at each op.

    A negative ``total`` (the ops cost more inside the network) is shared equally, uncapped.
    """
    if total <= 0:
        return total / len(ops)
    remaining = total
    for i, op in enumerate(sorted(ops)):
        share = remaining / (len(ops) - i)
        if share <= op:
            return share
        remaining -= op
    return max(ops)


_MARKER = LayerInfo("marker", "conv2d", 16, 16, (3, 3), (1, 1), 1, (16, 8, 8), (16, 8, 8))


class _Stub(nn.Module):
    """Stands in for a layer: returns its recorded output at the cost of a module call."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, *args: Any) -> torch.Tensor:
        return self.output


def _fit_switches(counts: Sequence[int], excess: Sequence[float]) -> tuple[float, float]:
    """Seconds per switch and seconds once, by least squares over networks that switch
    ``counts`` times and run ``excess`` seconds over their layers; neither negative. With one
    switch count only, all is per switch."""
    if len(set(counts)) > 1:
        per_switch, once = statistics.linear_regression(counts, excess)
        if per_switch < 0:
            return 0.0, max(0.0, statistics.fmean(excess))
        if once >= 0:
            return per_switch, once
    through_origin = sum(c * e for c, e in zip(counts, excess, strict=True)) / sum(c * c for c in counts)
    return max(0.0, through_origin), 0.0


def _mixed_bits(names: Sequence[str]) -> dict[str, dict[str, int]]:
    """The mixed networks a calibration times, by table key: the bits of each layer (``names``,
    in forward order) in them.

    ``alternating``: consecutive layers alternate, starting int8 (``:8``) or float (``:32``);
    ``halves``: the first half of the layers int8 and the rest float, or the reverse. None for
    a network of one layer.
    """
    if len(names) < 2:
        return {}
    half = len(names) // 2
    networks = {}
    for first in (8, 32):
        other = 32 if first == 8 else 8
        networks[f"deployed:alternating:{first}"] = {n: (first, other)[i % 2] for i, n in enumerate(names)}
        networks[f"deployed:halves:{first}"] = {n: first if i < half else other for i, n in enumerate(names)}
    return networks


def _record_outputs(net: nn.Module, x: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The outputs of the named modules of ``net`` on ``x`` (those that exist and run)."""
    modules = dict(net.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: outputs.setdefault(name, out.detach())
        )
        for name in names
        if name in modules
    ]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def _layer_outputs(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of every prunable layer of ``net`` on ``x``, by name, in forward order."""
    from rlprune.layers import PRUNABLE_TYPES

    return _record_outputs(net, x, [name for name, m in net.named_modules() if type(m) in PRUNABLE_TYPES])


def _stubbed(net: nn.Module, outputs: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``net`` whose named layers return the given outputs."""
    import copy

    stubbed = copy.deepcopy(net)
    for name, output in outputs.items():
        parent, _, child = name.rpartition(".")
        setattr(stubbed.get_submodule(parent) if parent else stubbed, child, _Stub(output))
    return stubbed


def _channels(output: torch.Tensor) -> int:
    """Channels of a layer output: dim 1 of a conv map, the last dim of a Linear's."""
    return output.shape[1] if output.dim() > 2 else output.shape[-1]


def _narrow_channels(output: torch.Tensor, channels: int) -> torch.Tensor:
    dim = 1 if output.dim() > 2 else output.dim() - 1
    return output.narrow(dim, 0, channels).clone(memory_format=torch.preserve_format)  # NHWC stays


class _ThenRelu(nn.Module):
    """An op followed by ``torch.relu``, as the zoo's forward passes write it."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.op(x))


class _Identity(nn.Module):
    """A deployed call that runs no op: what each deployed op's timing includes beyond its op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _int8_op(op: nn.Module, kind: str, relu: bool) -> nn.Module:
    """The deployed int8 version of a float Linear/Conv (per-channel qint8 weights), ReLU fused."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    w = op.weight.detach()
    scales = w.abs().flatten(1).amax(1).clamp_min(1e-8) / 127
    qw = torch.quantize_per_channel(
        w, scales.double(), torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8
    )
    if kind == "linear":
        cls = nniq.LinearReLU if relu else nnq.Linear
        q = cls(op.in_features, op.out_features, op.bias is not None)  # bias_ / bias: positional
    else:
        cls = {
            ("conv1d", False): nnq.Conv1d,
            ("conv1d", True): nniq.ConvReLU1d,
            ("conv2d", False): nnq.Conv2d,
            ("conv2d", True): nniq.ConvReLU2d,
        }[(kind, relu)]
        q = cls(
            op.in_channels,
            op.out_channels,
            op.kernel_size,
            stride=op.stride,
            padding=op.padding,
            groups=op.groups,
            bias=op.bias is not None,
        )
    q.set_weight_bias(qw, None if op.bias is None else op.bias.detach())
    q.scale, q.zero_point = 0.05, 64
    return q
