"""The default budget (``budget.latency=auto``): derived from the reachable range, so every shipped
model reaches it on every shipped hardware; a budget the user types is kept, or refused clearly."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from rlprune.envs import SearchSpace

from rlprune.api import describe, make_space, resolve_budget
from rlprune.errors import BudgetError
from rlprune.hardware import build_latency_model
from tests.support import CONF, compose_config
from tests.test_cli import QUICK, rlprune

EMBEDDED = ("mnist1d", "digits")
# the two CNNs are built for their dataset's input; the zoo's networks take either
PAIRS = (
    [("mnist1d_cnn", "mnist1d"), ("digits_cnn", "digits")]
    + [(model, data) for model in ("resnet20", "vgg", "densenet", "mobilenetv2", "vit") for data in EMBEDDED]
    + [("tiny_lm", "text")]
)
# local_cpu measures its table on this machine (minutes per network): only the default target, slow;
# local_gpu measures the CUDA GPU at hand: where there is one (tests/test_local_gpu.py covers it elsewhere)
MEASURED = {"local_cpu"} | (set() if torch.cuda.is_available() else {"local_gpu"})
HARDWARE = sorted(path.stem for path in (CONF / "hardware").glob("*.yaml") if path.stem not in MEASURED)


def _slow(model: str, data: str, hardware: str) -> bool:
    # BitFusion's latency model calibrates on the network layer by layer (seconds per network)
    return hardware == "bitfusion" and (model, data) != ("mnist1d_cnn", "mnist1d")


CASES = [
    pytest.param(model, data, hardware, marks=[pytest.mark.slow] if _slow(model, data, hardware) else [])
    for model, data in PAIRS
    for hardware in HARDWARE
] + [pytest.param("mnist1d_cnn", "mnist1d", "local_cpu", marks=[pytest.mark.slow])]


@functools.cache
def _described(model: str, data: str) -> tuple:
    return describe(compose_config(f"model={model}", f"data={data}"))


def _space(model: str, data: str, hardware: str, *overrides: str) -> tuple[SearchSpace, object]:
    """The search space and config of ``python -m rlprune model=M data=D hardware=H`` (untrained weights:
    the latency does not depend on them)."""
    cfg = compose_config(f"model={model}", f"data={data}", f"hardware={hardware}", *overrides)
    net, splits, layers, searched = _described(model, data)
    device = build_latency_model(OmegaConf.to_container(cfg.hardware, resolve=True))
    return make_space(cfg, net, splits.train_x[:1], layers, searched, device), cfg


def test_the_shipped_default_is_auto() -> None:
    cfg = compose_config()
    assert cfg.budget.latency == "auto" and 0 < cfg.budget.auto_share <= 1


@pytest.mark.parametrize(("model", "data", "hardware"), CASES)
def test_every_shipped_model_reaches_the_default_budget_on_every_shipped_hardware(
    model: str, data: str, hardware: str
) -> None:
    space, cfg = _space(model, data, hardware)
    budget = resolve_budget(cfg.budget.latency, cfg.budget.auto_share, space)
    assert budget.auto and budget.floor == space.cheapest()
    # the share of the room between the floor and dense, rounded up to 3 decimals
    assert budget.floor + cfg.budget.auto_share * (1 - budget.floor) <= budget.latency <= 1.0
    assert budget.latency - budget.floor >= cfg.budget.auto_share * (1 - budget.floor) - 1e-12
    space.check_budget(budget.latency)  # reachable: the env's own check passes


def test_auto_is_the_share_of_the_way_from_the_floor_to_dense_rounded_up() -> None:
    space, _ = _space("mnist1d_cnn", "mnist1d", "a100")
    floor = space.cheapest()
    for share in (0.05, 0.1, 0.5, 1.0):
        budget = resolve_budget("auto", share, space)
        assert budget.latency == min(1.0, math.ceil((floor + share * (1 - floor)) * 1000) / 1000)
    assert resolve_budget("auto", 1.0, space).latency == 1.0


def test_a_typed_budget_is_kept_and_an_unreachable_one_refused_naming_the_floor() -> None:
    space, _ = _space("mnist1d_cnn", "mnist1d", "arm_cpu")
    floor = space.cheapest()
    typed = resolve_budget(0.5, 0.1, space)
    assert (typed.latency, typed.auto, typed.floor) == (0.5, False, floor)
    with pytest.raises(BudgetError, match=f"below the cheapest reachable latency {floor:.4f}"):
        resolve_budget(floor / 2, 0.1, space)


def test_a_space_with_no_policy_faster_than_dense_says_so_not_a_budget_above_one(monkeypatch) -> None:
    # as int8 alone on a toy network on local_cpu: every int8 op slower than the float one
    space, _ = _space("mnist1d_cnn", "mnist1d", "arm_cpu")
    monkeypatch.setattr(space, "cheapest", lambda: 1.0682)
    for budget in ("auto", 1.0):
        with pytest.raises(BudgetError, match=r"no policy is faster than the dense model .* 1\.0682"):
            resolve_budget(budget, 0.1, space)


@pytest.mark.parametrize(
    ("model", "data", "hardware"),
    [
        ("mnist1d_cnn", "mnist1d", "a100"),  # the old default (0.25) was below these floors
        ("mnist1d_cnn", "mnist1d", "h200"),
        ("digits_cnn", "digits", "jetson_orin"),
    ],
)
def test_the_main_command_runs_within_the_default_budget(
    tmp_path, model: str, data: str, hardware: str
) -> None:
    result = rlprune(tmp_path, f"model={model}", f"data={data}", f"hardware={hardware}", *QUICK)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["budget_auto"] and report["cheapest_latency"] < report["budget"] < 1
    assert report["latency"] <= report["budget"] + 1e-9


@pytest.mark.parametrize(
    ("best", "auto", "hinted"), [(0.93, True, False), (0.38, True, True), (0.38, False, True)]
)
def test_a_costly_budget_is_named_with_the_floor_and_what_to_change(best, auto, hinted):
    from rich.console import Console

    from rlprune.report import print_report
    from tests.support import printable_report

    report = printable_report(budget=0.423, budget_auto=auto, cheapest_latency=0.358)
    report["accuracy"] |= {"dense_reward": 0.9625, "search_best_reward": best}
    console = Console(record=True, width=400)
    print_report(report, console)
    text = console.export_text()
    assert ("warning: the best policy scores" in text) is hinted
    if hinted:
        assert (
            f"0.3800 on the reward split, 0.5825 under the dense network; budget 0.423{' (auto)' * auto} is "
            "0.065 above the cheapest latency this device reaches (0.358): a larger budget keeps more" in text
        )
