"""Resumable search: kill a search midway, rerun it with resume=true, and it goes on."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlprune.resume import fingerprint
from tests.support import compose_config

QUICK = ["dense.epochs=3", "finetune.epochs=1", "progress_bar=false", "wandb.mode=disabled"]


def _command(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "rlprune", f"hydra.run.dir={run_dir}", *QUICK, *overrides]


def _interrupt_after_checkpoint(run_dir: Path, *overrides: str) -> str:
    process = subprocess.Popen(
        _command(run_dir, *overrides), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    state = run_dir / "checkpoint" / "search.json"
    deadline = time.monotonic() + 180
    while not state.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert state.exists(), "the search never wrote a checkpoint"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    return stderr


@pytest.mark.slow  # end to end: trains, searches and finetunes in a subprocess
def test_a_killed_search_resumes_from_its_checkpoint(tmp_path):
    # the first checkpoint after the warm start (uniform policies, centre, profile: 44.75) holds the agent
    run = ["search.evaluations=300", "search.checkpoint_every=50"]
    stderr = _interrupt_after_checkpoint(tmp_path, *run)
    assert f"rerun with resume=true hydra.run.dir={tmp_path}" in stderr
    assert not (tmp_path / "report.json").exists()
    saved = json.loads((tmp_path / "checkpoint" / "search.json").read_text())
    assert saved["used"] >= 50 and saved["agent"]
    assert (tmp_path / "checkpoint" / "agent.zip").stat().st_size > 0
    assert not [p for p in tmp_path.rglob("*.tmp")]

    fresh = subprocess.run(_command(tmp_path, *run), capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 2 and "add resume=true to continue" in fresh.stderr

    resumed = subprocess.run(
        _command(tmp_path, *run, "resume=true"), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    started = float(resumed.stdout.split("resuming the search at evaluation ")[1].split()[0])
    assert started >= saved["used"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["search"]["evaluations"] == 300
    # the best policy of the first part is kept: the answer is at least as good as it was
    assert report["accuracy"]["search_best_reward"] >= max(b["accuracy"] for b in saved["best"])

    again = subprocess.run(
        _command(tmp_path, *run, "resume=true"), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 2 and "already finished" in again.stderr


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    _interrupt_after_checkpoint(tmp_path, "search.evaluations=300", "search.checkpoint_every=10")
    other = subprocess.run(
        _command(tmp_path, "search.evaluations=300", "budget.latency=0.5", "resume=true"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 2 and "was made with another config" in other.stderr


def test_resume_without_a_checkpoint_says_so(tmp_path):
    result = subprocess.run(_command(tmp_path, "resume=true"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "holds no checkpoint" in result.stderr


@pytest.mark.parametrize(
    "free",
    [
        "search.evaluations=50",
        "progress_bar=true",
        "wandb.mode=offline",
        "finetune.epochs=1",
        "agent.n_envs=2",
    ],
)
def test_the_fingerprint_ignores_what_a_resume_may_change_only(free):
    base = fingerprint(compose_config())
    assert fingerprint(compose_config(free)) == base
    assert fingerprint(compose_config("budget.latency=0.5")) != base


def test_scores_on_part_of_the_split_checkpoint_where_they_cross_a_multiple(tmp_path):
    from rlprune.agents import EvolutionSearch

    from rlprune.api import _checkpoint
    from rlprune.resume import SearchCheckpoint
    from tests.support import make_env

    cfg = compose_config("search.checkpoint_every=2")
    problem = make_env(samples=64, evaluations=10).problem
    _checkpoint(cfg, problem, EvolutionSearch(), tmp_path)
    state = tmp_path / "checkpoint" / "search.json"
    picks = [(0, 0)] * len(problem.space)
    used = []
    for _ in range(11):  # 0.375 of an evaluation each
        problem.score(picks, samples=24)
        used.append(json.loads(state.read_text())["used"] if state.exists() else None)
    assert used == [None] * 5 + [2.25] * 5 + [4.125]
    fresh = make_env(samples=64, evaluations=10).problem
    SearchCheckpoint(tmp_path / "checkpoint", cfg).restore(fresh)
    assert fresh.used == 4.125 and fresh.scored == 11
