"""The soak benchmark, small: it samples memory along a real search and writes its JSON."""

from __future__ import annotations

import json


def test_soak_bench_samples_memory_along_the_search(tmp_path):
    from rlprune.bench.soak import main

    out = tmp_path / "soak.json"
    results = main(
        [
            "--evaluations",
            "60",
            "--every",
            "20",
            "--agent",
            "random",
            "--out",
            str(out),
            "--overrides",
            "dense.epochs=3",
        ]
    )
    data = json.loads(out.read_text())
    assert [s["evaluations"] for s in data["samples"]] == [0, 20, 40, 60]
    assert all(s["rss_mib"] > 0 and s["peak_mib"] >= 0.95 * s["rss_mib"] for s in data["samples"])
    assert data["rss_growth"] == results["rss_growth"] and 0 <= data["best_reward"] <= 1
