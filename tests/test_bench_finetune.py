"""The finetune bench: one policy under each schedule, the finetuned and the exported network side by side."""

from __future__ import annotations

import json

import pytest

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


def test_one_choice_on_every_layer_and_the_reconstruction_beside_plain_masking(tmp_path):
    out = tmp_path / "every.json"
    overrides = ["dense.epochs=3", "finetune.epochs=0"]
    args = ["--every", "nm:2:4:4", "--modes", "plain", "reconstruct", "--seeds", "0", "--out", str(out)]
    results = main([*args, "--overrides", *overrides])
    assert {(c["pattern"], c["keep"], c["group"], c["w_bits"]) for c in results["policy"].values()} == {
        ("nm", 2, 4, 4)
    }
    assert len(results["policy"]) == 6  # every searched layer of the MNIST-1D CNN
    ((plain,), (fitted,)) = results["rows"]["plain"], results["rows"]["reconstruct"]
    assert fitted["test_loss"] < plain["test_loss"]


@pytest.mark.parametrize(
    ("every", "message"),
    [("nm:2", "PATTERN:KEEP:GROUP"), ("nm:2:four", "PATTERN:KEEP:GROUP"), ("nm:5:4", "keep must be in")],
)
def test_a_malformed_every_is_refused_before_any_training(every, message, capsys):
    with pytest.raises(SystemExit):
        main(["--every", every, "--overrides", "model=no_such_model"])
    assert message in capsys.readouterr().err
