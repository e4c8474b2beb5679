"""The finetune bench: one policy under each schedule, the finetuned and the exported network side by side."""

from __future__ import annotations

import json

from rlprune.bench.finetune import main


def test_each_schedule_exports_the_network_it_finetuned(tmp_path):
    out = tmp_path / "finetune.json"
    modes = ["plain", "gap1", "learned_filter"]
    overrides = ["dense.epochs=3", "finetune.epochs=2"]
    results = main(["--modes", *modes, "--seeds", "0", "--out", str(out), "--overrides", *overrides])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert list(results["rows"]) == modes and results["finetune_epochs"] == 2
    # the MNIST-1D CNN's conv1-conv4 and fc1 keep half their filters; fc2 gives the classes
    assert {c["pattern"] for c in results["policy"].values()} == {"filter"} and "fc2" not in results["policy"]
    for runs in results["rows"].values():
        (run,) = runs
        assert run["exported_test_accuracy"] == run["test_accuracy"] > 0.1
