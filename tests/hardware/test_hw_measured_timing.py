"""The quiet-machine timer on its own: a fake block timer and clock stand in for the machine.

Each call timed here returns its own seconds (a float), and the fake block timer reads them,
times the machine's slowdown at that moment: so a test says what every block would measure.
"""

from __future__ import annotations

import functools

import pytest

from rlprune.hardware.measured.timing import Group, Marker, QuietTimer, Timing, time_in_turns

MARKER = Marker("pace:m", lambda: lambda: 1e-6)  # the marker op: 1 µs on a quiet machine


class Machine:
    """A fake :func:`~rlprune.hardware.measured.timing.time_rounds` and clock: each timing of
    several calls (a group with its marker) runs at the next of ``slowdowns`` (then 1), a
    marker timed alone (a wait for a quiet stretch) at the slowdown of the last group; every
    block reads its call's seconds times that; the clock moves ``step`` seconds a timing."""

    def __init__(self, slowdowns=(), step: float = 1.0) -> None:
        self.slowdowns = iter(slowdowns)
        self.step = step
        self.now = 0.0
        self.slowdown = 1.0
        self.timings: list[int] = []  # calls in each timing, the marker's copies included

    def time_rounds(self, calls, threads, rounds, block_time, warmup) -> list[list[float]]:
        self.timings.append(len(calls))
        self.now += self.step
        if len(calls) > 1:
            self.slowdown = next(self.slowdowns, 1.0)
        return [[self.slowdown * call()] * rounds for call in calls]

    def clock(self) -> float:
        return self.now


def group(*seconds: float) -> Group:
    return Group(
        MARKER, tuple(str(s) for s in seconds), lambda: [functools.partial(float, s) for s in seconds]
    )


def quiet_timer(machine: Machine, **settings) -> QuietTimer:
    return QuietTimer(time_rounds=machine.time_rounds, clock=machine.clock, **settings)


def test_a_group_timed_in_a_slow_stretch_is_timed_again_after_the_others():
    machine = Machine(slowdowns=[1.8])
    timer = quiet_timer(machine, retries=2)
    paces = {MARKER.key: 1e-6}  # the marker's quiet pace, as a table caches it
    timing = timer.time([group(3e-6, 4e-6), group(5e-6)], paces, rounds=3, fastest=True)
    # the first group, slow, again after the second, once a marker alone ran quiet
    assert machine.timings == [3, 2, 1, 3]
    assert timing == Timing([[3e-6, 4e-6], [5e-6]], retimed=1, still_slow=0)


def test_a_machine_slow_throughout_keeps_the_quietest_timing_and_says_so(caplog):
    machine = Machine(slowdowns=[1.8, 1.8, 1.6])
    timer = quiet_timer(machine, retries=1, name="local_cpu")
    seen = []
    with caplog.at_level("WARNING"):
        timing = timer.time(
            [group(1e-5), group(2e-5)],
            {MARKER.key: 1e-6},
            rounds=1,
            fastest=True,
            on_timed=lambda i, seconds, first: seen.append((i, seconds, first)),
        )
    # each group twice (retries=1), each second timing after a wait for a quiet stretch (10 s)
    assert [n for n in machine.timings if n > 1] == [2, 2, 2, 2]
    assert "local_cpu: 1 of 2 timings ran slow 2 times" in caplog.text
    # the first group kept its quieter timing (1.6x), the second its quiet one
    assert timing == Timing([[pytest.approx(1.6e-5)], [2e-5]], retimed=2, still_slow=1)
    assert seen[-2:] == [(0, [pytest.approx(1.6e-5)], False), (1, [2e-5], False)]


def test_a_timing_is_read_against_the_marker_in_its_own_rounds():
    marker = [1e-6, 1.8e-6, 1.4e-6]  # the machine slows down, then recovers in part
    steady = [50 * m for m in marker]  # slowed as the marker was
    odd = [5e-5, 9e-5, 2e-4]  # slowed far more than the marker in one round
    unmoved = [6e-5] * 3  # not slowed at all
    timed = []

    def time_rounds(calls, *args):
        timed.append(len(calls))
        return [steady, odd, unmoved] + [marker] * (len(calls) - 3)

    timer = QuietTimer(time_rounds=time_rounds, retries=0)
    paces = {MARKER.key: 1e-6}  # the marker's reference pace
    three = Group(MARKER, ("a", "b", "c"), lambda: [print] * 3)
    assert timer.time([three], paces, rounds=3) == Timing([pytest.approx([5e-5, 5e-5, 6e-5 / 1.4])])
    fastest = timer.time([three], paces, rounds=3, fastest=True)  # the table's ops
    assert fastest.seconds == [pytest.approx([5e-5, 5e-5, 6e-5])] and paces == {MARKER.key: 1e-6}
    timer.time([Group(MARKER, tuple("abcdefghi"), lambda: [print] * 9)], paces, rounds=3)
    assert timed == [4, 4, 9 + 3]  # a marker copy for about every 4 calls


def test_networks_timed_in_a_slow_stretch_are_timed_again():
    rounds = []

    def time_rounds(calls, threads, *args):  # the marker op is the last call; 2 rounds each
        rounds.append(len(calls))
        pace = 2.0 if len(rounds) == 1 else 1.0
        return [[pace * 1e-4, 3e-4]] * (len(calls) - 1) + [[pace * 1e-6, 3e-6]]

    timer = QuietTimer(time_rounds=time_rounds, retries=2)
    networks = Group(MARKER, ("0", "1", "2"), lambda: [print] * 3)
    assert timer.time([networks], {MARKER.key: 1e-6}, rounds=2).seconds == [pytest.approx([1e-4] * 3)]
    assert rounds == [4, 1, 4]  # the three networks and the marker; the marker alone, quiet; again


def test_a_timing_ran_slow_only_if_even_the_marker_s_fastest_round_did():
    # ops keep their fastest block: a part ran slow if no round was quiet (on this VM the
    # marker's lower quartile read 1.4x for parts whose ops ran at 1.04x)
    timings = []
    clock = iter(range(1000)).__next__  # a second a reading: a wait for a quiet stretch ends

    def time_rounds(calls, threads, *args):  # the marker op is the last call; 4 rounds each
        if len(calls) > 1:
            timings.append(len(calls))
        marker = [1e-6, 1.6e-6, 1.6e-6, 1.6e-6] if len(timings) == 1 else [1.6e-6] * 4
        return [[1e-4] * 4] * (len(calls) - 1) + [marker]

    timer = QuietTimer(time_rounds=time_rounds, clock=clock, retries=1)
    networks = Group(MARKER, ("0", "1", "2"), lambda: [print] * 3)
    paces = {MARKER.key: 1e-6}
    assert timer.time([networks], paces, rounds=4).retimed == 0  # one quiet round of four
    assert timings == [4]
    slow = timer.time([networks], paces, rounds=4)
    assert (slow.retimed, slow.still_slow) == (1, 1)
    assert timings == [4, 4, 4]  # none quiet, then none again


def test_a_fresh_table_finds_the_marker_pace_before_it_times_anything():
    # else a first timing in a slow stretch has nothing to be slow against
    machine = Machine(step=0.5)  # 0.5 s a burst
    paces_seen = iter([3.0, 1.5, 1.0])  # the machine speeds up, then holds

    def time_rounds(calls, threads, rounds, *args):
        if len(calls) == 1:  # the marker alone
            machine.slowdown = next(paces_seen, 1.0)
        return machine.time_rounds(calls, threads, rounds, *args)

    timer = QuietTimer(time_rounds=time_rounds, clock=machine.clock, retries=1)
    paces: dict[str, float] = {}
    timer.time([group(1e-5)], paces, rounds=1)
    # faster at bursts 2 and 3, then 2 s (4 bursts) without a faster one; then the group
    assert machine.timings == [1] * 7 + [2] and paces == {MARKER.key: 1e-6}


def test_groups_take_turns_and_each_call_keeps_its_median():
    class Recorder:
        def __init__(self) -> None:
            self.order: list[str] = []
            self.readings = {"a": iter([3e-6, 1e-6, 2e-6]), "b": iter([5e-6, 4e-6, 6e-6])}

        def time(self, groups, paces, *, rounds, fastest=False, on_timed=None) -> Timing:
            self.order += [g.labels[0] for g in groups]
            return Timing([[next(self.readings[g.labels[0]])] * len(g.labels) for g in groups], 1, 0)

    recorder = Recorder()
    a = Group(MARKER, ("a", "a2"), list)
    b = Group(MARKER, ("b",), list)
    assert time_in_turns(recorder, [a, b], {}, rounds=1, repeats=3) == Timing([[2e-6, 2e-6], [5e-6]], 1, 0)
    assert recorder.order == ["a", "b"] * 3
