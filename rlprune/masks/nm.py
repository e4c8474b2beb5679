"""N:M masks: in every run of M consecutive reduction elements of a row of the 2-D view, keep N."""

from __future__ import annotations

import numpy as np
import torch

from rlprune.errors import ConfigError
from rlprune.masks.checks import check_nm
from rlprune.masks.select import to_numpy, topk_rows
from rlprune.masks.views import unview, weight_view


def nm_mask(
    scores: torch.Tensor, keep: int, group: int, pad: bool = False, *, name: str = "layer"
) -> torch.Tensor:
    """Keep the ``keep`` (N) largest scores in every run of ``group`` (M) reduction elements.

    Runs are taken along each row of :func:`~rlprune.masks.views.weight_view`, so for a conv they
    cover consecutive input channels and, when ``c_in/g`` is not a multiple of M, continue at the
    next kernel position. Ties go to the lowest index in the run.

    When the reduction length R is not a multiple of M: ``pad=False`` raises ``ConfigError``;
    ``pad=True`` treats the trailing partial run of ``r = R % M`` elements as padded with never-kept
    zeros, so that run keeps ``min(N, r)`` real elements.

    Returns:
        A bool mask in the weight's shape.
    """
    check_nm(keep, group, name)
    view = to_numpy(weight_view(scores.detach()))
    rows, length = view.shape
    short = length % group
    if short:
        if not pad:
            raise ConfigError(
                f"layer {name!r}: {keep}:{group} needs the reduction length R={length} to be a multiple of "
                f"M={group}; pad the last group (pad=True) or choose another pattern"
            )
        # -inf never wins against a real score, and wins ties against none: padding is never kept.
        view = np.pad(view, ((0, 0), (0, group - short)), constant_values=-np.inf)
    kept = topk_rows(view.reshape(-1, group), keep).reshape(rows, -1)[:, :length]
    return unview(torch.from_numpy(np.ascontiguousarray(kept)), scores.shape).to(scores.device)
