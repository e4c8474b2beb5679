"""Layer-wise reconstruction: the kept weights of each masked layer re-fit to its dense output.

Masking a layer drops the pruned weights' share of its output. The kept weights of the same rows
can make up for much of it: for the inputs ``X`` the layer sees on calibration data, the masked
weights ``W'`` that minimise ``‖W X − W' X‖²`` given the mask, a least-squares problem per row
in the input Hessian ``X Xᵀ``. SparseGPT (Frantar & Alistarh 2023) approximates it with one
inverse Hessian for all rows, which is close when it also picks the mask on the way. Under a
mask fixed beforehand (the policy's, of any pattern) it left most of what the exact solution
recovers, so each row's own system is solved, all rows at once, by conjugate gradients. Weights
of 8 bits or fewer are then rounded as GPTQ does.

docs/algorithms.md, "Reconstruction", says how and what it measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rlprune.compress import MaskedQuantizedWeight, dense_weight, removed_inputs, weight_parametrization
from rlprune.errors import RlpruneError
from rlprune.layers import FilterCoupling, is_depthwise
from rlprune.masks import EndPass, input_columns, read_inputs
from rlprune.policy import Policy

DAMPING = 0.01  # added to the Hessian's diagonal, as a share of its mean (SparseGPT's default)
PROGRESS = 1e-3  # conjugate gradients stop once a step lowers the output error by less than this share of it
ITERATIONS = 100
BLOCK = 128  # columns rounded one by one before the rest of the row takes their errors at once
QUANTIZED_BITS = 8  # weights at this many bits or fewer are rounded by quantized_fit (16: half, left)


@dataclass(frozen=True)
class Reconstruction:
    """How far one layer's output strays from its dense output on the calibration inputs,
    relative to that output (``‖(W − W') X‖² / ‖W X‖²``, ``W'`` masked and rounded as the forward
    pass computes it): as the policy compressed it, and fitted."""

    compressed: float
    fitted: float


def _groups(layer: nn.Module) -> int:
    return getattr(layer, "groups", 1)


def _grouped(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor as ``(groups, outputs per group, inputs per group)``: the rows each
    group's inputs feed (a Linear or plain conv is one group)."""
    groups = _groups(layer)
    return tensor.reshape(groups, tensor.shape[0] // groups, -1)


def _input_product(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``X Xᵀ`` of one input ``x`` as ``layer`` multiplies it (after its input quantizer, if it
    has one), per group: ``(groups, inputs per group, inputs per group)``, float32."""
    quantizer = getattr(layer, "input_quantizer", None)
    columns = input_columns(layer, (x if quantizer is None else quantizer(x)).float())
    grouped = columns.reshape(len(columns), _groups(layer), -1).transpose(0, 1)
    return grouped.transpose(1, 2) @ grouped


@torch.no_grad()
def input_hessians(
    model: nn.Module,
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
    calls: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """``X Xᵀ`` of the inputs each named layer multiplies over ``batches``, per group
    (:func:`_input_product`; a conv's input unfolded over its kernel window,
    :func:`rlprune.masks.input_columns`). The model runs in eval mode and is left unchanged.

    Without ``calls``, every named layer is read over whole passes. With ``calls`` (each layer's
    calls per forward pass, :attr:`rlprune.layers.LayerInfo.calls`) and ``names`` in forward order,
    a pass reads for the first of ``names``, and for each other named layer, called once, that
    reads the very tensor it read (q, k and v of one attention: fitting one of them cannot change
    what the others read). When the first is called once, a pass ends at the first call of any
    other named layer that reads something else. Only the layers read are returned.
    """
    if not names:
        return {}
    first = names[0]
    shared = calls is not None and calls.get(first) == 1
    sums: dict[str, torch.Tensor] = {}
    read_by_first: list[torch.Tensor] = []  # this batch's

    def record(name: str, layer: nn.Module, x: torch.Tensor) -> None:
        if name == first:
            read_by_first.append(x)
        elif calls is not None:  # shared: the others count where they read what the first read
            if not read_by_first:  # called before the first: it reads something the fits ahead may change
                return
            if calls.get(name) != 1 or x is not read_by_first[0]:
                raise EndPass
        product = _input_product(layer, x)
        sums[name] = sums[name] + product if name in sums else product

    readers = names if calls is None or shared else names[:1]
    read_inputs(model, readers, batches, record, new_batch=read_by_first.clear)
    missing = [n for n in (names if calls is None else [first]) if n not in sums]
    if missing:
        raise RlpruneError(f"reconstruction: layers {missing} saw no input on the calibration batches")
    return sums


def _damped(hessian: torch.Tensor) -> torch.Tensor:
    """``hessian`` plus :data:`DAMPING` times its mean diagonal on the diagonal, per group.

    Inputs that are always zero (a pruned filter upstream) get a unit diagonal first, so the
    system stays positive definite and their weights receive no update.
    """
    hessian = hessian.float().clone()
    diagonal = hessian.diagonal(dim1=1, dim2=2)
    diagonal[diagonal == 0] = 1.0
    diagonal += DAMPING * diagonal.mean(-1, keepdim=True)
    return hessian


def least_squares_fit(weight: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """The masked weights closest to ``weight`` in output: per row ``r``, ``v`` minimising
    ``(v − w_r) H (v − w_r)ᵀ`` with ``v`` zero where ``keep`` is false.

    All per group: ``weight`` and ``keep`` ``(groups, rows, columns)``, ``hessian``
    ``(groups, columns, columns)`` (damped here, :func:`_damped`). Each row has its own kept
    columns, so its own system ``H_KK v_K = (H w_r)_K``; all rows are solved at once by conjugate
    gradients on ``x ↦ keep ⊙ (x H)`` with a Jacobi preconditioner, from the masked weights. A step
    lowers that error by ``step · rᵀz`` exactly, so the error left is known as it goes; the steps
    stop once one lowers it by less than :data:`PROGRESS` of what is left (at most
    :data:`ITERATIONS`). Returns a new float32 tensor.
    """
    hessian = _damped(hessian)
    weight, kept = weight.float(), keep.float()
    inverse_diagonal = 1.0 / hessian.diagonal(dim1=1, dim2=2).unsqueeze(1)
    fitted = weight * kept
    gap = weight - fitted
    pulled = gap @ hessian
    left = float((pulled * gap).sum())
    residual = kept * pulled
    direction = residual * inverse_diagonal
    product = (residual * direction).sum(-1, keepdim=True)
    for _ in range(ITERATIONS):
        curvature = kept * (direction @ hessian)
        step = product / (direction * curvature).sum(-1, keepdim=True).clamp_min(1e-30)
        fitted += step * direction
        residual -= step * curvature
        lowered = float((step * product).sum())
        left -= lowered
        if lowered <= PROGRESS * left:
            break
        preconditioned = residual * inverse_diagonal
        previous, product = product, (residual * preconditioned).sum(-1, keepdim=True)
        direction = preconditioned + product / previous.clamp_min(1e-30) * direction
    return fitted * kept


def _inverse_factor(hessian: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of the damped Hessian's inverse, per group."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(_damped(hessian))), upper=True)


def quantized_fit(weight: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight`` (masked, ``(groups, rows, columns)``) rounded to its ``bits``-bit grid column by
    column, each column's rounding error spread over the row's later kept columns (GPTQ, Frantar
    et al. 2023): ``U`` the upper Cholesky factor of the inverse Hessian, column ``j``'s error
    ``(w_j − q_j) / U[j, j]`` is subtracted along ``U[j, j+1:]``, :data:`BLOCK` columns at a time.

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
    factor = _inverse_factor(hessian)
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


def _relative_error(weight: torch.Tensor, dense: torch.Tensor, hessian: torch.Tensor) -> float:
    """``‖(W − W') X‖² / ‖W X‖²`` of ``weight`` ``W'`` against ``dense`` ``W``, from the Hessian:
    ``Σ tr(D H Dᵀ) / Σ tr(W H Wᵀ)`` over the groups, ``D = W − W'``."""
    difference = dense - weight
    energy = torch.einsum("grc,gcd,grd->", dense, hessian, dense)
    return float(torch.einsum("grc,gcd,grd->", difference, hessian, difference) / energy.clamp_min(1e-30))


def compresses(layer: nn.Module) -> bool:
    """Whether a reconstruction fits this attached layer: a fixed mask that prunes something, or
    weights of :data:`QUANTIZED_BITS` or fewer."""
    parametrization = weight_parametrization(layer)
    return isinstance(parametrization, MaskedQuantizedWeight) and (
        not parametrization.mask.all() or parametrization.bits <= QUANTIZED_BITS
    )


def reconstructed_layers(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The named layers a reconstruction updates: those with a fixed mask that prunes something,
    or weights of :data:`QUANTIZED_BITS` or fewer (:func:`compresses`)."""
    return [name for name in names if compresses(model.get_submodule(name))]


def _without_inputs(layer: nn.Module, tensor: torch.Tensor, removed: Sequence[int]) -> torch.Tensor:
    """A weight-shaped ``tensor`` with the ``removed`` input channels' entries zeroed (a
    depthwise conv's channels are its rows), as :func:`rlprune.compress.mask_on_kept_inputs` drops them."""
    if not removed:
        return tensor
    axis = 0 if is_depthwise(layer) else 1
    return tensor.index_fill(axis, torch.as_tensor(list(removed), device=tensor.device), 0)


@torch.no_grad()
def fitted_weight(layer: nn.Module, hessian: torch.Tensor, removed: Sequence[int] = ()) -> torch.Tensor:
    """One attached layer's weight re-fit to its dense output under ``hessian`` (:func:`input_hessians`):
    :func:`least_squares_fit` under its mask, then :func:`quantized_fit` at its weight bit-width
    when that is :data:`QUANTIZED_BITS` or fewer. The layer is left unchanged; the weight returned
    has the dense weight's shape and dtype.

    Only the kept weights change: the pruned ones keep their dense values (masked out of the
    forward pass), so a mask recomputed from the dense weights later (SR-STE's refresh, GaP)
    still sees them. ``removed``: input channels that upstream filter pruning silences while
    ``hessian`` was read with them live (the dense network's); the fit leaves them out, and
    their weights are zeroed, since they multiply zeros.
    """
    parametrization = weight_parametrization(layer)
    weight = dense_weight(layer).detach()
    keep = _grouped(layer, _without_inputs(layer, parametrization.mask, removed))
    fitted = least_squares_fit(_grouped(layer, weight), keep, hessian)
    if parametrization.bits <= QUANTIZED_BITS:
        fitted = quantized_fit(fitted, keep, hessian, parametrization.bits)
    unkept = _grouped(layer, _without_inputs(layer, weight.float(), removed))
    return torch.where(keep, fitted, unkept).reshape_as(weight).to(weight.dtype)


@torch.no_grad()
def fit_layer(layer: nn.Module, hessian: torch.Tensor) -> Reconstruction:
    """Re-fit one attached layer's kept weights, in place, to its dense output under ``hessian``
    (:func:`fitted_weight`), and say how far its output strayed before and after."""
    parametrization = weight_parametrization(layer)
    weight = dense_weight(layer)
    dense = _grouped(layer, weight.detach().float().clone())  # the weight itself is overwritten below

    def as_computed(tensor: torch.Tensor) -> torch.Tensor:  # what the forward pass multiplies
        return _grouped(layer, parametrization(tensor.reshape_as(weight).to(weight.dtype)).float())

    compressed = _relative_error(as_computed(dense), dense, hessian)
    weight.copy_(fitted_weight(layer, hessian))
    return Reconstruction(compressed, _relative_error(as_computed(weight), dense, hessian))


@torch.no_grad()
def reconstruct(
    model: nn.Module,
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
    calls: Mapping[str, int] | None = None,
) -> dict[str, Reconstruction]:
    """Re-fit each of ``names`` (attached layers, :func:`rlprune.compress.attach`) to its dense
    output on ``batches`` (:func:`fit_layer`), in place, in the order given (forward order).

    Each layer is fit to the inputs it receives through the layers fit before it, from a
    calibration pass that follows those fits. With ``calls`` (:func:`input_hessians`), layers that
    read the same tensor share a pass, and a pass ends where the next layer to fit reads
    something else; without, each layer has whole passes of its own. Layers with a learned mask,
    or neither pruned nor quantized to :data:`QUANTIZED_BITS` or fewer, are left alone. Returns
    each fitted layer's :class:`Reconstruction`.
    """
    remaining = reconstructed_layers(model, names)
    report = {}
    while remaining:
        hessians = input_hessians(model, remaining if calls else remaining[:1], batches, calls)
        for name in [n for n in remaining if n in hessians]:
            report[name] = fit_layer(model.get_submodule(name), hessians[name])
        remaining = [n for n in remaining if n not in report]
    return report


class LayerFits:
    """Each layer fit alone to the dense network's inputs, after one calibration pass in all: a
    search's estimate of what :func:`reconstruct` makes of a policy (``search.reconstruct``).

    :func:`reconstruct` fits layer after layer, each to the inputs the layers fit before it pass
    on, so its passes depend on the whole policy. Here every layer's Hessian is read once, from
    the dense network, and a layer's fit depends only on its own mask and bit-width and on the
    inputs that filter pruning silences, so a search can cache it per layer and option (as
    EvoPress, Sieberling et al. 2024, does per layer and compression level). How far the
    estimate holds is measured in docs/language_models.md, "In the search".

    Args:
        model: the dense network (read, left unchanged; attached or not).
        names: the layers that may be fit.
        batches: calibration inputs.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], batches: Sequence[torch.Tensor]) -> None:
        self.hessians = input_hessians(model, names, batches)

    def to(self, device: torch.device | str) -> LayerFits:
        """These fits with their Hessians on ``device``."""
        self.hessians = {name: hessian.to(device) for name, hessian in self.hessians.items()}
        return self

    def weight(self, model: nn.Module, name: str, removed: Sequence[int] = ()) -> torch.Tensor:
        """Layer ``name`` of attached ``model`` re-fit under its mask and bit-width
        (:func:`fitted_weight`; ``removed``: its input channels that filter pruning silences)."""
        return fitted_weight(model.get_submodule(name), self.hessians[name], removed)

    @torch.no_grad()
    def apply(
        self, model: nn.Module, policy: Policy, couplings: Mapping[str, FilterCoupling] | None = None
    ) -> None:
        """Re-fit, in place, each layer of ``policy`` that it compresses in attached ``model``
        (its masks and bit-widths set, :func:`rlprune.compress.compress`)."""
        masks = {name: weight_parametrization(model.get_submodule(name)).mask for name, _ in policy}
        removed = removed_inputs(policy, masks, couplings)
        for name, _ in policy:
            layer = model.get_submodule(name)
            if compresses(layer):
                dense_weight(layer).copy_(fitted_weight(layer, self.hessians[name], removed.get(name, ())))
