"""The 2-D view of a weight (docs/algorithms.md, "Conventions").

Linear ``(O, I)`` is its own view. A conv weight ``(O, I/g, *kernel)`` is permuted to
``(O, *kernel, I/g)`` and flattened to ``(O, R)``, NVIDIA ASP's layout: consecutive reduction
elements are consecutive input channels at one kernel position, which is what N:M groups run over.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlprune.masks.checks import check_weight_shape


def weight_view(weight: torch.Tensor) -> torch.Tensor:
    """The ``(O, R)`` view of ``weight`` (a copy for convs, the tensor itself for Linear)."""
    check_weight_shape(weight.shape)
    if weight.dim() == 2:
        return weight
    # (O, I, k1, ..., kd) -> (O, k1, ..., kd, I): input channel fastest.
    return weight.permute(0, *range(2, weight.dim()), 1).reshape(weight.shape[0], -1)


def unview(view2d: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`weight_view`: the tensor of ``shape`` whose view is ``view2d``."""
    check_weight_shape(shape)
    shape = tuple(shape)
    if len(shape) == 2:
        return view2d.reshape(shape)
    out, inp, kernel = shape[0], shape[1], shape[2:]
    permuted = view2d.reshape(out, *kernel, inp)
    # (O, k1, ..., kd, I) -> (O, I, k1, ..., kd)
    return permuted.permute(0, len(shape) - 1, *range(1, len(shape) - 1)).contiguous()
