"""End-to-end: the command line, as a user runs it, in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

QUICK = ["search.evaluations=40", "finetune.epochs=1", "dense.epochs=3", "progress_bar=false"]


def rlprune(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlprune", f"hydra.run.dir={run_dir}", *overrides],
        capture_output=True,
        text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        timeout=600,
    )


@pytest.mark.slow  # end to end: trains, searches and finetunes in a subprocess
@pytest.mark.parametrize("n_envs", [1, 2])  # 2: workers forked from a process that runs W&B's threads
def test_quick_run_writes_report_policy_model_and_wandb(tmp_path, n_envs):
    result = rlprune(tmp_path, "agent=ppo", "budget.latency=0.4", f"agent.n_envs={n_envs}", *QUICK)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["budget"] == 0.4 and report["latency"] <= 0.4 + 1e-9
    assert report["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")  # device=auto
    assert 0 < report["size_ratio"] < 1
    for key in (
        "dense_test",
        "search_best_reward",
        "pruned_test_before_finetune",
        "pruned_test_after_finetune",
    ):
        assert 0.0 <= report["accuracy"][key] <= 1.0
    assert report["search"]["agent"] == "ppo" and report["search"]["evaluations"] == 40
    assert len(report["layers"]) == 6 and {"layer", "pattern", "keep", "group", "w_bits"} <= set(
        report["layers"][0]
    )
    policy = yaml.safe_load((tmp_path / "policy.yaml").read_text())
    assert policy["latency"] == pytest.approx(report["latency"], abs=1e-6)
    assert set(policy["layers"]) == {row["layer"] for row in report["layers"]}
    assert (tmp_path / "model.pt").stat().st_size > 0
    (offline,) = (tmp_path / "wandb").glob("offline-run-*")
    # the per-layer bar charts and the SB3 agent's training curves are in the offline run
    charts = {
        p.name.split("_table_")[0] for p in (offline / "files" / "media" / "table" / "policy").iterdir()
    }
    assert charts == {"sparsity", "bits"}
    history = next(offline.glob("run-*.wandb")).read_bytes()
    assert all(
        key in history for key in (b"agent/train/loss", b"agent/rollout/ep_rew_mean", b"search/accuracy")
    )
    assert "latency %" in result.stdout and "after finetune" in result.stdout


def test_valid_agent_names_are_listed_for_an_unknown_agent(tmp_path):
    result = rlprune(tmp_path, "agent=alphazero")
    assert "Available options in 'agent'" in result.stderr
    for name in ("ppo", "sac", "uniform", "random"):
        assert name in result.stderr


@pytest.mark.slow  # end to end: trains, searches and finetunes in a subprocess
def test_same_seed_gives_a_byte_identical_policy_and_another_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        result = rlprune(tmp_path / name, "agent=random", f"seed={seed}", "wandb.mode=disabled", *QUICK)
        assert result.returncode == 0, result.stderr
        runs[name] = (tmp_path / name / "policy.yaml").read_bytes()
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


@pytest.mark.slow  # end to end: trains, searches and finetunes in a subprocess
@pytest.mark.parametrize(
    ("overrides", "metric"),
    [
        (
            ["finetune.mask=nm", "finetune.nm.keep=2", "finetune.nm.group=4", "finetune.srste.decay=2e-4"],
            "sad",
        ),
        (["finetune.mask=learned"], "confidence"),
    ],
)
def test_finetune_mask_families_from_the_cli_report_their_metrics(tmp_path, overrides, metric):
    # the default logger (W&B offline): its layer table takes rows with and without mask metrics
    overrides = [*overrides, "finetune.srste.refresh_steps=5"] if metric == "sad" else overrides
    result = rlprune(tmp_path, "agent=random", *QUICK, *overrides)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["finetune"]["mask"] == overrides[0].split("=")[1]
    assert any(row.get(metric) is not None for row in report["layers"])
    assert all("log10_mask_diversity" in row for row in report["layers"] if row["searched"])
    assert len({tuple(row) for row in report["layers"]}) == 1
    assert report["budget_auto"] and report["cheapest_latency"] < report["budget"] <= 1
    (table,) = (tmp_path / "wandb").glob("offline-run-*/files/media/table/layers_*.table.json")
    assert json.loads(table.read_text())["columns"] == list(report["layers"][0])


@pytest.mark.slow  # end to end: trains, searches and finetunes in a subprocess
def test_a_run_whose_tracking_fails_keeps_its_outputs_says_so_in_one_line_and_exits_3(tmp_path):
    unusable = tmp_path / "not_a_folder"
    unusable.write_text("")  # W&B stages the layer table and the artifact there: they fail
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "rlprune", f"hydra.run.dir={run}", "agent=random", *QUICK],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_DATA_DIR": str(unusable)},
        timeout=600,
    )
    assert result.returncode == 3, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"error: the run finished and wrote its outputs in {run}, but W&B tracking failed")
    assert "Traceback" not in result.stderr + result.stdout
    assert all((run / name).stat().st_size > 0 for name in ("report.json", "policy.yaml", "model.pt"))
    assert "WANDB_DATA_DIR" in (run / "tracking_error.log").read_text()
    assert not (run / "error.log").exists()  # the run did not fail: a sweep's Pareto report keeps it


def test_help_explains_rlprune_its_commands_config_groups_and_docs():
    result = subprocess.run(
        [sys.executable, "-m", "rlprune", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "powered by Hydra" not in text
    assert text.startswith("rlprune: an RL agent picks")
    assert "python -m rlprune -m" in text and "python -m rlprune --cfg job" in text
    assert "hardware: a100, arm_cpu," in text and "agent: a2c, amc," in text  # $APP_CONFIG_GROUPS
    assert "README.md" in text and "docs/" in text
