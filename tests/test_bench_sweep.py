"""The sweep benchmark, small: per-budget agents against one budget-conditioned agent."""

from __future__ import annotations

import json


def test_sweep_bench_compares_both_ways_on_every_budget(tmp_path):
    from rlprune.bench.sweep import main

    out = tmp_path / "sweep.json"
    args = ["--budgets", "0.5", "0.35", "--seeds", "0", "--evaluations", "12", "--out", str(out)]
    results = main([*args, "--overrides", "dense.epochs=3"])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(results))
    (target,) = data["targets"]
    assert target["evaluations"] == {"per_budget": 24, "conditioned": 8}
    assert [r["budget"] for r in target["rows"]] == [0.5, 0.35]
    for row in target["rows"]:
        assert len(row["per_budget"]) == len(row["conditioned"]) == 1
        assert 0 < row["per_budget_mean"] <= 1 and 0 < row["conditioned_mean"] <= 1
