"""Layer-wise reconstruction: the kept weights of each compressed layer re-fit to the dense output.

Masking a layer drops the pruned weights' share of its output, and the layers compressed before
it have already changed what it reads. The kept weights of the same rows can make up for much of
both: for the inputs ``X`` the layer reads in the compressed network and ``X_d`` it read in the
dense one, on the same calibration data, the masked weights ``W'`` that minimise
``‖W X_d − W' X‖²`` given the mask, a least-squares problem per row in the moments ``X Xᵀ`` and
``X_d Xᵀ`` (GPTAQ's asymmetric target, Li et al. 2025; channel pruning's, He et al. 2017, for a
layer whose inputs pruned filters remove). SparseGPT (Frantar & Alistarh 2023) approximates such
a fit with one inverse Hessian for all rows, which is close when it also picks the mask on the
way. Under a mask fixed beforehand (the policy's, of any pattern) it left most of what the exact
solution recovers, so each row's own system is solved, all rows at once, by conjugate gradients.
Weights of 8 bits or fewer are then rounded as GPTQ does. The ridge that keeps each system well
posed is chosen per layer on calibration batches the fit did not see, since a layer that reads
few input vectors per weight otherwise fits their noise.

docs/algorithms.md, "Reconstruction", says how and what it measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from rlprune.compress import MaskedQuantizedWeight, dense_weight, removed_inputs, weight_parametrization
from rlprune.errors import RlpruneError
from rlprune.layers import FilterCoupling, is_depthwise
from rlprune.masks import EndPass, input_columns, read_inputs
from rlprune.policy import Policy

DAMPING = 0.01  # added to the Hessian's diagonal, as a share of its mean (SparseGPT's default)
# the shares a reconstruction tries, smallest first, judged on calibration batches the fit did not
# see: few inputs per weight (a classifier's Linear reads one column per sample) need a stronger one
DAMPINGS = (DAMPING, 0.1, 1.0, 10.0)
PROGRESS = 1e-3  # conjugate gradients stop once a step lowers the output error by less than this share of it
ITERATIONS = 100
BLOCK = 128  # columns rounded one by one before the rest of the row takes their errors at once
QUANTIZED_BITS = 8  # weights at this many bits or fewer are rounded by quantized_fit (16: half, left)


@dataclass(frozen=True)
class Reconstruction:
    """How far one layer's output strays from the dense network's on the calibration inputs,
    relative to that output (``‖W X_d − W' X‖² / ‖W X_d‖²``, :class:`LayerInputs`, ``W'`` masked and
    rounded as the forward pass computes it): as the policy compressed it, and fitted; and the
    ridge share the fit took (``None``: no fit did better on held-out batches, the layer was left)."""

    compressed: float
    fitted: float
    damping: float | None


def _groups(layer: nn.Module) -> int:
    return getattr(layer, "groups", 1)


def _grouped(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor as ``(groups, outputs per group, inputs per group)``: the rows each
    group's inputs feed (a Linear or plain conv is one group)."""
    groups = _groups(layer)
    return tensor.reshape(groups, tensor.shape[0] // groups, -1)


def _columns(layer: nn.Module, x: torch.Tensor, quantized: bool = True) -> torch.Tensor:
    """Input ``x`` as ``layer`` multiplies it (after its input quantizer, if it has one and
    ``quantized``), one row per output position, per group: ``(groups, rows, inputs per group)``."""
    quantizer = getattr(layer, "input_quantizer", None) if quantized else None
    columns = input_columns(layer, (x if quantizer is None else quantizer(x)).float())
    return columns.reshape(len(columns), _groups(layer), -1).transpose(0, 1)


@dataclass(frozen=True)
class LayerInputs:
    """Second moments of one layer's calibration inputs, per group, each
    ``(groups, inputs per group, inputs per group)`` float32: ``hessian`` ``X Xᵀ`` of the inputs
    the compressed network passes it (what the fitted weights multiply), ``dense`` ``X_d X_dᵀ`` of
    the dense network's (what the dense weights multiplied), ``cross`` ``X_d Xᵀ``.

    A fit makes the layer's output ``W' X`` as close as it can to the dense network's ``W X_d``,
    so it also makes up for what the layers before it changed in its inputs.
    """

    hessian: torch.Tensor
    cross: torch.Tensor
    dense: torch.Tensor

    @classmethod
    def unchanged(cls, hessian: torch.Tensor) -> LayerInputs:
        """Inputs the layers before left as the dense network's: ``X = X_d``."""
        return cls(hessian, hessian, hessian)

    @property
    def is_unchanged(self) -> bool:
        """Whether these are :meth:`unchanged` inputs: one tensor for all three moments."""
        return self.cross is self.hessian and self.dense is self.hessian

    def __add__(self, other: LayerInputs) -> LayerInputs:
        return LayerInputs(self.hessian + other.hessian, self.cross + other.cross, self.dense + other.dense)

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> LayerInputs:
        """``function`` of each moment (of the one tensor, once, for :meth:`unchanged` inputs)."""
        if self.is_unchanged:
            return LayerInputs.unchanged(function(self.hessian))
        return LayerInputs(function(self.hessian), function(self.cross), function(self.dense))

    def to(self, device: torch.device | str) -> LayerInputs:
        """These moments on ``device``."""
        return self.map(lambda moment: moment.to(device))


def _read_counted(
    model: nn.Module,
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
    calls: Mapping[str, int] | None,
    read: Callable[[str, nn.Module, torch.Tensor], None],
) -> None:
    """:func:`rlprune.masks.read_inputs` of the calls a pass of :func:`layer_inputs` counts."""
    first = names[0]
    shared = calls is not None and calls.get(first) == 1
    read_by_first: list[torch.Tensor] = []  # this batch's

    def record(name: str, layer: nn.Module, x: torch.Tensor) -> None:
        if name == first:
            read_by_first.append(x)
        elif calls is not None:  # shared: the others count where they read what the first read
            if not read_by_first:  # called before the first: it reads something the fits ahead may change
                return
            if calls.get(name) != 1 or x is not read_by_first[0]:
                raise EndPass
        read(name, layer, x)

    readers = names if calls is None or shared else names[:1]
    read_inputs(model, readers, batches, record, new_batch=read_by_first.clear)


def _read_paired(
    model: nn.Module,
    dense: nn.Module,
    names: Sequence[str],
    batch: torch.Tensor,
    calls: Mapping[str, int] | None,
    read: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None],
) -> None:
    """:func:`_read_counted` on one batch, ``read(name, layer, x, dense_x)`` given each call's
    input in ``model`` and the same call's in ``dense``."""
    dense_reads: dict[str, list[torch.Tensor]] = {}
    _read_counted(dense, names, [batch], calls, lambda name, _, x: dense_reads.setdefault(name, []).append(x))

    def read_pair(name: str, layer: nn.Module, x: torch.Tensor) -> None:
        if not dense_reads.get(name):
            raise RlpruneError(
                f"reconstruction: layer {name!r} is called more often in the compressed network than in "
                "the dense one on the same batch, so its calls cannot be paired; calls are paired by "
                "order, and the network's control flow must not depend on its weights"
            )
        dense_x = dense_reads[name].pop(0)
        if dense_x.shape != x.shape:
            raise RlpruneError(
                f"reconstruction: layer {name!r} reads an input of shape {tuple(x.shape)} in the "
                f"compressed network and {tuple(dense_x.shape)} in the dense one; give both the same "
                "layers (compress with masks, not by removing channels, before reconstructing)"
            )
        read(name, layer, x, dense_x)

    _read_counted(model, names, [batch], calls, read_pair)


@torch.no_grad()
def layer_inputs(
    model: nn.Module,
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
    calls: Mapping[str, int] | None = None,
    dense: nn.Module | None = None,
) -> dict[str, LayerInputs]:
    """The :class:`LayerInputs` of each named layer of ``model`` over ``batches``, per group (a
    conv's input unfolded over its kernel window, :func:`rlprune.masks.input_columns`); those of
    the dense network from ``dense``, run on the same batches (``None``: ``model`` is the dense
    network, ``X = X_d``). Both run in eval mode and are left unchanged.

    Without ``calls``, every named layer is read over whole passes. With ``calls`` (each layer's
    calls per forward pass, :attr:`rlprune.layers.LayerInfo.calls`) and ``names`` in forward order,
    a pass reads for the first of ``names``, and for each other named layer, called once, that
    reads the very tensor it read (q, k and v of one attention: fitting one of them cannot change
    what the others read). When the first is called once, a pass ends at the first call of any
    other named layer that reads something else. Only the layers read are returned.
    """
    if not names:
        return {}
    sums: dict[str, LayerInputs]
    if dense is None:  # one sum, shared by the three moments
        hessians: dict[str, torch.Tensor] = {}

        def read_alone(name: str, layer: nn.Module, x: torch.Tensor) -> None:
            product = _product(_columns(layer, x))
            hessians[name] = hessians[name] + product if name in hessians else product

        _read_counted(model, names, batches, calls, read_alone)
        sums = {name: LayerInputs.unchanged(hessian) for name, hessian in hessians.items()}
    else:
        sums = {}

        def read_paired(name: str, layer: nn.Module, x: torch.Tensor, dense_x: torch.Tensor) -> None:
            columns, dense_columns = _columns(layer, x), _columns(layer, dense_x, quantized=False)
            cross = dense_columns.transpose(1, 2) @ columns
            moments = LayerInputs(_product(columns), cross, _product(dense_columns))
            sums[name] = sums[name] + moments if name in sums else moments

        for batch in batches:
            _read_paired(model, dense, names, batch, calls, read_paired)
    missing = [n for n in (names if calls is None else names[:1]) if n not in sums]
    if missing:
        raise RlpruneError(f"reconstruction: layers {missing} saw no input on the calibration batches")
    return sums


def _product(columns: torch.Tensor) -> torch.Tensor:
    """``X Xᵀ`` per group of :func:`_columns`."""
    return columns.transpose(1, 2) @ columns


def _ridge(hessian: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """What a fit adds to its moments' diagonals, per group ``(groups, columns)``: ``damping``
    times the Hessian's mean diagonal; and 1 for inputs that are always zero (a pruned filter
    upstream), so the system stays positive definite and their weights receive no update.

    Added to all three moments of :class:`LayerInputs`, it is a penalty ``ridge · (v − w)²`` on
    each fitted weight's move away from its dense value."""
    diagonal = hessian.diagonal(dim1=1, dim2=2).float()
    silent = (diagonal == 0).float()
    return silent + damping * (diagonal + silent).mean(-1, keepdim=True)


def _damped(matrix: torch.Tensor, ridge: torch.Tensor) -> torch.Tensor:
    """``matrix`` (float32) with ``ridge`` added to its diagonals (:func:`_ridge`)."""
    matrix = matrix.float().clone()
    matrix.diagonal(dim1=1, dim2=2).add_(ridge)
    return matrix


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``Σ a ⊙ b``, summed in float64."""
    return float(torch.einsum("grc,grc->", a.double(), b.double()))


def least_squares_fit(
    weight: torch.Tensor, keep: torch.Tensor, inputs: LayerInputs, damping: float = DAMPING
) -> torch.Tensor:
    """The masked weights whose output comes closest to the dense one: per row, ``v`` minimising
    ``‖w X_d − v X‖²`` (plus :func:`_ridge`'s penalty, ``damping`` of the Hessian's mean diagonal)
    with ``v`` zero where ``keep`` is false.

    All per group: ``weight`` (the dense ``w``) and ``keep`` ``(groups, rows, columns)``,
    ``inputs`` :class:`LayerInputs`. Each row has its own kept columns, so its own system
    ``H_KK v_K = (w C)_K``; all rows are solved at once by conjugate gradients on
    ``x ↦ keep ⊙ (x H)`` with a Jacobi preconditioner, from the masked weights. A step lowers the
    output error by ``step · rᵀz`` exactly, so the error left is known as it goes; the steps stop
    once one lowers it by less than :data:`PROGRESS` of what is left (at most
    :data:`ITERATIONS`). Returns a new float32 tensor.
    """
    ridge = _ridge(inputs.hessian, damping)
    damped = inputs.map(lambda moment: _damped(moment, ridge))
    hessian = damped.hessian
    weight, kept = weight.float(), keep.float()
    inverse_diagonal = 1.0 / hessian.diagonal(dim1=1, dim2=2).unsqueeze(1)
    fitted = weight * kept
    # pulled = w C − v H; the error w D wᵀ − 2 w C vᵀ + v H vᵀ is w D wᵀ − (w C + pulled) vᵀ, or
    # (w − v) · pulled where X = X_d (no difference of large sums)
    if damped.is_unchanged:
        gap = weight - fitted
        pulled = gap @ hessian
        left = _dot(pulled, gap)
    else:
        target = weight @ damped.cross
        pulled = target - fitted @ hessian
        left = _dot(weight @ damped.dense, weight) - _dot(target + pulled, fitted)
    left = max(left, 0.0)
    residual = kept * pulled
    direction = residual * inverse_diagonal
    product = (residual * direction).sum(-1, keepdim=True)
    for _ in range(ITERATIONS):
        curvature = kept * (direction @ hessian)
        step = product / (direction * curvature).sum(-1, keepdim=True).clamp_min(1e-30)
        fitted += step * direction
        residual -= step * curvature
        lowered = float((step * product).sum())
        left = max(left - lowered, 0.0)
        if lowered <= PROGRESS * left:
            break
        preconditioned = residual * inverse_diagonal
        previous, product = product, (residual * preconditioned).sum(-1, keepdim=True)
        direction = preconditioned + product / previous.clamp_min(1e-30) * direction
    return fitted * kept


def _inverse_factor(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of the damped Hessian's inverse, per group."""
    damped = _damped(hessian, _ridge(hessian, damping))
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)


def quantized_fit(
    weight: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor, bits: int, damping: float = DAMPING
) -> torch.Tensor:
    """``weight`` (masked, ``(groups, rows, columns)``) rounded to its ``bits``-bit grid column by
    column, each column's rounding error spread over the row's later kept columns (GPTQ, Frantar
    et al. 2023): ``U`` the upper Cholesky factor of the inverse Hessian, column ``j``'s error
    ``(w_j − q_j) / U[j, j]`` is subtracted along ``U[j, j+1:]``, :data:`BLOCK` columns at a time.
    Away from :func:`least_squares_fit`'s optimum ``w`` the output error grows by
    ``(v − w) H (v − w)ᵀ`` whatever the fit's target, so ``hessian`` (``X Xᵀ``) is all it needs.

    The grid is :func:`rlprune.quant.fake_quantize_weight`'s: symmetric per output channel (row),
    its step the row's largest magnitude over ``2^(bits−1) − 1``. That entry is rounded to the
    grid's end whatever the errors before it did, so the row's largest magnitude, and with it the
    step the forward pass derives again, stay as they were. Returns a new float32 tensor.
    """
    top = 2 ** (bits - 1) - 1
    weight = weight.float() * keep
    step = weight.abs().amax(-1, keepdim=True).clamp_min(1e-12) / top
    largest = weight.abs() == weight.abs().amax(-1, keepdim=True)
    largest &= largest.cumsum(-1) == 1  # the first, where two tie
    end_of_grid = weight.sign() * top * step
    factor = _inverse_factor(hessian, damping)
    columns = weight.shape[-1]
    for start in range(0, columns, BLOCK):
        end = min(start + BLOCK, columns)
        block, errors = weight[..., start:end], torch.zeros_like(weight[..., start:end])
        local = factor[:, start:end, start:end]
        for j in range(end - start):
            column = block[..., j]
            rounded = torch.clamp(torch.round(column / step[..., 0]), -top, top) * step[..., 0]
            rounded = torch.where(largest[..., start + j], end_of_grid[..., start + j], rounded)
            rounded *= keep[..., start + j]
            error = (column - rounded) / local[:, j, j].unsqueeze(-1)
            block[..., j:] -= error.unsqueeze(-1) * local[:, j, j:].unsqueeze(1)
            block[..., j] = rounded
            errors[..., j] = error
        weight[..., end:] -= errors @ factor[:, start:end, end:]
    return weight


def _relative_error(weight: torch.Tensor, dense: torch.Tensor, inputs: LayerInputs) -> float:
    """``‖W X_d − W' X‖² / ‖W X_d‖²`` of ``weight`` ``W'`` against ``dense`` ``W`` (both grouped),
    from the moments: ``w D wᵀ − 2 w C vᵀ + v H vᵀ`` over rows (``(w − v) H (w − v)ᵀ`` where
    ``X = X_d``, which has no difference of large sums)."""
    energy = _dot(dense @ inputs.dense.float(), dense)
    if inputs.is_unchanged:
        gap = dense - weight
        error = _dot(gap @ inputs.hessian.float(), gap)
    else:
        error = (
            energy
            - 2 * _dot(dense @ inputs.cross.float(), weight)
            + _dot(weight @ inputs.hessian.float(), weight)
        )
    return max(error, 0.0) / max(energy, 1e-30)


def compresses(layer: nn.Module) -> bool:
    """Whether this layer is attached with a fixed mask that prunes something, or with weights of
    :data:`QUANTIZED_BITS` or fewer."""
    parametrization = _fixed_parametrization(layer)
    return parametrization is not None and (
        not parametrization.mask.all() or parametrization.bits <= QUANTIZED_BITS
    )


def _fixed_parametrization(layer: nn.Module) -> MaskedQuantizedWeight | None:
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    parametrization = weight_parametrization(layer)
    return parametrization if isinstance(parametrization, MaskedQuantizedWeight) else None


def fits(layer: nn.Module, removed: Sequence[int] = ()) -> bool:
    """Whether a reconstruction re-fits this layer: it :func:`compresses`, or it loses the inputs
    ``removed`` to filter pruning upstream and has no learned mask (the kept inputs then make up
    for the removed ones, as in channel pruning's reconstruction, He et al. 2017)."""
    learned = parametrize.is_parametrized(layer, "weight") and _fixed_parametrization(layer) is None
    return compresses(layer) or (bool(removed) and not learned)


def _without_inputs(layer: nn.Module, tensor: torch.Tensor, removed: Sequence[int]) -> torch.Tensor:
    """A weight-shaped ``tensor`` with the ``removed`` input channels' entries zeroed (a
    depthwise conv's channels are its rows), as :func:`rlprune.compress.mask_on_kept_inputs` drops them."""
    if not removed:
        return tensor
    axis = 0 if is_depthwise(layer) else 1
    return tensor.index_fill(axis, torch.as_tensor(list(removed), device=tensor.device), 0)


@torch.no_grad()
def fitted_weight(
    layer: nn.Module, inputs: LayerInputs, removed: Sequence[int] = (), damping: float = DAMPING
) -> torch.Tensor:
    """One layer's weight re-fit to the dense network's output under ``inputs``
    (:func:`layer_inputs`): :func:`least_squares_fit` under its mask (none where it is not
    attached), then :func:`quantized_fit` at its weight bit-width when that is
    :data:`QUANTIZED_BITS` or fewer, both with the ridge share ``damping``. The layer is left
    unchanged; the weight returned has the dense weight's shape and dtype.

    Only the kept weights change: the pruned ones keep their dense values (masked out of the
    forward pass), so a mask recomputed from the dense weights later (SR-STE's refresh, GaP)
    still sees them. ``removed``: input channels that upstream filter pruning removes; the fit
    leaves them out, and their weights are zeroed, since they multiply zeros.
    """
    parametrization = _fixed_parametrization(layer)
    weight = dense_weight(layer).detach()
    mask = torch.ones_like(weight, dtype=torch.bool) if parametrization is None else parametrization.mask
    keep = _grouped(layer, _without_inputs(layer, mask, removed))
    fitted = least_squares_fit(_grouped(layer, weight), keep, inputs, damping)
    if parametrization is not None and parametrization.bits <= QUANTIZED_BITS:
        fitted = quantized_fit(fitted, keep, inputs.hessian, parametrization.bits, damping)
    unkept = _grouped(layer, _without_inputs(layer, weight.float(), removed))
    return torch.where(keep, fitted, unkept).reshape_as(weight).to(weight.dtype)


def _output_error(layer: nn.Module, weight: torch.Tensor, dense: torch.Tensor, inputs: LayerInputs) -> float:
    """:func:`_relative_error` of the layer computing with ``weight`` (its mask and rounding
    applied, as the forward pass does) against its weight before any fit, ``dense``."""
    parametrization = _fixed_parametrization(layer)
    weight = weight.to(dense.dtype)
    computed = weight if parametrization is None else parametrization(weight)
    return _relative_error(_grouped(layer, computed.float()), _grouped(layer, dense.float()), inputs)


@torch.no_grad()
def held_out_damping(layer: nn.Module, fold: LayerInputs, held_out: LayerInputs) -> float | None:
    """The ridge share of :data:`DAMPINGS` whose fit on ``fold`` leaves the least output error on
    ``held_out``, calibration batches the fit did not see; ``None`` where no fit leaves less
    there than the layer's weights as they are. The shares are tried from the smallest and stop
    at the first that does worse than the one before (the error falls, then rises)."""
    dense = dense_weight(layer).detach()
    best, lowest = None, _output_error(layer, dense, dense, held_out)
    previous = math.inf
    for damping in DAMPINGS:
        error = _output_error(layer, fitted_weight(layer, fold, damping=damping), dense, held_out)
        if error < lowest:
            best, lowest = damping, error
        if error > previous:
            break
        previous = error
    return best


@torch.no_grad()
def fit_layer(layer: nn.Module, inputs: LayerInputs, damping: float | None = DAMPING) -> Reconstruction:
    """Re-fit one layer's kept weights, in place, to the dense network's output under ``inputs``
    (:func:`fitted_weight` with the ridge share ``damping``; ``None`` leaves them as they are),
    and say how far its output strayed before and after."""
    weight = dense_weight(layer)
    dense = weight.detach().clone()  # the weight itself is overwritten below
    compressed = _output_error(layer, dense, dense, inputs)
    if damping is None:
        return Reconstruction(compressed, compressed, None)
    weight.copy_(fitted_weight(layer, inputs, damping=damping))
    return Reconstruction(compressed, _output_error(layer, weight.detach(), dense, inputs), damping)


@torch.no_grad()
def reconstruct(
    model: nn.Module,
    dense: nn.Module,
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
    calls: Mapping[str, int] | None = None,
    removed: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Reconstruction]:
    """Re-fit each of ``names`` that :func:`fits` to the dense network's output on ``batches``
    (:func:`fit_layer`), in place, in the order given (forward order).

    Each layer's weights multiply the inputs it receives through the layers fit before it, from
    a calibration pass that follows those fits, and their output is fit to the one the layer
    computes in ``dense`` (the network ``model`` was compressed from, left unchanged), on the
    same batch, so a layer also makes up for what the layers before it lost (the asymmetric
    target of GPTAQ, Li et al. 2025). With ``calls`` (:func:`layer_inputs`),
    layers that read the same tensor share a pass, and a pass ends where the next layer to fit
    reads something else; without, each layer has whole passes of its own.

    The ridge of each fit is chosen on held-out data: the even batches fit the layer at each
    share of :data:`DAMPINGS`, the odd ones judge the fits (:func:`held_out_damping`), and the
    share that leaves the least error there fits the layer on all batches; a layer no fit helps
    there is left as it is. With one batch, the fit takes :data:`DAMPING`.

    ``removed``: the input channels each layer loses to filter pruning upstream
    (:func:`rlprune.compress.removed_inputs`); such a layer is fit whatever its own choice. The
    weights those channels fed are left as they are: they multiply zeros here, and a filter mask
    that moves in training (learned masks, GaP, SR-STE's refresh) may bring a channel back.
    Returns each fitted layer's :class:`Reconstruction`.
    """
    removed = removed or {}
    remaining = [name for name in names if fits(model.get_submodule(name), removed.get(name, ()))]
    report = {}
    while remaining:
        group = remaining if calls else remaining[:1]
        if len(batches) < 2:  # nothing to hold out
            inputs = layer_inputs(model, group, batches, calls, dense)
            dampings = dict.fromkeys(inputs, DAMPING)
        else:
            fold = layer_inputs(model, group, batches[0::2], calls, dense)
            held_out = layer_inputs(model, group, batches[1::2], calls, dense)
            inputs = {name: fold[name] + held_out[name] for name in fold.keys() & held_out.keys()}
            dampings = {
                name: held_out_damping(model.get_submodule(name), fold[name], held_out[name])
                for name in inputs
            }
        for name in [n for n in remaining if n in inputs]:
            report[name] = fit_layer(model.get_submodule(name), inputs[name], dampings[name])
        remaining = [n for n in remaining if n not in report]
    return report


class LayerFits:
    """Each layer fit alone on the dense network's inputs, after one calibration pass in all: a
    search's estimate of what :func:`reconstruct` makes of a policy (``search.reconstruct``).

    :func:`reconstruct` fits layer after layer, each on the inputs the layers fit before it pass
    on, so its passes depend on the whole policy. Here every layer's Hessian is read once, from
    the dense network (``X = X_d``), and a layer's fit depends only on its own mask and bit-width
    and on the inputs that filter pruning removes, so a search can cache it per layer and option (as
    EvoPress, Sieberling et al. 2024, does per layer and compression level). How far the
    estimate holds is measured in docs/language_models.md, "In the search".

    Args:
        model: the dense network (read, left unchanged; attached or not).
        names: the layers that may be fit.
        batches: calibration inputs.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], batches: Sequence[torch.Tensor]) -> None:
        self.inputs = layer_inputs(model, names, batches)

    def to(self, device: torch.device | str) -> LayerFits:
        """These fits with their inputs' moments on ``device``."""
        self.inputs = {name: inputs.to(device) for name, inputs in self.inputs.items()}
        return self

    def weight(self, model: nn.Module, name: str, removed: Sequence[int] = ()) -> torch.Tensor:
        """Layer ``name`` of attached ``model`` re-fit under its mask and bit-width
        (:func:`fitted_weight`; ``removed``: its input channels that filter pruning silences)."""
        return fitted_weight(model.get_submodule(name), self.inputs[name], removed)

    @torch.no_grad()
    def apply(
        self, model: nn.Module, policy: Policy, couplings: Mapping[str, FilterCoupling] | None = None
    ) -> None:
        """Re-fit, in place, each layer of ``model`` (``policy`` applied,
        :func:`rlprune.compress.compress`) that :func:`fits`: those ``policy`` compresses, and
        those whose inputs its filter choices remove."""
        masks = {name: weight_parametrization(model.get_submodule(name)).mask for name, _ in policy}
        removed = removed_inputs(policy, masks, couplings)
        for name in self.inputs:
            layer, lost = model.get_submodule(name), removed.get(name, ())
            if fits(layer, lost):
                dense_weight(layer).copy_(fitted_weight(layer, self.inputs[name], lost))
