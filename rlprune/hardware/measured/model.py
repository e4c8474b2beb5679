"""The measured table itself: :class:`MeasuredModel` composes the package's parts (the timer,
the cache, the ops, the calibration fit) into a :class:`~rlprune.hardware.base.LatencyModel`;
what it measures and how: :mod:`rlprune.hardware.measured`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.config import default_cache_dir
from rlprune.data import random_inputs
from rlprune.errors import MeasurementError
from rlprune.hardware.base import LatencyModel
from rlprune.hardware.measured.cache import TableCache
from rlprune.hardware.measured.calibration import (
    HALF_KEYS,
    Calibration,
    FitLayer,
    ImplausibleTimings,
    fit,
    mixed_bits,
    width_glue,
)
from rlprune.hardware.measured.machine import cpu_key, int8_engine
from rlprune.hardware.measured.networks import (
    half_width,
    layer_outputs,
    narrowed_stubs,
    output_channels,
    record_outputs,
    stubbed,
)
from rlprune.hardware.measured.ops import (
    EMPTY_CALL,
    MARKER,
    EmptyCall,
    Part,
    Spec,
    build_op,
    grid_corners,
    op_spec,
    quiet_ao_warnings,
    split_parts,
    without_call,
)
from rlprune.hardware.measured.settings import check_settings, read_settings
from rlprune.hardware.measured.timing import Call, Group, Marker, QuietTimer, Timer, Timing, time_in_turns
from rlprune.layers import LayerInfo, neighbour_pairs
from rlprune.policy import FLOAT_BITS, Choice, Pattern
from rlprune.progress import StageProgress

log = logging.getLogger(__name__)

# 18: a Linear's glue follows its last dim (a transformer's features, not its tokens); 17:
# half-width networks, float and int8, set how ops shrink inside a network (beside glue
# and overhead too); 16: a marker's pace is its fastest round, deployed networks calibrated
# apart from stubbed ones; 15: ops by their fastest block again, networks read against the marker; 14: mixed
# networks whose halves differ (mixed_seconds); 13: ops and networks deployed in a memory
# format (channels-last), read against a marker op; 12: timed in quiet stretches (a marker op
# beside each timing), networks not read against their ops timed beside them; 11: every op
# with a bias (a deployed conv holds its folded BN's); 10: ops and networks timed deployed
# (TorchScript); 9: the int8 export fuses torch.relu; 8: ops timed among their own precision;
# 7: int8 glue may be cheaper; 6: int8 glue; 5: glue by narrowed stubs; 4: torch.relu
# epilogue; 1: median
CACHE_FORMAT = 18
# how often the precisions take turns in a calibration, each network keeping its median: over
# 4 calibrations of the mnist1d CNN here, the mixed networks read with a cv of 2.6-5.0% at 3,
# 0.7-1.1% at 9
CALIBRATION_REPEATS = 9


class MeasuredModel(LatencyModel):
    """Seconds per batch measured on this CPU, interpolated from a cached grid of channel counts.

    Attributes:
        threads: torch threads during timing (set only while timing, restored after).
        channel_step: grid spacing of channel counts (1: each count measured).
        rounds: interleaved timing rounds per measurement (twice that for a calibration's networks).
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
        timer: what times the ops and networks (default: a :class:`QuietTimer` with the settings
            above; a test hands in a fake one).
        table_cache: the table's file (:class:`TableCache`, keyed by :func:`cpu_key`).
        calibration: how ops run inside the network last calibrated (:meth:`calibrate`).
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
        check_settings(
            name,
            bits=bits,
            reference_bits=reference_bits,
            epilogue=epilogue,
            memory_format=memory_format,
            retries=retries,
            verify=verify,
            slack=slack,
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
        self.calibration = Calibration()  # until calibrate(): every op as alone
        self.configured_bits = self.bits  # calibrate() leaves int8 out for a network without an int8 export

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any], where: str = "hardware config", *, timer: Timer | None = None
    ) -> MeasuredModel:
        """Build from a ``model: measured`` config node (plain data: :func:`read_settings`),
        timed by ``timer`` (default: a :class:`QuietTimer` with the config's settings)."""
        return cls(**read_settings(cfg, where), timer=timer)

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
        return self.calibration.layer_seconds(layer.name, op, kept, self.runs_integer(choice))

    def calibrate(self, network: nn.Module, example: torch.Tensor) -> float:
        """Fit the table to ``network`` as deployed; return the seconds no choice changes.

        The ops between the layers (pooling, activations, reshapes, residual adds) are timed on
        a copy whose prunable layers are replaced by stubs that return their recorded outputs
        (batch norms folded, as deployed). Narrowing one stub's output shows how much of that
        time follows the layer's width (:func:`width_glue`): that share is added to the layer's
        latency, scaled by the channels it keeps. The stubs run from Python, but narrowing
        changes only the ops' work, so the split holds for the deployed network too.

        Where torch.ao cannot export ``network`` to int8 on this CPU, int8 is left out of
        :attr:`bits` (so out of the search): a policy would deploy in float whatever it chose.

        The whole network, deployed (:meth:`deploy`), is timed too, with a copy with half the
        filters of every layer that can lose them on its own, and where int8 is searched their
        int8 exports, its stubbed int8 export, and networks that mix float and int8 layers
        (:meth:`_measure_networks`). :func:`~rlprune.hardware.measured.calibration.fit` then
        sets how each op runs inside the network (:attr:`calibration`) so that the dense
        network is predicted as measured. Cached in the table under the network's structure;
        until called, layers cost their op alone.

        Raises:
            MeasurementError: when the networks' timings contradict each other twice (the CPU
                was busy): the int8 network no slower than the float one's overhead. Such
                timings are never cached.
        """
        from rlprune.export import fold_batch_norms
        from rlprune.layers import discover_layers

        x = random_inputs(example, self.batch_size, torch.Generator().manual_seed(0))
        net = self.in_memory_format(fold_batch_norms(network).float())  # stubs return what layers would
        digest = hashlib.sha256(f"{net!r}|{tuple(x.shape)}|{self.memory_format}".encode()).hexdigest()[:16]
        prefix = f"network:{digest}:"
        outputs = layer_outputs(net, x)
        widths = output_channels(net, outputs)
        layers = discover_layers(net, x)
        self.bits, int8 = self.configured_bits, None
        if 8 in self.bits and prefix + "deployed:int8" not in self._table:
            int8 = self._int8_export(net, x)
            if int8 is None:
                self.bits = tuple(b for b in self.bits if b != 8)
                log.warning(
                    "%s: int8 is left out of the search: the network has no int8 deploy here", self.name
                )
        half = half_width(net, x, layers)
        half_layers = discover_layers(half, x) if half is not None else []
        for attempt in (1, 2):  # timings read in a busy stretch are taken once more, then refused
            if prefix + "deployed:float" not in self._table:
                if int8 is None and 8 in self.bits:  # cached timings forgotten after a busy fit
                    int8 = self._int8_export(net, x)
                measured = self._measure_networks(net, x, outputs, widths, half, int8)
                self._table.update({prefix + k: v for k, v in measured.items()})
                self._save()
            try:
                self.calibration = self._fit(prefix, layers, half_layers, widths)
                break
            except ImplausibleTimings as exc:
                self._table = self.table_cache.save(self._table, forget=prefix)  # never kept
                if attempt == 2:
                    raise MeasurementError(
                        f"{self.name}: {exc}, twice: this CPU was busy while the networks were "
                        "timed. Run again when it is idle, or search float only (search.bits=[32])"
                    ) from exc
                log.info("%s: %s; timing the networks again", self.name, exc)
        self.switch_seconds = self.calibration.switch_seconds
        self.mixed_seconds = self.calibration.mixed_seconds
        self._cache.clear()
        return self.calibration.overhead

    def _fit(
        self,
        prefix: str,
        layers: list[LayerInfo],
        half_layers: list[LayerInfo],
        widths: Mapping[str, int],
    ) -> Calibration:
        """:func:`~rlprune.hardware.measured.calibration.fit` to the networks cached under ``prefix``;
        ``widths``: the channels of each layer's output, whose glue was timed (over all its calls)."""
        networks = {key.removeprefix(prefix): s for key, s in self._table.items() if key.startswith(prefix)}
        half_bits = [bits for bits in self._searched_bits() if HALF_KEYS[bits] in networks]
        calls = {layer.name: layer.calls for layer in layers}
        return fit(
            self._fit_layers(layers, self._searched_bits()),
            self._fit_layers(half_layers, half_bits),
            {name: (networks[f"glue:{name}"] / calls.get(name, 1), width) for name, width in widths.items()},
            networks,
            neighbour_pairs(layers),
        )

    def _searched_bits(self) -> list[int]:
        """The precisions an op runs at here: float, and int8 where it is searched."""
        return sorted({FLOAT_BITS, *self.bits})

    def _fit_layers(self, layers: list[LayerInfo], bits: Sequence[int]) -> list[FitLayer]:
        """``layers`` as the calibration fit takes them, once per call, their dense ops at
        ``bits`` timed alone."""
        ops = {b: self._dense_ops(layers, b) for b in bits}
        return [
            FitLayer(layer.name, layer.out_channels, {b: ops[b][i] for b in bits})
            for i, layer in enumerate(layers)
            for _ in range(layer.calls)
        ]

    def _measure_networks(
        self,
        net: nn.Module,
        x: torch.Tensor,
        outputs: dict[str, torch.Tensor],
        widths: Mapping[str, int],
        half: nn.Module | None,
        int8: nn.Module | None,
    ) -> dict[str, float]:
        """Seconds of ``net`` and its variants by key (:mod:`~rlprune.hardware.measured.calibration`),
        and ``glue:<layer>`` (:func:`width_glue` of each layer's narrowed stub:
        :func:`narrowed_stubs`; 0 where none runs). ``widths``: the channels of each of
        ``outputs``; ``int8`` is ``net``'s int8 export, where int8 is searched.

        The deployed networks are timed apart from the stubbed ones, beside each other, as
        deployed networks are timed everywhere else: beside 22 stubbed resnet20s (eager), a
        dense deployed resnet20 read 397-403 µs in three calibrations; alone, 341-343.
        """
        narrowed = narrowed_stubs(net, x, outputs)
        variants = {"full": stubbed(net, outputs), "again": stubbed(net, outputs)}
        variants |= {name: module for name, (module, _) in narrowed.items()}
        deployed = {"deployed:float": self.deploy(net, x)}
        if half is not None:
            deployed["deployed:half"] = self.deploy(half, x)
        holding_int8: set[str] = set()  # timed with the int8 networks
        if int8 is not None:
            with self._engine():  # the int8 engine
                variants["stubbed:int8"] = stubbed(int8, record_outputs(int8, x, outputs))
                deployed["deployed:int8"] = self.deploy(int8, x)
            holding_int8 |= {"stubbed:int8", "deployed:int8"}
            half_int8 = self._int8_export(half, x) if half is not None else None
            if half_int8 is not None:
                with self._engine():
                    deployed["deployed:half:int8"] = self.deploy(half_int8, x)
                holding_int8.add("deployed:half:int8")
            for key, bits in mixed_bits(list(outputs)).items():
                floats = [name for name, b in bits.items() if b == 32]
                mixed = self._int8_export(net, x, floats)
                if mixed is not None:
                    with self._engine():
                        deployed[key] = self.deploy(mixed, x)
                    holding_int8.add(key)
        seconds: dict[str, float] = {}
        for timed in (variants, deployed):
            calls = {key: functools.partial(module, x) for key, module in timed.items()}
            precisions = [8 if key in holding_int8 else 32 for key in timed]
            seconds.update(self._time_apart(calls, precisions, 2 * self.rounds, CALIBRATION_REPEATS))
        full, again = seconds.pop("full"), seconds.pop("again")
        # seconds only, never their differences: the cache keeps no negative entry
        measured = {"stubbed:float": full}
        measured.update((key, seconds.pop(key)) for key in [k for k in seconds if ":" in k])
        glue = width_glue(  # what is left: the narrowed variants
            full,
            again,
            {name: (s, widths[name], narrowed[name][1]) for name, s in seconds.items()},
        )
        return {**measured, **{f"glue:{name}": glue.get(name, 0.0) for name in outputs}}

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
        spec = self._spec(MARKER, 16, 16, bits)

        def build() -> Call:
            with self._engine(), quiet_ao_warnings():
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
            log.warning("%s: no int8 export: %s", self.name, exc)
            return None

    def _dense_ops(self, layers: list[LayerInfo], bits: int) -> list[float]:
        """Seconds of each layer's dense op at ``bits``, timed alone (from the table)."""
        choice = Choice(Pattern.DENSE, 1, 1, bits, bits)
        points = [self.grid_points(layer, choice) for layer in layers]
        missing = [spec for each in points for spec, _ in each if spec["key"] not in self._table]
        self._measure_all(missing, progress=False)
        return [sum(w * self._table[spec["key"]] for spec, w in each) for each in points]

    def grid_points(self, layer: LayerInfo, choice: Choice) -> list[tuple[Spec, float]]:
        """The table entries ``latency(layer, choice)`` interpolates, with their weights (sum 1)."""
        if choice.pattern is Pattern.FILTER:
            layer = layer.with_channels(layer.in_channels, choice.keep)
        bits = 8 if self.runs_integer(choice) else 32
        corners = grid_corners(layer, self.channel_step)
        return [(self._spec(layer, ci, co, bits), w) for (ci, co), w in corners if w > 0]

    def _spec(self, layer: LayerInfo, c_in: int, c_out: int, bits: int) -> Spec:
        """What to time for one grid point (:func:`op_spec`) at this model's batch size,
        epilogue and memory format."""
        return op_spec(
            layer,
            c_in,
            c_out,
            bits=bits,
            batch=self.batch_size,
            epilogue=self.epilogue,
            memory_format=self.memory_format,
        )

    # -- measuring -----------------------------------------------------------------------------

    def prepare(self, cells: Sequence[tuple[LayerInfo, Choice]], *, progress: bool | None = None) -> None:
        """Measure every grid entry the ``(layer, choice)`` cells need that is not cached yet.

        Unsupported cells are left for :meth:`latency` to reject. Shows a progress bar (default:
        the config's ``progress``) and saves the cache once at the end.
        """
        needed: dict[str, Spec] = {}
        for layer, choice in cells:
            if self.supports(layer, choice):
                for spec, _ in self.grid_points(layer, choice):
                    if spec["key"] not in self._table:
                        needed.setdefault(spec["key"], spec)
        self._measure_all(list(needed.values()), progress=self.progress if progress is None else progress)

    def _measure_all(self, specs: list[Spec], *, progress: bool) -> None:
        if not specs:
            return
        parts = split_parts(specs)
        started = time.perf_counter()
        bar = StageProgress(f"measuring {self.name} ops", len(specs), transient=True) if progress else None

        def counted(part: Part) -> None:
            self.measurements += len(part)
            if bar is not None:
                bar.advance(len(part))

        try:
            with bar or contextlib.nullcontext():
                self._time_parts(parts, counted)
                self._verify(parts)
        finally:
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
        """Time each part's ops together (:meth:`_group`), a part in a slow stretch again
        (:attr:`timer`), and write their seconds to the table; ``on_first(part)`` follows
        each part's first timing."""

        def record(i: int, seconds: list[float], first: bool) -> None:
            *ops, call = seconds
            self._table.update(
                (spec["key"], without_call(op, call)) for spec, op in zip(parts[i], ops, strict=True)
            )
            if first and on_first is not None:
                on_first(parts[i])

        groups = [self._group(part) for part in parts]
        with self._engine(), quiet_ao_warnings():
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
        self._time_parts(split_parts([spec for each in picked for spec in each]))
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

    def _build(self, spec: Spec) -> tuple[nn.Module, torch.Tensor]:
        """The op and an input batch for one grid entry (:func:`build_op`); an int8 entry that
        falls back to FP32 is noted in :attr:`int8_fallbacks`."""
        op, x, fell_back = build_op(spec, self.engine)
        if fell_back:
            self.int8_fallbacks.add(spec["key"])
        return op, x

    def _group(self, part: Part) -> Group:
        """One part of the table (all at one precision) as the timer takes it: each grid entry's
        op deployed (:meth:`deploy`), then a call of an empty deployed module, labelled
        :data:`EMPTY_CALL`, which :func:`without_call` takes off each op (a module that
        returns a new tensor costs the same): inside a network the ops run one after another
        without it. Each op's seconds are its fastest block (:meth:`QuietTimer._timed` says why)."""

        def build() -> list[Call]:
            with self._engine(), quiet_ao_warnings():
                built = [self._build(spec) for spec in part]
                built.append((EmptyCall(), built[0][1]))
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
