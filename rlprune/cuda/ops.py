"""One layer of a deployed GPU network, built from plain data so a latency table can time it.

An :class:`OpSpec` names everything that sets a layer's time on a GPU: its kind and shape,
the batch, and the kernel the deployed network runs it with (:func:`rlprune.cuda.deploy.kernel_of`).
:func:`build_op` makes that very module (the same classes :func:`rlprune.cuda.deploy.deploy_cuda`
swaps in) on random weights, 2:4-pruned by magnitude where the kernel is sparse, and an input.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from rlprune.cuda.kernels import Int8Linear, SemiSparseLinear
from rlprune.masks import nm_mask

KERNELS = ("dense", "sparse", "int8", "int8_sparse")


@dataclass(frozen=True)
class OpSpec:
    """What to build and time for one table entry.

    Attributes:
        kind: ``linear``, ``conv1d`` or ``conv2d``.
        c_in, c_out: input and output channels (features).
        kernel, stride, padding: per spatial dim (empty for Linear).
        groups: convolution groups.
        spatial: the input's spatial size per sample (Linear: its leading dims, e.g. tokens).
        batch: samples per call.
        kernel_class: one of :data:`KERNELS`.
        dtype: the float dtype's name (``float16`` or ``bfloat16``).
    """

    kind: str
    c_in: int
    c_out: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    groups: int
    spatial: tuple[int, ...]
    batch: int
    kernel_class: str
    dtype: str = "float16"

    @property
    def key(self) -> str:
        """The table key: the fields as compact, sorted JSON."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def weight_bytes(self) -> int:
        """Bytes of the float weight (what a layer reads from memory at least once per call)."""
        per_out = self.c_in // self.groups * max(1, _prod(self.kernel))
        return 2 * self.c_out * per_out

    @property
    def activation_bytes(self) -> int:
        """Bytes of one call's float input (the output is of the same order)."""
        return 2 * self.batch * self.c_in * max(1, _prod(self.spatial))


def _prod(values: tuple[int, ...]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def dense_module(spec: OpSpec) -> nn.Module:
    """The float layer of ``spec`` on the CPU in float32, with a bias (batch norms are folded)."""
    if spec.kind == "linear":
        return nn.Linear(spec.c_in, spec.c_out)
    conv = nn.Conv1d if spec.kind == "conv1d" else nn.Conv2d
    return conv(spec.c_in, spec.c_out, spec.kernel, spec.stride, spec.padding, groups=spec.groups)


def build_op(
    spec: OpSpec, device: torch.device | str, generator: torch.Generator
) -> tuple[nn.Module, torch.Tensor]:
    """The deployed module of ``spec`` on ``device`` and an input for it (random, never zeros)."""
    dtype = getattr(torch, spec.dtype)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
    layer = dense_module(spec).eval()
    if spec.kernel_class in ("sparse", "int8_sparse"):
        with torch.no_grad():
            layer.weight.mul_(nm_mask(layer.weight.abs(), keep=2, group=4))
    layer = layer.to(device=device, dtype=dtype)
    shape = (
        (spec.batch, *spec.spatial, spec.c_in)
        if spec.kind == "linear"
        else (spec.batch, spec.c_in, *spec.spatial)
    )
    x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    if spec.kind == "conv2d":  # as deployed: cuDNN's tensor-core convs run NHWC
        layer, x = (
            layer.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    if spec.kernel_class == "dense":
        return layer, x
    if spec.kernel_class == "sparse":
        return SemiSparseLinear.from_linear(layer), x
    low, high = float(x.min()), float(x.max())
    return Int8Linear(layer.weight, layer.bias, low, high, sparse=spec.kernel_class == "int8_sparse"), x
