"""A wheel install (not editable) finds its configs through pkg://rlprune.conf."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # builds a wheel, installs it in a fresh venv and runs it
def test_wheel_install_finds_packaged_configs(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            tmp_path / "dist",
            ROOT,
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("rlprune-*.whl"))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
        check=True,
        capture_output=True,
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    where = subprocess.run(
        [sys.executable, "-c", "import rlprune, rlprune.envs, rlprune.agents; print(rlprune.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target))
    info = subprocess.run(
        [sys.executable, "-m", "rlprune", "--info", "searchpath"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pkg://rlprune.conf" in info.stdout
    job = subprocess.run(
        [sys.executable, "-m", "rlprune", "--cfg", "job", "agent=sac", "hardware=a100"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "name: sac" in job.stdout
