"""A budget sweep on Hydra's joblib launcher, then its Pareto report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlprune.pareto import Point, pareto_front


@pytest.mark.slow  # end to end: trains, searches and finetunes in a subprocess
def test_a_sweep_keeps_the_finished_jobs_when_one_fails_and_reports_their_front(tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "rlprune", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    command += ["budget.latency=0.001,0.3,0.5", f"hydra.sweep.dir={sweep}", "search.evaluations=30"]
    command += ["finetune.epochs=1", "dense.epochs=3", "wandb.mode=disabled"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    # jobs side by side draw no progress bars: they would draw over each other's
    assert "evaluations ━" not in result.stdout and "finetune steps" not in result.stdout
    assert result.returncode != 0  # the infeasible budget fails its job ...
    assert "budget.latency=0.001 is below the cheapest reachable latency" in result.stderr
    assert (sweep / "0" / "error.log").exists()
    assert (sweep / "1" / "report.json").exists() and (
        sweep / "2" / "report.json"
    ).exists()  # ... not the others

    report = subprocess.run(
        [sys.executable, "-m", "rlprune.pareto", str(sweep)], capture_output=True, text=True, timeout=300
    )
    assert report.returncode == 0, report.stderr
    table = json.loads((sweep / "pareto.json").read_text())
    assert table["failed_runs"] == ["0"]
    runs = {p["run"]: p for p in table["points"]}
    assert set(runs) == {"1", "2", "dense"}
    assert runs["1"]["latency"] <= 0.3 + 1e-9 and runs["2"]["latency"] <= 0.5 + 1e-9
    assert any(p["pareto"] for p in table["points"])
    assert (sweep / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pareto" in report.stdout


@pytest.mark.slow  # end to end: trains, searches and finetunes in a subprocess
def test_the_same_sweep_runs_on_submitit(tmp_path):
    # submitit_local runs each job as its own process, as submitit_slurm would on a cluster
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "rlprune", "-m", "hydra/launcher=submitit_local"]
    command += ["budget.latency=0.5,0.7", "hardware=arm_cpu,a100", f"hydra.sweep.dir={sweep}"]
    command += ["search.evaluations=10", "finetune.epochs=1", "dense.epochs=3", "progress_bar=false"]
    command += ["wandb.mode=disabled"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    reports = [json.loads((sweep / str(job) / "report.json").read_text()) for job in range(4)]
    assert {(r["hardware"], r["budget"]) for r in reports} == {
        (hw, b) for hw in ("arm_cpu", "a100") for b in (0.5, 0.7)
    }


@pytest.mark.parametrize(
    ("sweep_value", "message"),
    [
        ("budget.latency=0.3,1.5", "budget.latency=1.5 is not allowed"),
        ("search.evaluations=5,abc", "Error merging override search.evaluations=abc"),
        ("agent=ppo,alphazero", "Could not find 'agent/alphazero'"),
    ],
)
def test_a_sweep_over_an_invalid_value_fails_before_any_job_starts(tmp_path, sweep_value, message):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "rlprune", "-m", sweep_value, f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "is refused, so no job was started" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not sweep.exists()


def test_the_front_keeps_only_undominated_points_per_hardware():
    def point(hw: str, latency: float, accuracy: float) -> Point:
        return Point("r", hw, "ppo", latency, latency, accuracy, accuracy)

    points = [
        point("a", 0.3, 0.90),  # front: fastest
        point("a", 0.5, 0.95),  # front: more accurate
        point("a", 0.6, 0.94),  # dominated by the 0.5 point
        point("a", 0.5, 0.95),  # a tie is not domination
        point("b", 0.6, 0.94),  # another hardware: its own front
    ]
    assert pareto_front(points) == [True, True, False, True, True]
