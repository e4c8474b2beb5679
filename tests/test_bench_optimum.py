"""The optimum bench: the policies it lists are those a brute force finds, and nothing beats its best."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest


def test_within_budget_lists_the_policies_that_fit_and_those_that_cannot_go_up_a_level():
    from rlprune.bench.optimum import grid_picks, within_budget

    rng = np.random.default_rng(0)
    tables = [np.sort(rng.uniform(0.1, 1.0, (2, 3)).ravel()).reshape(2, 3) for _ in range(3)]
    limit = 1.6
    fits, maximal = within_budget(tables, limit, cap=10_000)

    def seconds(picks):
        return sum(t[p] for t, p in zip(tables, picks, strict=True))

    for flat in itertools.product(*(range(t.size) for t in tables)):
        picks = grid_picks(tables, np.array(flat))
        ups = [
            [*picks[:i], up, *picks[i + 1 :]]
            for i, (s, b) in enumerate(picks)
            for up in ((s + 1, b), (s, b + 1))
            if up[0] < tables[i].shape[0] and up[1] < tables[i].shape[1]
        ]
        fit = seconds(picks) <= limit
        assert fits[flat] == fit
        assert maximal[flat] == (fit and all(seconds(up) > limit for up in ups))
    assert 0 < maximal.sum() < fits.sum() < fits.size


def test_a_space_too_large_or_with_coupled_steps_is_refused_with_what_to_change():
    from rlprune.bench.optimum import step_tables, within_budget
    from rlprune.errors import ConfigError
    from tests.test_filter_search import filter_space, mnist1d

    with pytest.raises(ConfigError, match="--limit"):
        within_budget([np.ones((4, 4))] * 4, 1.0, cap=1000)
    with pytest.raises(ConfigError, match="filter couplings"):
        step_tables(filter_space(*mnist1d())[0])


@pytest.mark.slow
def test_no_search_beats_the_best_of_every_policy_within_budget(tmp_path):
    from rlprune.api import search
    from rlprune.bench import QUIET, load
    from rlprune.bench.optimum import main
    from rlprune.bench.search import TARGETS
    from rlprune.config import compose_config

    overrides = ["dense.epochs=3", "search.bits=[8,16]"]
    out = tmp_path / "optimum.json"
    results = main(
        [
            "--target",
            "mnist1d-a100",
            "--budgets",
            "0.6",
            "--every",
            "--out",
            str(out),
            "--overrides",
            *overrides,
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    (row,) = results["budgets"]
    assert row["scored"] == row["within"] > row["maximal"] >= 1
    assert row["latency"] <= 0.6 + 1e-9

    base = [*QUIET, *TARGETS["mnist1d-a100"], *overrides, "budget.latency=0.6", "search.evaluations=60"]
    target, hardware = load(compose_config(base))
    for agent in ("random", "evolution"):
        found = search(compose_config([*base, f"agent={agent}"]), target, hardware).best
        assert found.accuracy <= row["accuracy"] + 1e-12
