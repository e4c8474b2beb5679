"""python -m rlprune.bench gpu --replay: local_gpu rebuilt from a saved deploy benchmark, no GPU.

The saved benchmark is made here the way the GPU run makes it, with the fake timer of
test_local_gpu standing in for the GPU: a table on a grid of 8 channels, whose ops pay extra
where the output channels are not a multiple of 16 (as tensor-core tiles do).
"""

from __future__ import annotations

import json

import pytest

from rlprune.bench.gpu import main as bench_gpu
from rlprune.bench.gpu_deploy import fidelity, local_table, random_policies, traced_zoo_model
from rlprune.bench.gpu_replay import ReplayTimer, replay, replay_row
from rlprune.errors import ConfigError
from rlprune.hardware import network_latency
from rlprune.hardware.factory import load_hardware_config
from rlprune.policy import Policy
from tests.test_local_gpu import FakeTimer

BATCH = 4


class TiledTimer(FakeTimer):
    """The fake timer, with a layer whose output channels miss a multiple of 16 running 30% slower."""

    def op_seconds(self, specs):
        return [
            t * (1.3 if s.c_out % 16 else 1.0) for s, t in zip(specs, super().op_seconds(specs), strict=True)
        ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A deploy benchmark of ResNet-20 at batch 4 as the GPU run saves it, at a channel step of 8
    finer than its config's 16."""
    folder = tmp_path_factory.mktemp("replay")
    timer = TiledTimer(constant=3e-5, scales={"dense": 1.2, "sparse": 1.0, "int8": 1.0, "int8_sparse": 1.0})
    config = load_hardware_config("local_gpu")[0]
    config |= {"batch_size": BATCH, "cache_dir": str(folder), "channel_step": 16}  # run finer: 8
    model, inputs, layers, couplings = traced_zoo_model("resnet20")
    policies = [Policy(), *random_policies(layers, couplings, 12, seed=1)]
    local, config_grid = local_table(config, timer, layers, couplings, policies, step=8)
    timer.table = local  # the fake network's law: this table's ops, scaled, plus a constant
    constant = local.calibrate(model, inputs(BATCH))
    measured = timer.network_seconds(model, policies, inputs(BATCH))
    predicted = [network_latency(local, layers, p, couplings) + constant for p in policies]
    ratios = [m / measured[0] for m in measured[1:]]
    row = {
        "batch": BATCH,
        "channel_step": local.channel_step,
        "table": {**config_grid, **local.table},
        "fitted_networks": local.fitted_networks,
        "measured_ratio": ratios,
        "local_gpu": fidelity([p / predicted[0] for p in predicted[1:]], ratios),
        "timed_again": fidelity(ratios, ratios),
    }
    report = {
        "device": "fake",
        "torch": "x",
        "models": [{"model": "resnet20", "choices": [p.to_dict() for p in policies], "batches": [row]}],
    }
    path = folder / "gpu_deploy.json"
    path.write_text(json.dumps(report))
    return path, report


def test_replay_reproduces_the_recorded_predictions(saved):
    path, report = saved
    (row,) = replay(path)
    recorded = report["models"][0]["batches"][0]["local_gpu"]
    assert row["channel_step"] == 8
    assert row["local_gpu"]["mape"] == pytest.approx(recorded["mape"], abs=1e-12)
    assert row["local_gpu"]["mape"] < 1e-9  # the fake network is the table's own law
    assert row["constant_s"] == pytest.approx(3e-5, rel=1e-6)


def test_a_coarser_grid_replays_from_a_finer_one_and_shows_what_it_misses(saved):
    path, _ = saved
    (row,) = replay(path, channel_step=16)
    # widths at odd multiples of 8 are interpolated between multiples of 16: the tile penalty is lost
    assert row["channel_step"] == 16 and row["local_gpu"]["mape"] > 1e-3


def test_a_finer_grid_than_measured_names_the_fix(saved):
    _, report = saved
    model = report["models"][0]
    with pytest.raises(ConfigError, match="--channel-step"):
        replay_row(traced_zoo_model("resnet20"), model["choices"], model["batches"][0], {"gpu": "fake"}, 4)


def test_a_network_not_timed_is_an_error():
    timer = ReplayTimer({"gpu": "fake"}, {}, [])
    with pytest.raises(ConfigError, match="did not time"):
        timer.network_seconds(None, [Policy()], None)


def test_the_command_prints_one_line_per_model_and_batch(saved, capsys):
    path, _ = saved
    bench_gpu(["--replay", str(path)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnet20 b=4 step 8: replayed MAPE 0.0%")
