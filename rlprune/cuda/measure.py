"""A searched policy deployed on the GPU at hand: saved, timed against dense and tested.

What a run on ``hardware=local_gpu`` reports under ``deployed`` (docs/gpu.md, "Deploying on a
GPU"): the network :func:`~rlprune.cuda.deploy.deploy_cuda` makes of the finetuned model, its
test accuracy as the GPU computes it (FP16, int8 where chosen), and its latency over the dense
network's, both deployed and timed side by side as CUDA-graph replays at the table's batch size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.cuda.deploy import CudaDeployment, deploy_cuda
from rlprune.cuda.timing import CudaGraphTimer
from rlprune.data import as_inputs
from rlprune.io import write_atomic
from rlprune.policy import Policy
from rlprune.training import flat


def deploy_and_measure(
    dense: nn.Module,
    baked: nn.Module,
    policy: Policy,
    test: tuple[torch.Tensor, torch.Tensor],
    calibration: torch.Tensor,
    batch_size: int,
    run_dir: Path,
    dtype: torch.dtype = torch.float16,
) -> dict[str, Any]:
    """Deploy ``baked`` under ``policy`` on the current CUDA GPU, save it, time it and test it.

    Args:
        dense: the dense trained network (deployed the same way for the reference time).
        baked: the finetuned network, masks and weight quantization in its weights.
        policy: the finetuned policy.
        test: the test inputs and labels.
        calibration: training inputs whose ranges set the int8 layers' input scales.
        batch_size: samples per timed batch (the latency table's).
        run_dir: where ``model_deployed_gpu.pt`` is written.
        dtype: the float dtype of the deployment.
    """
    x, y = test
    example = as_inputs(x[:2], torch.float32, "cpu")
    batches = list(as_inputs(calibration[:512], torch.float32, "cpu").split(64))
    deployed = deploy_cuda(baked, policy, example, batches, device="cuda", dtype=dtype)
    reference = deploy_cuda(dense, Policy(), example, device="cuda", dtype=dtype)
    write_atomic(run_dir / "model_deployed_gpu.pt", lambda f: torch.save(deployed.network, f))
    timed = x[torch.arange(batch_size) % len(x)]
    timer = CudaGraphTimer()
    calls = [functools.partial(d.network, d.inputs(timed)) for d in (reference, deployed, reference)]
    seconds = [timer.seconds([call]) for call in calls]
    correct = 0
    for inputs, labels in zip(x.split(1024), y.split(1024), strict=True):
        logits, target = flat(deployed(inputs), labels.cpu())
        correct += int((logits.argmax(1) == target).sum())
    return deployment_report(deployed, torch.cuda.get_device_name(), correct / y.numel(), seconds)


def deployment_report(
    deployed: CudaDeployment, device: str, test_accuracy: float, seconds: Sequence[float]
) -> dict[str, Any]:
    """What a run reports of its GPU deployment, with the keys the CPU deploy reports too.

    Args:
        deployed: the deployed network.
        device: the GPU's name.
        test_accuracy: the deployed network's, on the test split.
        seconds: dense, deployed, and dense again (a drift between the two shows in the spread).
    """
    dense_s = (seconds[0] + seconds[2]) / 2
    return {
        "model": "model_deployed_gpu.pt",
        "device": device,
        "int8_layers": [name for name, kernel in deployed.kernels.items() if kernel.startswith("int8")],
        "kernels": deployed.kernels,
        "dense_fallbacks": deployed.dense_fallbacks,
        "remasked": deployed.remasked,
        "test_accuracy": test_accuracy,
        "measured_latency": seconds[1] / dense_s,
        "dense_seconds": dense_s,
        "deployed_seconds": seconds[1],
        "dense_spread": abs(seconds[0] - seconds[2]) / dense_s,
    }
