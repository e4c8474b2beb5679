"""Timing callables on a shared machine: the :class:`Timer` a measured table is handed.

A measured table times two things: its ops (each its fastest block) and whole networks (read
against a marker op). Both go through one :class:`Timer`: groups of calls, each group timed
in rounds beside a *marker op*, a fixed op whose pace tells a quiet stretch of the machine
from a slow one (:class:`QuietTimer`). A test hands a table a fake timer instead: any object
with :meth:`Timer.time` that returns seconds for the groups' labels.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

log = logging.getLogger(__name__)

# a marker block after about every 4 calls' blocks of a round: with one per round of 24 calls
# a busy machine's timings read 3.4-4.4% apart (cv), no steadier than their fastest blocks
MARKER_EVERY = 4
# the longest wait for a quiet stretch before a retry: slow stretches lasted 0.3-5 s here, and
# on a busy day a table's parts still ran slow after two waits of 5 s
QUIET_WAIT = 10.0

Call = Callable[[], object]
# (group index, its best seconds so far, whether this was its first timing)
OnTimed = Callable[[int, list[float], bool], None]
# time_rounds's signature: (calls, threads, rounds, block_time, warmup) -> blocks per call
RoundsTimer = Callable[[Sequence[Call], int, int, float, int], list[list[float]]]


def time_rounds(
    calls: Sequence[Call],
    threads: int,
    rounds: int = 21,
    block_time: float = 0.001,
    warmup: int = 10,
) -> list[list[float]]:
    """Seconds per call of each of ``calls`` in each round: one short block per call and round.

    Timed with :class:`torch.utils.benchmark.Timer` at ``threads`` threads. Each call is
    warmed up, then every round times one block of about ``block_time`` seconds per call, the
    calls taking turns in an order shuffled every round. On a shared machine the speed drifts
    by up to 2x between 0.3 s windows: short blocks in rounds let a call be read against a
    marker op timed in the same rounds (:meth:`QuietTimer._timed`).
    """
    from torch.utils.benchmark import Timer as BenchmarkTimer

    timers, numbers = [], []
    for call in calls:
        for _ in range(warmup + 1):  # the first call also packs int8 weights
            call()
        timer = BenchmarkTimer("call()", globals={"call": call}, num_threads=threads)
        once = timer.timeit(1).median
        timers.append(timer)
        numbers.append(max(1, int(block_time / max(once, 1e-9))))
    blocks: list[list[float]] = [[] for _ in calls]
    order = list(range(len(calls)))
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)  # a call at a fixed place in every round can meet a periodic neighbour every time
        for i in order:
            blocks[i].append(timers[i].timeit(numbers[i]).median)
    return blocks


def _pace(blocks: Sequence[float]) -> float:
    """The marker op's pace over one timing: its fastest round (each round's median copy).

    The table's ops keep their fastest block, so a timing ran slow when even the marker's
    fastest round did. On this VM, over 24 timings of one part of the table (32 int8 ops),
    this pace rose with the ops' slowdown (correlation 0.97; ops at 1.3-2.2x, marker at
    1.4-2.8x); the marker's lower quartile read 1.4x for parts whose ops ran at 1.04x too, so
    it would take quiet parts again and could let slow ones pass.
    """
    return min(blocks)


@dataclass(frozen=True)
class Marker:
    """The op timed beside a group of calls: a slow stretch slows it with the calls beside it.

    Attributes:
        key: the entry of its reference pace in the ``paces`` a timer is given (a table
            caches it, so that later timings are slow or quiet against the same pace).
        build: returns its call; called once per timer and key, when first timed.
    """

    key: str
    build: Callable[[], Call]


@dataclass(frozen=True)
class Group:
    """Calls timed together, taking turns in rounds beside one marker op.

    Attributes:
        marker: the op the calls are read against (one per precision: an int8 op takes
            turns only with int8 ops).
        labels: what each call is (an op's table key, a network's name), one per call: a
            fake timer gives seconds by label and never builds the calls.
        build: returns the calls, in the order of ``labels``; called each time the group is
            timed, so that a table's parts are built one at a time.
    """

    marker: Marker
    labels: tuple[str, ...]
    build: Callable[[], Sequence[Call]]


@dataclass(frozen=True)
class Timing:
    """What :meth:`Timer.time` returns.

    Attributes:
        seconds: per group, the seconds of each of its calls.
        retimed: group timings taken again because they ran in a slow stretch.
        still_slow: groups that never came out of one (their seconds may read high).
    """

    seconds: list[list[float]]
    retimed: int = 0
    still_slow: int = 0


class Timer(Protocol):
    """Times groups of calls and returns their seconds per call."""

    def time(
        self,
        groups: Sequence[Group],
        paces: MutableMapping[str, float],
        *,
        rounds: int,
        fastest: bool = False,
        on_timed: OnTimed | None = None,
    ) -> Timing:
        """Seconds per call of each group, timed in ``rounds`` rounds.

        Args:
            groups: what to time; each group's calls take turns only with each other.
            paces: the markers' reference paces by :attr:`Marker.key`; a marker without one
                gets its first (quiet) pace here.
            rounds: rounds of one block per call.
            fastest: a call's seconds are its fastest block (an op of the table), else its
                median block read against the marker's (a network).
            on_timed: called after each timing of a group (:data:`OnTimed`).
        """
        ...


def time_in_turns(
    timer: Timer,
    groups: Sequence[Group],
    paces: MutableMapping[str, float],
    *,
    rounds: int,
    repeats: int = 1,
) -> Timing:
    """Seconds per call of each group, the groups taking turns ``repeats`` times and each call
    keeping its median.

    INT8 ops that took turns with FP32 ops ran up to 1.28x (mean 1.04-1.07x) their best, among
    INT8 ones up to 1.07x (1.01-1.03x): a group per precision keeps them apart. Timed apart, a
    dense INT8 network over its FP32 one varied by 5% (cv) from timing to timing on a busy
    day; repeats average that out.
    """
    timing = timer.time(list(groups) * repeats, paces, rounds=rounds)
    n = len(groups)
    medians = [
        [
            statistics.median(timing.seconds[g + r * n][k] for r in range(repeats))
            for k in range(len(group.labels))
        ]
        for g, group in enumerate(groups)
    ]
    return Timing(medians, timing.retimed, timing.still_slow)


class QuietTimer:
    """Times calls with :func:`time_rounds` beside a marker op, a group that ran in a slow
    stretch of the machine again once it is quiet.

    Attributes:
        threads: torch threads while timing (restored after).
        block_time: seconds of one timed block.
        warmup: untimed calls before each timing.
        retries: how often a group timed in a slow stretch is timed again.
        slack: a group ran slow where its marker's pace was over ``slack`` times its reference.
        name: what the timer's warnings name (the table's name).
        time_rounds: times the blocks (:func:`time_rounds`; a test hands in a fake one).
        clock: seconds, for the waits (:func:`time.perf_counter`; a test hands in a fake one).
    """

    def __init__(
        self,
        *,
        threads: int = 1,
        block_time: float = 0.001,
        warmup: int = 10,
        retries: int = 2,
        slack: float = 1.1,
        name: str = "timer",
        time_rounds: RoundsTimer = time_rounds,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.threads = int(threads)
        self.block_time = float(block_time)
        self.warmup = int(warmup)
        self.retries = int(retries)
        self.slack = float(slack)
        self.name = name
        self.time_rounds = time_rounds
        self.clock = clock
        self._markers: dict[str, Call] = {}

    def time(
        self,
        groups: Sequence[Group],
        paces: MutableMapping[str, float],
        *,
        rounds: int,
        fastest: bool = False,
        on_timed: OnTimed | None = None,
    ) -> Timing:
        """Seconds per call of each group (:meth:`Timer.time`), taken again for the groups
        timed while the machine ran slow.

        This machine alternates quiet stretches with slow ones (1.4-2x, for 0.3-5 s; measured
        here): a group whose marker's pace (:func:`_pace`) was over ``slack`` times its
        reference ran in a slow stretch, and is timed again after the others, once the
        machine is quiet (:meth:`_await_quiet`), up to ``retries`` times; a group keeps its
        quietest timing (its marker's lowest pace).
        """
        with self._context():
            if self.retries > 0:
                for marker in {group.marker.key: group.marker for group in groups}.values():
                    self._first_pace(marker, paces)
            best: list[list[float]] = [[] for _ in groups]
            lowest = [math.inf] * len(groups)
            retimed = 0
            todo: Sequence[int] = range(len(groups))
            for attempt in range(self.retries + 1):
                for i in todo:
                    group = groups[i]
                    if attempt > 0:
                        retimed += 1
                        self._await_quiet(group.marker, paces)
                    seconds, pace = self._timed(group, paces, rounds, fastest)
                    if pace < lowest[i]:
                        best[i], lowest[i] = seconds, pace
                    paces.setdefault(group.marker.key, pace)
                    if on_timed is not None:
                        on_timed(i, best[i], attempt == 0)
                slow = {i: lowest[i] / paces[group.marker.key] for i, group in enumerate(groups)}
                todo = [i for i, ratio in slow.items() if ratio > self.slack]
                if not todo:
                    return Timing(best, retimed)
        log.warning(
            "%s: %d of %d timings ran slow %d times (marker op at up to %.2fx its reference pace); "
            "they may read high. Time on an idle machine, or raise `retries`.",
            self.name,
            len(todo),
            len(groups),
            self.retries + 1,
            max(slow[i] for i in todo),
        )
        return Timing(best, retimed, len(todo))

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _blocks(self, calls: Sequence[Call], rounds: int, warmup: int) -> list[list[float]]:
        """:attr:`time_rounds` on ``calls``, without autograd (the calls are built outside it:
        an op built in inference mode would hold inference tensors)."""
        with torch.inference_mode():
            return self.time_rounds(calls, self.threads, rounds, self.block_time, warmup)

    def _marker(self, marker: Marker) -> Call:
        if marker.key not in self._markers:
            self._markers[marker.key] = marker.build()
        return self._markers[marker.key]

    def _timed(
        self, group: Group, paces: MutableMapping[str, float], rounds: int, fastest: bool
    ) -> tuple[list[float], float]:
        """Seconds per call of one group, and the pace of its marker timed in the same rounds.

        The marker takes a turn after about every :data:`MARKER_EVERY` calls of a round (its
        copies shuffled in with them, :func:`time_rounds`). A call's seconds are read against
        it: the median over the rounds of its block over the round's median marker block,
        times the marker's reference pace (the first found); a slow stretch slows the marker
        with the calls beside it. With ``fastest``, a call's seconds are its fastest block.

        On this VM, busy (a marker's 20 ms windows at a median 1.3-1.7x its fastest): 8 copies
        each of three networks timed together 6 times read with a cv of 2.3-4.8% from timing to
        timing against the marker, and of 8-13% as their fastest blocks (two runs); a network
        runs a few times in a block. Int8 conv1d ops of 14-18 µs, dozens of calls to a block,
        repeated to about 1-2% as their fastest blocks and to 5-10% against the marker: the
        table's ops take their fastest.
        """
        calls = list(group.build())
        marker = self._marker(group.marker)
        copies = max(1, math.ceil(len(calls) / MARKER_EVERY))
        blocks = self._blocks([*calls, *[marker] * copies], rounds, self.warmup)
        markers = [statistics.median(each) for each in zip(*blocks[len(calls) :], strict=True)]
        pace = _pace(markers)
        reference = paces.setdefault(group.marker.key, pace)
        if fastest:
            return [min(each) for each in blocks[: len(calls)]], pace
        seconds = [
            reference * statistics.median(b / m for b, m in zip(each, markers, strict=True))
            for each in blocks[: len(calls)]
        ]
        return seconds, pace

    def _first_pace(self, marker: Marker, paces: MutableMapping[str, float]) -> None:
        """Find the marker's pace where none is known: its fastest over short bursts, until
        2 s pass without a faster one (at most :data:`QUIET_WAIT` seconds). Without it the
        first timings of a fresh table have nothing to be slow against: a calibration in a
        slow stretch once predicted a dense network at 1.5x its speed."""
        if marker.key in paces:
            return
        call = self._marker(marker)
        start = last = self.clock()
        best = math.inf
        while (now := self.clock()) - last < 2.0 and now - start < QUIET_WAIT:
            (blocks,) = self._blocks([call], 8, 0)
            if _pace(blocks) < 0.98 * best:
                last = self.clock()
            best = min(best, _pace(blocks))
        paces[marker.key] = best

    def _await_quiet(self, marker: Marker, paces: MutableMapping[str, float]) -> None:
        """Return once the marker, timed alone in short bursts, runs within ``slack`` of its
        reference pace, or after :data:`QUIET_WAIT` seconds."""
        call = self._marker(marker)
        deadline = self.clock() + QUIET_WAIT
        while self.clock() < deadline:
            (blocks,) = self._blocks([call], 8, 0)
            if _pace(blocks) <= self.slack * paces[marker.key]:
                return
