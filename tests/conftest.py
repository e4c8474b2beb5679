"""Fixtures: an isolated cache for the session and a small search env."""

from __future__ import annotations

import os

import pytest
from rlprune.envs import PruneEnv

from tests.support import make_env


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep generated datasets and dense baselines out of the user's cache, shared by the session."""
    os.environ["RLPRUNE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["WANDB_SILENT"] = "true"


@pytest.fixture
def env() -> PruneEnv:
    """A fresh search env at budget 0.5 on the a100 profile with N:M."""
    return make_env()
