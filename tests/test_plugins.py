"""A latency model and a searcher from outside the package, named by ``_target_`` as a ``model`` is.

Both are defined in this file only and reach rlprune through their import paths
(``tests.test_plugins.MacLatency``, ``tests.test_plugins.CountingSearch``); the short names
(``model: roofline``, ``name: ppo``) stay aliases of rlprune's own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf
from rlprune.agents import make_searcher, searcher_name
from rlprune.envs import PruneEnv

from rlprune import api
from rlprune.errors import ConfigError
from rlprune.hardware import LatencyModel, build_latency_model
from rlprune.layers import LayerInfo
from rlprune.policy import Choice
from tests.support import compose_config, make_env

HERE = "tests.test_plugins"


class MacLatency(LatencyModel):
    """Seconds proportional to the multiply-accumulates a choice keeps, at its widest bit-width."""

    def __init__(self, *, name: str, seconds_per_mac: float, batch_size: int = 1) -> None:
        super().__init__(name=name, batch_size=batch_size, bits=[8, 32], reference_bits=32)
        self.seconds_per_mac = seconds_per_mac

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "hardware config") -> MacLatency:
        """Build from a hardware node with ``_target_: tests.test_plugins.MacLatency``."""
        if cfg.get("seconds_per_mac", 0) <= 0:
            raise ConfigError(f"{where}: seconds_per_mac must be > 0")
        return cls(name=cfg["name"], seconds_per_mac=cfg["seconds_per_mac"])

    def _latency(self, layer: LayerInfo, choice: Choice) -> float:
        bits = max(choice.w_bits, choice.a_bits)
        return self.batch_size * layer.macs * choice.density * bits / 32 * self.seconds_per_mac


def mac_latency(name: str, seconds_per_mac: float) -> LatencyModel:
    """A factory: the callable form of a hardware ``_target_``."""
    return MacLatency(name=name, seconds_per_mac=seconds_per_mac, batch_size=4)


def not_a_model(name: str) -> str:
    """A factory that builds the wrong thing."""
    return name


PLAYED: list[tuple[float, int]] = []
"""(scale, seed) of every episode a :class:`CountingSearch` played."""


class CountingSearch:
    """Random actions of magnitude ``scale``, each episode recorded in :data:`PLAYED`."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def search(self, env: PruneEnv, seed: int) -> None:
        """Play until the problem's evaluations are spent."""
        rng = np.random.default_rng(seed)
        while not env.problem.exhausted:
            env.reset()
            PLAYED.append((self.scale, seed))
            done = False
            while not done:
                action = rng.uniform(-self.scale, self.scale, size=env.action_size).astype(np.float32)
                _, _, done, _, _ = env.step(action)


def test_a_hardware_target_builds_through_from_config_or_a_factory():
    model = build_latency_model({"_target_": f"{HERE}.MacLatency", "name": "macs", "seconds_per_mac": 1e-9})
    assert type(model) is MacLatency and model.name == "macs" and model.search_pattern == ("filter",)
    made = build_latency_model(
        OmegaConf.create({"_target_": f"{HERE}.mac_latency", "name": "m", "seconds_per_mac": 2e-9})
    )
    assert type(made) is MacLatency and made.batch_size == 4 and made.seconds_per_mac == 2e-9
    # from_config's own checks still speak
    with pytest.raises(ConfigError, match="seconds_per_mac must be > 0"):
        build_latency_model({"_target_": f"{HERE}.MacLatency", "name": "macs"})


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"_target_": "no_such_pkg.Model", "name": "x"}, r"_target_='no_such_pkg.Model' cannot be imported"),
        ({"_target_": f"{HERE}.MacLatency", "model": "roofline", "name": "x"}, "not both"),
        (
            {"_target_": f"{HERE}.not_a_model", "name": "x"},
            "built a str, not a rlprune.hardware.LatencyModel",
        ),
        ({"_target_": f"{HERE}.mac_latency", "name": "x", "speed": 1}, "rejects its fields"),
        ({"name": "x"}, "missing field 'model'.*or '_target_'"),
    ],
)
def test_a_bad_hardware_target_is_one_clear_error(node: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        build_latency_model(node)


def test_an_agent_target_is_built_with_its_arguments_and_searches():
    PLAYED.clear()
    searcher = make_searcher({"_target_": f"{HERE}.CountingSearch", "wall": "band", "scale": 0.5})
    assert isinstance(searcher, CountingSearch) and searcher.scale == 0.5
    env = make_env(evaluations=6)
    searcher.search(env, seed=3)
    assert env.problem.exhausted and env.problem.best is not None
    assert PLAYED and set(PLAYED) == {(0.5, 3)}
    assert searcher_name({"_target_": f"{HERE}.CountingSearch"}) == "CountingSearch"
    assert searcher_name({"name": "ppo"}) == "ppo"


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"_target_": "no_such_pkg.Search"}, r"agent._target_='no_such_pkg.Search' cannot be imported"),
        ({"_target_": f"{HERE}.CountingSearch", "speed": 2}, "rejects its arguments"),
        ({"_target_": "builtins.dict"}, "built a dict, which has no search"),
    ],
)
def test_a_bad_agent_target_is_one_clear_error(node: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        make_searcher(node)


@pytest.mark.slow
def test_a_run_searches_with_both_plugins(tmp_path):
    PLAYED.clear()
    cfg = compose_config(
        "dense.epochs=3",
        "search.evaluations=12",
        "finetune.epochs=1",
        "progress_bar=false",
        "wandb.mode=disabled",
        "search.bits=[32]",
        "budget.latency=0.6",
    )
    cfg.hardware = OmegaConf.create(
        {"_target_": f"{HERE}.MacLatency", "name": "macs", "seconds_per_mac": 1e-9}
    )
    cfg.agent = OmegaConf.create({"_target_": f"{HERE}.CountingSearch", "scale": 0.8})
    report = api.run(cfg, tmp_path)
    assert report["hardware"] == "macs" and report["search"]["agent"] == "CountingSearch"
    assert report["search"]["evaluations"] == 12 and report["latency"] <= 0.6 + 1e-9
    assert PLAYED and {scale for scale, _ in PLAYED} == {0.8}
    assert json.loads((tmp_path / "report.json").read_text())["search"]["agent"] == "CountingSearch"
    assert (tmp_path / "policy.yaml").is_file() and (tmp_path / "model.pt").is_file()
