"""W&B tracking: layer rows of one shape, and a logging failure recorded, never raised."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from rlprune import pareto
from rlprune.hardware import build_latency_model
from rlprune.layers import discover_layers
from rlprune.models import MNIST1DCNN
from rlprune.policy import Choice, Pattern, Policy
from rlprune.report import METRIC_HEADERS, layer_rows
from rlprune.tracking import Tracker
from tests.support import hardware_config


def _rows(metrics: dict[str, dict[str, float]]) -> list[dict]:
    """The report rows of the MNIST-1D CNN, two layers masked and the others dense, with ``metrics``."""
    model = MNIST1DCNN().eval()
    layers = discover_layers(model, torch.randn(1, 1, 40))
    masked = Choice(Pattern.NM, 2, 4, 8, 8)
    policy = Policy(tuple((layer.name, masked) for layer in layers[1:3]))
    return layer_rows(layers, policy, build_latency_model(hardware_config("arm_cpu")), {}, metrics)


def test_layer_rows_have_the_same_keys_when_only_some_layers_have_mask_metrics() -> None:
    # SR-STE gives SAD to refreshed layers only, Gumbel top-k confidence and diversity to learned ones
    rows = _rows(
        {"conv2": {"log10_mask_diversity": 3.0, "sad": 0.1}, "conv3": {"confidence": 0.5, "diversity": 0.9}}
    )
    assert len({tuple(row) for row in rows}) == 1
    assert set(METRIC_HEADERS) <= set(rows[0])
    by_name = {row["layer"]: row for row in rows}
    assert by_name["conv2"]["sad"] == 0.1 and by_name["conv2"]["confidence"] is None
    assert by_name["conv3"]["diversity"] == 0.9 and by_name["conv3"]["log10_mask_diversity"] is None
    assert all(by_name["conv1"][metric] is None for metric in METRIC_HEADERS)


def _table(run_dir: Path, key: str) -> dict:
    (path,) = (run_dir / "wandb").glob(f"offline-run-*/files/media/table/{key}_*.table.json")
    return json.loads(path.read_text())


def test_a_table_of_records_with_different_keys_is_logged_with_every_column(tmp_path: Path) -> None:
    tracker = Tracker("offline", "rlprune-test", tmp_path, {})
    tracker.log_table(
        "layers", [{"layer": "a", "sad": 0.5}, {"layer": "b"}, {"layer": "c", "confidence": 1.0}]
    )
    tracker.finish()
    assert tracker.failures == []
    table = _table(tmp_path, "layers")
    assert table["columns"] == ["layer", "sad", "confidence"]
    assert table["data"] == [["a", 0.5, None], ["b", None, None], ["c", None, 1.0]]


def _staged() -> set[Path]:
    """The files in W&B's staging folder (under WANDB_DATA_DIR, which conftest points at a temporary one)."""
    return set((Path(os.environ["WANDB_DATA_DIR"]) / "artifacts" / "staging").rglob("*"))


def test_an_artifact_takes_files_and_folders_and_copies_none(tmp_path: Path) -> None:
    # a Hugging Face model's output is a folder (model_hf/) beside the run's files
    (tmp_path / "model_hf").mkdir()
    (tmp_path / "model_hf" / "model.safetensors").write_bytes(b"\0" * 4096)
    (tmp_path / "model.pt").write_bytes(b"\0" * 4096)
    staged = _staged()
    tracker = Tracker("offline", "rlprune-test", tmp_path, {})
    tracker.log_artifact("compressed", "model", [tmp_path / "model.pt", tmp_path / "model_hf"])
    tracker.finish()
    assert tracker.failures == []
    assert _staged() == staged  # an offline run is never uploaded: a staged copy would stay for good


def test_a_logging_failure_is_recorded_in_one_line_and_the_rest_is_still_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unusable = tmp_path / "not_a_folder"
    unusable.write_text("")
    monkeypatch.setenv("WANDB_DATA_DIR", str(unusable))  # W&B stages tables and artifacts there
    tracker = Tracker("offline", "rlprune-test", tmp_path / "run", {})
    tracker.log_table("layers", [{"layer": "a"}])
    tracker.log_summary({"accuracy": {"test": 0.9}})
    tracker.finish()
    assert len(tracker.failures) == 1 and tracker.failures[0].startswith("layers: ")
    assert "\n" not in tracker.failure and "WANDB_DATA_DIR" in tracker.failure
    assert "Traceback" in tracker.tracebacks[0]
    (record,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    # the summary after the failed table; W&B's writer process may append it a moment after
    # finish() returns (once in about 25 runs beside a busy process, the record lacked it)
    deadline = time.monotonic() + 10.0
    while b"accuracy/test" not in record.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b"accuracy/test" in record.read_bytes()


def test_a_disabled_tracker_logs_nothing_and_fails_nothing(tmp_path: Path) -> None:
    tracker = Tracker("disabled", "rlprune-test", tmp_path, {})
    tracker.log_table("layers", [{"layer": "a"}])
    tracker.finish()
    assert not tracker.enabled and tracker.failure is None
    assert not (tmp_path / "wandb").exists()


def _sweep_folder(folder: Path) -> Path:
    """A folder with two finished runs' reports, as ``rlprune.pareto`` reads them."""
    for run, (budget, latency, accuracy) in enumerate([(0.5, 0.49, 0.93), (0.7, 0.68, 0.95)]):
        report = {
            "hardware": "arm_cpu",
            "budget": budget,
            "latency": latency,
            "search": {"agent": "ppo"},
            "accuracy": {
                "pruned_test_after_finetune": accuracy,
                "search_best_reward": accuracy,
                "dense_test": 0.96,
            },
        }
        (folder / str(run)).mkdir(parents=True)
        (folder / str(run) / "report.json").write_text(json.dumps(report))
    return folder


def test_the_pareto_table_is_logged_offline(tmp_path: Path) -> None:
    folder = _sweep_folder(tmp_path / "sweep")
    pareto.main([str(folder), "--wandb", "offline"])
    table = _table(folder, "pareto")
    assert table["columns"][:3] == ["run", "hardware", "agent"] and len(table["data"]) == 3  # two runs, dense


def test_a_pareto_report_whose_tracking_fails_exits_3_with_its_files_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    unusable = tmp_path / "not_a_folder"
    unusable.write_text("")
    monkeypatch.setenv("WANDB_DATA_DIR", str(unusable))
    folder = _sweep_folder(tmp_path / "sweep")
    with pytest.raises(SystemExit) as stop:
        pareto.main([str(folder), "--wandb", "offline"])
    assert stop.value.code == 3
    assert "error: W&B logging failed (pareto: PermissionError" in capsys.readouterr().err
    assert (folder / "pareto.json").exists() and (folder / "pareto.png").exists()
