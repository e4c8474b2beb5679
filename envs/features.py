"""Observation features of the search env (docs/algorithms.md, "Observation").

Static features describe each layer once (shape, cost shares, sensitivity); the env appends
the dynamic ones (budget, latency spent and still needed, previous action) at every step.
Every entry lies in [0, 1], or [-1, 1] for actions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from rlprune.envs.evaluator import PolicyEvaluator
from rlprune.envs.space import SearchSpace

KINDS = ("conv1d", "conv2d", "linear")
DYNAMIC_FEATURES = 6  # budget, spent, rest min/max, allowed share, fixed share; then the previous action
SENSITIVITY_COLUMNS = 3  # half density, the sparsest option, the lowest bit-width


def _log_share(values: list[float]) -> np.ndarray:
    """``log(1 + v) / log(1 + max v)``: sizes spanning orders of magnitude, in [0, 1]."""
    top = math.log1p(max(values))
    return np.array([math.log1p(v) / top if top > 0 else 0.0 for v in values])


def sensitivity_scores(space: SearchSpace) -> int:
    """Scores :func:`measure_sensitivity` asks of the evaluator: the reference, then three per step."""
    return 1 + SENSITIVITY_COLUMNS * len(space)


def measure_sensitivity(
    space: SearchSpace, evaluator: PolicyEvaluator, advance: Callable[[float], None] | None = None
) -> np.ndarray:
    """Reward-split accuracy drop when only one layer is compressed, ``[layers, 3]`` in [0, 1].

    Columns: the density option nearest to half, the sparsest option (both at the highest
    bit-width), and dense at the lowest bit-width. Each is the accuracy lost relative to the
    uncompressed network, divided by that network's accuracy. Costs
    :func:`sensitivity_scores` evaluations, not counted against ``search.evaluations``;
    ``advance(1)`` is called after each.
    """
    advance = advance or (lambda count: None)
    top_bits = len(space.bits) - 1
    reference = [(len(shapes) - 1, top_bits) for shapes in space.shapes]
    base = evaluator(space.policy(reference)).accuracy
    advance(1)
    drops = np.zeros((len(space), SENSITIVITY_COLUMNS))
    for i, shapes in enumerate(space.shapes):
        half = int(np.argmin([abs(s.density - 0.5) for s in shapes]))
        for column, pick in enumerate([(half, top_bits), (0, top_bits), (len(shapes) - 1, 0)]):
            picks = list(reference)
            picks[i] = pick
            accuracy = evaluator(space.policy(picks)).accuracy
            drops[i, column] = np.clip((base - accuracy) / max(base, 1e-9), 0.0, 1.0)
            advance(1)
    return drops


def static_features(space: SearchSpace) -> np.ndarray:
    """Per-step features of shape and cost, ``[steps, 13]``, each in [0, 1]; the sensitivity
    (:func:`measure_sensitivity`) is measured apart, since it costs evaluations.

    A step that decides tied layers is described by its first layer, with the params and MACs
    of all of them (the MACs of every call of a layer the network calls again).
    """
    layers = space.layers
    params = np.array([sum(m.params for m in members) for members in space.members], dtype=float)
    macs = np.array([sum(m.macs * m.calls for m in members) for members in space.members], dtype=float)
    count = len(layers)
    dense = space.step_seconds([(len(shapes) - 1, len(space.bits) - 1) for shapes in space.shapes])
    cheapest = space.min_latency
    columns = [
        np.arange(count) / max(count - 1, 1),
        *[np.array([layer.kind == kind for layer in layers], dtype=float) for kind in KINDS],
        _log_share([layer.in_channels for layer in layers]),
        _log_share([layer.out_channels for layer in layers]),
        _log_share([math.prod(layer.kernel_size) for layer in layers]),
        _log_share([max(layer.stride, default=1) for layer in layers]),
        _log_share([layer.out_positions for layer in layers]),
        params / params.sum(),
        macs / macs.sum(),
        dense / dense.sum(),
        cheapest / np.maximum(dense, 1e-30),
    ]
    return np.stack(columns, axis=1).astype(np.float32)
