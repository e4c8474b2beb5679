"""Fixtures: an isolated cache and system temp folder for the session, and a small search env."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from rlprune.envs import PruneEnv

from tests.support import make_env


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep generated datasets, dense baselines and W&B's own files out of the user's folders,
    shared by the session (subprocesses inherit them)."""
    os.environ["RLPRUNE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["WANDB_SILENT"] = "true"
    wandb = tmp_path_factory.mktemp("wandb")
    for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR", "ARTIFACT_DIR"):
        os.environ[f"WANDB_{name}"] = str(wandb / name.lower())


@pytest.fixture(scope="session", autouse=True)
def _system_temp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The session's system temp folder is one of pytest's, so nothing is left in the real one
    (subprocesses inherit ``TMPDIR``); at the end it must hold no ``SB3-*`` log folder, which
    stable-baselines3 makes there for an agent without a logger of its own."""
    folder = tmp_path_factory.mktemp("system_temp")
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(folder), str(folder)
    yield
    tempfile.tempdir = saved[0]
    if saved[1] is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = saved[1]
    left = sorted(p.name for p in folder.glob("SB3-*"))
    assert not left, f"the tests left SB3 log folders in the system temp folder: {left}"


@pytest.fixture
def env() -> PruneEnv:
    """A fresh search env at budget 0.5 on the a100 profile with N:M."""
    return make_env()
