"""The ops a measured table times: the grid a layer reads, one grid entry's spec, the op built
from it (float or int8, with its epilogue), and the parts the table's entries are timed in.

A spec is plain data (JSON values) holding everything that builds the op; its ``key`` (the
spec as sorted, compact JSON) is the op's table entry.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from rlprune.errors import ConfigError
from rlprune.layers import LayerInfo

Spec = dict[str, Any]
# grid entries built and timed together, all at one precision
Part = list[Spec]
EPILOGUES = ("relu", "none")
MEMORY_FORMATS = ("channels_last", "contiguous")
# the marker op timed beside every timing (:class:`~rlprune.hardware.measured.timing.Marker`):
# a 16-channel 3x3 conv on 8x8
MARKER = LayerInfo("marker", "conv2d", 16, 16, (3, 3), (1, 1), 1, (16, 8, 8), (16, 8, 8))
# the label of the empty deployed call timed with every part of the table (:func:`without_call`)
EMPTY_CALL = "call"


def grid(c: int, step: int) -> list[tuple[int, float]]:
    """Grid points around ``c`` and their linear weights (one point when ``c`` is on the grid)."""
    if c % step == 0 or c < step:
        return [(c, 1.0)]
    low = c // step * step
    w = (c - low) / step
    return [(low, 1.0 - w), (low + step, w)]


def grid_corners(layer: LayerInfo, step: int) -> list[tuple[tuple[int, int], float]]:
    """The ``(c_in, c_out)`` grid points ``layer`` is read from, with their weights (sum 1):
    bilinear in ``(c_in, c_out)``, along ``c`` for a depthwise conv, exact for other grouped ones."""
    depthwise = layer.kind != "linear" and layer.groups > 1 and layer.groups == layer.in_channels
    if depthwise and layer.out_channels == layer.in_channels:
        return [((c, c), w) for c, w in grid(layer.in_channels, step)]
    if layer.groups > 1:
        return [((layer.in_channels, layer.out_channels), 1.0)]
    return [
        ((ci, co), wi * wo)
        for ci, wi in grid(layer.in_channels, step)
        for co, wo in grid(layer.out_channels, step)
    ]


def padding(layer: LayerInfo) -> tuple[int, ...]:
    """The smallest padding per spatial dim that turns the layer's input size into its output size."""
    pads = []
    for size_in, size_out, k, s in zip(
        layer.in_shape[1:], layer.out_shape[1:], layer.kernel_size, layer.stride, strict=True
    ):
        for p in range(k + 1):
            if (size_in + 2 * p - k) // s + 1 == size_out:
                pads.append(p)
                break
        else:
            raise ConfigError(
                f"layer '{layer.name}': cannot reproduce output size {size_out} from input {size_in} "
                f"with kernel {k}, stride {s} (dilation is not supported by the measured table)"
            )
    return tuple(pads)


def op_spec(
    layer: LayerInfo, c_in: int, c_out: int, *, bits: int, batch: int, epilogue: str, memory_format: str
) -> Spec:
    """What to time for one grid point of ``layer``: everything that builds the op, and its
    table key (``key``)."""
    kind = layer.kind
    if kind == "linear":
        pads, groups, spatial = (), 1, tuple(layer.in_shape[:-1])
    else:
        pads = padding(layer)
        depthwise = layer.groups > 1 and layer.groups == layer.in_channels
        groups = c_in if depthwise else layer.groups
        spatial = tuple(layer.in_shape[1:])
    spec = {
        "kind": kind,
        "c_in": c_in,
        "c_out": c_out,
        "kernel": list(layer.kernel_size),
        "stride": list(layer.stride),
        "padding": list(pads),
        "groups": groups,
        "spatial": list(spatial),
        "bits": bits,
        "batch": batch,
        "epilogue": epilogue,
        "memory_format": memory_format,
    }
    spec["key"] = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return spec


class BuiltOp(NamedTuple):
    """An op built from a spec: the module, an input batch, and whether an int8 op runs at FP32
    because this machine has no int8 kernel for it."""

    module: nn.Module
    example: torch.Tensor
    fell_back: bool


def build_op(spec: Spec, engine: str | None) -> BuiltOp:
    """The op (with its epilogue) and an input batch for one grid entry, float or int8 (on the
    quantized ``engine``, which must be the current one; None: int8 is costed at FP32)."""
    gen = torch.Generator().manual_seed(0)
    kind, c_in, c_out, batch = spec["kind"], spec["c_in"], spec["c_out"], spec["batch"]
    shape = (batch, *spec["spatial"], c_in) if kind == "linear" else (batch, c_in, *spec["spatial"])
    x = torch.randn(shape, generator=gen)
    if x.dim() == 4 and spec["memory_format"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)  # as the layer before returns it
    if kind == "linear":
        op: nn.Module = nn.Linear(c_in, c_out)
    else:
        conv = nn.Conv1d if kind == "conv1d" else nn.Conv2d
        op = conv(
            c_in,
            c_out,
            tuple(spec["kernel"]),
            stride=tuple(spec["stride"]),
            padding=tuple(spec["padding"]),
            groups=spec["groups"],
        )
    op.eval()
    relu = spec["epilogue"] == "relu"
    fell_back = False
    if spec["bits"] == 8:
        if engine is None:
            fell_back = True
        else:
            try:
                return BuiltOp(
                    int8_op(op, kind, relu), torch.quantize_per_tensor(x, 0.05, 64, torch.quint8), False
                )
            except (RuntimeError, NotImplementedError, AttributeError, AssertionError) as exc:
                warnings.warn(f"no int8 kernel for {kind} here ({exc}); costing it at FP32", stacklevel=2)
                fell_back = True
    return BuiltOp(ThenRelu(op) if relu else op, x, fell_back)


def int8_op(op: nn.Module, kind: str, relu: bool) -> nn.Module:
    """The deployed int8 version of a float Linear/Conv (per-channel qint8 weights), ReLU fused."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    w = op.weight.detach()
    scales = w.abs().flatten(1).amax(1).clamp_min(1e-8) / 127
    qw = torch.quantize_per_channel(
        w, scales.double(), torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8
    )
    if kind == "linear":
        cls = nniq.LinearReLU if relu else nnq.Linear
        q = cls(op.in_features, op.out_features, op.bias is not None)  # bias_ / bias: positional
    else:
        cls = {
            ("conv1d", False): nnq.Conv1d,
            ("conv1d", True): nniq.ConvReLU1d,
            ("conv2d", False): nnq.Conv2d,
            ("conv2d", True): nniq.ConvReLU2d,
        }[(kind, relu)]
        q = cls(
            op.in_channels,
            op.out_channels,
            op.kernel_size,
            stride=op.stride,
            padding=op.padding,
            groups=op.groups,
            bias=op.bias is not None,
        )
    q.set_weight_bias(qw, None if op.bias is None else op.bias.detach())
    q.scale, q.zero_point = 0.05, 64
    return q


class ThenRelu(nn.Module):
    """An op followed by ``torch.relu``, as the zoo's forward passes write it."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.op(x))


class EmptyCall(nn.Module):
    """A deployed call that runs no op: what each deployed op's timing includes beyond its op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def without_call(seconds: float, call: float) -> float:
    """An op's timed call less an empty call's (:class:`EmptyCall`): its seconds inside a network.

    Timing noise can put a tiny op (a 24x16 Linear: 3 µs with its call) at or under an empty
    call; no op is free, so each keeps at least a tenth of its timed call.
    """
    return max(seconds - call, 0.1 * seconds)


def split_parts(specs: Sequence[Spec], size: int = 32) -> list[Part]:
    """Ops in parts of ``size`` that are built and timed together, each of one precision (an op
    takes turns only with ops of its own precision)."""
    by_bits: dict[int, list[Spec]] = {}
    for spec in specs:
        by_bits.setdefault(spec["bits"], []).append(spec)
    return [same[i : i + size] for _, same in sorted(by_bits.items()) for i in range(0, len(same), size)]


@contextlib.contextmanager
def quiet_ao_warnings() -> Iterator[None]:
    """Hide torch.ao's deprecation warnings while int8 ops are built and timed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(deprecated|torch\.ao\.quantization).*")
        yield
