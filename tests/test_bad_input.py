"""The bad-input suite: wrong invocations and damaged files, each failing clearly, nothing lost.

Every case runs the command line as a user would and asserts a non-zero exit, a message that
names the problem, and no traceback on the terminal (rlprune's own errors are one line starting
with ``error:``; the traceback goes to ``error.log``). Damaged caches are not errors: they are
rebuilt (see also tests/test_data.py and tests/hardware/test_hw_measured.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_cli import QUICK, rlprune

FAST = [*QUICK, "wandb.mode=disabled"]

CASES = [
    # unknown names, keys and types: refused by Hydra while composing the config
    (["agent=alphazero"], "Could not find 'agent/alphazero'"),
    (["hardware=tpu9"], "Could not find 'hardware/tpu9'"),
    (["model=gpt5"], "Could not find 'model/gpt5'"),
    (["data=imagenet"], "Could not find 'data/imagenet'"),
    (["budgte.latency=0.5"], "Key 'budgte' not in 'RlpruneConfig'"),
    (["search.evaluatons=10"], "Key 'evaluatons' not in 'SearchConfig'"),
    (["search.evaluations=lots"], "Value 'lots' of type 'str' could not be converted to Integer"),
    (["layers.exclude_first=maybe"], "Value 'maybe' is not a valid bool"),
    (["seed=one"], "could not be converted to Integer"),
    # values out of range: one line naming the key, the value and what is allowed
    (
        ["budget.latency=1.5"],
        "error: budget.latency=1.5 is not allowed: a share of the dense latency in (0, 1]",
    ),
    (["budget.latency=0"], "error: budget.latency=0 is not allowed"),
    (
        ["budget.latency=fast"],
        "error: budget.latency='fast' is not allowed: a share of the dense latency in (0, 1], or auto",
    ),
    (
        ["budget.auto_share=0"],
        "error: budget.auto_share=0.0 is not allowed: a share of the reachable range in (0, 1]",
    ),
    (["budget.auto_share=many"], "Value 'many' of type 'str' could not be converted to Float"),
    (["search.evaluations=0"], "error: search.evaluations=0 is not allowed: an integer >= 1"),
    (["search.pattern=zigzag"], "error: search.pattern='zigzag' is not allowed"),
    (["search.bits=[7]"], "error: search.bits=[7] is not allowed"),
    (
        ["search.nm_options=[[4,2]]"],
        "error: search.nm_options=[[4, 2]] is not allowed: null or a list of [N, M]",
    ),
    (["search.levels=1"], "error: search.levels=1 is not allowed: an integer >= 2"),
    (["search.min_density=0"], "error: search.min_density=0.0 is not allowed"),
    (["reward.metric=f1"], "error: reward.metric='f1' is not allowed: one of ['accuracy', 'loss', 'kl']"),
    (["wandb.mode=loud"], "error: wandb.mode='loud' is not allowed"),
    (["dense.epochs=-1"], "error: dense.epochs=-1 is not allowed"),
    (
        ["finetune.mask=nm", "finetune.nm.keep=4", "finetune.nm.group=4"],
        "error: finetune.nm: N:M needs 0 < N < M",
    ),
    (["finetune.mask=hexagonal"], "error: finetune.mask='hexagonal' is unknown"),
    (["finetune.epochs=-2"], "error: finetune.epochs, refresh_steps and gap.partitions must be >= 0"),
    # what the device cannot run
    (["search.bits=[2]"], "error: search.bits [2] not supported by hardware arm_cpu"),
    (["search.pattern=nm"], "error: hardware arm_cpu accelerates no N:M pattern"),
    (
        ["hardware.batch_size=0"],
        "error: hardware config 'arm_cpu': field 'batch_size' must be an integer >= 1, got 0",
    ),
    # infeasible budgets
    (["budget.latency=0.001"], "below the cheapest reachable latency"),
    (  # a CPU runs k-of-n masks dense: only int8 saves (deployed, about 0.4 of FP32 here)
        [
            "hardware=local_cpu",
            "search.pattern=kofn_weight",
            "hardware.rounds=1",
            "hardware.retries=0",
            "budget.latency=0.1",
        ],
        "or search.pattern=filter",
    ),
    (["hardware=a100", "hardware.search_pattern=kofn"], "field 'search_pattern' must be one or a list of"),
    # models that cannot be searched
    (["model._target_=no_such_package.Net"], "error: cannot build model 'no_such_package.Net'"),
    (["model=digits_cnn"], "error: the model rejects an input of shape (1, 1, 40)"),
    (["~model", "+model._target_=torch.nn.Flatten"], "error: Flatten has no prunable layer"),
    (["dense.epochs=0"], "error: the dense model's reward-split accuracy"),  # untrained: at chance
]


@pytest.mark.parametrize(("overrides", "message"), CASES, ids=[" ".join(o) for o, _ in CASES])
def test_bad_input_stops_with_a_clear_message_and_no_traceback(tmp_path, overrides, message):
    result = rlprune(tmp_path, *FAST, *overrides)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    if message.startswith("error:"):
        assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
        assert "Traceback" in (tmp_path / "error.log").read_text()


def test_a_logger_that_does_not_import_stops_before_any_work(tmp_path):
    shadow = tmp_path / "shadow"  # a wandb that fails to import, ahead of the installed one
    shadow.mkdir()
    (shadow / "wandb.py").write_text('raise ImportError("No module named wandb")\n')
    path = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH")) if p)
    where = [f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"]
    result = subprocess.run(
        [sys.executable, "-m", "rlprune", *where],
        capture_output=True,
        text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONPATH": path},
        timeout=600,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert "error: wandb.mode=offline needs the wandb package" in result.stderr
    assert "or run with wandb.mode=disabled" in result.stderr
    assert not (tmp_path / "cache").exists()  # no data read, no dense model trained


def test_a_run_folder_is_never_overwritten(tmp_path):
    (tmp_path / "report.json").write_text('{"mine": true}')
    result = rlprune(tmp_path, *FAST)
    assert result.returncode == 2
    assert "already holds a run (report.json)" in result.stderr
    assert json.loads((tmp_path / "report.json").read_text()) == {"mine": True}


def test_a_corrupt_dense_cache_is_retrained_not_trusted(tmp_path):
    cache = tmp_path / "cache"
    first = rlprune(tmp_path / "a", *FAST, f"cache_dir={cache}")
    assert first.returncode == 0, first.stderr
    (entry,) = (cache / "dense").glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    second = rlprune(tmp_path / "b", *FAST, f"cache_dir={cache}")
    assert second.returncode == 0, second.stderr
    assert "is unreadable" in second.stdout and "retraining" in second.stdout
    torch.load(entry, weights_only=True)  # rebuilt whole


def test_a_killed_run_keeps_its_best_policy_and_leaves_no_partial_output(tmp_path):
    command = [sys.executable, "-m", "rlprune", f"hydra.run.dir={tmp_path}", "agent=random"]
    command += ["search.evaluations=100000", "dense.epochs=3", "progress_bar=false", "wandb.mode=disabled"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    policy = Path(tmp_path) / "policy.yaml"
    deadline = time.monotonic() + 120
    while not policy.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert policy.exists(), "the search never wrote a best policy"
    time.sleep(1.0)  # let it improve a few times more
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert f"error: interrupted; the best policy so far is in {policy}" in stderr
    assert "Traceback" not in stderr
    kept = yaml.safe_load(policy.read_text())
    assert kept["latency"] <= kept["budget"] + 1e-9 and kept["layers"]
    assert not (Path(tmp_path) / "report.json").exists()
    assert not [p for p in Path(tmp_path).iterdir() if p.name.endswith(".tmp")]
