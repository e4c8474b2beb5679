"""The search benchmark, small: every cell is a real search and finetune; JSON and PNG come out."""

from __future__ import annotations

import json


def test_search_bench_scores_feasible_budgets_and_lists_infeasible_ones(tmp_path):
    from rlprune.bench.search import main

    out = tmp_path / "search.json"
    results = main(
        [
            "--targets",
            "mnist1d-arm_cpu",
            "--budgets",
            "0.5",
            "0.05",
            "--agents",
            "uniform",
            "random:search.bits=[8]",
            "--seeds",
            "0",
            "1",
            "--evaluations",
            "6",
            "--finetune-epochs",
            "1",
            "--out",
            str(out),
            "--overrides",
            "dense.epochs=3",
        ]
    )
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(results))
    assert out.with_suffix(".png").stat().st_size > 0
    (target,) = data["targets"]
    infeasible = [c for c in target["cells"] if "infeasible" in c]
    assert [c["budget"] for c in infeasible] == [0.05]
    scored = [c for c in target["cells"] if "runs" in c]
    assert [c["agent"] for c in scored] == ["uniform", "random:search.bits=[8]"]
    for cell in scored:
        assert [r["seed"] for r in cell["runs"]] == [0, 1]
        assert cell["latency_max"] <= 0.5 + 1e-9
        assert 0 < cell["accuracy_mean"] <= 1 and 0 < cell["test_after_finetune_mean"] <= 1
        assert all(r["evaluations"] <= 6 and r["evaluations_per_second"] > 0 for r in cell["runs"])
    random_cell = scored[1]  # its own search space: 8-bit only
    assert all(r["evaluations"] == 6 and r["bits"] == [8] for r in random_cell["runs"])
