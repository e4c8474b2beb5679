"""benchmarks/gpu_session.sh: the steps it runs and the status it ends with, checked on any
machine with a stand-in ``python3`` that records its commands (the steps need a CUDA GPU)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
# answers the GPU's name, fails the deploy bench of one model, writes a search's run folder, and
# records every call
STAND_IN = """#!/bin/bash
echo "$*" >> "$CALLS"
case "$*" in
  *"import torch"*) echo h100;;
  *"--models mobilenetv2"*) exit 7;;
  *"hydra.run.dir="*) last=${*: -1}; run_dir=${last#hydra.run.dir=}; mkdir -p "$run_dir"
    touch "$run_dir/report.json" "$run_dir/policy.yaml" "$run_dir/model.pt";;
esac
"""


def session(tmp_path: Path, *steps: str, cache: bool = True) -> tuple[int, list[str]]:
    """Run the script with the stand-in; ``cache=False`` leaves it to make its own cache folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(STAND_IN)
    (bin_dir / "python3").chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls)}
    env.pop("RLPRUNE_CACHE", None)
    env["TMPDIR"] = str(tmp_path / "tmp")  # where mktemp puts the cache it makes
    (tmp_path / "tmp").mkdir()
    if cache:
        env["RLPRUNE_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out"), *steps], cwd=tmp_path, env=env, timeout=60
    )
    return done.returncode, calls.read_text().splitlines()


def test_every_step_runs_in_order_and_the_first_failure_is_the_status(tmp_path):
    status, calls = session(tmp_path)
    tests = calls.index(next(c for c in calls if c.startswith("-m pytest")))
    assert "tests/test_local_gpu.py" in calls[tests] and "-m rlprune" not in " ".join(calls[:tests])
    runs = [c for c in calls if c.startswith("-m rlprune")]
    assert runs[0].startswith("-m rlprune model=vit")
    assert {"hardware=local_gpu", "device=cuda", "budget.latency=0.8"} <= set(runs[0].split())
    models = [c.split("--models ")[1].split()[0] for c in runs[1:]]
    assert models == ["resnet20", "mobilenetv2", "vit", "lm"]  # the failed one does not stop the rest
    assert f"--out {tmp_path / 'out'}/gpu_deploy_h100_vit.json" in runs[3]
    assert status == 7
    # a lent machine brings back at most 8 files: the search's networks stay, its report comes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "vit_local_gpu_policy.yaml",
        "vit_local_gpu_report.json",
    ]
    assert list((tmp_path / "cache" / "runs").glob("vit_local_gpu_*/model.pt"))


def test_named_steps_run_alone(tmp_path):
    status, calls = session(tmp_path, "vit")
    runs = [c for c in calls if c.startswith("-m rlprune")]
    assert status == 0 and len(runs) == 1 and "--models vit" in runs[0]


def test_a_cache_folder_the_script_made_is_removed_when_it_ends(tmp_path):
    status, calls = session(tmp_path, "vit", cache=False)
    assert status == 0 and any("--models vit" in c for c in calls)
    assert not list((tmp_path / "tmp").iterdir())
