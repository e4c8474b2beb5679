"""Fixtures: an isolated cache for the session and a small search env."""

from __future__ import annotations

import os

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


@pytest.fixture
def env() -> PruneEnv:
    """A fresh search env at budget 0.5 on the a100 profile with N:M."""
    return make_env()
