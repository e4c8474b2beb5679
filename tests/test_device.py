"""device=auto|cpu|cuda|cuda:N: resolved once, refused with one line where the machine lacks it."""

from __future__ import annotations

import pytest
import torch

from rlprune.data import make_splits
from rlprune.device import mixed_precision, out_of_memory_explained, resolve_device
from rlprune.errors import ConfigError, RlpruneError
from tests.test_cli import QUICK, rlprune

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def test_auto_is_the_gpu_where_there_is_one():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu", ""])
def test_a_name_that_is_no_device_is_refused(name):
    with pytest.raises(ConfigError, match="is not a device; use auto, cpu, cuda or cuda:N"):
        resolve_device(name)


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_names_the_fix(name):
    with pytest.raises(ConfigError, match=r"torch sees none on this machine.*use device=auto or device=cpu"):
        resolve_device(name)


def test_splits_move_whole():
    import numpy as np

    x, y = np.random.default_rng(0).normal(size=(50, 1, 8)).astype("float32"), np.arange(50) % 5
    splits = make_splits(x, y, x[:10], y[:10], reward_fraction=0.2, seed=0)
    moved = splits.to("cpu")
    assert moved.num_classes == splits.num_classes and torch.equal(moved.test_x, splits.test_x)


def test_running_out_of_gpu_memory_says_what_to_do():
    expected = r"ran out of memory.*policy\.yaml.*device=cpu"
    with pytest.raises(RlpruneError, match=expected), out_of_memory_explained(torch.device("cuda:0")):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@no_cuda
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("device=cuda", "error: device=cuda asks for a CUDA GPU, and torch sees none"),
        ("hardware=local_gpu", "torch sees none here; pick a profile instead (hardware=h200"),
    ],
)
def test_the_cli_refuses_a_gpu_it_does_not_have_in_one_line(tmp_path, override, message):
    result = rlprune(tmp_path, override, *QUICK)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_dense_training_in_bf16_changes_nothing_on_the_cpu():
    from rlprune.training import TrainSettings, train

    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    settings = TrainSettings(epochs=2, lr=0.01, batch_size=16)
    nets = []
    for bf16 in (False, True):
        torch.manual_seed(0)
        nets.append(train(torch.nn.Linear(8, 3), x, y, settings, seed=0, bf16=bf16))
    assert torch.equal(nets[0].weight, nets[1].weight)
    with mixed_precision(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


@needs_cuda
def test_mixed_precision_runs_products_in_bf16_on_the_gpu():
    layer = torch.nn.Linear(8, 4).cuda()
    with mixed_precision(torch.device("cuda")):
        out = layer(torch.randn(2, 8, device="cuda"))
    assert out.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "mode",
    [
        {"mask": "learned", "granularity": "filter", "gap_partitions": 2},
        {"mask": "learned", "granularity": "kernel"},
        {"mask": "nm_transposable", "nm": (2, 4), "srste_decay": 2e-4, "refresh_steps": 2},
        {"mask": "policy", "criterion": "wanda", "gap_partitions": 2},
        {"mask": "kofn_weight", "criterion": "taylor"},
        {"mask": "policy", "criterion": "random"},
    ],
    ids=["learned-filter-gap", "learned-kernel", "transposable-srste", "wanda-gap", "taylor", "random"],
)
def test_every_finetune_mode_trains_and_exports_on_the_device(device, mode):
    from rlprune.compress import bake
    from rlprune.data import Splits
    from rlprune.export import export_filter_pruned
    from rlprune.finetune import FinetuneSettings, finetune
    from rlprune.layers import discover_layers, filter_couplings
    from rlprune.models import MNIST1DCNN
    from rlprune.policy import Choice, Pattern, Policy
    from rlprune.training import TrainSettings

    torch.manual_seed(0)
    model = MNIST1DCNN(channels=(8, 16, 16, 16), hidden=32).eval().to(device)
    x, y = torch.randn(128, 1, 40, device=device), torch.randint(0, 10, (128,), device=device)
    splits = Splits(x, y, x[:32], y[:32], x[:32], y[:32], num_classes=10)
    layers = discover_layers(model, x)
    couplings = filter_couplings(model, x[:1], layers)
    # float: a GPU's smaller exported conv may sum in another order, which can move an 8-bit level
    policy = Policy.of(
        {
            "conv2": Choice(Pattern.FILTER, 8, 16),
            "conv3": Choice(Pattern.NM, 2, 4),
            "fc1": Choice(Pattern.KOFN_WEIGHT, 80, 160),
            "fc2": Choice(Pattern.NM, 2, 4),
        }
    )
    train = TrainSettings(epochs=3, lr=1e-3, batch_size=32, weight_decay=0.0)
    result = finetune(model, policy, layers, splits, FinetuneSettings(train, **mode), 0, True, couplings)
    assert {t.device.type for t in [*result.model.parameters(), *result.model.buffers()]} == {device}
    exported = export_filter_pruned(bake(result.model), result.policy, x[:2])
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.testing.assert_close(exported(x), result.model(x), atol=1e-4, rtol=1e-4)


@needs_cuda
def test_the_default_run_trains_searches_and_finetunes_on_the_gpu(tmp_path):
    import json

    result = rlprune(tmp_path, "device=cuda", "wandb.mode=disabled", *QUICK)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["device"].startswith("cuda")
