"""Deploy a policy as a network that runs on a CUDA GPU (docs/gpu.md, "Deploying on a GPU").

:func:`deploy_cuda` turns a trained (masked, baked) network and its policy into what a GPU
runs: filters removed for real (Torch-Pruning, :func:`rlprune.export.export_filter_pruned`),
batch norms folded, FP16 (or BF16) weights, and each Linear the policy makes 2:4 sparse or
int8 swapped for its kernel (:mod:`rlprune.cuda.kernels`). What PyTorch has no GPU kernel for
runs dense at the float dtype and is listed in :attr:`CudaDeployment.dense_fallbacks`: N:M on
a convolution, int8 convolutions, N:M other than 2:4, a reduction not a multiple of 4.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from rlprune.compress import without_input_quantizers
from rlprune.cuda.kernels import Int8Linear, SemiSparseLinear, is_two_four, linear_kernel
from rlprune.data import as_inputs
from rlprune.export import export_filter_pruned, fold_batch_norms
from rlprune.masks import nm_mask
from rlprune.policy import Choice, Pattern, Policy

TWO_FOUR = (2, 4)


def runs_two_four(choice: Choice) -> bool:
    """Whether ``choice`` is 2:4 (an N:M pattern, plain or transposable), what sparse tensor cores run."""
    return choice.spec.n_of_m and (choice.keep, choice.group) == TWO_FOUR


def runs_int8(choice: Choice) -> bool:
    """Whether ``choice`` runs weights and input activations in integers of 8 bits or fewer."""
    return max(choice.w_bits, choice.a_bits) <= 8


def kernel_of(module: nn.Module, choice: Choice) -> str:
    """The kernel a deployed GPU network runs ``module`` with under ``choice``.

    One of ``dense`` (the float dtype), ``sparse`` (2:4 cuSPARSELt), ``int8`` (``_int_mm``)
    and ``int8_sparse`` (int8 2:4 cuSPARSELt). Only Linear layers have sparse and int8 kernels
    in PyTorch on a GPU, and only at the shapes :func:`~rlprune.cuda.kernels.linear_kernel`
    allows; everything else runs ``dense``.
    """
    if not isinstance(module, nn.Linear):
        return "dense"
    return linear_kernel(module.in_features, module.out_features, runs_two_four(choice), runs_int8(choice))


@dataclass
class CudaDeployment:
    """A deployed GPU network and what each searched layer runs.

    Attributes:
        network: the module to call (inputs as :meth:`inputs` makes them).
        device, dtype: where it runs and its float dtype.
        kernels: layer name -> kernel (:func:`kernel_of`) for every layer of the policy.
        dense_fallbacks: layer name -> why a sparse or int8 choice runs dense there.
        remasked: the 2:4 layers whose weight was not 2:4 once upstream filters were removed
            (a mask not made on the inputs that stay): 2:4 was imposed again by magnitude, so
            they differ from the network deployed.
    """

    network: nn.Module
    device: torch.device
    dtype: torch.dtype
    kernels: dict[str, str] = field(default_factory=dict)
    dense_fallbacks: dict[str, str] = field(default_factory=dict)
    remasked: list[str] = field(default_factory=list)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the network takes it: on its device, in its dtype, images channels-last (NHWC)."""
        x = as_inputs(x, self.dtype, self.device)
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output for ``x`` (any device and dtype), in float32 on the CPU."""
        return self.network(self.inputs(x)).float().cpu()


@torch.no_grad()
def input_ranges(
    network: nn.Module, names: Iterable[str], batches: Iterable[torch.Tensor]
) -> dict[str, tuple]:
    """The smallest and largest input value each named layer sees over ``batches``."""
    ranges: dict[str, list[float]] = {}
    hooks = []
    for name in names:

        def record(_module: nn.Module, args: tuple, name: str = name) -> None:
            low, high = float(args[0].min()), float(args[0].max())
            seen = ranges.setdefault(name, [low, high])
            seen[0], seen[1] = min(seen[0], low), max(seen[1], high)

        hooks.append(network.get_submodule(name).register_forward_pre_hook(record))
    try:
        for batch in batches:
            network(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (low, high) for name, (low, high) in ranges.items()}


def deploy_cuda(
    model: nn.Module,
    policy: Policy,
    example: torch.Tensor,
    calibration: Iterable[torch.Tensor] = (),
    device: torch.device | str = "cuda",
    dtype: torch.dtype = torch.float16,
) -> CudaDeployment:
    """``model`` under ``policy`` as a GPU runs it (see the module doc).

    Args:
        model: the trained network with the policy's masks and weight quantization baked into
            its weights (:func:`rlprune.compress.bake`); unchanged.
        policy: the searched choices by layer name.
        example: one input batch (CPU), to trace the filter export.
        calibration: input batches (CPU) whose ranges set the int8 layers' input scales;
            required when the policy runs a Linear in int8.
        device: where the network runs.
        dtype: the float dtype of weights and activations.

    Raises:
        ValueError: an int8 Linear without calibration batches.
    """
    plain = without_input_quantizers(copy.deepcopy(model))
    filters = Policy(tuple((name, c) for name, c in policy if c.pattern is Pattern.FILTER))
    network = fold_batch_norms(export_filter_pruned(plain, filters, example) if filters.choices else plain)
    network = network.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()
    deployment = CudaDeployment(network, device=torch.device(device), dtype=dtype)
    swaps: dict[str, str] = {}
    for name, choice in policy:
        module = network.get_submodule(name)
        kernel = kernel_of(module, choice)
        deployment.kernels[name] = kernel
        if why := _fallback(module, choice, kernel):
            deployment.dense_fallbacks[name] = why
        if kernel != "dense":
            swaps[name] = kernel
    int8 = [name for name, kernel in swaps.items() if kernel.startswith("int8")]
    if int8 and not (batches := list(calibration)):
        raise ValueError(f"layers {int8} run int8: pass calibration batches to set their input ranges")
    ranges = input_ranges(network, int8, map(deployment.inputs, batches)) if int8 else {}
    for name, kernel in swaps.items():
        linear = network.get_submodule(name)
        if kernel.endswith("sparse") and not is_two_four(linear.weight):
            deployment.remasked.append(name)
            with torch.no_grad():
                linear.weight.mul_(
                    nm_mask(linear.weight.abs().float(), keep=2, group=4).to(linear.weight.dtype)
                )
        _replace(network, name, _kernel_module(linear, kernel, ranges.get(name)))
    return deployment


def _fallback(module: nn.Module, choice: Choice, kernel: str) -> str | None:
    """Why a sparse or int8 ``choice`` runs dense on ``module``, or ``None`` when it does not."""
    kind = type(module).__name__
    reasons = []
    if choice.spec.n_of_m and not kernel.endswith("sparse"):
        if not isinstance(module, nn.Linear):
            reasons.append(f"PyTorch has no 2:4 GPU kernel for {kind}")
        elif (choice.keep, choice.group) != TWO_FOUR:
            reasons.append(f"{choice.keep}:{choice.group}: sparse tensor cores run 2:4 only")
        else:
            reasons.append(f"{module.in_features}x{module.out_features} misses the 2:4 kernels' alignment")
    if runs_int8(choice) and not kernel.startswith("int8"):
        reasons.append(
            f"{module.in_features}x{module.out_features} misses the int8 kernel's alignment"
            if isinstance(module, nn.Linear)
            else f"PyTorch has no int8 GPU kernel for {kind}"
        )
    return "; ".join(reasons) or None


def _kernel_module(linear: nn.Linear, kernel: str, span: tuple | None) -> nn.Module:
    if kernel == "sparse":
        return SemiSparseLinear.from_linear(linear)
    low, high = span if span is not None else (0.0, 0.0)
    return Int8Linear(linear.weight, linear.bias, low, high, sparse=kernel == "int8_sparse")


def _replace(network: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(network.get_submodule(parent) if parent else network, leaf, module)
