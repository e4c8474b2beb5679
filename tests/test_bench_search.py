"""The search benchmark, small: every cell is a real search and finetune; JSON and PNG come out."""

from __future__ import annotations

import json

import pytest


def test_search_bench_scores_feasible_budgets_and_lists_infeasible_ones(tmp_path, monkeypatch, capsys):
    from rlprune.bench import search
    from rlprune.bench.search import main

    turns, run_cell = [], search.run_cell

    def recorded(cfg, *args):
        turns.append((cfg.agent.name, int(cfg.seed)))
        return run_cell(cfg, *args)

    monkeypatch.setattr(search, "run_cell", recorded)
    out = tmp_path / "search.json"
    results = main(
        [
            "--targets",
            "mnist1d-arm_cpu",
            "--budgets",
            "0.5",
            "0.05",
            "--agents",
            "uniform",
            "random:search.bits=[8]",
            "--seeds",
            "0",
            "1",
            "--evaluations",
            "6",
            "--finetune-epochs",
            "1",
            "--out",
            str(out),
            "--overrides",
            "dense.epochs=3",
        ]
    )
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(results))
    assert out.with_suffix(".png").stat().st_size > 0
    (target,) = data["targets"]
    infeasible = [c for c in target["cells"] if "infeasible" in c]
    assert [c["budget"] for c in infeasible] == [0.05]
    scored = [c for c in target["cells"] if "runs" in c]
    assert [c["agent"] for c in scored] == ["uniform", "random:search.bits=[8]"]
    for cell in scored:
        assert [r["seed"] for r in cell["runs"]] == [0, 1]
        assert cell["latency_max"] <= 0.5 + 1e-9
        assert 0 < cell["accuracy_mean"] <= 1 and 0 < cell["test_after_finetune_mean"] <= 1
        assert all(r["evaluations"] <= 6 and r["evaluations_per_second"] > 0 for r in cell["runs"])
    random_cell = scored[1]  # its own search space: 8-bit only
    assert all(r["evaluations"] == 6 and r["bits"] == [8] for r in random_cell["runs"])
    assert turns == [("uniform", 0), ("random", 0), ("uniform", 1), ("random", 1)]  # seed by seed
    # each search is reported as it ends, with its scores
    shown = [line.split(": reward ") for line in capsys.readouterr().err.splitlines() if ": reward " in line]
    assert [head for head, _ in shown] == [
        f"mnist1d-arm_cpu 0.5 {cell['agent']} seed {seed}" for seed in (0, 1) for cell in scored
    ]
    runs = [cell["runs"][seed] for seed in (0, 1) for cell in scored]
    assert [float(tail.split(",")[0]) for _, tail in shown] == [round(r["accuracy"], 4) for r in runs]


def test_the_hard_suite_searches_its_own_budgets_and_gives_95_percent_intervals(tmp_path):
    import math

    import pytest

    from rlprune.bench.search import SUITES, interval95, main

    assert interval95([1.0, 2.0, 3.0]) == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert interval95([0.5]) == 0.0
    assert {t for t, _ in SUITES["hard"]} >= {"digits-mobilenetv2-arm_cpu", "digits-resnet20-arm_cpu"}
    out = tmp_path / "hard.json"
    common = ["--agents", "evolution", "--seeds", "0", "1", "--evaluations", "6", "--finetune-epochs", "1"]
    main(
        [
            "--suite",
            "hard",
            "--targets",
            "mnist1d-arm_cpu",
            *common,
            "--out",
            str(out),
            "--overrides",
            "dense.epochs=3",
        ]
    )
    data = json.loads(out.read_text())
    assert data["suite"] == "hard" and data["spread"] == "ci95"
    (target,) = data["targets"]  # the default target, at its floor
    (cell,) = target["cells"]
    assert cell["budget"] == math.ceil(target["cheapest"] * 1000 - 1e-9) / 1000
    assert cell["budget"] - target["cheapest"] < 0.001
    assert cell["latency_max"] <= cell["budget"] + 1e-9
    assert all(r["evaluations"] == 6 for r in cell["runs"])
    accuracies = [r["accuracy"] for r in cell["runs"]]
    assert cell["accuracy_ci95"] == pytest.approx(interval95(accuracies))


def test_a_kl_search_records_the_best_kl_and_marks_the_lowest(tmp_path, capsys):
    from rlprune.bench.search import main

    out = tmp_path / "kl.json"
    common = ["--seeds", "0", "--evaluations", "4", "--finetune-epochs", "1", "--out", str(out)]
    agents = ["--agents", "uniform", "random"]
    main(
        [
            "--targets",
            "mnist1d-arm_cpu",
            "--budgets",
            "0.5",
            *agents,
            *common,
            "--overrides",
            "dense.epochs=3",
            "reward.metric=kl",
        ]
    )
    (target,) = json.loads(out.read_text())["targets"]
    cells = [c for c in target["cells"] if "runs" in c]
    for cell in cells:
        (run,) = cell["runs"]
        assert run["kl"] is not None and run["kl"] >= 0 and cell["kl_mean"] == run["kl"]
        assert run["loss"] > 0
    lowest = min(cells, key=lambda c: c["kl_mean"])["agent"]
    starred = [line for line in capsys.readouterr().out.splitlines() if "*" in line and "KL" in line]
    assert starred and all(lowest in line for line in starred)


def test_with_no_finetune_epochs_a_batch_norm_network_is_scored_with_its_norms_re_estimated():
    from omegaconf import OmegaConf

    from rlprune.bench import QUIET, finetuned_test_accuracy, load
    from rlprune.config import compose_config
    from rlprune.layers import filter_couplings
    from rlprune.policy import Choice, Pattern, Policy

    cfg = compose_config([*QUIET, "model=resnet20", "data=digits", "search.pattern=filter", "dense.epochs=3"])
    target, _ = load(cfg)
    conv1s = [layer for layer in target.layers if layer.name.endswith("conv1")]
    quarter = {c.name: Choice(Pattern.FILTER, c.out_channels // 4, c.out_channels, 8, 8) for c in conv1s}
    policy = Policy.of(quarter)
    couplings = filter_couplings(target.model, target.splits.train_x[:1], target.layers)
    recalibrated = finetuned_test_accuracy(cfg, target, policy, couplings, 0)
    # the dense statistics leave the masked network near chance, the search's own scores do not
    dense_statistics = OmegaConf.merge(cfg, {"reward": {"bn_recalibration": 0}})
    assert recalibrated > finetuned_test_accuracy(dense_statistics, target, policy, couplings, 0) + 0.2


@pytest.mark.parametrize("fits", [[], ["search.reconstruct=true"]], ids=["masks", "fits"])
def test_with_no_finetune_epochs_the_test_scores_the_network_the_search_scored(fits):
    import torch

    from rlprune.api import scorer, test_score
    from rlprune.bench import QUIET, finetuned_test_accuracy, load
    from rlprune.config import compose_config
    from rlprune.policy import Choice, Pattern, Policy

    cfg = compose_config(
        [*QUIET, "model=resnet20", "data=digits", "search.pattern=filter", "dense.epochs=3", *fits]
    )
    target, hardware = load(cfg)
    space, evaluator = scorer(cfg, target, hardware, None)
    # pruned and quantized: activation ranges taken before the norms are re-estimated misfit them
    convs = [
        layer
        for layer in target.layers
        if isinstance(target.model.get_submodule(layer.name), torch.nn.Conv2d)
    ]
    policy = Policy.of(
        {c.name: Choice(Pattern.FILTER, c.out_channels // 2, c.out_channels, 8, 8) for c in convs}
    )
    evaluator(policy)  # the search's scorer leaves its network under this policy
    searched = test_score(evaluator.model, target.splits).accuracy
    assert finetuned_test_accuracy(cfg, target, policy, space.couplings, 0) == searched
