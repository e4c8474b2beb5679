"""hardware=local_gpu and the GPU deploy: the table and its calibration through a fake timer on any
machine; the kernels, the deploy and the CUDA-graph timer on a CUDA GPU (skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlprune.cuda.deploy import deploy_cuda, kernel_of
from rlprune.cuda.kernels import Int8Linear, linear_kernel
from rlprune.cuda.ops import KERNELS
from rlprune.errors import ConfigError
from rlprune.hardware import network_latency
from rlprune.hardware.factory import load_hardware_config, model_fields
from rlprune.hardware.local_gpu import GpuTableModel, fit_network
from rlprune.layers import discover_layers, filter_couplings
from rlprune.models import ViT
from rlprune.policy import Choice, Pattern, Policy
from rlprune.quant import fake_quantize_activation, fake_quantize_weight
from tests.support import RepeatedBlock

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (sparse tensor cores)"
)
SPEED = {"dense": 1.0, "sparse": 0.7, "int8": 0.55, "int8_sparse": 0.4}


class FakeTimer:
    """Op seconds from the op's multiply-accumulates and kernel; networks as a known linear law."""

    def __init__(self, constant: float = 0.0, scales: dict[str, float] | None = None) -> None:
        self.constant, self.scales = constant, scales or dict.fromkeys(KERNELS, 1.0)
        self.timed: list[str] = []
        self.table: GpuTableModel | None = None

    def device_key(self) -> dict[str, str]:
        return {"gpu": "fake"}

    def op_seconds(self, specs):
        self.timed += [spec.key for spec in specs]
        out = []
        for spec in specs:
            positions = 1
            for size in spec.spatial:
                positions *= size
            macs = spec.batch * positions * spec.c_in * spec.c_out // spec.groups
            out.append(1e-6 + 1e-12 * macs * SPEED[spec.kernel_class])
        return out

    def network_seconds(self, model, policies, example):
        assert self.table is not None
        layers = discover_layers(model, example)
        couplings = filter_couplings(model, example, layers)
        saved, self.table.scales = self.table.scales, dict(self.scales)
        self.table._cache.clear()
        try:
            return [self.constant + network_latency(self.table, layers, p, couplings) for p in policies]
        finally:
            self.table.scales = saved
            self.table._cache.clear()


def table(tmp_path, timer: FakeTimer, batch_size: int = 4) -> GpuTableModel:
    data = model_fields(load_hardware_config("local_gpu")[0])
    data |= {"cache_dir": str(tmp_path), "batch_size": batch_size}
    model = GpuTableModel.from_config(data, "local_gpu", timer=timer)
    timer.table = model
    return model


def tiny_vit() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return ViT(
        in_channels=1, num_classes=10, dims=1, image_size=40, patch=4, dim=64, depth=2
    ).eval(), torch.randn(2, 1, 40)


def test_linear_kernel_needs_the_kernels_alignment():
    assert linear_kernel(64, 128, two_four=True, int8=False) == "sparse"
    assert linear_kernel(64, 128, two_four=True, int8=True) == "int8_sparse"
    assert linear_kernel(48, 128, two_four=True, int8=True) == "int8"  # 48: not a multiple of 32
    assert linear_kernel(40, 128, two_four=True, int8=False) == "dense"  # 40: not a multiple of 16
    assert linear_kernel(44, 128, two_four=False, int8=True) == "dense"
    assert linear_kernel(64, 64, two_four=False, int8=False) == "dense"


def test_convolutions_run_dense_and_say_why():
    conv, linear = nn.Conv2d(16, 16, 3), nn.Linear(64, 32)
    assert kernel_of(conv, Choice(Pattern.NM, 2, 4, 8, 8)) == "dense"
    assert kernel_of(linear, Choice(Pattern.NM, 2, 4, 16, 16)) == "sparse"
    assert kernel_of(linear, Choice(Pattern.NM, 1, 4, 16, 16)) == "dense"  # only 2:4 has a kernel
    deployment = deploy_cuda(nn.Sequential(conv), Policy.of({"0": Choice(Pattern.NM, 2, 4, 16, 16)}),
                             torch.randn(2, 16, 8, 8), device="cpu", dtype=torch.float32)  # fmt: skip
    assert "no 2:4 GPU kernel for Conv2d" in deployment.dense_fallbacks["0"]


def test_int8_linear_computes_what_the_finetune_simulates():
    torch.manual_seed(1)
    linear, x = nn.Linear(64, 24), torch.randn(40, 64) * 3 + 1
    low, high = x.min(), x.max()
    deployed = Int8Linear(linear.weight, linear.bias, float(low), float(high))
    simulated = nn.functional.linear(
        fake_quantize_activation(x, 8, low, high), fake_quantize_weight(linear.weight, 8), linear.bias
    )
    with torch.no_grad():
        error = (deployed(x) - simulated).norm() / simulated.norm()
    assert error < 1e-5
    assert deployed(x[:3]).shape == (3, 24)  # rows padded for _int_mm and sliced back


def test_table_interpolates_measures_once_and_reads_its_cache(tmp_path):
    timer = FakeTimer()
    model = table(tmp_path, timer)
    net, x = tiny_vit()
    layers = discover_layers(net, x)
    fc1 = next(lay for lay in layers if lay.name == "blocks.0.fc1")
    on_grid = model.latency(fc1, Choice(Pattern.FILTER, 64, 128, 16, 16))
    off_grid = model.latency(fc1, Choice(Pattern.FILTER, 72, 128, 16, 16))
    above = model.latency(fc1, Choice(Pattern.FILTER, 80, 128, 16, 16))
    assert on_grid < off_grid < above
    assert abs(off_grid - (on_grid + above) / 2) < 1e-12  # linear between grid points
    sparse = model.latency(fc1, Choice(Pattern.NM, 2, 4, 16, 16))
    assert sparse < model.latency(fc1, model.dense_choice())
    timed = len(timer.timed)
    again = table(tmp_path, FakeTimer())
    assert again.latency(fc1, Choice(Pattern.FILTER, 72, 128, 16, 16)) == off_grid
    assert again.measurements == 0 and len(timer.timed) == timed


def repeated_block() -> tuple[nn.Module, torch.Tensor]:
    """A network that calls its one block three times: the block's ops count at each call."""
    torch.manual_seed(0)
    return RepeatedBlock(times=3, width=64).eval(), torch.randn(2, 16)


@pytest.mark.parametrize("network", [tiny_vit, repeated_block])
def test_calibration_recovers_each_kernels_scale_and_the_constant(tmp_path, network):
    scales = {"dense": 1.3, "sparse": 1.9, "int8": 1.5, "int8_sparse": 2.2}
    timer = FakeTimer(constant=4e-5, scales=scales)
    model = table(tmp_path, timer)
    net, x = network()
    constant = model.calibrate(net, x)
    assert constant == pytest.approx(4e-5, rel=1e-6)
    for kernel, scale in scales.items():
        assert model.scales[kernel] == pytest.approx(scale, rel=1e-6)


def test_fit_network_is_exact_on_a_linear_law():
    features = [{"dense": 1.0}, {"dense": 0.5}, {"dense": 0.4, "sparse": 0.6}]
    times = [0.2 + 1.1 * f["dense"] + 1.7 * f.get("sparse", 0.0) for f in features]
    constant, scales = fit_network(features, times)
    assert constant == pytest.approx(0.2) and scales == pytest.approx({"dense": 1.1, "sparse": 1.7})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_local_gpu_without_cuda_says_what_to_do():
    from rlprune.hardware import load_latency_model

    with pytest.raises(ConfigError, match="torch sees none here; pick a profile instead"):
        load_latency_model("local_gpu")


def test_printed_report_warns_of_layers_the_gpu_deploy_masked_again():
    from rich.console import Console

    from rlprune.cuda.deploy import CudaDeployment
    from rlprune.cuda.measure import deployment_report
    from rlprune.report import print_report
    from tests.support import printable_report

    texts = []
    for remasked in ([], ["blocks.0.fc2"]):
        deployed = CudaDeployment(torch.nn.Identity(), torch.device("cpu"), torch.float16, remasked=remasked)
        console = Console(record=True, width=200)
        print_report(
            printable_report(deployed=deployment_report(deployed, "a GPU", 0.4, [1.0, 0.8, 1.0])),
            console,
        )
        texts.append(console.export_text())
    assert all("deployed on a GPU" in text for text in texts)
    assert "imposed 2:4 again" not in texts[0]
    assert "warning: the deploy imposed 2:4 again on ['blocks.0.fc2']" in texts[1]


@needs_cuda
def test_semi_sparse_linear_matches_the_masked_dense_product():
    from rlprune.cuda.kernels import SemiSparseLinear
    from rlprune.masks import nm_mask

    torch.manual_seed(2)
    linear = nn.Linear(256, 512).cuda().half()
    with torch.no_grad():
        linear.weight.mul_(nm_mask(linear.weight.abs().float().cpu(), keep=2, group=4).cuda().half())
    x = torch.randn(3, 65, 256, device="cuda", dtype=torch.float16)  # 195 rows: padded to 200
    sparse = SemiSparseLinear.from_linear(linear)
    with torch.no_grad():
        want, got = linear(x).double(), sparse(x).double()
    assert got.shape == want.shape and got.is_contiguous()
    assert float((got - want).norm() / want.norm()) < 1e-2


@needs_cuda
def test_int8_sparse_matches_int8_dense():
    from rlprune.masks import nm_mask

    torch.manual_seed(3)
    weight = torch.randn(128, 256)
    weight *= nm_mask(weight.abs(), keep=2, group=4)
    x = torch.randn(100, 256)
    dense = Int8Linear(weight.cuda(), None, float(x.min()), float(x.max()))
    sparse = Int8Linear(weight.cuda(), None, float(x.min()), float(x.max()), sparse=True)
    with torch.no_grad():
        assert torch.allclose(sparse(x.cuda()), dense(x.cuda()), rtol=1e-5, atol=1e-5)


@needs_cuda
def test_deploy_cuda_runs_a_mixed_policy_close_to_its_reference():
    from rlprune.compress import bake, compress
    from rlprune.cuda.timing import CudaGraphTimer, deploy_policy

    net, x = tiny_vit()
    layers = discover_layers(net, x)
    picks = {}
    for i, layer in enumerate(layers[1:-1]):
        picks[layer.name] = [Choice(Pattern.NM, 2, 4, 16, 16), Choice(Pattern.DENSE, 1, 1, 8, 8)][i % 2]
    policy = Policy.of(picks)
    deployment = deploy_policy(net, policy, x, "cuda", torch.float16)
    assert set(deployment.kernels.values()) >= {"sparse", "int8"}
    reference = bake(compress(net, policy)).eval()
    with torch.no_grad():
        want, got = reference(x).double(), deployment(x).double()
    assert float((got - want).norm() / want.norm()) < 5e-2
    inputs = deployment.inputs(x)
    seconds = CudaGraphTimer(rounds=3).seconds([lambda: deployment.network(inputs)])
    assert 0 < seconds < 0.1


@needs_cuda
def test_a_2_4_layer_behind_pruned_filters_deploys_the_mask_it_was_finetuned_with():
    from rlprune.compress import bake, compress

    net, x = tiny_vit()
    layers = discover_layers(net, x)
    couplings = filter_couplings(net, x, layers)
    fc1 = net.get_submodule("blocks.0.fc1")
    policy = Policy.of(
        {
            "blocks.0.fc1": Choice(Pattern.FILTER, 48, fc1.out_features, 16, 16),  # 80 inputs of fc2 go
            "blocks.0.fc2": Choice(Pattern.NM, 2, 4, 16, 16),
        }
    )
    baked = bake(compress(net, policy, couplings=couplings)).eval()
    deployment = deploy_cuda(baked, policy, x, [x], "cuda", torch.float16)
    assert deployment.kernels["blocks.0.fc2"] == "sparse" and deployment.remasked == []
    with torch.no_grad():
        want, got = baked(x).double(), deployment(x).double()
    assert float((got - want).norm() / want.norm()) < 1e-2


@needs_cuda
def test_the_graph_timer_captures_again_in_the_memory_it_already_holds():
    from rlprune.cuda.timing import CudaGraphTimer

    net = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512)).cuda().half()
    x = torch.randn(4096, 512, device="cuda", dtype=torch.half)

    def segments() -> int:  # cudaMalloc calls so far
        return torch.cuda.memory_stats()["segment.all.allocated"]

    for share_memory in (True, False):
        timer = CudaGraphTimer(rounds=2, share_memory=share_memory)
        timer.seconds([lambda: net(x)])
        before = segments()
        for _ in range(3):
            assert timer.seconds([lambda: net(x)]) > 0
        assert timer.memory_error is None
        if share_memory:
            assert timer.share_memory and segments() == before
        else:  # each capture frees the cache and allocates again: what sharing saves
            assert segments() > before


def test_a_run_on_local_gpu_searches_in_aligned_widths_and_reports_its_deployment(
    tmp_path, monkeypatch, capsys
):
    """The whole run on hardware=local_gpu on any machine: the fake timer measures the table and
    the networks, and the GPU deploy (CUDA only) is replaced by one that reports the finetuned
    network as it would be deployed, through the real report's keys."""
    import rlprune.api as api
    import rlprune.cuda.timing as timing
    import rlprune.finish as finish
    from rlprune.cuda.deploy import CudaDeployment
    from rlprune.cuda.measure import deployment_report
    from rlprune.finish import read_policy
    from tests.support import compose_config

    monkeypatch.setattr(timing, "CudaTimer", lambda **settings: FakeTimer())
    build_latency_model = api.build_latency_model

    def build(cfg):
        hardware = build_latency_model(cfg)
        hardware.timer.table = hardware  # the fake network's law: the table's own ops
        return hardware

    def deploy(dense, baked, policy, test, calibration, batch_size, run_dir, dtype=torch.float16):
        torch.save(baked, run_dir / "model_deployed_gpu.pt")
        kernels = {name: kernel_of(baked.get_submodule(name), choice) for name, choice in policy}
        return deployment_report(
            CudaDeployment(baked, torch.device("cpu"), dtype, kernels), "a fake GPU", 0.5, [1, 0.8, 1]
        )

    monkeypatch.setattr(api, "build_latency_model", build)
    monkeypatch.setattr(finish, "deploy_and_measure", deploy)
    cfg = compose_config(
        "model=vit", "data=digits", "model.patch=1", "model.dim=32", "model.depth=1", "model.heads=2",
        "hardware=local_gpu", "device=cpu", "budget.latency=0.8", "search.evaluations=30", "dense.epochs=20",
        "search.pattern=filter", "search.bits=[16]", "finetune.epochs=1",
        f"cache_dir={tmp_path / 'cache'}", "wandb.mode=disabled", "progress_bar=false",
    )  # fmt: skip
    report = api.run(cfg, tmp_path / "run")
    assert report["hardware"] == "local_gpu" and report["latency"] <= 0.8 + 1e-9
    policy = read_policy(tmp_path / "run" / "policy.yaml")
    widths = [choice.keep for _, choice in policy if choice.pattern is Pattern.FILTER]
    assert widths and all(keep % 8 == 0 for keep in widths)  # fc1 keeps 8, 16, ... of its 64
    assert report["finetune"]["channel_multiple"] == 8  # a recast into filters keeps whole tiles too
    assert (
        report["deployed"]["device"] == "a fake GPU"
        and (tmp_path / "run" / "model_deployed_gpu.pt").is_file()
    )
    assert "deployed on a fake GPU (model_deployed_gpu.pt" in capsys.readouterr().out
    assert list((tmp_path / "cache" / "latency").glob("local_gpu-*.json"))
